"""What amir prints fits 80 columns without cutting what matters, warnings read as sentences, and an
error names one path, the user's own (not a temp file, not a library's source file)."""

import io
import json
from fractions import Fraction
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from amir_cli.cli import app
from amir_cli.errors import BadInputError, WeightsError

REPO = Path(__file__).resolve().parents[1]


def _lines(render) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    render(console)
    return out.getvalue().splitlines()


def test_training_bar_fits_80_columns():
    from amir_cli.training.report import training_bar

    def render(console):
        progress = training_bar(console)
        progress.add_task("train", total=200_000, completed=199_999, stats="loss 0.0119 12.56 it/s")
        console.print(progress.make_tasks_table(progress.tasks))

    (line,) = [line for line in _lines(render) if line.strip()]
    assert "…" not in line and len(line) <= 80 and "199999/200000 loss 0.0119 12.56 it/s" in line


def test_benchmark_table_fits_80_columns_and_drops_whole_columns_when_narrower():
    from amir_cli.scoring import rich_table

    summary = json.loads((REPO / "benchmarks/results/amir-s/summary.json").read_text())
    wide = _lines(lambda c: c.print(rich_table(summary, width=80)))
    assert not any("…" in line or len(line) > 80 for line in wide)
    assert "s/slice" in wide[1] and "pet-synthesis" in "\n".join(wide)
    narrow = _lines(lambda c: c.print(rich_table(summary, width=60)))
    assert not any("…" in line for line in narrow)
    assert "s/slice" not in narrow[1] and "ΔPSNR" in narrow[1] and "left out at this width" in " ".join(narrow)


def test_weights_list_fits_80_columns_and_shows_whole_paths(tmp_path, monkeypatch):
    from amir_cli import weights
    from amir_cli.network import AMIR, get_config

    home = tmp_path / ("a-rather-long-folder-name-for-the-user-registry-" * 2)
    monkeypatch.setenv("AMIR_HOME", str(home))
    weights.save_entry("my-ct-model-fine-tuned-on-the-head-scans", AMIR(get_config("amir-tiny")).state_dict(), {"tasks": ["ct-denoise"]})
    result = CliRunner().invoke(app, ["weights", "list"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert not any("…" in line for line in lines)
    table = [line for line in lines if " files in " not in line]
    assert all(len(line) <= 80 for line in table) and "my-ct-model-fine-tuned-on-the-head-scans" in result.output
    assert f"user files in {home / 'weights'}" in lines


def test_task_given_against_the_image_warns_in_a_sentence(tmp_path):
    from amir_cli.imaging.io import read_image
    from amir_cli.restore import _choose_task
    from amir_cli.weights import LoadedWeights

    path = tmp_path / "ct_head_quarter_dose.nii.gz"
    nib.save(nib.Nifti1Image(np.full((32, 32, 2), -1000, np.int16), np.eye(4)), str(path))
    loaded = LoadedWeights(model=None, name="w", path=path, sha256="", config={}, tasks=[])
    _, _, warnings = _choose_task(read_image(path), "pet-synthesis", loaded)
    assert warnings == ["--task pet-synthesis was given, though --task auto would choose ct-denoise "
                        "(file name 'ct_head_quarter_dose' names ct-denoise)"]


def test_a_losing_racer_names_the_output_not_a_temp_file(tmp_path):
    from amir_cli.imaging.io import read_image
    from amir_cli.placement import publish

    src = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 1), np.int16), np.eye(4)), str(src))
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"the winner's")  # placed by another command after our checks
    vol = read_image(src)
    with pytest.raises(BadInputError) as caught:
        publish(vol, out, reference=vol, description="t", overwrite=False)
    assert str(caught.value).startswith(f"{out}: appeared while this command ran") and "amir-tmp" not in str(caught.value)


def test_image_errors_name_the_file_once_and_no_library_source(tmp_path):
    from amir_cli.imaging.io import read_image

    cases = {
        "bad.nrrd": (b"NRRD0004\ntype: shrt\ndimension: 3\nsizes: 20 20 3\nencoding: raw\n\nxxxxxxxx", "couldn't parse type"),
        "bad.nii.gz": (b"\x1f\x8b broken", "no NIfTI header"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BadInputError) as caught:
            read_image(tmp_path / name)
        text = str(caught.value)
        assert reason in text and text.count(name) == 1 and ".cxx" not in text and "0x" not in text, text


def test_metaimage_without_its_data_file_names_the_missing_file(tmp_path):
    from amir_cli.imaging.io import read_image, write_image

    src = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 2), np.int16), np.eye(4)), str(src))
    write_image(read_image(src), tmp_path / "scan.mhd")
    (tmp_path / "scan.zraw").unlink()
    with pytest.raises(BadInputError, match=r"scan.mhd: its data file scan.zraw is missing$"):
        read_image(tmp_path / "scan.mhd")


def test_weights_errors_are_whole_sentences(tmp_path):
    from amir_cli.weights import load_model

    torch.save({"model": Fraction(1, 3)}, tmp_path / "objects.pth")  # a pickled object: never unpickled
    torch.save({"a": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError) as caught:
        load_model(str(tmp_path / "objects.pth"))
    text = str(caught.value)
    assert "(fractions.Fraction)" in text and text.endswith("besides tensors, which amir never unpickles; save the model's state_dict") and "\x1b" not in text
    with pytest.raises(WeightsError, match=r"not an AMIR network: they hold no tensor 'patch_embed.proj.weight'$"):
        load_model(str(tmp_path / "other.pth"))
