"""The README's training section, followed as written on a fresh folder (every `amir train` line
with a tiny configuration appended: the last value of an option wins)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA as DEV_DATA

REPO = Path(__file__).resolve().parents[1]
TINY = ["--iterations", "2", "--batch-size", "2", "--patch-size", "32", "--crops-per-slice", "2", "--val-every", "2",
        "--val-slices", "1", "--val-size", "64", "--workers", "0", "--checkpoint-every", "1", "--log-every", "1", "--quiet"]


def readme_training_commands() -> list[str]:
    section = (REPO / "README.md").read_text().split("### `amir train`")[1]
    block = section.split("```bash")[1].split("```")[0]
    return [re.sub(r"\s+#.*$", "", line).strip() for line in block.strip().splitlines()]


def _synthetic_data(root: Path) -> None:
    """High-quality volumes in DATA/{CT,MRI,PET}/ when the development data are not here."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    body = ((yy - 48) ** 2 + (xx - 48) ** 2 < 40 ** 2).astype(np.float32)
    vols = {"CT": -1000 + body * 1040, "MRI": body * 1500 + (xx > 48) * body * 500, "PET": body * 2 + (yy < 30) * body * 6}
    for folder, img in vols.items():
        for sub in ("", "validation"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
            vol = np.stack([img + rng.normal(0, 1, img.shape) * (folder != "CT") for _ in range(3)], -1).astype(np.float32)
            nib.save(nib.Nifti1Image(np.abs(vol) if folder != "CT" else vol, np.eye(4)), str(root / folder / sub / f"{folder.lower()}.nii.gz"))


def test_readme_training_section_works_on_a_fresh_folder(tmp_path):
    commands = readme_training_commands()
    assert commands[0].startswith("python scripts/build_training_data.py DATA --data")
    env = {**os.environ, "PYTHONPATH": str(REPO), "AMIR_HOME": str(tmp_path / "home")}
    env.pop("AMIR_DATA", None)
    shutil.copy(REPO / "examples" / "ct_head_quarter_dose.nii.gz", tmp_path / "scan.nii.gz")

    def run(line: str) -> subprocess.CompletedProcess:
        args = line.split()
        if args[0] == "amir":
            args = [sys.executable, "-m", "amir_cli", *args[1:]]
            if line.startswith("amir train DATA"):
                args += TINY + (["--config", "amir-tiny"] if "--init" not in line else [])
        elif args[0] == "python":
            args = [sys.executable, str(REPO / args[1]), *args[2:]]
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"
        return done

    build, *rest = commands
    if DEV_DATA.is_dir():
        run(build.replace("/path/to/data", str(DEV_DATA)) + " --pet-volumes 1")
        assert not list(tmp_path.glob(".DATA.*"))
    else:
        _synthetic_data(tmp_path / "DATA")
    for line in rest:
        done = run(line)
        if line.startswith("amir train --resume"):
            assert "nothing to train" in done.stderr
    assert (tmp_path / "runs" / "r1" / "best.pt").is_file() and (tmp_path / "runs" / "ft" / "last.pt").is_file()
    assert (tmp_path / "scan_amir.nii.gz").is_file()
    # resuming the finished run with its export again: no "already exist" failure, and it says so
    again = run("amir train --resume runs/r1 --export my-amir")
    assert "already in the registry as my-amir" in again.stderr
    listed = run("amir weights list --quiet").stdout.split()
    assert listed.count("my-amir") == 1


def test_gitignore_covers_data_and_runs():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("DATA/CT/x.nii.gz", "runs/r1/last.pt"):
        done = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
        assert done.returncode == 0, f"{path} is not ignored"
