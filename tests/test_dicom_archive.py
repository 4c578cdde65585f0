"""DICOM as archives and scanners deliver it: compressed transfer syntaxes, enhanced multi-frame
images, objects that are no image, untidy series folders.

The files are pydicom's test files and those of the registry package pydicom-data (installed by
the test extra), decoded here independently: the uncompressed MR_small.dcm is the oracle of its
compressed copies, dcm2niix (where installed) of shapes, spacings and geometry.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom import uid

from amir_cli.errors import BadInputError
from amir_cli.imaging import dicom, list_cases, read_image, write_image
from amir_cli.imaging.dicom_series import folder_series
from conftest import amir
from dicom_builders import dciodvfy_file_errors, make_series, rotation

pytest.importorskip("data_store", reason="pydicom-data (the test extra) is not installed")
from pydicom.data import get_testdata_file  # noqa: E402


def registry_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"{name} is not among pydicom's or pydicom-data's test files"
    return Path(path)


def dcm2niix(source: Path, out: Path) -> nib.Nifti1Image:
    """dcm2niix's NIfTI of one file or folder (the test is skipped where dcm2niix is missing)."""
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix is not installed")
    folder = source if source.is_dir() else out / "in"
    if not source.is_dir():
        folder.mkdir(parents=True)
        shutil.copy(source, folder)
    (out / "nii").mkdir(parents=True)
    subprocess.run(["dcm2niix", "-z", "n", "-b", "n", "-f", "v", "-o", str(out / "nii"), str(folder)],
                   capture_output=True, timeout=120, check=True)
    (nii,) = sorted((out / "nii").glob("*.nii"))
    return nib.load(str(nii))


def canonical(array: np.ndarray, affine: np.ndarray):
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine))
    return img.get_fdata(), img.affine


def dciodvfy_new_errors(source: Path, derived: Path) -> set[str]:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    return dciodvfy_file_errors(derived) - dciodvfy_file_errors(source)


# ---------------------------------------------------------------------------------------------
# decoders


def test_jpeg_ls_decodes_to_the_uncompressed_original():
    original = read_image(registry_file("MR_small.dcm"))
    vol = read_image(registry_file("MR_small_jpeg_ls_lossless.dcm"))
    np.testing.assert_array_equal(vol.array, original.array)
    np.testing.assert_allclose(vol.affine, original.affine)


def test_jpeg_lossless_agrees_withdcm2niix(tmp_path):
    name = "JPGLosslessP14SV1_1s_1f_8b.dcm"
    vol = read_image(registry_file(name))
    theirs = dcm2niix(registry_file(name), tmp_path)
    assert vol.shape == theirs.shape
    np.testing.assert_allclose(vol.spacing_mm[:2], theirs.header.get_zooms()[:2], rtol=1e-5)
    ours, _ = canonical(vol.array, vol.affine)
    np.testing.assert_array_equal(ours, canonical(theirs.get_fdata(), theirs.affine)[0])


def test_jpeg_lossless_sv1_and_12_bit_jpeg_extended_decode():
    """The same whole-body NM image stored JPEG Lossless (process 14 SV1) and 12-bit JPEG Extended."""
    lossless_ds = pydicom.dcmread(registry_file("JPEG-LL.dcm"), stop_before_pixels=True)
    lossless = dicom.decode_frames(registry_file("JPEG-LL.dcm"))[0].astype(float)
    assert lossless.min() == lossless_ds.SmallestImagePixelValue and lossless.max() == lossless_ds.LargestImagePixelValue
    lossy = dicom.decode_frames(registry_file("JPGExtended.dcm"))[0].astype(float)
    assert lossy.shape == lossless.shape == (1024, 256)
    assert np.corrcoef(lossy.ravel(), lossless.ravel())[0, 1] > 0.98 and np.abs(lossy - lossless).mean() < 3


# ---------------------------------------------------------------------------------------------
# enhanced and classic multi-frame images


EMRI = ["emri_small.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm", "emri_small_jpeg_2k_lossless.dcm"]


@pytest.mark.parametrize("name", EMRI)
def test_enhanced_mr_without_geometry_reads_likedcm2niix(name, tmp_path):
    vol = read_image(registry_file(name))
    frames = pydicom.dcmread(registry_file("emri_small.dcm")).pixel_array
    np.testing.assert_array_equal(vol.array, np.transpose(frames, (2, 1, 0)))
    assert vol.modality == "MR" and "stacked in file order" in vol.meta["notes"][0]
    theirs = dcm2niix(registry_file("emri_small.dcm"), tmp_path)  # dcm2niix of this build decodes it uncompressed only
    assert vol.shape == theirs.shape
    np.testing.assert_allclose(vol.spacing_mm, theirs.header.get_zooms(), rtol=1e-6)


def test_enhanced_ct_geometry_from_functional_groups(tmp_path):
    src = registry_file("eCT_Supplemental.dcm")
    vol = read_image(src)
    ds = pydicom.dcmread(src)
    # frame 2 lies first along the slice normal; rescale from the Pixel Value Transformation group
    np.testing.assert_array_equal(vol.array[:, :, 0], ds.pixel_array[1].T.astype(float) - 1024)
    assert vol.modality == "CT" and vol.unit == "HU"
    theirs = dcm2niix(src, tmp_path)
    assert vol.shape == theirs.shape
    np.testing.assert_allclose(canonical(vol.array, vol.affine)[1], canonical(theirs.get_fdata(), theirs.affine)[1], atol=1e-3)


def _enhanced_oblique(path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """emri_small.dcm given real functional groups: oblique plane, 0.8 x 0.9 mm pixels, 1.2 mm
    slices (its SpacingBetweenSlices), per-frame positions in shuffled frame order and a rescale (slope 2, intercept -10).
    Returns the file, the expected volume and its RAS affine (built here by hand)."""
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(registry_file("emri_small.dcm"))
    frames = ds.pixel_array
    x, y = rotation(15.0, 10.0)[:, 0], rotation(15.0, 10.0)[:, 1]
    normal = np.cross(x, y)
    origin = np.array([-20.0, 30.0, 5.0])
    order = [3, 0, 7, 1, 9, 5, 2, 8, 4, 6]  # frame k lies at slice order[k]

    def item(**attrs):
        d = Dataset()
        for k, v in attrs.items():
            setattr(d, k, v)
        return d

    shared = item(
        PixelMeasuresSequence=[item(PixelSpacing=["0.9", "0.8"], SliceThickness="1.2")],
        PlaneOrientationSequence=[item(ImageOrientationPatient=[f"{v:.8f}" for v in (*x, *y)])],
        PixelValueTransformationSequence=[item(RescaleSlope="2", RescaleIntercept="-10", RescaleType="US")],
    )
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [
        item(PlanePositionSequence=[item(ImagePositionPatient=[f"{v:.6f}" for v in origin + 1.2 * order[k] * normal])],
             FrameContentSequence=[item(InStackPositionNumber=order[k] + 1, StackID="1")])
        for k in range(10)
    ]
    ds.save_as(path)
    expected = np.empty((64, 64, 10))
    for k in range(10):
        expected[:, :, order[k]] = frames[k].T * 2.0 - 10
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = 0.8 * x, 0.9 * y, 1.2 * normal, origin
    return path, expected, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def test_enhanced_oblique_per_frame_geometry_and_rescale(tmp_path):
    path, expected, affine = _enhanced_oblique(tmp_path / "oblique.dcm")
    vol = read_image(path)
    np.testing.assert_array_equal(vol.array, expected)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-5)
    assert vol.meta["notes"] == []
    theirs = dcm2niix(path, tmp_path / "d2n")
    np.testing.assert_allclose(canonical(vol.array, vol.affine)[1], canonical(theirs.get_fdata(), theirs.affine)[1], atol=1e-3)


@pytest.mark.parametrize("name", ["emri_small.dcm", "eCT_Supplemental.dcm", "oblique"])
def test_derived_multiframe_is_valid_same_geometry_and_references_source(name, tmp_path):
    src = _enhanced_oblique(tmp_path / "oblique.dcm")[0] if name == "oblique" else registry_file(name)
    vol = read_image(src)
    out = write_image(vol.with_array(vol.array + 4), tmp_path / "out.dcm", description="restored")
    back = read_image(out)
    np.testing.assert_array_equal(back.array, vol.array + 4)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    source, derived = pydicom.dcmread(src, stop_before_pixels=True), pydicom.dcmread(out, stop_before_pixels=True)
    assert derived.SOPClassUID == source.SOPClassUID and int(derived.NumberOfFrames) == vol.shape[2]
    assert derived.SeriesInstanceUID != source.SeriesInstanceUID and derived.ImageType[0] == "DERIVED"
    shared = derived.get("SharedFunctionalGroupsSequence")
    refs = shared[0].DerivationImageSequence[0].SourceImageSequence if shared else derived.SourceImageSequence
    assert refs[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert not dciodvfy_new_errors(src, out)


def test_derived_multiframe_on_a_finer_grid(tmp_path):
    path, _expected, _affine = _enhanced_oblique(tmp_path / "oblique.dcm")
    vol = read_image(path)
    fine = np.repeat(np.repeat(vol.array, 2, axis=0), 2, axis=1)
    affine = vol.affine.copy()
    affine[:3, :2] /= 2
    back = read_image(write_image(vol.with_array(fine, affine=affine), tmp_path / "fine.dcm"))
    assert back.shape == (128, 128, 10)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(back.array, fine)


def test_classic_multiframe_steps_from_its_one_position(tmp_path):
    ds = pydicom.dcmread(registry_file("emri_small.dcm"))
    ds.ImagePositionPatient, ds.ImageOrientationPatient = ["10", "-20", "30"], ["0", "1", "0", "0", "0", "-1"]
    ds.PixelSpacing, ds.SpacingBetweenSlices = ["0.5", "0.6"], "2.5"
    ds.save_as(tmp_path / "classic.dcm")
    vol = read_image(tmp_path / "classic.dcm")
    lps = np.array([[0, 0, -2.5, 10], [0.6, 0, 0, -20], [0, -0.5, 0, 30], [0, 0, 0, 1.0]])
    np.testing.assert_allclose(vol.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, atol=1e-9)
    assert vol.meta["notes"] == []


def test_cine_and_colour_multiframe_are_refused(tmp_path):
    ds = pydicom.dcmread(registry_file("emri_small.dcm"))
    ds.FrameTime, ds.FrameIncrementPointer = "33", 0x00181063  # frames in time, not in space
    ds.save_as(tmp_path / "cine.dcm")
    with pytest.raises(BadInputError, match="not slices of a volume"):
        read_image(tmp_path / "cine.dcm")
    with pytest.raises(BadInputError, match="colour DICOM images are not supported .PhotometricInterpretation PALETTE COLOR"):
        read_image(registry_file("OBXXXX1A_2frame.dcm"))


# ---------------------------------------------------------------------------------------------
# compression of the derived series


@pytest.mark.parametrize("name, syntax", [
    ("MR_small_RLE.dcm", uid.RLELossless),
    ("MR_small_jpeg_ls_lossless.dcm", uid.JPEGLSLossless),
    ("MR_small_jp2klossless.dcm", uid.JPEG2000Lossless),
    ("emri_small_jpeg_ls_lossless.dcm", uid.JPEGLSLossless),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", uid.ExplicitVRLittleEndian),  # no encoder for JPEG Lossless
])
def test_derived_keeps_a_lossless_compression(name, syntax, tmp_path):
    vol = read_image(registry_file(name))
    changed = vol.array.copy()
    changed[3, 5, 0] += 1
    out = write_image(vol.with_array(changed), tmp_path / "out.dcm")
    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_image(out).array, changed)


@pytest.mark.parametrize("syntax, options", [(uid.JPEGLSNearLossless, {"jls_error": 3}), (uid.JPEG2000, {"j2k_cr": [5]})])
def test_lossy_input_is_never_re_encoded_lossily(syntax, options, tmp_path):
    ds = pydicom.dcmread(registry_file("MR_small.dcm"))
    ds.compress(syntax, **options)
    ds.LossyImageCompression = "01"
    ds.save_as(tmp_path / "lossy.dcm")
    vol = read_image(tmp_path / "lossy.dcm")
    out = write_image(vol.with_array(vol.array + 1), tmp_path / "out.dcm")
    derived = pydicom.dcmread(out)
    assert derived.file_meta.TransferSyntaxUID == uid.ExplicitVRLittleEndian and derived.LossyImageCompression == "01"
    np.testing.assert_array_equal(read_image(out).array, vol.array + 1)


# ---------------------------------------------------------------------------------------------
# objects that are no image to restore


@pytest.mark.parametrize("name, kind", [
    ("liver.dcm", "Segmentation Storage object (SOP Class 1.2.840.10008.5.1.4.1.1.66.4)"),
    ("test-SR.dcm", "Comprehensive SR Storage object (SOP Class 1.2.840.10008.5.1.4.1.1.88.33)"),
    ("rtplan.dcm", "RT Plan Storage object"),
    ("JPEG-LL.dcm", "Secondary Capture Image Storage object (SOP Class 1.2.840.10008.5.1.4.1.1.7) without patient geometry"),
    ("JPEG-lossy.dcm", "Secondary Capture Image Storage object"),
])
def test_non_images_are_named_in_one_line(name, kind):
    with pytest.raises(BadInputError) as err:
        read_image(registry_file(name))
    assert kind in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# untidy series folders


def _emri_series(folder: Path, affine=None, extra=None, frames=slice(None)) -> Path:
    """emri_small's frames as a classic MR series of single-frame files (1 x 1 x 1.2 mm, oblique)."""
    stored = np.transpose(pydicom.dcmread(registry_file("emri_small.dcm")).pixel_array[frames], (2, 1, 0))
    if affine is None:
        affine = np.diag([1.0, 1.0, 1.2, 1.0])
        affine[:3, :3] = rotation(8.0, 0.0) @ affine[:3, :3]
    return make_series(folder, stored, affine, "MR", extra=extra)


def _add(folder: Path, build) -> None:
    """Files built by ``build(a new folder)`` moved into ``folder`` under names of their own."""
    new = build(Path(tempfile.mkdtemp(dir=folder.parent)) / "series")
    for p in sorted(new.iterdir()):
        p.rename(folder / f"{new.parent.name}_{p.name}")


def _localizer(folder: Path, **extra) -> None:
    sagittal = np.array([[0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    tags = {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"], **extra}
    _add(folder, lambda new: _emri_series(new, sagittal, tags, frames=slice(0, 1)))


def test_series_with_its_localizer(tmp_path):
    folder = _emri_series(tmp_path / "mr")
    alone = read_image(folder)
    _localizer(tmp_path / "mr")
    vol = read_image(folder)
    np.testing.assert_array_equal(vol.array, alone.array)
    assert vol.meta["notes"] == ["left out 1 localizer image (ImageType LOCALIZER) of series 3"]
    assert folder_series(folder) == [(str(alone.meta["series_instance_uid"]), "series_3_MR")]


def test_other_orientation_in_the_series_is_left_out(tmp_path):
    folder = _emri_series(tmp_path / "mr")
    uid_ = pydicom.dcmread(next(folder.iterdir())).SeriesInstanceUID
    _localizer(tmp_path / "mr", SeriesInstanceUID=uid_, ImageType=["ORIGINAL", "PRIMARY", "OTHER"])
    vol = read_image(folder)
    assert vol.shape == (64, 64, 10)
    assert vol.meta["notes"] == ["left out 1 image of series 3 in another orientation than its other 10 (a localizer?)"]


def test_segmentation_in_a_series_folder_is_left_out(tmp_path):
    folder = _emri_series(tmp_path / "mr")
    shutil.copy(registry_file("liver.dcm"), folder / "seg.dcm")
    vol = read_image(folder)
    assert vol.shape == (64, 64, 10) and "left out 1 file: a Segmentation Storage object" in vol.meta["notes"][0]
    only = tmp_path / "seg"
    only.mkdir()
    shutil.copy(registry_file("liver.dcm"), only / "seg.dcm")
    with pytest.raises(BadInputError, match="no image to restore in this folder .*Segmentation Storage"):
        read_image(only)


def test_several_series_in_one_folder_are_cases(tmp_path):
    folder = _emri_series(tmp_path / "mixed")
    ct = np.full((32, 32, 3), 100, np.uint16)
    _add(folder, lambda new: make_series(new, ct, np.diag([0.7, 0.7, 3.0, 1.0]), "CT", slope=1, intercept=-1024))
    series = folder_series(folder)
    assert [label for _uid, label in series] == ["series_3_MR", "series_3_CT"]
    assert list_cases(folder) == [folder]
    shapes = {label: read_image(folder, uid_).shape for uid_, label in series}
    assert shapes == {"series_3_MR": (64, 64, 10), "series_3_CT": (32, 32, 3)}
    with pytest.raises(BadInputError, match="holds 2 DICOM series"):
        read_image(folder)


def test_missing_slice_is_named_in_one_line(tmp_path):
    folder = _emri_series(tmp_path / "mr")
    (fourth,) = [p for p in folder.iterdir() if pydicom.dcmread(p).InstanceNumber == 4]
    fourth.unlink()
    with pytest.raises(BadInputError) as err:
        read_image(folder)
    assert "1 missing where the step is 1.2 mm (after slice 3 " in str(err.value)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# the command line


def test_cli_names_a_segmentation_and_restores_a_folder_of_series(tmp_path, tiny_weights):
    code, _out, err = amir("restore", registry_file("liver.dcm"), "-o", tmp_path / "seg_amir.dcm", "--weights", tiny_weights)
    assert code == 1 and err.count("\n") == 1 and "Segmentation Storage object" in err
    folder = _emri_series(tmp_path / "mixed")
    _localizer(folder)
    ct = (np.arange(32 * 32 * 3).reshape(32, 32, 3) % 200 + 900).astype(np.uint16)
    _add(folder, lambda new: make_series(new, ct, np.diag([0.7, 0.7, 3.0, 1.0]), "CT", slope=1, intercept=-1024))
    code, out, err = amir("restore", folder, "--weights", tiny_weights)
    assert code == 0, err
    restored = tmp_path / "mixed_amir"
    assert sorted(p.name for p in restored.iterdir()) == ["series_3_CT", "series_3_CT.json", "series_3_MR", "series_3_MR.json"]
    assert read_image(restored / "series_3_MR").shape == (64, 64, 10)
    assert read_image(restored / "series_3_CT").shape == (32, 32, 3)
    assert "warning: left out 1 localizer image (ImageType LOCALIZER) of series 3" in err
    summary = json.loads((tmp_path / "mixed_amir.json").read_text())
    assert summary["cases_total"] == 2 and {r["series_instance_uid"] for r in summary["restored"]} == {
        uid_ for uid_, _label in folder_series(folder)
    }


def test_cli_restores_a_series_and_the_images_beside_it_as_a_batch(tmp_path, tiny_weights):
    """A DICOM series with a NIfTI beside it: both restored, the series by its label; the lines name
    the folder and the series, not a path that does not exist; a one-case restore onto the batch's
    output folder is refused as such."""
    folder = _emri_series(tmp_path / "mixed")
    mr = read_image(folder)
    nib.save(nib.Nifti1Image(mr.array[..., :2].astype(np.float32), mr.affine), str(folder / "other.nii.gz"))
    code, out, err = amir("restore", folder, "--task", "mri-sr", "--weights", tiny_weights)
    assert code == 0, err
    restored = tmp_path / "mixed_amir"
    assert sorted(p.name for p in restored.iterdir()) == ["other.nii.gz", "other.nii.gz.json", "series_3_MR", "series_3_MR.json"]
    assert read_image(restored / "series_3_MR").shape == (64, 64, 10)
    assert f"{folder} (series_3_MR) -> {restored / 'series_3_MR'}" in out
    assert json.loads((tmp_path / "mixed_amir.json").read_text())["cases_total"] == 2
    alone = _emri_series(tmp_path / "alone")
    code, _out, err = amir("restore", alone, "-o", restored, "--overwrite", "--task", "mri-sr", "--weights", tiny_weights)
    assert code == 1 and err.count("\n") == 1
    assert "holds the outputs of an earlier batch, which one case does not replace; choose another -o" in err
    assert (restored / "series_3_MR").is_dir()


def test_batch_plans_keep_every_output_apart_and_earlier_outputs_unmixed(tmp_path):
    """Two cases never share an output nor write inside each other's; an earlier batch's outputs that
    a new batch would not replace are named before any work, not mixed with the new ones."""
    from amir_cli.batch import batch_jobs, stale_outputs

    clash = _emri_series(tmp_path / "clash" / "a")
    _emri_series(clash / "series_3_MR")  # a subfolder named as the series output of a/
    with pytest.raises(BadInputError, match="would both be written to .*series_3_MR; rename one"):
        batch_jobs(tmp_path / "clash", tmp_path / "out1")
    inside = _emri_series(tmp_path / "inside" / "a")
    (inside / "series_3_MR").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 2), np.float32), np.eye(4)), str(inside / "series_3_MR" / "x.nii.gz"))
    with pytest.raises(BadInputError, match="would be written inside .*series_3_MR, the output of"):
        batch_jobs(tmp_path / "inside", tmp_path / "out2")
    layout = tmp_path / "layout"
    _emri_series(layout / "b")
    out = tmp_path / "out3"
    (out / "b" / "old").mkdir(parents=True)
    (out / "b" / "old" / "IM1.dcm").write_bytes(b"x")  # inside b's series folder, which is replaced whole
    (out / "gone.nii.gz").write_bytes(b"x")
    (out / ".gone2.nii.gz.amir-tmp-1-x").mkdir()  # a killed run's temp folder: the next run's to clean, not an output
    (out / ".gone2.nii.gz.amir-tmp-1-x" / "gone2.nii.gz").write_bytes(b"x")
    assert stale_outputs(out, batch_jobs(layout, out)) == [out / "gone.nii.gz"]


def test_batch_follows_no_folder_links_and_leaves_out_unreadable_dicom_files(tmp_path):
    folder = _emri_series(tmp_path / "in" / "mr")
    (tmp_path / "in" / "mr" / "loop").symlink_to(tmp_path / "in")
    assert list_cases(tmp_path / "in") == [folder]
    (folder / "README.dcm").write_text("not DICOM")
    vol = read_image(folder)
    assert vol.shape == (64, 64, 10)
    assert "left out 1 unreadable file (README.dcm): not DICOM, or cut short" in vol.meta["notes"]


def test_a_batch_rerun_replaces_a_folder_that_lost_a_series_and_lists_reports(tmp_path, tiny_weights):
    folder = tmp_path / "in"
    _emri_series(folder / "b")
    ct = np.full((32, 32, 3), 100, np.uint16)
    _add(folder / "b", lambda new: make_series(new, ct, np.diag([0.7, 0.7, 3.0, 1.0]), "CT", slope=1, intercept=-1024))
    code, _out, err = amir("restore", folder, "--weights", tiny_weights, "-q")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "in_amir" / "b").iterdir()) == ["series_3_CT", "series_3_CT.json", "series_3_MR", "series_3_MR.json"]
    for p in (folder / "b").iterdir():
        if pydicom.dcmread(p).Modality == "CT":
            p.unlink()
    code, _out, err = amir("restore", folder, "--weights", tiny_weights, "-q", "--overwrite")
    assert code == 0, err
    assert read_image(tmp_path / "in_amir" / "b").shape == (64, 64, 10)  # the one series now, the two gone
    summary = json.loads((tmp_path / "in_amir.json").read_text())
    assert [r["report"] for r in summary["restored"]] == [str(tmp_path / "in_amir" / "b.json")]


def test_the_default_output_of_dot_is_named_after_the_folder(tmp_path, monkeypatch):
    from amir_cli.placement import default_output

    (tmp_path / "one").mkdir()
    monkeypatch.chdir(tmp_path / "one")
    assert default_output(Path(".")) == tmp_path / "one_amir"


def test_a_multi_slice_series_to_one_dcm_file_is_refused_before_the_restoration(tmp_path, tiny_weights, monkeypatch):
    import amir_cli.restore as R

    folder = _emri_series(tmp_path / "mr")
    monkeypatch.setattr(R, "restore_volume", lambda *a, **k: pytest.fail("restored before the check"))
    weights = R.load_weights(str(tiny_weights), "cpu")
    with pytest.raises(BadInputError, match=r"^.*out\.dcm: a \.dcm file holds one slice; give a folder path for a 10-slice series$") as err:
        R.restore_case(weights, R.case_files(folder, tmp_path / "out.dcm"), R.RestoreOptions(task="mri-sr"))
    assert str(err.value).startswith(str(tmp_path / "out.dcm"))


def test_a_multiframe_object_on_a_finer_grid_states_no_pixel_spacing_its_source_lacked(tmp_path):
    """emri_small.dcm states neither pixel spacing nor plane geometry (1 mm is assumed when read):
    its derived object on a 2x finer grid gets the new size, not an invented 0.5 mm spacing."""
    vol = read_image(get_testdata_file("emri_small.dcm"))
    fine = np.repeat(np.repeat(vol.array, 2, axis=0), 2, axis=1)
    affine = vol.affine.copy()
    affine[:3, :2] /= 2
    ds = pydicom.dcmread(write_image(vol.with_array(fine, affine=affine), tmp_path / "x2.dcm"))
    assert (ds.Rows, ds.Columns) == (128, 128) and "PixelSpacing" not in ds
    groups = [ds.SharedFunctionalGroupsSequence[0]] + list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    assert not any("PixelSpacing" in item for group in groups for item in group.get("PixelMeasuresSequence") or [])
