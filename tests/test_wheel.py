"""The built wheel carries the shipped weights and the licence, and keeps the installed torch: installed
into a fresh environment, `amir restore` works from any folder with the default weights, and nothing shipped names a path of this machine."""

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import auto_engine

REPO = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(".git", "runs", "DATA", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                ".devdata", ".venv", "restored", "amir_benchmark")


def _can_build() -> str | None:
    try:
        import setuptools  # noqa: F401
        import wheel  # noqa: F401
    except ImportError as exc:
        return f"no wheel build possible here ({exc})"
    try:
        import ensurepip  # noqa: F401
    except ImportError:
        return "no venv with pip possible here (ensurepip missing)"
    return None


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory) -> Path:
    why = _can_build()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=IGNORE)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, text=True)
    (whl,) = (tmp / "dist").glob("amir-*.whl")
    return whl


def test_wheel_holds_the_weights_and_no_absolute_paths(built_wheel):
    with zipfile.ZipFile(built_wheel) as z:
        names = set(z.namelist())
        assert "amir_cli/shipped_weights/manifest.json" in names
        assert "amir_cli/network/native.c" in names  # the CPU kernels' source, built at first use
        manifest = json.loads(z.read("amir_cli/shipped_weights/manifest.json"))
        for entry in manifest["entries"]:
            assert f"amir_cli/shipped_weights/{entry['file']}" in names
        text = z.read("amir_cli/shipped_weights/manifest.json").decode()
        assert "/work/" not in text and "/home/" not in text and "/root/" not in text


def test_wheel_carries_the_licence(built_wheel):
    with zipfile.ZipFile(built_wheel) as z:
        (licence,) = [n for n in z.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert z.read(licence).decode() == (REPO / "LICENSE").read_text()
        (metadata,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        assert "License-Expression: MIT" in z.read(metadata).decode().splitlines()


def test_installing_the_wheel_keeps_the_installed_torch(built_wheel):
    """pip, from nothing but what is installed here, would install amir alone: torch stays as it is."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--dry-run", "--quiet", "--report", "-", str(built_wheel)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [item["metadata"]["name"] for item in json.loads(done.stdout)["install"]] == ["amir"]


def test_installed_wheel_restores_the_example_from_another_folder(built_wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)  # torch & co. from the system
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMIR_HOME")}
    env["AMIR_HOME"] = str(tmp_path / "home")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", str(built_wheel)],
                   check=True, capture_output=True, text=True, env=env)
    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copy(REPO / "examples" / "ct_head_quarter_dose.nii.gz", work)
    where = subprocess.run([str(py), "-c", "import amir_cli; print(amir_cli.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(env_dir.resolve()), where
    done = subprocess.run([str(env_dir / "bin" / "amir"), "restore", "ct_head_quarter_dose.nii.gz", "--device", "cpu", "--json"],
                          cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["weights"]["name"] == "amir-s"
    assert report["engine"] == auto_engine()  # the installed package builds its kernels as the checkout does
    assert (work / "ct_head_quarter_dose_amir.nii.gz").is_file()
