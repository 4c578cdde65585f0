"""Faults, races and bad input: nothing lost, nothing clobbered, one line on stderr.

One test (or a few) per class of the fault table: data files clobbered, weights shadowed, reports
clobbered, races (two processes), inputs becoming outputs, half results (a full disk by a patched
write), leftovers (kill -9), permissions (umask), two-line errors, exit codes, resources, unclear
messages, --overwrite of originals, and empty UIDs in derived DICOM.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import dicom_builders as DB
from conftest import amir, crop_nifti, sha

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def ct(tmp_path) -> Path:
    return crop_nifti("ct/cranium_ct.nii.gz", (slice(96, 160), slice(100, 164), slice(50, 53)), tmp_path / "ct.nii.gz")


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in lines[0] and lines[0].startswith("amir: error: "), err
    return lines[0]


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def child(code: str, *args, env=None, timeout=300) -> subprocess.Popen:
    """A Python child process running ``code`` with amir_cli importable from this tree."""
    e = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", **(env or {}))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---- data file clobbered ---------------------------------------------------------------------


def test_metaimage_data_file_is_an_output(ct, tiny_weights, tmp_path):
    zraw = tmp_path / "o.zraw"
    zraw.write_bytes(b"precious")
    code, _, err = amir("restore", ct, "-o", tmp_path / "o.mhd", "-w", tiny_weights, "-q")
    assert code == 1 and "o.zraw" in one_error_line(err) and "--overwrite" in err
    assert zraw.read_bytes() == b"precious" and not (tmp_path / "o.mhd").exists()


def test_input_data_file_never_overwritten(ct, tiny_weights, tmp_path):
    # an input a.mhd whose data file is o.zraw: -o o.mhd would replace it, even with --overwrite
    code, _, _ = amir("degrade", ct, "--task", "ct-denoise", "-o", tmp_path / "o.mhd", "-q")
    assert code == 0
    (tmp_path / "o.mhd").rename(tmp_path / "a.mhd")
    before = sha(tmp_path / "o.zraw")
    code, _, err = amir("restore", tmp_path / "a.mhd", "-o", tmp_path / "o.mhd", "-w", tiny_weights, "-q", "--overwrite")
    assert code == 1 and "input" in one_error_line(err)
    assert sha(tmp_path / "o.zraw") == before


def test_hard_link_to_the_input_is_refused(ct, tiny_weights, tmp_path):
    os.link(ct, tmp_path / "link.nii.gz")
    before = sha(ct)
    code, _, err = amir("restore", ct, "-o", tmp_path / "link.nii.gz", "-w", tiny_weights, "-q", "--overwrite")
    assert code == 1 and "input" in one_error_line(err) and sha(ct) == before


# ---- input becomes output -------------------------------------------------------------------


def test_reference_and_weights_are_inputs(ct, tiny_weights, tmp_path):
    ref = tmp_path / "ref.nii.gz"
    shutil.copy(ct, ref)
    before = sha(ref)
    code, _, err = amir("restore", ct, "--reference", ref, "-o", ref, "--overwrite", "-w", tiny_weights, "-q")
    assert code == 1 and "input" in one_error_line(err) and "choose another -o" in err and sha(ref) == before
    w = tmp_path / "w.safetensors"
    shutil.copy(tiny_weights, w)
    code, _, err = amir("restore", ct, "--report", w, "--overwrite", "-w", w, "-q")
    assert code == 1 and "input" in one_error_line(err) and "choose another --report" in err and sha(w) == sha(tiny_weights)


# ---- report clobbered -----------------------------------------------------------------------


def test_existing_report_is_not_replaced(ct, tiny_weights, tmp_path):
    (tmp_path / "o.nii.gz.json").write_text("mine")
    code, _, err = amir("restore", ct, "-o", tmp_path / "o.nii.gz", "-w", tiny_weights, "-q")
    assert code == 1 and "report exists" in one_error_line(err)
    assert (tmp_path / "o.nii.gz.json").read_text() == "mine" and not (tmp_path / "o.nii.gz").exists()


def test_existing_batch_report_is_not_replaced(ct, tiny_weights, tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(ct, cases / "a.nii.gz")
    (tmp_path / "out.json").write_text("mine")
    code, _, err = amir("restore", cases, "-o", tmp_path / "out", "-w", tiny_weights, "-q")
    assert code == 1 and "exists" in one_error_line(err)
    assert (tmp_path / "out.json").read_text() == "mine"


def test_batch_into_an_earlier_single_series_output_is_refused(ct, tiny_weights, tmp_path):
    """A batch --overwrite into the folder of an earlier one-series restore would leave that series'
    files beside the batch's outputs: refused, and the folder is left as it was."""
    series = DB.ct_series(tmp_path / "series")
    code, _, err = amir("restore", series, "-o", tmp_path / "out", "-w", tiny_weights, "-q")
    assert code == 0, err
    before = sha(tmp_path / "out")
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(ct, cases / "a.nii.gz")
    code, _, err = amir("restore", cases, "-o", tmp_path / "out", "--overwrite", "-w", tiny_weights, "-q")
    assert code == 1 and "holds one restored DICOM series" in one_error_line(err)
    assert sha(tmp_path / "out") == before


# ---- race: two processes, one output ----------------------------------------------------------

RACER = """
    import sys, time
    from amir_cli import restore as R
    from amir_cli.cli import main
    real = R.restore_volume
    def slow(*a, **k):
        out = real(*a, **k)
        time.sleep(2.0)  # both racers have passed the start-of-work checks
        return out
    R.restore_volume = slow
    main(["restore", sys.argv[1], "-o", sys.argv[2], "-w", sys.argv[3], "-q"])
"""


def test_two_racing_restores_cannot_both_succeed(ct, tiny_weights, tmp_path):
    out = tmp_path / "o.nii.gz"
    procs = [child(RACER, ct, out, tiny_weights) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    (err,) = [e for code, e in results if code == 1]
    assert "exists" in err or "appeared" in err
    report = json.loads((tmp_path / "o.nii.gz.json").read_text())
    assert report["output"] == str(out) and nib.load(str(out)).shape == (64, 64, 3)
    assert hidden(tmp_path) == []


# ---- half a result: disk full while writing the report ------------------------------------------


def test_full_disk_during_report_leaves_nothing(ct, tiny_weights, tmp_path, monkeypatch):
    import errno

    from amir_cli import files

    real = files.jsonable

    def full(_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "jsonable", full)
    code, _, err = amir("restore", ct, "-o", tmp_path / "o.nii.gz", "-w", tiny_weights, "-q")
    assert code == 1 and "No space left" in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]
    monkeypatch.setattr(files, "jsonable", real)
    code, _, err = amir("restore", ct, "-o", tmp_path / "o.nii.gz", "-w", tiny_weights, "-q")
    assert code == 0, err


def test_overwrite_that_fails_halfway_keeps_the_old_outputs(ct, tiny_weights, tmp_path, monkeypatch):
    """--overwrite: the image is placed, placing the report fails; the old image and report are back."""
    import errno

    from amir_cli import files

    out = tmp_path / "o.nii.gz"
    code, _, err = amir("restore", ct, "-o", out, "-w", tiny_weights, "-q")
    assert code == 0, err
    before = {p.name: sha(p) for p in tmp_path.iterdir()}
    real = files.place

    def report_fails(src, dest, *, overwrite):
        if dest == tmp_path / "o.nii.gz.json":  # its final place, not its temp file
            raise OSError(errno.ENOSPC, "No space left on device", str(dest))
        real(src, dest, overwrite=overwrite)

    monkeypatch.setattr(files, "place", report_fails)
    code, _, err = amir("restore", ct, "-o", out, "-w", tiny_weights, "-q", "--overwrite", "--tta")
    assert code == 1 and "No space left" in one_error_line(err)
    assert {p.name: sha(p) for p in tmp_path.iterdir()} == before


def test_full_disk_in_dicom_write_is_one_line(tiny_weights, tmp_path, monkeypatch):
    import errno

    from amir_cli.imaging import dicom_write

    series = DB.ct_series(tmp_path / "series")

    def full(ds, path):
        raise OSError(errno.ENOSPC, "No space left on device\nTraceback (most recent call last):\n  File x")

    monkeypatch.setattr(dicom_write, "_save", full)
    code, _, err = amir("restore", series, "-o", tmp_path / "out", "-w", tiny_weights, "-q")
    assert code == 1 and "No space left" in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]


def test_unwritable_output_names_the_output_not_our_temp(ct, tiny_weights, tmp_path, monkeypatch):
    import errno

    def denied(img, path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(nib, "save", denied)
    code, _, err = amir("restore", ct, "-o", tmp_path / "o.nii.gz", "-w", tiny_weights, "-q")
    assert code == 1 and one_error_line(err) == f"amir: error: {tmp_path / 'o.nii.gz'}: cannot write (Permission denied)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_temp_names_read_as_their_destination():
    from amir_cli.files import public_path, temp_prefix

    tmp = Path("/out") / f"{temp_prefix(Path('/out/series'))}k2j4"
    assert public_path(tmp) == "/out/series" and public_path(tmp / "IM0001.dcm") == "/out/series/IM0001.dcm"
    assert public_path(tmp / "series") == "/out/series"  # a Staging folder holds the final name
    assert public_path("/out/.hidden/a.nii") == "/out/.hidden/a.nii"


# ---- leftovers: kill -9 during the write -------------------------------------------------------

KILLED = """
    import os, sys, signal
    import nibabel as nib
    real = nib.save
    def save_and_die(img, path):
        real(img, path)
        os.kill(os.getpid(), signal.SIGKILL)
    nib.save = save_and_die
    from amir_cli.cli import main
    main(["restore", sys.argv[1], "-o", sys.argv[2], "-w", sys.argv[3], "-q"])
"""


def test_kill_9_leftovers_are_removed_by_the_next_run(ct, tiny_weights, tmp_path):
    out = tmp_path / "o.nii.gz"
    p = child(KILLED, ct, out, tiny_weights)
    assert p.wait(timeout=300) == -signal.SIGKILL
    assert hidden(tmp_path) and not out.exists()  # the dead run's temp files
    code, _, err = amir("restore", ct, "-o", out, "-w", tiny_weights, "-q")
    assert code == 0, err
    assert hidden(tmp_path) == []


def test_stale_dicom_temp_folder_is_removed(tiny_weights, tmp_path):
    series = DB.ct_series(tmp_path / "series")
    stale = tmp_path / ".out.amir-tmp-999999999-abc"  # a pid that cannot be alive
    stale.mkdir()
    shutil.copy(next(series.iterdir()), stale / "IM00001.dcm")
    code, _, err = amir("restore", series, "-o", tmp_path / "out", "-w", tiny_weights, "-q")
    assert code == 0, err
    assert not stale.exists() and hidden(tmp_path) == []


# ---- permissions: outputs follow the umask ---------------------------------------------------


def test_outputs_follow_the_umask(tiny_weights, tmp_path):
    series = DB.ct_series(tmp_path / "series")
    old = os.umask(0o022)
    try:
        code, _, err = amir("restore", series, "-o", tmp_path / "out", "-w", tiny_weights, "-q")
        code2, _, err2 = amir("restore", series, "-o", tmp_path / "o.mhd", "-w", tiny_weights, "-q")
    finally:
        os.umask(old)
    assert code == 0 and code2 == 0, err + err2
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    for f in [*(tmp_path / "out").iterdir(), tmp_path / "out.json", tmp_path / "o.mhd", tmp_path / "o.zraw", tmp_path / "o.mhd.json"]:
        assert f.stat().st_mode & 0o777 == 0o644, f


# ---- weights shadowed ---------------------------------------------------------------------------


def test_registry_names_never_resolve_to_local_files(tiny_weights, tmp_path, monkeypatch):
    from amir_cli import weights as W

    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_weights, tmp_path / "amir-s")
    (tmp_path / "amir-t").mkdir()
    assert W.resolve("amir-s")[1] is not None and W.resolve("amir-s")[1].name == "amir-s"
    path, entry = W.resolve("./amir-s")
    assert entry is None and path == Path("./amir-s")
    assert W.resolve("x.safetensors")[1] is None


def test_report_records_the_file_and_marks_it_unregistered(ct, tiny_weights, tmp_path):
    code, _, err = amir("restore", ct, "-o", tmp_path / "o.nii.gz", "-w", tiny_weights, "-q")
    assert code == 0, err
    w = json.loads((tmp_path / "o.nii.gz.json").read_text())["weights"]
    assert w["registered"] is False and w["file"] == str(tiny_weights)
    import hashlib

    assert w["sha256"] == hashlib.sha256(tiny_weights.read_bytes()).hexdigest()


# ---- overwrite: originals are never replaced ----------------------------------------------------


def test_overwrite_never_replaces_original_dicom(tiny_weights, tmp_path):
    series = DB.ct_series(tmp_path / "series")
    other = DB.mr_series(tmp_path / "other")
    before = sha(other)
    code, _, err = amir("restore", series, "-o", other, "--overwrite", "-w", tiny_weights, "-q")
    assert code == 1 and "did not write" in one_error_line(err) and sha(other) == before
    # a previous amir output is replaced
    code, _, err = amir("restore", series, "-o", tmp_path / "out", "-w", tiny_weights, "-q")
    assert code == 0, err
    code, _, err = amir("restore", series, "-o", tmp_path / "out", "--overwrite", "-w", tiny_weights, "-q")
    assert code == 0, err


# ---- exit codes: usage errors exit 2 before the model loads --------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        ["--kspace-factor", "2", "--task", "ct-denoise"],
        ["--scale", "2", "--kspace-factor", "2"],
        ["--tile", "1"],
        ["--device", "tpu:0"],
        ["--reference", "FOLDER"],
    ],
)
def test_usage_errors_exit_2_before_loading(ct, tmp_path, extra):
    (tmp_path / "folder").mkdir()
    extra = [str(tmp_path / "folder") if e == "FOLDER" else e for e in extra]
    # the weights do not exist: reaching the model load would exit 1
    code, _, err = amir("restore", ct, "-w", tmp_path / "missing.safetensors", *extra)
    assert code == 2, err


# ---- two lines: third-party writers are silent ------------------------------------------------


def test_broken_metaimage_is_one_line(tmp_path):
    mhd = tmp_path / "bad.mhd"
    mhd.write_text("ObjectType = Image\nNDims = 3\nDimSize = 64 64 3\nElementType = MET_SHORT\nElementDataFile = gone.raw\n")
    p = subprocess.run([sys.executable, "-m", "amir_cli", "degrade", str(mhd), "--task", "ct-denoise", "-q"],
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    assert p.returncode == 1
    one_error_line(p.stderr)


# ---- resources: sizes checked before allocation ------------------------------------------------


def test_header_larger_than_file_fails_fast(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((8000, 8000, 30))
    hdr.set_data_dtype(np.int16)
    path = tmp_path / "huge.nii"
    with open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * (4096 - len(hdr.binaryblock)))
    code, _, err = amir("degrade", path, "--task", "ct-denoise", "-q")
    assert code == 1 and "header declares 8000x8000x30" in one_error_line(err)


def test_gzip_bomb_refused_by_the_memory_check(tmp_path, monkeypatch):
    from amir_cli.imaging import volume

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((512, 512, 200))
    hdr.set_data_dtype(np.int16)
    hdr.set_qform(np.eye(4), code=1)
    path = tmp_path / "bomb.nii.gz"
    with gzip.open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4)
        zeros = b"\0" * (1 << 20)
        for _ in range(512 * 512 * 200 * 2 // len(zeros)):
            f.write(zeros)
    assert path.stat().st_size < 1 << 20
    monkeypatch.setattr(volume, "available_memory", lambda: 50 << 20)
    code, _, err = amir("degrade", path, "--task", "ct-denoise", "-q")
    assert code == 1 and "GiB is available" in one_error_line(err)


def test_restore_memory_check(ct, tiny_weights, tmp_path, monkeypatch):
    from amir_cli.imaging import volume

    calls = []

    def available():  # enough to read the image, not enough to restore it
        calls.append(1)
        return 1 << 30 if len(calls) == 1 else 100_000

    monkeypatch.setattr(volume, "available_memory", available)
    code, _, err = amir("restore", ct, "-o", tmp_path / "o.nii.gz", "-w", tiny_weights, "-q")
    assert code == 1 and "restoring a 64x64x3 image needs" in one_error_line(err)
    assert not (tmp_path / "o.nii.gz").exists()


# ---- unclear messages ---------------------------------------------------------------------------


def test_unknown_input_extension_blames_the_input(tmp_path, tiny_weights):
    f = tmp_path / "scan.xyz"
    f.write_bytes(b"x" * 1000)
    code, _, err = amir("restore", f, "-w", tiny_weights, "-q")
    line = one_error_line(err)
    assert code == 1 and "unknown input format" in line and "scan.xyz" in line and "_amir" not in line


def test_text_file_named_pth(ct, tmp_path):
    w = tmp_path / "w.pth"
    w.write_text("hello\n")
    code, _, err = amir("restore", ct, "-w", w, "-q", "-o", tmp_path / "o.nii.gz")
    assert code == 1 and "not a PyTorch checkpoint" in one_error_line(err)


def test_state_dict_mismatch_names_the_keys(ct, tiny_weights, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(tiny_weights))
    gone = next(k for k in state if "dwconv" in k)
    state.pop(gone)
    state["refinement.0.extra"] = state["patch_embed.proj.weight"].clone()
    w = tmp_path / "bad.safetensors"
    save_file(state, str(w))
    code, _, err = amir("restore", ct, "-w", w, "-q", "-o", tmp_path / "o.nii.gz")
    line = one_error_line(err)
    assert code == 1 and gone in line and "refinement.0.extra" in line and "unexpected" in line


# ---- derived DICOM never writes an empty UID ----------------------------------------------------


def test_empty_referenced_uid_is_not_written(tmp_path):
    import pydicom
    from pydicom.dataset import Dataset

    from amir_cli.imaging.io import read_image, write_image

    series = DB.ct_series(tmp_path / "series")
    for f in series.iterdir():  # a GE-style reference with an empty UID
        ds = pydicom.dcmread(str(f))
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ""
        ds.ReferencedImageSequence = [item]
        ds.save_as(str(f))
    vol = read_image(series)
    out = write_image(vol.with_array(vol.array * 0.9), tmp_path / "out", description="restored")
    for f in out.iterdir():
        ds = pydicom.dcmread(str(f))
        assert "ReferencedImageSequence" not in ds
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID
    if shutil.which("dciodvfy"):
        errors = DB.dciodvfy_errors(out)
        assert not [e for e in errors if "UID" in e], errors


def test_several_series_error_names_no_descriptions(tmp_path):
    import pydicom

    from amir_cli.errors import BadInputError
    from amir_cli.imaging.io import read_image

    a, b = DB.ct_series(tmp_path / "a"), DB.mr_series(tmp_path / "b")
    both = tmp_path / "both"
    both.mkdir()
    for folder, tag in ((a, "a"), (b, "b")):
        for f in folder.iterdir():
            ds = pydicom.dcmread(str(f))
            ds.SeriesDescription = "DOE^JANE head"
            ds.save_as(str(both / f"{tag}{f.name}"))
    with pytest.raises(BadInputError, match="holds 2 DICOM series") as info:
        read_image(both)
    assert "DOE" not in str(info.value)


def test_failed_train_leaves_no_run_folder(tmp_path):
    (tmp_path / "data").mkdir()
    run = tmp_path / "run"
    code, _, err = amir("train", tmp_path / "data", "-o", run, "--config", "amir-tiny", "--iterations", "1", "--device", "cpu", "-q")
    assert code == 1, err
    one_error_line(err)
    assert not run.exists()


def test_run_json_missing_a_field(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    (run / "run.json").write_text("{}")
    code, _, err = amir("train", "--resume", run, "-q")
    assert code == 1 and "run.json" in one_error_line(err) and "options" in err


def test_a_report_that_cannot_be_written_is_named_with_its_cause(ct, tmp_path, monkeypatch):
    import amir_cli.placement as P
    from amir_cli.errors import BadInputError
    from amir_cli.imaging.io import read_image

    def full(path, data, **kw):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(P, "write_json", full)
    vol = read_image(ct)
    with pytest.raises(BadInputError) as err:
        P.publish(vol, tmp_path / "o.nii.gz", reference=vol, description="", overwrite=False,
                  report=tmp_path / "o.nii.gz.json", result={})
    assert str(err.value) == f"{tmp_path / 'o.nii.gz.json'}: cannot write (No space left on device)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]  # nothing placed, no temp left
