"""NIfTI / MetaImage / NRRD in and out, LPS<->RAS, slice axis, bad inputs, atomic writes.

Real data: crops in tests/fixtures/data (cranium CT: Debian invesalius-examples, GPL-2; Colin27 T1:
Debian mricron-data, BSD-3).
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from amir_cli.errors import BadInputError
from amir_cli.imaging import Volume, list_cases, lps_from_ras, ras_from_lps, read_image, write_image
from amir_cli.restore import scaled_affine

from conftest import real_crop  # noqa: E402


def _save_crop(name: str, sl, dest: Path, *, oblique: bool = False) -> Path:
    data, affine, _ = real_crop(name, sl)
    if oblique:
        a = np.radians(10)
        rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        affine[:3, :3] = rot @ affine[:3, :3]
    out = nib.Nifti1Image(data, affine)
    out.header.set_data_dtype(data.dtype)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=2)
    nib.save(out, str(dest))
    return dest


@pytest.fixture
def ct_nii(tmp_path):
    return _save_crop(
        "ct/cranium_ct.nii.gz", (slice(80, 144), slice(90, 154), slice(40, 50)), tmp_path / "ct.nii.gz", oblique=True
    )


@pytest.fixture
def mr_nii(tmp_path):
    return _save_crop("mr/colin27_t1_1mm.nii.gz", (slice(50, 110), slice(70, 130), slice(60, 66)), tmp_path / "mr.nii")


# ---------------------------------------------------------------------------------------------
# LPS / RAS


def test_lps_ras_is_one_self_inverse_function():
    assert lps_from_ras is ras_from_lps
    rng = np.random.default_rng(0)
    a = np.eye(4)
    a[:3] = rng.normal(size=(3, 4))
    np.testing.assert_array_equal(ras_from_lps(ras_from_lps(a)), a)
    np.testing.assert_array_equal(ras_from_lps(a)[:2], -a[:2])
    np.testing.assert_array_equal(ras_from_lps(a)[2:], a[2:])
    pts = rng.normal(size=(5, 3))
    np.testing.assert_array_equal(lps_from_ras(pts), pts * [-1, -1, 1])


# ---------------------------------------------------------------------------------------------
# NIfTI


def test_nifti_round_trip_int16_ct(ct_nii, tmp_path):
    vol = read_image(ct_nii)
    src = nib.load(str(ct_nii))
    assert vol.source_format == "nifti" and vol.source_dtype == np.int16 and vol.array.dtype == np.float32
    assert vol.array.shape == (64, 64, 10) and vol.slice_axis == 2  # coarsest spacing 1.5 mm
    np.testing.assert_array_equal(vol.array, np.asarray(src.dataobj))
    np.testing.assert_allclose(vol.affine, src.affine)
    assert vol.spacing_mm == pytest.approx((0.95703119, 0.95703119, 1.5))
    out = write_image(vol.with_array(vol.array + 0.4), tmp_path / "ct_amir.nii.gz", description="amir test")
    back = nib.load(str(out))
    assert back.get_data_dtype() == np.int16  # CT stays integer HU
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-6)
    np.testing.assert_allclose(back.get_qform(), src.affine, atol=1e-5)
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 2
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(src.dataobj))  # rounded
    assert back.header["descrip"].tobytes().startswith(b"amir test")
    assert gzip.open(out).read(4)  # really gzip-compressed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "ct_amir.nii.gz"]


def test_nifti_qform_that_differs_from_the_sform_is_kept(ct_nii, tmp_path):
    src = nib.load(str(ct_nii))
    qform = src.affine.copy()
    qform[:3, 3] += [10.0, -4.0, 2.5]  # a scanner's qform need not equal its sform
    src.set_qform(qform, code=1)
    nib.save(src, str(tmp_path / "qs.nii.gz"))
    vol = read_image(tmp_path / "qs.nii.gz")
    back = nib.load(str(write_image(vol.with_array(vol.array), tmp_path / "same.nii.gz")))
    np.testing.assert_allclose(back.get_qform(), qform, atol=1e-5)
    np.testing.assert_allclose(back.get_sform(), src.get_sform(), atol=1e-6)
    finer = scaled_affine(vol.affine, 2, vol.slice_axis)  # as --scale 2 moves the grid
    up = np.repeat(np.repeat(vol.array, 2, 0), 2, 1)
    back = nib.load(str(write_image(vol.with_array(up, affine=finer), tmp_path / "fine.nii.gz", reference=vol)))
    np.testing.assert_allclose(back.get_sform(), finer, atol=1e-6)
    np.testing.assert_allclose(back.get_qform()[:3, 3] - back.get_sform()[:3, 3], [10.0, -4.0, 2.5], atol=1e-4)


@pytest.mark.parametrize("shape", [(32, 24), (32, 24, 3, 1), (32, 24, 3, 1, 1)])
def test_nifti_keeps_its_number_of_axes(shape, tmp_path):
    """A 2-D image, or one with trailing axes of length 1, is read as 3-D and written back as it was."""
    data = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0])), str(tmp_path / "in.nii.gz"))
    vol = read_image(tmp_path / "in.nii.gz")
    assert vol.array.ndim == 3
    back = nib.load(str(write_image(vol.with_array(vol.array + 1), tmp_path / "out.nii.gz")))
    assert back.shape == shape
    np.testing.assert_array_equal(np.asarray(back.dataobj), data + 1)


def test_nifti_uint8_mr_clips_to_type_and_float_stays_float(mr_nii, tmp_path):
    vol = read_image(mr_nii)
    assert vol.source_dtype == np.uint8
    wild = vol.array.copy()
    wild[0, 0, 0], wild[1, 0, 0] = -5.0, 300.0
    back = read_image(write_image(vol.with_array(wild), tmp_path / "o.nii"))
    assert back.source_dtype == np.uint8 and back.array[0, 0, 0] == 0 and back.array[1, 0, 0] == 255
    f = Volume(array=vol.array / 7, affine=vol.affine, source_dtype=np.float32)
    back = read_image(write_image(f, tmp_path / "f.nii.gz"))
    assert back.source_dtype == np.float32
    np.testing.assert_array_equal(back.array, vol.array / 7)


def test_nifti_scaled_integer_storage(tmp_path):
    data = np.arange(32 * 32 * 2, dtype=np.int16).reshape(32, 32, 2)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    img.header.set_slope_inter(0.5, -10.0)
    nib.save(img, str(tmp_path / "s.nii"))
    vol = read_image(tmp_path / "s.nii")
    np.testing.assert_allclose(vol.array, data * 0.5 - 10)
    back = nib.load(str(write_image(vol.with_array(vol.array * 1.01), tmp_path / "o.nii")))
    assert back.get_data_dtype().kind == "i"  # integer storage with a scale factor, as the input
    np.testing.assert_allclose(back.get_fdata(), vol.array * 1.01, atol=0.05)


_EXTENSIONS_ROUND_TRIP = """
import sys
from pathlib import Path
from amir_cli.imaging import read_image, write_image
src, dest = Path(sys.argv[1]), Path(sys.argv[2])
vol = read_image(src)
write_image(vol, dest, reference=vol)
assert "pydicom" not in sys.modules, "reading a NIfTI loaded pydicom"
import pydicom  # still importable after nibabel loaded without it
assert pydicom.Dataset
"""


def test_nifti_header_extensions_come_through_as_bytes_without_pydicom(tmp_path):
    dicom_bytes = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100"
    img = nib.Nifti1Image(np.arange(16 * 16 * 2, dtype=np.float32).reshape(16, 16, 2), np.eye(4))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment"))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(2, dicom_bytes))
    nib.save(img, str(tmp_path / "e.nii"))
    subprocess.run([sys.executable, "-c", _EXTENSIONS_ROUND_TRIP, str(tmp_path / "e.nii"), str(tmp_path / "o.nii")],
                   check=True, timeout=120)
    back = nib.load(str(tmp_path / "o.nii")).header.extensions
    assert [e.get_code() for e in back] == [6, 2]
    assert back[0].get_content() == b"a comment"
    assert dicom_bytes in (tmp_path / "o.nii").read_bytes()  # the DICOM extension as it was stored


def test_slice_axis_rules(tmp_path):
    cases = [
        ((32, 32, 1), (1.0, 1.0, 0.5), None, 2),  # single slice: the size-1 axis
        ((32, 20, 32), (1.0, 3.0, 1.0), None, 1),  # coarsest spacing
        ((32, 32, 32), (1.0, 1.0, 1.0), None, 2),  # ties -> 2
        ((32, 32, 32), (1.0, 1.0, 2.0), 0, 0),  # header slice_dim wins
    ]
    for i, (shape, zooms, slice_dim, expected) in enumerate(cases):
        img = nib.Nifti1Image(np.ones(shape, np.float32), np.diag(list(zooms) + [1.0]))
        if slice_dim is not None:
            img.header.set_dim_info(slice=slice_dim)
        nib.save(img, str(tmp_path / f"{i}.nii"))
        assert read_image(tmp_path / f"{i}.nii").slice_axis == expected, (shape, zooms, slice_dim)


def test_2d_and_trailing_unit_dims(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((20, 30), np.float32), np.eye(4)), str(tmp_path / "2d.nii"))
    assert read_image(tmp_path / "2d.nii").array.shape == (20, 30, 1)
    nib.save(nib.Nifti1Image(np.ones((20, 30, 4, 1), np.float32), np.eye(4)), str(tmp_path / "t1.nii"))
    assert read_image(tmp_path / "t1.nii").array.shape == (20, 30, 4)
    vol = read_image(_save_crop("ct/pancreas_ct_slice.nii.gz", (slice(192, 320), slice(192, 320), slice(0, 1)), tmp_path / "slice.nii.gz"))
    assert vol.array.shape == (128, 128, 1) and vol.slice_axis == 2


# ---------------------------------------------------------------------------------------------
# MetaImage / NRRD


@pytest.mark.parametrize("suffix", [".mha", ".mhd", ".nrrd"])
def test_itk_round_trip_matches_nifti_geometry(ct_nii, tmp_path, suffix):
    vol = read_image(ct_nii)
    out = write_image(vol, tmp_path / f"ct{suffix}")
    # SimpleITK reads our NIfTI and our ITK file independently: same LPS geometry, same pixels
    a, b = sitk.ReadImage(str(ct_nii)), sitk.ReadImage(str(out))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    back = read_image(out)
    assert back.source_format == "itk" and back.source_dtype == np.int16
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_itk_2d(tmp_path):
    img = sitk.GetImageFromArray(np.arange(20 * 24, dtype=np.float32).reshape(20, 24))
    img.SetSpacing((0.5, 0.7))
    img.SetOrigin((10.0, 20.0))
    sitk.WriteImage(img, str(tmp_path / "2d.mha"))
    vol = read_image(tmp_path / "2d.mha")
    assert vol.array.shape == (24, 20, 1) and vol.slice_axis == 2
    np.testing.assert_allclose(vol.affine[:3, 3], [-10.0, -20.0, 0.0])
    np.testing.assert_allclose(vol.spacing_mm, (0.5, 0.7, 1.0))
    assert vol.array[3, 2, 0] == 2 * 24 + 3
    for suffix in (".mha", ".mhd", ".nrrd"):  # written back 2-D, with its geometry and pixels
        back = sitk.ReadImage(str(write_image(vol, tmp_path / f"out{suffix}", reference=vol)))
        assert back.GetDimension() == 2 and back.GetSize() == img.GetSize()
        np.testing.assert_allclose(back.GetSpacing(), (0.5, 0.7))
        np.testing.assert_allclose(back.GetOrigin(), (10.0, 20.0))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))


# ---------------------------------------------------------------------------------------------
# bad inputs


def _truncated_gz(tmp_path, ct_nii):
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(ct_nii.read_bytes()[:5000])
    return bad


def _four_d(tmp_path, ct_nii):
    bad = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 4, 3), np.int16), np.eye(4)), str(bad))
    return bad


def _nans(tmp_path, ct_nii):
    data = np.ones((20, 20, 3), np.float32)
    data[3, 4, 1] = np.nan
    data[5, 4, 1] = np.inf
    bad = tmp_path / "nan.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(bad))
    return bad


def _one_pixel(tmp_path, ct_nii):
    bad = tmp_path / "one.nii"
    nib.save(nib.Nifti1Image(np.ones((1, 1), np.float32), np.eye(4)), str(bad))
    return bad


def _huge_header(tmp_path, ct_nii):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((20000, 20000, 1))
    hdr.set_data_dtype(np.int16)
    bad = tmp_path / "huge.nii"
    with open(bad, "wb") as f:  # a 352-byte header and almost no data: must fail before reading
        hdr.write_to(f)
        f.write(b"\x00" * 100)
    return bad


def _folder_as_file(tmp_path, ct_nii):
    bad = tmp_path / "dir.nii.gz"
    bad.mkdir()
    return bad


def _empty_folder(tmp_path, ct_nii):
    bad = tmp_path / "empty"
    bad.mkdir()
    return bad



def test_itk_io_leaves_the_warning_setting_and_stderr_as_they_were(tmp_path, capfd):
    vol = Volume(np.ones((16, 16, 2), np.float32), np.eye(4))
    before = sitk.ProcessObject_GetGlobalWarningDisplay()
    sitk.ProcessObject_SetGlobalWarningDisplay(True)
    try:
        read_image(write_image(vol, tmp_path / "b.mha"))
        assert sitk.ProcessObject_GetGlobalWarningDisplay()  # switched off only while we read and write
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(before)
    import sys

    print("after", file=sys.stderr)
    assert capfd.readouterr().err.endswith("after\n")  # file descriptor 2 is ours again

def _missing(tmp_path, ct_nii):
    return tmp_path / "nope.nii.gz"


def _garbage_mha(tmp_path, ct_nii):
    bad = tmp_path / "junk.mha"
    bad.write_bytes(b"this is not a MetaImage header\x00\x01\x02")
    return bad


def _unknown_suffix(tmp_path, ct_nii):
    bad = tmp_path / "image.png"
    bad.write_bytes(b"\x89PNG....")
    return bad


def _rgb(tmp_path, ct_nii):
    bad = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.Image([20, 20], sitk.sitkVectorUInt8, 3), str(bad))
    return bad


@pytest.mark.parametrize(
    "make, needle",
    [
        (_truncated_gz, "truncated|not a readable"),
        (_four_d, "4-D"),
        (_nans, "2 NaN or infinite"),
        (_one_pixel, "1x1"),
        (_huge_header, "20000x20000"),
        (_folder_as_file, "dir.nii.gz: folder is empty"),  # a folder whatever its name
        (_empty_folder, "empty"),
        (_missing, "no such file"),
        (_garbage_mha, "not a readable"),
        (_unknown_suffix, "unknown image format"),
        (_rgb, "components"),
    ],
)
def test_bad_inputs(make, needle, tmp_path, ct_nii):
    bad = make(tmp_path, ct_nii)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(BadInputError, match=needle) as err:
        read_image(bad)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_list_cases_empty_and_file(tmp_path, ct_nii):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no images"):
        list_cases(tmp_path / "empty")
    with pytest.raises(BadInputError, match="not a folder"):
        list_cases(ct_nii)


# ---------------------------------------------------------------------------------------------
# writing: destinations and atomicity


def test_write_errors_leave_nothing(ct_nii, tmp_path, monkeypatch):
    vol = read_image(ct_nii)
    with pytest.raises(BadInputError, match="does not exist"):
        write_image(vol, tmp_path / "missing" / "out.nii.gz")
    assert not (tmp_path / "missing").exists()
    with pytest.raises(BadInputError, match="overwrite the input"):
        write_image(vol, ct_nii)
    with pytest.raises(BadInputError, match="output format"):
        write_image(vol, tmp_path / "noformat")
    with pytest.raises(BadInputError, match="NaN"):
        write_image(vol.with_array(vol.array * np.nan), tmp_path / "nan.nii.gz")

    def boom(img, path):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(BadInputError, match="disk full"):
        write_image(vol, tmp_path / "out.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def _after_each_rename(monkeypatch, target: Path) -> list:
    """The bytes at ``target`` (None: no file) after every rename, link and unlink from now on."""
    seen = []
    for name in ("replace", "rename", "link", "unlink"):
        def op(*args, _real=getattr(os, name), **kwargs):
            _real(*args, **kwargs)
            seen.append(target.read_bytes() if target.exists() else None)
        monkeypatch.setattr(os, name, op)
    return seen


@pytest.mark.parametrize("name", ["o.nii.gz", "o.mha"])
def test_existing_output_is_replaced_atomically(ct_nii, tmp_path, monkeypatch, name):
    """While an output is replaced, readers find the old file or the complete new one at every
    step, never no file or part of one; a write failing midway leaves the old file as it was."""
    vol = read_image(ct_nii)
    target = tmp_path / name
    write_image(vol.with_array(vol.array + 1), target)
    old = target.read_bytes()
    with open(target, "rb") as reader:
        seen = _after_each_rename(monkeypatch, target)
        write_image(vol, target)
        monkeypatch.undo()
        assert reader.read() == old  # the new file was renamed over the name, not written into the old one
    new = target.read_bytes()
    assert new != old and seen and all(state in (old, new) for state in seen), [len(s or b"") for s in seen]
    np.testing.assert_array_equal(read_image(target).array, vol.array)

    def half_then_fail(img, path, *args, **kwargs):
        Path(path).write_bytes(new[: len(new) // 2])
        raise OSError("disk full")

    before = sorted(tmp_path.iterdir())
    monkeypatch.setattr(*((nib, "save") if name.endswith(".nii.gz") else (sitk, "WriteImage")), half_then_fail)
    with pytest.raises(BadInputError, match="disk full"):
        write_image(vol.with_array(vol.array + 2), target)
    assert target.read_bytes() == new and sorted(tmp_path.iterdir()) == before  # no temp file left


def test_with_array_copies_meta(ct_nii):
    vol = read_image(ct_nii)
    other = vol.with_array(np.zeros((10, 10, 2)), affine=np.eye(4))
    assert other.array.dtype == np.float32 and other.array.shape == (10, 10, 2)
    assert other.meta is not vol.meta and other.meta["nifti_header"] is vol.meta["nifti_header"]
    np.testing.assert_array_equal(other.affine, np.eye(4))
    assert vol.array.shape == (64, 64, 10)


def test_a_batch_holds_the_images_of_its_subfolders(tmp_path):
    """Image files below the folder are cases too, written under the same relative paths."""
    from amir_cli.batch import batch_jobs

    for sub in ("", "s1/", "s1/deeper/"):
        (tmp_path / "in" / sub).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 2), np.float32), np.eye(4)), str(tmp_path / "in" / sub / "a.nii.gz"))
    deep = tmp_path / "in" / "p" / "q" / "r" / "s" / "t"  # five folders down, as archive exports lie
    deep.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 2), np.float32), np.eye(4)), str(deep / "a.nii.gz"))
    expected = [tmp_path / "in" / p for p in ("a.nii.gz", "p/q/r/s/t/a.nii.gz", "s1/a.nii.gz", "s1/deeper/a.nii.gz")]
    assert list_cases(tmp_path / "in") == expected
    jobs = batch_jobs(tmp_path / "in", tmp_path / "out")
    assert [target for _case, _uid, target in jobs] == [tmp_path / "out" / p.relative_to(tmp_path / "in") for p in expected]


@pytest.mark.parametrize("shape, spacing, axis", [
    ((256, 256, 40), (0.9, 0.9, 5.0), 2),
    ((40, 256, 256), (5.0, 0.9, 0.9), 0),
    ((64, 64, 64), (1.0, 1.0, 1.0), 2),
    ((91, 109, 4), (2.0, 2.0, 1.0), 2),  # the coarse axes would leave 91x4 or 109x4 slices
    ((256, 1, 256), (1.0, 3.0, 1.0), 1),
])
def test_slice_axis_is_the_coarsest_that_leaves_slices_to_restore(shape, spacing, axis):
    from amir_cli.imaging.volume import choose_slice_axis

    assert choose_slice_axis(shape, spacing) == axis


def test_itk_write_failures_give_the_reason_without_our_temp_path():
    from amir_cli.imaging.io import _itk_message

    exc = RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: /src/x.cxx:12: ITK ERROR: MetaImageIO(0x55): "
                       "File cannot be written: /tmp/a/.ct.mha.amir-tmp-1/.ct.mha.amir-tmp-2/ct.mha Reason: No space left on device")
    assert _itk_message(exc) == "No space left on device"
