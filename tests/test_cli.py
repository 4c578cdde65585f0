"""The `amir` command line: restore, degrade and weights, end to end on small real images.

A tiny random AMIR (amir-tiny) stands in for shipped weights. Images are crops of the real sample
data in tests/fixtures/data; DICOM series come from tests/dicom_builders.py.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import dicom_builders as DB
from amir_cli.cli import app, main
from amir_cli.imaging.kspace import kspace_downsample
from amir_cli.imaging.kspace import DC_ITERATIONS
from amir_cli.network import AMIR, get_config, native
from amir_cli.tasks import MR_PASSES

from conftest import amir, auto_engine, crop_nifti, sha

runner = CliRunner()


@pytest.fixture()
def ct_nii(tmp_path) -> Path:
    return crop_nifti("ct/cranium_ct.nii.gz", (slice(96, 160), slice(100, 164), slice(50, 53)), tmp_path / "head_ct.nii.gz")


@pytest.fixture()
def mr_nii(tmp_path) -> Path:
    return crop_nifti("mr/colin27_t1_1mm.nii.gz", (slice(60, 124), slice(80, 128), slice(80, 83)), tmp_path / "brain_t1.nii.gz")


# ---- help, version -----------------------------------------------------------------------------


@pytest.mark.parametrize("cmd", [[], ["restore"], ["degrade"], ["weights"], ["weights", "list"], ["weights", "verify"], ["weights", "path"], ["weights", "import"]])
def test_help_has_an_example(cmd):
    res = runner.invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0, res.output
    if cmd:
        assert "Example" in res.output and "amir " in res.output


def test_the_command_process_skips_the_collectors_last_passes(monkeypatch):
    """As the process's command (no argv given) main() freezes the collector before exiting, which
    spares the interpreter's exit a walk over torch's objects; called with arguments (a library
    caller, these tests) it leaves the collector alone."""
    import gc

    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    monkeypatch.setattr(sys, "argv", ["amir", "--version"])
    for argv in (["--version"], None):
        with pytest.raises(SystemExit):
            main(argv)
    assert frozen == [True]


def test_importing_the_cli_imports_no_torch():
    code = "import sys; from amir_cli.cli import app; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---- restore: NIfTI ---------------------------------------------------------------------------


def test_restore_nifti_keeps_geometry_and_dtype(ct_nii, tiny_weights):
    before = sha(ct_nii)
    code, out, err = amir("restore", ct_nii, "--weights", tiny_weights, "--quiet")
    assert code == 0, err
    dest = ct_nii.parent / "head_ct_amir.nii.gz"
    a, b = nib.load(str(ct_nii)), nib.load(str(dest))
    assert b.shape == a.shape
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-6)
    assert b.get_data_dtype().kind == a.get_data_dtype().kind == "i"  # CT stays integer HU
    assert int(b.header["qform_code"]) > 0 and int(b.header["sform_code"]) > 0
    report = json.loads((ct_nii.parent / "head_ct_amir.nii.gz.json").read_text())
    for key in ("version", "task", "task_reason", "weights", "device", "precision", "input_geometry", "output_geometry",
                "seconds", "slices_per_second", "routing"):
        assert key in report
    assert report["task"] == "ct-denoise" and "ct" in report["task_reason"].lower()
    assert report["weights"]["sha256"] == hashlib.sha256(tiny_weights.read_bytes()).hexdigest()
    assert len(report["routing"]["top_indices"]) == 5
    assert sha(ct_nii) == before  # input never changed
    assert out == "" and err == ""  # --quiet


def test_engine_is_reported_and_plain_gives_the_same_image(ct_nii, tiny_weights, tmp_path):
    """--engine fused runs oneDNN's fused operators, native amir's kernels (where they build), plain
    PyTorch's alone: the same HU; the default (auto) reports what it ran."""
    images = {}
    for engine in ("fused", "plain", *(["native"] if native.available() else []), None):
        out = tmp_path / f"{engine}.nii.gz"
        code, _, err = amir("restore", ct_nii, "-o", out, "--weights", tiny_weights, "--device", "cpu", "--quiet",
                            *(["--engine", engine] if engine else []))
        assert code == 0, err
        report = json.loads(Path(f"{out}.json").read_text())
        expected = engine or auto_engine()
        assert report["engine"] == expected and report["batch_size"] == 1  # one slice per call on the CPU
        images[engine] = np.asarray(nib.load(str(out)).dataobj, dtype=np.float32)
    assert all(np.abs(image - images["plain"]).max() <= 1 for image in images.values())  # integer HU, rounded
    code, _, err = amir("restore", ct_nii, "-o", tmp_path / "x.nii.gz", "--weights", tiny_weights, "--engine", "fast")
    assert code == 2 and "--engine" in err


def test_mr_scale_2_halves_spacing_and_keeps_field_of_view(mr_nii, tiny_weights, tmp_path):
    out = tmp_path / "t1_x2.nii.gz"
    code, _, err = amir("restore", mr_nii, "--task", "mri-sr", "--scale", "2", "-o", out, "--weights", tiny_weights, "--quiet")
    assert code == 0, err
    a, b = nib.load(str(mr_nii)), nib.load(str(out))
    assert b.shape == (a.shape[0] * 2, a.shape[1] * 2, a.shape[2])
    np.testing.assert_allclose(b.header.get_zooms(), np.array(a.header.get_zooms()) / [2, 2, 1], atol=1e-6)
    for corner in np.ndindex(2, 2):
        edge_a = [corner[0] * a.shape[0] - 0.5, corner[1] * a.shape[1] - 0.5, 0, 1]
        edge_b = [corner[0] * b.shape[0] - 0.5, corner[1] * b.shape[1] - 0.5, 0, 1]
        np.testing.assert_allclose(b.affine @ edge_b, a.affine @ edge_a, atol=1e-5)
    rep = json.loads(Path(str(out) + ".json").read_text())
    assert rep["output_geometry"]["shape"] == list(b.shape) and rep["scale"] == 2
    # the coarse input is the band the output keeps: downsampled again, the output gives it back
    assert rep["data_consistency"] == {"kspace_factor": 2, "band": None, "factor_from": "scale", "grid": "coarse", "band_kept": 1.0,
                                        "iterations": DC_ITERATIONS, "passes": MR_PASSES[2]}
    lr, hr = a.get_fdata(), b.get_fdata()
    for k in range(lr.shape[2]):
        np.testing.assert_allclose(kspace_downsample(hr[:, :, k], 2), lr[:, :, k], atol=0.02 * lr.max())
    plain = tmp_path / "t1_x2_net.nii.gz"
    code, _, err = amir("restore", mr_nii, "--task", "mri-sr", "--scale", "2", "-o", plain, "--weights", tiny_weights, "--quiet", "--no-data-consistency")
    assert code == 0, err
    assert json.loads(Path(str(plain) + ".json").read_text())["data_consistency"] is None
    assert np.abs(kspace_downsample(nib.load(str(plain)).get_fdata()[:, :, 0], 2) - lr[:, :, 0]).max() > 0.05 * lr.max()


def test_kspace_factor_keeps_the_measured_band(mr_nii, tiny_weights, tmp_path):
    """A zero-filled input restored with --kspace-factor: the output's own zero-filled image is the
    input again, although the (random) network changed the image; the report says so."""
    from amir_cli.imaging.degrade import mri_truncate

    lq = tmp_path / "t1_x2.nii.gz"
    code, _, err = amir("degrade", mr_nii, "--task", "mri-sr", "--factor", "2", "-o", lq, "--quiet")
    assert code == 0, err
    plain, dc, auto = tmp_path / "plain.nii.gz", tmp_path / "dc.nii.gz", tmp_path / "auto.nii.gz"
    for out, extra in ((plain, ["--no-detect-zero-filling"]), (dc, ["--kspace-factor", "2"]), (auto, [])):
        code, _, err = amir("restore", lq, "--task", "mri-sr", "-o", out, "--weights", tiny_weights, "--quiet", *extra)
        assert code == 0, err
    z = nib.load(str(lq)).get_fdata()
    a, b = nib.load(str(plain)).get_fdata(), nib.load(str(dc)).get_fdata()
    for k in range(z.shape[2]):
        np.testing.assert_allclose(mri_truncate(b[:, :, k], 2), z[:, :, k], atol=0.02 * z.max())
    assert np.abs(mri_truncate(a[:, :, 0], 2) - z[:, :, 0]).max() > 0.05 * z.max()  # the network alone is not consistent
    report = {out: json.loads(Path(str(out) + ".json").read_text())["data_consistency"] for out in (plain, dc, auto)}
    assert report[dc] == {"kspace_factor": 2, "band": [[n // 2, n] for n in z.shape[:2]], "factor_from": "option", "grid": "same",
                          "band_kept": 1.0, "iterations": DC_ITERATIONS, "passes": MR_PASSES[2]}
    assert report[plain] is None
    # a 48-pixel side is too short to tell zero filling: plain restore gives the network alone
    # (recognition on larger slices: test_zero_filled.py)
    assert report[auto] is None
    np.testing.assert_array_equal(nib.load(str(auto)).get_fdata(), a)


def test_reference_adds_metrics_and_json(ct_nii, tiny_weights, tmp_path):
    out = tmp_path / "o.nii.gz"
    res = runner.invoke(app, ["restore", str(ct_nii), "-o", str(out), "--reference", str(ct_nii), "--weights", str(tiny_weights), "--json"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    assert printed == json.loads(Path(str(out) + ".json").read_text())
    m = printed["metrics"]
    assert set(m["output"]) >= {"psnr", "ssim", "rmse"} and m["input"]["rmse"] == 0.0
    # the input is the reference: its PSNR is infinite, which JSON writes as null with a flag saying why
    assert m["input"]["psnr"] is None and m["input"]["psnr_identical"] is True
    assert isinstance(m["output"]["psnr"], float) and m["output"]["psnr_identical"] is False
    assert m["window"] == [-160.0, 240.0]
    assert printed["tta"] is False
    res = runner.invoke(app, ["restore", str(ct_nii), "-o", str(tmp_path / "e.nii.gz"), "--weights", str(tiny_weights), "--tta"])
    assert res.exit_code == 0, res.output
    assert json.loads(Path(str(tmp_path / "e.nii.gz") + ".json").read_text())["tta"] is True
    assert "x8 self-ensemble" in res.stdout


def test_mr_reference_metrics_are_scaled_into_the_12_bit_window(mr_nii, tiny_weights, tmp_path):
    """MR in scanner units far above 4095: input and reference are scored after the reference
    volume's scale into the 12-bit window (the protocol), not clipped at 4095."""
    from amir_cli.imaging.degrade import mri_truncate
    from amir_cli.imaging.intensity import mr_scale_factor
    from amir_cli.metrics import volume_scores

    img = nib.load(str(mr_nii))
    hq = np.asarray(img.dataobj, np.float32) * 100.0  # up to about 25000
    lq = np.stack([mri_truncate(hq[:, :, k], 2) for k in range(hq.shape[2])], axis=2)
    for name, a in (("hq.nii.gz", hq), ("lq.nii.gz", lq)):
        nib.save(nib.Nifti1Image(a, img.affine), str(tmp_path / name))
    code, _, err = amir("restore", tmp_path / "lq.nii.gz", "--task", "mri-sr", "-o", tmp_path / "o.nii.gz",
                        "--reference", tmp_path / "hq.nii.gz", "--weights", tiny_weights, "--quiet")
    assert code == 0, err
    m = json.loads((tmp_path / "o.nii.gz.json").read_text())["metrics"]
    k = mr_scale_factor(hq)
    assert m["scale"] == pytest.approx(k) and k < 4095 / hq.max()
    assert m["input"]["psnr"] == pytest.approx(volume_scores(lq * k, hq * k, "mri-sr")["psnr"], abs=1e-4)
    assert m["input"]["psnr"] != pytest.approx(volume_scores(lq, hq, "mri-sr")["psnr"], abs=0.5)  # clipped: another score


def test_reference_shape_mismatch(ct_nii, mr_nii, tiny_weights, tmp_path):
    code, _, err = amir("restore", ct_nii, "-o", tmp_path / "o.nii.gz", "--reference", mr_nii, "--weights", tiny_weights)
    assert code == 1 and "reference shape" in err and not (tmp_path / "o.nii.gz").exists()


def test_reference_off_the_output_grid_is_refused(ct_nii, tiny_weights, tmp_path):
    """The same image stored flipped (its affine flipped too), or moved 500 mm: voxel-wise scores
    would compare other places, so the reference is refused before any work."""
    img = nib.load(str(ct_nii))
    data = np.asarray(img.dataobj)
    flip = img.affine @ np.array([[-1, 0, 0, data.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    moved = img.affine.copy()
    moved[0, 3] += 500.0
    for name, array, affine in (("flipped", data[::-1], flip), ("moved", data, moved)):
        nib.save(nib.Nifti1Image(np.ascontiguousarray(array), affine), str(tmp_path / f"{name}.nii.gz"))
        code, _, err = amir("restore", ct_nii, "-o", tmp_path / "o.nii.gz", "--reference", tmp_path / f"{name}.nii.gz",
                            "--weights", tiny_weights)
        assert code == 1 and "does not lie on the output's grid" in err and not (tmp_path / "o.nii.gz").exists()


def test_existing_output_needs_overwrite_and_input_is_never_overwritten(ct_nii, tiny_weights, tmp_path):
    out = tmp_path / "o.nii.gz"
    out.write_bytes(b"old")
    code, _, err = amir("restore", ct_nii, "-o", out, "--weights", tiny_weights)
    assert code == 1 and "--overwrite" in err and out.read_bytes() == b"old"
    code, _, err = amir("restore", ct_nii, "-o", out, "--weights", tiny_weights, "--overwrite", "--quiet")
    assert code == 0, err
    before = sha(ct_nii)
    code, _, err = amir("restore", ct_nii, "-o", ct_nii, "--weights", tiny_weights, "--overwrite")
    assert code == 1 and "input" in err and sha(ct_nii) == before


def test_overwrite_never_replaces_a_non_dicom_folder(tmp_path, tiny_weights):
    series = DB.ct_series(tmp_path / "ct")
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    code, _, err = amir("restore", series, "-o", keep, "--weights", tiny_weights, "--overwrite")
    assert code == 1 and "refusing" in err and (keep / "notes.txt").read_text() == "precious"


# ---- restore: DICOM ------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [DB.ct_series, DB.mr_series], ids=["ct", "mr"])
def test_dicom_series_round_trip_checked_by_dciodvfy_and_dcm2niix(build, tmp_path, tiny_weights):
    series = build(tmp_path / "series")
    code, _, err = amir("restore", series, "--weights", tiny_weights, "--quiet")
    assert code == 0, err
    out = tmp_path / "series_amir"
    assert out.is_dir() and len(list(out.iterdir())) == 6 and (tmp_path / "series_amir.json").is_file()
    import pydicom

    src = pydicom.dcmread(next(series.iterdir()))
    ds = pydicom.dcmread(next(out.iterdir()))
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.PatientID == src.PatientID and ds.ImageType[0] == "DERIVED" and "amir" in ds.DerivationDescription.lower()
    if shutil.which("dciodvfy"):
        new = DB.dciodvfy_errors(out) - DB.dciodvfy_errors(series)
        assert not new, sorted(new)
    if shutil.which("dcm2niix"):
        a, b = DB.dcm2niix(series, tmp_path / "nii_in"), DB.dcm2niix(out, tmp_path / "nii_out")
        assert a.shape == b.shape
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-3)


def test_a_dicom_folder_named_like_an_image_file_is_a_series_folder(tmp_path, tiny_weights):
    """scan.nii/ holding a series restores as any series folder does, to scan.nii_amir/; in a batch too,
    where its own name would write a NIfTI file."""
    for name in ("scan.nii", "series.dcm"):
        series = DB.ct_series(tmp_path / name)
        before = sha(series)
        code, _, err = amir("restore", f"{series}/", "--weights", tiny_weights, "--quiet")
        assert code == 0, err
        out = tmp_path / f"{name}_amir"
        assert out.is_dir() and len(list(out.iterdir())) == 6 and (tmp_path / f"{name}_amir.json").is_file()
        assert sha(series) == before
    scans = tmp_path / "scans"
    DB.ct_series(scans / "scan.nii")
    DB.ct_series(scans / "plain")
    code, _, err = amir("restore", scans, "-o", tmp_path / "restored", "--weights", tiny_weights, "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "restored").iterdir()) == ["plain", "plain.json", "scan.nii_amir", "scan.nii_amir.json"]
    assert (tmp_path / "restored" / "scan.nii_amir").is_dir() and len(list((tmp_path / "restored" / "scan.nii_amir").iterdir())) == 6


def test_dicom_to_nifti_output(tmp_path, tiny_weights):
    series = DB.ct_series(tmp_path / "ct")
    code, _, err = amir("restore", series, "-o", tmp_path / "ct.nii.gz", "--weights", tiny_weights, "--quiet")
    assert code == 0, err
    img = nib.load(str(tmp_path / "ct.nii.gz"))
    assert img.shape == (64, 64, 6) and img.get_data_dtype().kind == "i"


# ---- bad inputs: exit 1, one line, no traceback, no partial output ----------------------------------


def _truncated(tmp, ct_nii):
    p = tmp / "cut.nii.gz"
    p.write_bytes(ct_nii.read_bytes()[:3000])
    return [p]


def _random_dcm(tmp, ct_nii):
    p = tmp / "noise.dcm"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    return [p]


def _empty_folder(tmp, ct_nii):
    (tmp / "empty").mkdir()
    return [tmp / "empty"]


def _four_d(tmp, ct_nii):
    p = tmp / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 4, 3), np.int16), np.eye(4)), str(p))
    return [p]


def _nans(tmp, ct_nii):
    p = tmp / "nan.nii.gz"
    a = np.ones((32, 32, 2), np.float32)
    a[3, 3, 1] = np.nan
    nib.save(nib.Nifti1Image(a, np.eye(4)), str(p))
    return [p]


def _one_pixel(tmp, ct_nii):
    p = tmp / "pixel.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((1, 1), np.int16), np.eye(4)), str(p))
    return [p]


def _huge_header(tmp, ct_nii):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((20000, 20000, 1))
    hdr.set_data_dtype(np.int16)
    p = tmp / "huge.nii"
    with open(p, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4 + b"\0" * 1000)
    return [p]


def _dir_named_nii(tmp, ct_nii):
    (tmp / "x.nii.gz").mkdir()
    return [tmp / "x.nii.gz"]


def _missing_output_folder(tmp, ct_nii):
    return [ct_nii, "-o", tmp / "nowhere" / "out.nii.gz"]


def _scale_for_ct(tmp, ct_nii):
    return [ct_nii, "--task", "ct-denoise", "--scale", "2"]


def _kspace_factor_for_ct(tmp, ct_nii):
    return [ct_nii, "--task", "ct-denoise", "--kspace-factor", "2"]


def _kspace_factor_with_scale(tmp, ct_nii):
    return [ct_nii, "--task", "mri-sr", "--scale", "2", "--kspace-factor", "2"]


def _kspace_factor_for_signed_values(tmp, ct_nii):
    return [ct_nii, "--task", "mri-sr", "--kspace-factor", "2"]  # HU down to -1024: not a magnitude image


def _unknown_weights(tmp, ct_nii):
    return [ct_nii, "--weights", "no-such-weights"]


def _tampered_weights(tmp, ct_nii):
    home = Path(os.environ["AMIR_HOME"]) / "weights"
    home.mkdir(parents=True)
    torch.manual_seed(1)
    save_file(AMIR(get_config("amir-tiny")).state_dict(), str(home / "t.safetensors"))
    entry = {"name": "tampered", "file": "t.safetensors", "sha256": "0" * 64, "tasks": ["ct-denoise"]}
    (home / "manifest.json").write_text(json.dumps({"entries": [entry]}))
    return [ct_nii, "--weights", "tampered"]


def _registered(name: str, config: dict | None) -> list:
    """A user entry `name` holding amir-tiny tensors (sha256 right) whose manifest records `config`."""
    home = Path(os.environ["AMIR_HOME"]) / "weights"
    home.mkdir(parents=True)
    save_file(AMIR(get_config("amir-tiny")).state_dict(), str(home / "t.safetensors"))
    entry = {"name": name, "file": "t.safetensors", "sha256": sha(home / "t.safetensors"), "tasks": ["ct-denoise"]}
    (home / "manifest.json").write_text(json.dumps({"entries": [entry | ({"config": config} if config else {})]}))
    return ["--weights", name]


def _manifest_config_mismatch(tmp, ct_nii):
    return [ct_nii, *_registered("relabelled", get_config("amir-s").to_dict())]


def _manifest_without_config(tmp, ct_nii):
    return [ct_nii, *_registered("unconfigured", None)]


def _ambiguous_task(tmp, ct_nii):
    p = tmp / "scan_0001.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(0, 1, (32, 32, 2)).astype(np.float32), np.eye(4)), str(p))
    return [p]


def _fp16_on_cpu(tmp, ct_nii):
    return [ct_nii, "--device", "cpu", "--precision", "fp16"]


@pytest.mark.parametrize(
    "make, needle",
    [
        (_truncated, "truncated"),
        (_random_dcm, "noise.dcm"),
        (_empty_folder, "no images"),
        (_four_d, "4-D"),
        (_nans, "NaN"),
        (_one_pixel, "at least 16x16"),
        (_huge_header, "20000"),
        (_dir_named_nii, "no images"),  # a folder whatever its name: an empty one
        (_missing_output_folder, "does not exist"),
        (_scale_for_ct, "mri-sr only"),
        (_kspace_factor_for_ct, "mri-sr only"),
        (_kspace_factor_with_scale, "own grid"),
        (_kspace_factor_for_signed_values, "magnitude image"),
        (_unknown_weights, "no-such-weights"),
        (_tampered_weights, "sha256"),
        (_manifest_config_mismatch, "'relabelled' do not fit the configuration their manifest records"),
        (_manifest_without_config, "'unconfigured' records no valid configuration"),
        (_ambiguous_task, "--task"),
        (_fp16_on_cpu, "fp16"),
    ],
)
def test_bad_inputs(make, needle, tmp_path, ct_nii, tiny_weights, amir_home):
    work = tmp_path / "work"
    work.mkdir()
    args = make(work, ct_nii)
    before = {p: sha(p) for p in work.rglob("*") if p.is_file()}
    if "--weights" not in args:
        args = [*args, "--weights", tiny_weights]
    code, out, err = amir("restore", *args)
    if make in (_scale_for_ct, _kspace_factor_for_ct, _kspace_factor_with_scale):  # usage errors: exit 2
        assert code == 2 and err.count("\n") == 1 and err.startswith("amir: error: ") and needle in err, (code, err)
    else:
        assert code == 1, (code, err)
        assert err.count("\n") == 1 and err.startswith("amir: error: ") and "Traceback" not in err, err
        assert needle in err, err
    after = {p: sha(p) for p in work.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing changed
    assert not list(ct_nii.parent.glob("*_amir*"))


@pytest.mark.parametrize("args", [["--scale", "3", "--task", "mri-sr"], ["--kspace-factor", "3", "--task", "mri-sr"], ["--task", "mri"], ["--precision", "fp64"], ["--batch-size", "0"]])
def test_usage_errors_exit_2(args, ct_nii, tiny_weights):
    code, _, err = amir("restore", ct_nii, *args, "--weights", tiny_weights)
    assert code == 2 and "Traceback" not in err


def test_real_process_exit_codes_and_one_line(tmp_path, ct_nii, tiny_weights):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti at all" * 20))
    res = subprocess.run([sys.executable, "-m", "amir_cli", "restore", str(bad), "--weights", str(tiny_weights)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("amir: error:") and "Traceback" not in res.stderr



def test_amir_debug_shows_the_traceback(tmp_path, tiny_weights, monkeypatch):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b broken")
    monkeypatch.setenv("AMIR_DEBUG", "1")
    with pytest.raises(Exception, match="bad.nii.gz"):
        main(["restore", str(bad), "--weights", str(tiny_weights)])


# ---- batches ---------------------------------------------------------------------------------------


def test_batch_with_one_bad_case(tmp_path, ct_nii, mr_nii, tiny_weights):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(ct_nii, scans / "a_ct.nii.gz")
    shutil.copy(mr_nii, scans / "b_t1.nii.gz")
    (scans / "c_broken.nii.gz").write_bytes(b"\x1f\x8b broken")
    DB.ct_series(scans / "patient" / "series1")
    code, out, err = amir("restore", scans, "-o", tmp_path / "restored", "--weights", tiny_weights, "--quiet")
    assert code == 3
    assert err.count("\n") == 1 and err.count("c_broken.nii.gz") == 1  # one line, naming the case once
    res = tmp_path / "restored"
    assert (res / "a_ct.nii.gz").is_file() and (res / "b_t1.nii.gz").is_file() and (res / "patient" / "series1").is_dir()
    assert not (res / "c_broken.nii.gz").exists()
    summary = json.loads((tmp_path / "restored.json").read_text())
    assert len(summary["restored"]) == 3 and len(summary["failed"]) == 1
    assert {r["task"] for r in summary["restored"]} == {"ct-denoise", "mri-sr"}


def test_batch_says_which_folders_lie_below_the_depth_searched(tmp_path, ct_nii, tiny_weights):
    """Cases are looked for five folders deep; a batch names, in one warning line, the folders below."""
    scans = tmp_path / "scans"
    five = scans / "a" / "b" / "c" / "d" / "e"
    five.mkdir(parents=True)
    shutil.copy(ct_nii, five / "ct.nii.gz")
    for name in ("f", "g"):
        (five / name).mkdir()
        shutil.copy(ct_nii, five / name / "ct.nii.gz")
    (five / "empty" / "tree").mkdir(parents=True)  # nothing in it: nothing to say
    code, out, err = amir("restore", scans, "-o", tmp_path / "restored", "--weights", tiny_weights, "--quiet")
    assert code == 0, err
    warning = f"2 folders holding files more than 5 folders deep were not searched for images: {five / 'f'}, ..."
    assert err == f"amir: warning: {warning}\n"
    summary = json.loads((tmp_path / "restored.json").read_text())
    assert [r["input"] for r in summary["restored"]] == [str(five / "ct.nii.gz")] and summary["warnings"] == [warning]
    (five / "ct.nii.gz").unlink()  # only the deep ones left: the error says where they are
    code, out, err = amir("restore", scans, "-o", tmp_path / "again", "--weights", tiny_weights, "--quiet")
    assert code == 1 and err.count("\n") == 1 and "no images found" in err and warning in err, err


def test_batch_under_torchrun_takes_its_share(tmp_path, ct_nii, tiny_weights, monkeypatch):
    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(3):
        shutil.copy(ct_nii, scans / f"c{i}_ct.nii.gz")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, out, err = amir("restore", scans, "-o", tmp_path / "r", "--weights", tiny_weights, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert [Path(r["input"]).name for r in summary["restored"]] == ["c1_ct.nii.gz"]
    assert (tmp_path / "r.rank1.json").is_file()


# ---- degrade ---------------------------------------------------------------------------------------


def test_degrade_matches_library_and_keeps_geometry(ct_nii, tmp_path):
    from amir_cli.imaging import read_image
    from amir_cli.imaging.degrade import degrade_volume

    out = tmp_path / "low.nii.gz"
    code, stdout, err = amir("degrade", ct_nii, "--task", "ct-denoise", "--dose", "0.25", "--seed", "3", "-o", out, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["level"] == 0.25 and summary["simulated"] is True
    a, b = nib.load(str(ct_nii)), nib.load(str(out))
    np.testing.assert_allclose(b.affine, a.affine)
    assert b.get_data_dtype().kind == "i"
    vol = read_image(ct_nii)
    expected = degrade_volume(vol.array, "ct-denoise", 0.25, slice_axis=vol.slice_axis, spacing_mm=vol.spacing_mm, seed=3)
    np.testing.assert_allclose(np.asarray(b.dataobj), np.rint(expected), atol=1)


def test_degrade_keeps_ct_pixel_padding(tmp_path):
    """Outside a circular field of view, a DICOM series' PixelPaddingValue (-2000 stored, -3024 HU)
    and a NIfTI's padding (-2048 HU) come out of `amir degrade` as they went in."""
    import pydicom

    yy, xx = np.mgrid[:48, :48] - 23.5
    r = np.hypot(xx, yy)[:, :, None].repeat(2, axis=2)
    hu = np.where(r < 14, 40, -1000).astype(np.int16)
    hu[r >= 20] = -3024
    series = DB.make_series(tmp_path / "ct", (hu + 1024).astype(np.int16), np.diag([0.8, 0.8, 2.0, 1.0]), "CT",
                            slope=1, intercept=-1024, extra={"PixelPaddingValue": -2000})
    assert amir("degrade", series, "--task", "ct-denoise", "--dose", "0.1", "-o", tmp_path / "low", "-q")[0] == 0
    for path in sorted((tmp_path / "low").iterdir()):
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array.T
        assert ds.PixelPaddingValue == -2000 and (stored[r[:, :, 0] >= 20] == -2000).all()
        assert np.std(stored[r[:, :, 0] < 14]) > 1
    nib.save(nib.Nifti1Image(np.where(hu == -3024, -2048, hu).astype(np.int16), np.eye(4)), str(tmp_path / "ct.nii.gz"))
    assert amir("degrade", tmp_path / "ct.nii.gz", "--task", "ct-denoise", "--dose", "0.1", "-q")[0] == 0
    low = np.asanyarray(nib.load(str(tmp_path / "ct_degraded.nii.gz")).dataobj)
    assert (low[r >= 20] == -2048).all() and np.std(low[r < 14]) > 1


def test_a_gantry_tilted_series_warns_that_its_geometry_is_sheared(tiny_weights, tmp_path):
    """CT slices whose positions step 15 degrees off their normal (a gantry tilt) give a sheared
    NIfTI affine, and restore's report and terminal lines, and degrade's, say so in one line."""
    tilt = np.radians(15.0)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[1:3, 2] = 2.5 * np.sin(tilt), 2.5 * np.cos(tilt)
    hu = np.full((48, 48, 4), -1000, np.int16)
    hu[12:36, 12:36] = 40
    series = DB.make_series(tmp_path / "ct", (hu + 1024).astype(np.int16), affine, "CT", slope=1, intercept=-1024)
    sheared = "slices step 15.0 degrees off their normal (a CT's gantry tilt): the geometry is sheared"
    code, _, err = amir("restore", series, "-o", tmp_path / "r.nii.gz", "--weights", tiny_weights)
    assert code == 0 and err.count(sheared) == 1, err
    (warning,) = [w for w in json.loads((tmp_path / "r.nii.gz.json").read_text())["warnings"] if sheared in w]
    assert "viewers that ignore shear" in warning
    np.testing.assert_allclose(nib.load(str(tmp_path / "r.nii.gz")).affine, affine, atol=1e-4)
    code, out, err = amir("degrade", series, "--task", "ct-denoise", "-o", tmp_path / "d.nii.gz")
    assert code == 0 and err.count(sheared) == 1 and sheared not in out, err  # warnings on stderr, as restore's
    code, out, err = amir("degrade", series, "--task", "ct-denoise", "-o", tmp_path / "j.nii.gz", "--json")
    assert code == 0 and sum(sheared in w for w in json.loads(out)["warnings"]) == 1, err


def test_library_warnings_are_one_line_each(tmp_path):
    """pydicom's warning on a readable file with excess pixel padding: one line, no library path."""
    from pydicom.data import get_testdata_file

    code, _, err = amir("restore", get_testdata_file("MR_small_padded.dcm"), "-o", tmp_path / "mr.nii.gz", "-q")
    assert code == 0, err
    assert err.startswith("amir: warning: The pixel data is") and ".py" not in err and len(err.splitlines()) == 1


def test_output_formats_are_checked_before_any_work(ct_nii, tmp_path):
    """degrade checks its output's format as restore does; a DICOM input's output is a .dcm file or
    a series folder, never a folder named like another kind of file; a degraded series says so."""
    import pydicom
    from pydicom.data import get_testdata_file

    code, _, err = amir("degrade", ct_nii, "--task", "ct-denoise", "-o", tmp_path / "low.dcm")
    assert code == 1 and "DICOM output needs a DICOM input" in err and "amir-tmp" not in err
    dcm = get_testdata_file("CT_small.dcm")
    for cmd in (["restore", dcm, "--task", "ct-denoise"], ["degrade", dcm, "--task", "ct-denoise"]):
        code, _, err = amir(*cmd, "-o", tmp_path / "ct.png")
        assert code == 1 and "unknown output format" in err and "folder name without an extension" in err
    assert not any(p.name.startswith(("low", "ct.png")) for p in tmp_path.iterdir())
    code, _, err = amir("degrade", dcm, "--task", "ct-denoise", "-o", tmp_path / "1.2.840.5", "--quiet")
    assert code == 0, err
    (low,) = (tmp_path / "1.2.840.5").iterdir()
    code, out, err = amir("degrade", dcm, "--task", "mri-sr", "-o", tmp_path / "mr_from_ct")
    assert code == 0 and "warning: --task mri-sr was given, though --task auto would choose ct-denoise" in err
    assert pydicom.dcmread(low).SeriesDescription.endswith("SIMULATED (amir degrade)")  # never shown as restored


def test_degrade_pet_notes_simulation_and_option_checks(tmp_path):
    p = tmp_path / "pet.nii.gz"
    suv = np.zeros((32, 32, 2), np.float32)
    suv[8:24, 8:24] = 5.0
    nib.save(nib.Nifti1Image(suv, np.eye(4)), str(p))
    code, out, err = amir("degrade", p, "--task", "pet-synthesis", "-o", tmp_path / "low.nii.gz")
    assert code == 0, err
    assert "simulated" in out
    assert amir("degrade", p, "--task", "pet-synthesis", "--factor", "2")[0] == 2
    assert amir("degrade", p, "--task", "mri-sr", "--dose", "0.5")[0] == 2
    code, _, err = amir("degrade", p, "--task", "mri-sr", "--factor", "3")
    assert code == 2 and "--factor must be 2 or 4, got 3" in err
    code, _, err = amir("degrade", p, "--task", "pet-synthesis", "--dose", "1e-300")
    assert code == 2 and "--dose must be a fraction in [0.001, 1], got 1e-300" in err


def test_degrade_pet_noise_osem_spares_air(tmp_path):
    """--pet-noise osem shapes the added noise as an iterative reconstruction does: air (zero
    activity) stays zero, where fbp's noise reaches it; it is refused for other tasks."""
    p = tmp_path / "pet.nii.gz"
    yy, xx = np.mgrid[:64, :64] - 31.5
    suv = np.repeat((np.hypot(yy, xx) < 20).astype(np.float32)[..., None] * 5.0, 2, -1)
    nib.save(nib.Nifti1Image(suv, np.diag([3.0, 3.0, 3.0, 1.0])), str(p))
    air = np.hypot(yy, xx) > 28
    low = {}
    for shape in ("fbp", "osem"):
        code, out, err = amir("degrade", p, "--task", "pet-synthesis", "--pet-noise", shape, "-o", tmp_path / f"{shape}.nii.gz", "--json")
        assert code == 0, err
        assert json.loads(out)["pet_noise"] == shape
        low[shape] = np.asarray(nib.load(str(tmp_path / f"{shape}.nii.gz")).dataobj)
    assert np.abs(low["fbp"][air]).max() > 0.05 and np.abs(low["osem"][air]).max() < 1e-3
    assert np.abs(low["osem"] - suv)[np.hypot(yy, xx) < 15].std() > 0.05  # the body is noisy
    code, _, err = amir("degrade", p, "--task", "ct-denoise", "--pet-noise", "osem")
    assert code == 2 and "--pet-noise applies to pet-synthesis only" in err
    assert amir("degrade", p, "--task", "pet-synthesis", "--pet-noise", "mlem")[0] == 2


def test_restore_pet_hints_at_a_noise_free_background(tmp_path, tiny_weights):
    """A PET image whose background holds no noise (an OSEM reconstruction's) and too few slices to
    choose a fill from gets a one-line hint in the report; one whose noise reaches the background
    (filtered back-projection's) does not."""
    p = tmp_path / "pet.nii.gz"
    yy, xx = np.mgrid[:96, :96] - 47.5
    suv = np.repeat(np.where(np.hypot(yy, xx) < 28, 2.0, 0.0).astype(np.float32)[..., None], 3, -1)
    suv[40:50, 40:50] = 8.0
    nib.save(nib.Nifti1Image(suv, np.diag([3.0, 3.0, 3.0, 1.0])), str(p))
    hinted = {}
    for shape in ("fbp", "osem"):
        low = tmp_path / f"{shape}.nii.gz"
        assert amir("degrade", p, "--task", "pet-synthesis", "--dose", "0.25", "--pet-noise", shape, "-o", low)[0] == 0
        code, out, err = amir("restore", low, "--task", "pet-synthesis", "--weights", tiny_weights, "--json")
        assert code == 0, err
        hinted[shape] = [w for w in json.loads(out).get("warnings", []) if "background" in w]
    assert hinted["fbp"] == [] and len(hinted["osem"]) == 1 and "OSEM" in hinted["osem"][0]
    code, out, err = amir("restore", tmp_path / "osem.nii.gz", "--task", "pet-synthesis", "--weights", tiny_weights,
                          "--pet-background-noise", "0.3", "--overwrite", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["background_noise"] == {"sd": 0.3, "from": "option", "filled_slices": 3}
    assert not [w for w in report.get("warnings", []) if "background" in w]
    code, _, err = amir("restore", tmp_path / "osem.nii.gz", "--task", "ct-denoise", "--pet-background-noise", "0.3")
    assert code == 2 and "pet-synthesis only" in err


def test_restore_pet_chooses_a_background_fill_unless_told_not_to(tmp_path, tiny_weights):
    """A 3-D OSEM-shaped PET of 6 slices gets a fill chosen from its neighbouring slices (reported,
    no hint); `--no-fill-pet-background` restores it as it is, with the hint."""
    p = tmp_path / "pet.nii.gz"
    yy, xx = np.mgrid[:96, :96] - 47.5
    suv = np.stack([np.where(np.hypot(yy, xx) < 28 - k, 2.0, 0.0) for k in range(6)], -1).astype(np.float32)
    suv[40:50, 40:50] = 8.0
    nib.save(nib.Nifti1Image(suv, np.diag([3.0, 3.0, 3.0, 1.0])), str(p))
    low = tmp_path / "osem.nii.gz"
    assert amir("degrade", p, "--task", "pet-synthesis", "--dose", "0.25", "--pet-noise", "osem", "-o", low)[0] == 0
    reports = {}
    for flag in ("--fill-pet-background", "--no-fill-pet-background"):
        code, out, err = amir("restore", low, "--task", "pet-synthesis", "--weights", tiny_weights, flag, "--overwrite", "--json")
        assert code == 0, err
        reports[flag] = json.loads(out)
    chosen = reports["--fill-pet-background"]
    assert chosen["background_noise"]["from"] == "neighbour slices" and chosen["background_noise"]["sd"] >= 0
    assert not [w for w in chosen.get("warnings", []) if "background" in w]
    plain = reports["--no-fill-pet-background"]
    assert plain["background_noise"] is None and [w for w in plain["warnings"] if "background" in w]


# ---- weights ---------------------------------------------------------------------------------------


def test_weights_import_list_verify_path(tmp_path, amir_home, ct_nii):
    torch.manual_seed(2)
    pth = tmp_path / "official.pth"
    torch.save({"params": AMIR(get_config("amir-tiny")).state_dict()}, pth)
    code, out, err = amir("weights", "import", pth, "--name", "mine", "--json")
    assert code == 0, err
    entry = json.loads(out)
    code, out, _ = amir("weights", "list", "--json")
    assert code == 0 and "mine" in [e["name"] for e in json.loads(out)["entries"]]
    assert amir("weights", "verify", "mine")[0] == 0
    code, out, _ = amir("weights", "path", "mine")
    assert out.strip() == entry["path"]
    code, _, err = amir("restore", ct_nii, "--weights", "mine", "-o", tmp_path / "o.nii.gz", "--quiet")
    assert code == 0, err
    Path(entry["path"]).write_bytes(Path(entry["path"]).read_bytes()[:-8] + b"\0" * 8)
    code, out, err = amir("weights", "verify")
    assert code == 1 and "FAILED" in out and err.startswith("amir: error:") and err.count("\n") == 1


def test_report_unit_and_every_field_documented(ct_nii, tiny_weights):
    """A CT NIfTI's values are HU and the report says so; docs/reports.md names every report field."""
    code, out, err = amir("restore", ct_nii, "--weights", tiny_weights, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["unit"] == "HU" and report["input_geometry"]["unit"] == report["output_geometry"]["unit"] == "HU"
    doc = (Path(__file__).resolve().parents[1] / "docs" / "reports.md").read_text()
    for key in report:
        assert f"`{key}`" in doc, key


def test_mr_named_like_zero_filled_gets_a_kspace_factor_hint(mr_nii, tiny_weights, tmp_path):
    named = mr_nii.rename(tmp_path / "brain_t1_x4.nii.gz")
    code, out, err = amir("restore", named, "--weights", tiny_weights, "--task", "mri-sr")
    assert code == 0, err
    hints = [line for line in err.splitlines() if "--kspace-factor 4" in line]
    assert len(hints) == 1
    code, out, err = amir("restore", named, "--weights", tiny_weights, "--task", "mri-sr", "--kspace-factor", "4", "--overwrite")
    assert code == 0 and "--kspace-factor" not in err


def test_degrade_warns_where_the_inputs_integer_type_clips_the_simulated_values(tmp_path):
    a = (np.random.default_rng(0).random((64, 64, 2)) * 3).astype(np.uint8)
    a[16:48, 16:48] = 40
    nib.save(nib.Nifti1Image(a, np.eye(4)), str(tmp_path / "u8.nii.gz"))
    code, out, err = amir("degrade", tmp_path / "u8.nii.gz", "--task", "ct-denoise", "--dose", "0.05", "--json")
    assert code == 0, err
    (warning,) = [w for w in json.loads(out)["warnings"] if "clipped" in w]
    assert "lie outside the range of the input's uint8 [0, 255] and are clipped in the output" in warning
    low = np.asanyarray(nib.load(str(tmp_path / "u8_degraded.nii.gz")).dataobj)
    assert low.dtype == np.uint8 and low.min() == 0  # what the warning says happened
