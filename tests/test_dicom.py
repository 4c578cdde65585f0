"""DICOM series: geometric sorting, rescale, SUV, derived series (dciodvfy, dcm2niix), bad inputs.

Series are built here with pydicom from crops of the real sample data in tests/fixtures/data
(cranium CT: Debian invesalius-examples, GPL-2; Colin27 T1: Debian mricron-data, BSD-3).
PET activity is simulated from the MR anatomy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from amir_cli.errors import BadInputError
from amir_cli.imaging import dicom_write, list_cases, read_image, write_image
from amir_cli.imaging.dicom import suv_factors

from dicom_builders import WEIGHT_KG, crop, dciodvfy_file_errors, dcm2niix, make_series, rotation

DOSE_BQ, HALF_LIFE_S = 3.7e8, 6586.2


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory):
    hu, affine = crop("ct/cranium_ct.nii.gz", (slice(96, 160), slice(100, 164), slice(50, 58)))
    stored = (hu.astype(np.int32) + 1024).astype(np.uint16)  # uint16 with intercept -1024
    folder = make_series(tmp_path_factory.mktemp("ct") / "series", stored, affine, "CT", slope=1, intercept=-1024)
    return folder, hu.astype(np.float32), affine


@pytest.fixture(scope="module")
def mr_series(tmp_path_factory):
    t1, affine = crop("mr/colin27_t1_1mm.nii.gz", (slice(60, 124), slice(80, 144), slice(80, 86)))
    oblique = affine.copy()
    oblique[:3, :3] = rotation(12.0, -7.0) @ affine[:3, :3]  # an oblique acquisition
    folder = make_series(tmp_path_factory.mktemp("mr") / "series", (t1.astype(np.uint16) * 8), oblique, "MR", seed=1)
    return folder, t1.astype(np.float32) * 8, oblique


def _pet_extra(decay="START"):
    info = Dataset()
    info.Radiopharmaceutical = "Fluorodeoxyglucose"
    info.RadiopharmaceuticalStartTime = "090000"
    info.RadionuclideTotalDose = str(DOSE_BQ)
    info.RadionuclideHalfLife = str(HALF_LIFE_S)
    return {
        "Units": "BQML",
        "DecayCorrection": decay,
        "CountsSource": "EMISSION",
        "SeriesType": ["STATIC", "IMAGE"],
        "CorrectedImage": ["DECY", "ATTN"],
        "RadiopharmaceuticalInformationSequence": [info],
        "FrameReferenceTime": "0",
        "ActualFrameDuration": 180000,
        "DecayFactor": "1",
        "NumberOfSlices": 6,
        "CollimatorType": "NONE",
    }


@pytest.fixture(scope="module")
def pet_series(tmp_path_factory):
    t1, affine = crop("mr/colin27_t1_1mm.nii.gz", (slice(60, 124), slice(80, 144), slice(80, 86)))
    rng = np.random.default_rng(0)
    suv = np.clip(t1.astype(np.float64) / 25.0 + rng.normal(0, 0.05, t1.shape), 0, None)
    suv[30:33, 30:33, 2:4] = 14.0  # a hot lesion
    factor = WEIGHT_KG * 1000 / (DOSE_BQ * 2 ** (-3600 / HALF_LIFE_S))  # 1 h from injection to series
    bqml = suv / factor
    slopes = [float(f"{bqml[:, :, k].max() / 32767:.6g}") for k in range(bqml.shape[2])]
    stored = np.stack([np.rint(bqml[:, :, k] / s) for k, s in enumerate(slopes)], axis=2).astype(np.int16)
    expected_suv = np.stack([stored[:, :, k] * s for k, s in enumerate(slopes)], axis=2) * factor
    extra = _pet_extra()
    folder = make_series(
        tmp_path_factory.mktemp("pt") / "series", stored, affine, "PT", slope=slopes, intercept=0, extra=extra, seed=2
    )
    return folder, expected_suv.astype(np.float32), affine, factor


def _only_dicoms(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------
# reading


def test_ct_series_sorted_by_position_with_rescale(ct_series):
    folder, hu, affine = ct_series
    vol = read_image(folder)
    assert vol.modality == "CT" and vol.unit == "HU" and vol.source_format == "dicom"
    assert vol.source_dtype == np.uint16 and vol.slice_axis == 2
    np.testing.assert_array_equal(vol.array, hu)  # sorted by IPP, not by the shuffled names
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)
    assert vol.meta["output_dtype"] == np.int16  # integer HU including negatives
    assert len(vol.meta["dicom_datasets"]) == 8


def test_single_dicom_file(ct_series):
    folder, hu, _ = ct_series
    one = sorted(folder.iterdir())[0]
    vol = read_image(one)
    assert vol.array.shape == (64, 64, 1)
    k = int(pydicom.dcmread(one).InstanceNumber) - 1
    np.testing.assert_array_equal(vol.array[:, :, 0], hu[:, :, k])


def test_oblique_mr_series(mr_series):
    folder, t1, affine = mr_series
    vol = read_image(folder)
    assert vol.modality == "MR" and vol.unit == "arbitrary"
    np.testing.assert_array_equal(vol.array, t1)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)


def test_pet_bqml_to_suv(pet_series):
    folder, suv, affine, factor = pet_series
    vol = read_image(folder)
    assert vol.modality == "PT" and vol.unit == "SUV"
    np.testing.assert_allclose(vol.meta["suv_factors"], factor, rtol=1e-9)
    np.testing.assert_allclose(vol.array, suv, rtol=1e-5, atol=1e-5)
    assert vol.meta["output_dtype"] == np.float32  # SUV never rounded to integers


# ---------------------------------------------------------------------------------------------
# SUV rules


def _pet_header(**changes):
    ds = Dataset()
    ds.SeriesDate = ds.AcquisitionDate = "20240102"
    ds.SeriesTime = "100000"
    ds.AcquisitionTime = "103000"
    ds.PatientWeight = "80"
    for k, v in _pet_extra().items():
        setattr(ds, k, v)
    for k, v in changes.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    return ds


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({}, 80000 / (DOSE_BQ * 2 ** (-3600 / HALF_LIFE_S))),
        ({"DecayCorrection": "ADMIN"}, 80000 / DOSE_BQ),
        ({"DecayCorrection": "NONE"}, 80000 / (DOSE_BQ * 2 ** (-5400 / HALF_LIFE_S))),
        ({"SeriesTime": None}, 80000 / (DOSE_BQ * 2 ** (-5400 / HALF_LIFE_S))),
        ({"Units": "GML"}, 1.0),
    ],
)
def test_suv_factor_rules(changes, expected):
    assert suv_factors([_pet_header(**changes)])[0] == pytest.approx(expected, rel=1e-9)


def test_suv_injection_datetime_and_midnight():
    ds = _pet_header(SeriesDate="20240103", SeriesTime="003000", AcquisitionDate="20240103")
    ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime = "20240102233000"
    assert suv_factors([ds])[0] == pytest.approx(80000 / (DOSE_BQ * 2 ** (-3600 / HALF_LIFE_S)), rel=1e-9)


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"Units": "CNTS"}, "CNTS"),
        ({"Units": None}, "Units"),
        ({"PatientWeight": None}, "PatientWeight"),
        ({"DecayCorrection": None}, "DecayCorrection"),
        ({"RadiopharmaceuticalInformationSequence": None}, "RadiopharmaceuticalInformationSequence"),
    ],
)
def test_suv_missing_tags(changes, needle):
    with pytest.raises(BadInputError, match=needle):
        suv_factors([_pet_header(**changes)])


# ---------------------------------------------------------------------------------------------
# writing derived series


def test_ct_write_read_round_trip_and_derived_tags(ct_series, tmp_path):
    folder, hu, affine = ct_series
    vol = read_image(folder)
    restored = vol.with_array(vol.array + 7.0)
    out = write_image(restored, tmp_path / "ct_amir", description="AMIR ct-denoise test")
    assert out.is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["ct_amir"]  # no temp left
    back = read_image(out)
    np.testing.assert_array_equal(back.array, hu + 7)
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    src = vol.meta["dicom_datasets"]
    new = back.meta["dicom_datasets"]
    assert len({d.SeriesInstanceUID for d in new}) == 1
    assert new[0].SeriesInstanceUID != src[0].SeriesInstanceUID
    assert not {d.SOPInstanceUID for d in new} & {d.SOPInstanceUID for d in src}
    assert len({d.SOPInstanceUID for d in new}) == 8
    for a, b in zip(src, new, strict=True):
        assert list(b.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert b.DerivationDescription == "AMIR ct-denoise test"
        assert b.SeriesDescription.startswith(a.SeriesDescription) and b.SeriesDescription != a.SeriesDescription
        assert b.SeriesNumber != a.SeriesNumber
        for tag in (
            "PatientName",
            "PatientID",
            "StudyInstanceUID",
            "FrameOfReferenceUID",
            "SOPClassUID",
            "ImagePositionPatient",
            "ImageOrientationPatient",
            "PixelSpacing",
        ):
            assert b.get(tag) == a.get(tag), tag
        assert b.SourceImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    f = pydicom.dcmread(sorted(out.iterdir())[0])
    assert f.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_ct_reencode_when_values_leave_input_encoding(ct_series, tmp_path):
    folder, hu, _ = ct_series
    vol = read_image(folder)
    wild = vol.array.copy()
    wild[0, 0, 0], wild[1, 0, 0] = -3000.0, 30000.4
    back = read_image(write_image(vol.with_array(wild), tmp_path / "wild"))
    np.testing.assert_array_equal(back.array, np.rint(wild))
    ds = back.meta["dicom_datasets"][0]
    assert ds.PixelRepresentation == 1 and ds.BitsStored == 16 and ds.HighBit == 15


def test_pet_write_converts_back_to_bqml(pet_series, tmp_path):
    folder, suv, _, factor = pet_series
    vol = read_image(folder)
    out = write_image(vol.with_array(vol.array * 1.5), tmp_path / "pet_amir")
    back = read_image(out)
    np.testing.assert_allclose(back.array, vol.array * 1.5, rtol=1e-4, atol=2e-4)
    for ds in back.meta["dicom_datasets"]:
        assert ds.Units == "BQML" and float(ds.RescaleIntercept) == 0
        assert list(ds.ImageType)[:2] == ["DERIVED", "PRIMARY"]  # PET IOD: value 2 is PRIMARY
    for path in out.iterdir():  # stored Bq/ml = SUV / factor, quantised by the slice's slope
        ds = pydicom.dcmread(path)
        k = [str(d.SOPInstanceUID) for d in back.meta["dicom_datasets"]].index(str(ds.SOPInstanceUID))
        bqml = ds.pixel_array.T * float(ds.RescaleSlope)
        np.testing.assert_allclose(bqml, vol.array[:, :, k] * 1.5 / factor, atol=float(ds.RescaleSlope))


def test_mr_scaled_grid_writes_new_geometry(mr_series, tmp_path):
    folder, t1, affine = mr_series
    vol = read_image(folder)
    fine = np.repeat(np.repeat(vol.array, 2, axis=0), 2, axis=1)
    new_affine = vol.affine.copy()
    new_affine[:3, :2] /= 2
    new_affine[:3, 3] -= (vol.affine[:3, 0] + vol.affine[:3, 1]) / 4  # pixel centres of a 2x finer grid
    back = read_image(write_image(vol.with_array(fine, affine=new_affine), tmp_path / "mr_x2"))
    assert back.array.shape == (128, 128, 6)
    np.testing.assert_allclose(back.affine, new_affine, atol=1e-4)
    np.testing.assert_array_equal(back.array, fine)


def _edited_copy(folder: Path, dest: Path, edit) -> Path:
    """The series in ``folder`` copied to ``dest``, each file's header changed by ``edit(ds)``."""
    dest.mkdir()
    for path in _only_dicoms(folder):
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(dest / path.name)
    return dest


def test_a_re_encoded_series_keeps_its_other_maps_of_stored_values_true(mr_series, tmp_path):
    """Where the values leave the source's encoding, the real-world value map and Philips' private
    scale slope (float = displayed / (RescaleSlope x it), as dcm2niix reads it) follow the new rescale."""
    def philips(ds):
        ds.RescaleSlope, ds.RescaleIntercept = "1.5", "0"
        item = Dataset()
        item.RealWorldValueSlope, item.RealWorldValueIntercept = 0.002, 0.1
        item.RealWorldValueFirstValueMapped, item.RealWorldValueLastValueMapped = 0, 4095
        item.LUTLabel = "T1"
        ds.RealWorldValueMappingSequence = [item]
        ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True).add_new(0x0E, "FL", 0.05)

    folder = _edited_copy(mr_series[0], tmp_path / "philips", philips)
    vol = read_image(folder)
    wild = vol.array.copy()
    wild[0, 0, :] = -600.0  # below what the unsigned source can store: re-encoded as int16 with a slope
    out = write_image(vol.with_array(wild), tmp_path / "out")
    for path in _only_dicoms(out):
        ds = pydicom.dcmread(path)
        slope = float(ds.RescaleSlope)
        assert slope != 1.5 and ds.PixelRepresentation == 1
        stored = ds.pixel_array.astype(np.float64)
        displayed = stored * slope + float(ds.RescaleIntercept)
        item = ds.RealWorldValueMappingSequence[0]
        # the map gives what it gave on the source's stored values: 0.002 x displayed / 1.5 + 0.1
        np.testing.assert_allclose(stored * item.RealWorldValueSlope + item.RealWorldValueIntercept,
                                   0.002 * displayed / 1.5 + 0.1, rtol=1e-9, atol=1e-9)
        assert (item.RealWorldValueFirstValueMapped, item.RealWorldValueLastValueMapped) == (-32768, 32767)
        assert item["RealWorldValueFirstValueMapped"].VR == "SS"
        scale = ds.get_private_item(0x2005, 0x0E, "Philips MR Imaging DD 001").value
        assert slope * scale == pytest.approx(1.5 * 0.05, rel=1e-6)


def _item(**attrs) -> Dataset:
    item = Dataset()
    for key, value in attrs.items():
        setattr(item, key, value)
    return item


def _enhanced_mr(path: Path, stored: np.ndarray, slopes: list[float], maps_per_frame: bool) -> Path:
    """An Enhanced MR object of ``stored`` (frame, row, column; uint16), frames 1.2 mm apart, each
    with its rescale (``slopes``, intercept -10) in its own functional group, and the Real World Value
    Mapping 0.002 x stored + 0.1 in the shared group or (``maps_per_frame``) in each frame's."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import generate_uid

    real_world = _item(RealWorldValueSlope=0.002, RealWorldValueIntercept=0.1, RealWorldValueFirstValueMapped=0,
                       RealWorldValueLastValueMapped=65535, LUTLabel="T1", LUTExplanation="T1 map")
    ds = _item(SOPClassUID="1.2.840.10008.5.1.4.1.1.4.1", SOPInstanceUID=generate_uid(), StudyInstanceUID=generate_uid(),
               SeriesInstanceUID=generate_uid(), Modality="MR", ImageType=["ORIGINAL", "PRIMARY", "M", "NONE"],
               Rows=stored.shape[1], Columns=stored.shape[2], NumberOfFrames=len(stored), SamplesPerPixel=1,
               PhotometricInterpretation="MONOCHROME2", BitsAllocated=16, BitsStored=16, HighBit=15, PixelRepresentation=0)
    shared = _item(PixelMeasuresSequence=[_item(PixelSpacing=["0.9", "0.9"], SliceThickness="1.2")],
                   PlaneOrientationSequence=[_item(ImageOrientationPatient=["1", "0", "0", "0", "1", "0"])])
    if not maps_per_frame:
        shared.RealWorldValueMappingSequence = [real_world]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [
        _item(PlanePositionSequence=[_item(ImagePositionPatient=["0", "0", f"{1.2 * k:g}"])],
              PixelValueTransformationSequence=[_item(RescaleSlope=f"{m:g}", RescaleIntercept="-10", RescaleType="US")],
              **({"RealWorldValueMappingSequence": [real_world]} if maps_per_frame else {}))
        for k, m in enumerate(slopes)
    ]
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dicom_write._save(ds, path)
    return path


@pytest.mark.parametrize("slopes, maps_per_frame", [([1.5] * 4, False), ([1.5, 2.0, 2.5, 3.0], False), ([1.5] * 4, True)])
def test_a_re_encoded_multiframe_keeps_its_real_world_value_maps_true(slopes, maps_per_frame, tmp_path):
    """The Real World Value Mapping of an enhanced object's functional groups follows a new rescale,
    shared or per frame; a shared map moves into each frame's group where the frames' old rescales differ."""
    stored = np.random.default_rng(0).integers(0, 4000, (4, 16, 16)).astype(np.uint16)
    vol = read_image(_enhanced_mr(tmp_path / "emr.dcm", stored, slopes, maps_per_frame))
    wild = vol.array.copy()
    wild[0, 0, :] = -600.0  # below what the unsigned source can store: re-encoded as int16 with a slope
    out = pydicom.dcmread(write_image(vol.with_array(wild), tmp_path / "out.dcm"))
    shared = out.SharedFunctionalGroupsSequence[0]
    assert ("RealWorldValueMappingSequence" in shared) == (len(set(slopes)) == 1 and not maps_per_frame)
    for k, (frame, group) in enumerate(zip(out.pixel_array.astype(np.float64), out.PerFrameFunctionalGroupsSequence)):
        rescale = (group.get("PixelValueTransformationSequence") or shared.PixelValueTransformationSequence)[0]
        assert float(rescale.RescaleSlope) != slopes[k]
        displayed = frame * float(rescale.RescaleSlope) + float(rescale.RescaleIntercept)
        (item,) = (group.get("RealWorldValueMappingSequence") or shared.RealWorldValueMappingSequence)
        # the map gives what it gave on the source's stored values: 0.002 x (displayed + 10) / slope + 0.1
        np.testing.assert_allclose(frame * item.RealWorldValueSlope + item.RealWorldValueIntercept,
                                   0.002 * (displayed + 10) / slopes[k] + 0.1, rtol=1e-9, atol=1e-9)
        assert (item.RealWorldValueFirstValueMapped, item.RealWorldValueLastValueMapped) == (-32768, 32767)


def test_a_re_encoded_multiframe_without_functional_groups_writes_its_new_rescale(tmp_path):
    """A multi-frame object whose rescale (and real-world value map) stands in its own attributes, no
    functional groups, has the new rescale written there (the old one stayed: values read back wrong)."""
    stored = np.random.default_rng(0).integers(0, 4000, (4, 16, 16)).astype(np.uint16)
    ds = pydicom.dcmread(_enhanced_mr(tmp_path / "emr.dcm", stored, [1.0] * 4, True))
    del ds.SharedFunctionalGroupsSequence, ds.PerFrameFunctionalGroupsSequence
    ds.ImagePositionPatient, ds.ImageOrientationPatient = ["0", "0", "0"], ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing, ds.SpacingBetweenSlices = ["0.9", "0.9"], "1.2"
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-10"
    ds.RealWorldValueMappingSequence = [_item(RealWorldValueSlope=0.002, RealWorldValueIntercept=0.1, LUTLabel="T1")]
    ds.save_as(tmp_path / "classic.dcm")
    vol = read_image(tmp_path / "classic.dcm")
    wild = vol.array.copy()
    wild[0, 0, :] = -600.0
    out = write_image(vol.with_array(wild), tmp_path / "out.dcm")
    derived = pydicom.dcmread(out)
    assert "SharedFunctionalGroupsSequence" not in derived and "PerFrameFunctionalGroupsSequence" not in derived
    slope = float(derived.RescaleSlope)
    np.testing.assert_allclose(read_image(out).array, wild, atol=slope / 2 + 1e-6)
    item = derived.RealWorldValueMappingSequence[0]
    # the map gives what it gave on the source's stored values: 0.002 x (displayed + 10) / 2 + 0.1
    assert item.RealWorldValueSlope == pytest.approx(0.002 * slope / 2) and item.RealWorldValueIntercept == pytest.approx(0.11)


def test_a_long_series_description_keeps_the_label_and_missing_geometry_is_not_invented(mr_series, tmp_path):
    folder = _edited_copy(mr_series[0], tmp_path / "long", lambda ds: setattr(ds, "SeriesDescription", "T1 " * 21 + "x"))
    out = write_image(read_image(folder), tmp_path / "long_amir")
    description = pydicom.dcmread(_only_dicoms(out)[0]).SeriesDescription
    assert len(description) <= 64 and description.endswith(" AMIR") and description.startswith("T1 T1")
    one = _only_dicoms(mr_series[0])[0]
    for missing in (("ImagePositionPatient", "ImageOrientationPatient"), ("PixelSpacing",)):
        ds = pydicom.dcmread(one)
        for tag in missing:
            del ds[tag]
        ds.save_as(tmp_path / "one.dcm")
        vol = read_image(tmp_path / "one.dcm")
        fine = np.repeat(np.repeat(vol.array, 2, axis=0), 2, axis=1)
        affine = vol.affine.copy()
        affine[:3, :2] /= 2
        written = pydicom.dcmread(write_image(vol.with_array(fine, affine=affine), tmp_path / f"x2_{len(missing)}.dcm"))
        assert (written.Rows, written.Columns) == (2 * ds.Rows, 2 * ds.Columns)
        assert not any(tag in written for tag in missing), missing
        kept = {"PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient"} - set(missing)
        assert all(tag in written for tag in kept), kept


def test_single_file_output_and_overwrite_rules(ct_series, tmp_path):
    folder, hu, _ = ct_series
    one = read_image(sorted(folder.iterdir())[0])
    out = write_image(one, tmp_path / "slice.dcm")
    np.testing.assert_array_equal(read_image(out).array, one.array)
    with pytest.raises(BadInputError, match="one slice"):
        write_image(read_image(folder), tmp_path / "series.dcm")
    with pytest.raises(BadInputError, match="overwrite the input"):
        write_image(read_image(folder), folder)
    # an existing output folder is replaced as a whole (the CLI decides whether that is allowed)
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "stale.txt").write_text("old")
    write_image(read_image(folder), tmp_path / "again")
    assert len(list((tmp_path / "again").iterdir())) == 8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------
# external validators


@pytest.mark.parametrize("which", ["ct_series", "mr_series", "pet_series"])
def test_dciodvfy_no_new_errors(which, request, tmp_path):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    folder = request.getfixturevalue(which)[0]
    vol = read_image(folder)
    out = write_image(vol.with_array(vol.array * 0.9), tmp_path / "out", description="restored")
    before = set().union(*(dciodvfy_file_errors(p) for p in folder.iterdir()))
    after = set().union(*(dciodvfy_file_errors(p) for p in out.iterdir()))
    assert after <= before, sorted(after - before)
    assert not [e for e in after if "UID" in e], sorted(after)  # no empty or invalid UID, even copied ones


@pytest.mark.parametrize("which", ["ct_series", "mr_series", "pet_series"])
def test_dcm2niix_agrees(which, request, tmp_path):
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix is not installed")
    folder = request.getfixturevalue(which)[0]
    vol = read_image(folder)
    out = write_image(vol.with_array(vol.array * 0.5), tmp_path / "out")
    a = dcm2niix(folder, tmp_path / "nii_in")
    b = dcm2niix(out, tmp_path / "nii_out")
    assert a.shape == b.shape
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-3)
    # independent geometry check: dcm2niix's image and ours agree voxel by voxel in world space
    ours = nib.as_closest_canonical(nib.Nifti1Image(vol.array, vol.affine))
    theirs = nib.as_closest_canonical(a)
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-3)
    if which != "pet_series":  # dcm2niix keeps Bq/ml for PET
        np.testing.assert_allclose(np.asarray(ours.dataobj), theirs.get_fdata(), atol=1e-3)


# ---------------------------------------------------------------------------------------------
# folders and bad inputs


def test_list_cases(ct_series, mr_series, tmp_path):
    assert list_cases(ct_series[0]) == [ct_series[0]]
    batch = tmp_path / "batch"
    batch.mkdir()
    shutil.copytree(ct_series[0], batch / "patient1" / "ct")
    shutil.copytree(mr_series[0], batch / "mr")
    one_slice = crop("ct/pancreas_ct_slice.nii.gz", (slice(192, 320), slice(192, 320), slice(0, 1)))
    nib.save(nib.Nifti1Image(*one_slice), str(batch / "a.nii.gz"))
    (batch / "notes.txt").write_text("not an image")
    assert list_cases(batch) == [batch / "a.nii.gz", batch / "mr", batch / "patient1" / "ct"]


def _two_series(ct_series, mr_series, tmp_path) -> Path:
    both = tmp_path / "both"
    shutil.copytree(ct_series[0], both)
    for i, p in enumerate(sorted(mr_series[0].iterdir())[:3]):
        shutil.copy(p, both / f"mr_{i}.dcm")
    return both


def test_two_series_folder_lists_series(ct_series, mr_series, tmp_path):
    both = _two_series(ct_series, mr_series, tmp_path)
    ct_uid = pydicom.dcmread(sorted(ct_series[0].iterdir())[0]).SeriesInstanceUID
    mr_uid = pydicom.dcmread(sorted(mr_series[0].iterdir())[0]).SeriesInstanceUID
    assert list_cases(both) == [both]  # a case of several series (a batch restores each)
    for call in (read_image,):
        with pytest.raises(BadInputError) as err:
            call(both)
        msg = str(err.value)
        assert "\n" not in msg and "2 DICOM series" in msg
        assert ct_uid in msg and mr_uid in msg and "8 files" in msg and "3 files" in msg and "MR" in msg
        assert "Test MR" not in msg  # series descriptions may carry patient names


def _truncated(ct_series, tmp_path):
    src = sorted(ct_series[0].iterdir())[0]
    bad = tmp_path / "trunc.dcm"
    bad.write_bytes(src.read_bytes()[:-3000])
    return bad


def _random_bytes(ct_series, tmp_path):
    bad = tmp_path / "noise.dcm"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    return bad


def _missing_ipp(ct_series, tmp_path):
    folder = tmp_path / "noipp"
    shutil.copytree(ct_series[0], folder)
    p = sorted(folder.iterdir())[2]
    ds = pydicom.dcmread(p)
    del ds.ImagePositionPatient
    ds.save_as(p)
    return folder


def _gap(ct_series, tmp_path):
    folder = tmp_path / "gap"
    shutil.copytree(ct_series[0], folder)
    files = {int(pydicom.dcmread(p).InstanceNumber): p for p in folder.iterdir()}
    files[4].unlink()
    return folder


def _huge_header(ct_series, tmp_path):
    p = sorted(ct_series[0].iterdir())[0]
    ds = pydicom.dcmread(p)
    ds.Rows = ds.Columns = 20000
    bad = tmp_path / "huge.dcm"
    ds.save_as(bad)
    return bad


def _tiny(ct_series, tmp_path):
    p = sorted(ct_series[0].iterdir())[0]
    ds = pydicom.dcmread(p)
    ds.Rows = ds.Columns = 1
    ds.PixelData = b"\x00\x00"
    bad = tmp_path / "tiny.dcm"
    ds.save_as(bad)
    return bad


@pytest.mark.parametrize(
    "make, needle",
    [
        (_truncated, "pixel data"),
        (_random_bytes, "not a readable DICOM"),
        (_missing_ipp, "ImagePositionPatient"),
        (_gap, "evenly spaced"),
        (_huge_header, "20000x20000"),
        (_tiny, "1x1"),
    ],
)
def test_bad_dicom_inputs(make, needle, ct_series, tmp_path):
    bad = make(ct_series, tmp_path)
    with pytest.raises(BadInputError, match=needle) as err:
        read_image(bad)
    assert "\n" not in str(err.value) and "force=True" not in str(err.value)  # no advice meant for programmers


def test_reading_never_modifies_input(ct_series):
    before = {p.name: p.read_bytes() for p in ct_series[0].iterdir()}
    read_image(ct_series[0])
    assert before == {p.name: p.read_bytes() for p in ct_series[0].iterdir()}


def test_failed_series_write_leaves_nothing(ct_series, tmp_path, monkeypatch):
    vol = read_image(ct_series[0])
    calls = []
    real_save = dicom_write._save

    def boom(ds, path):
        calls.append(path)
        if len(calls) == 4:
            raise OSError("disk full")
        real_save(ds, path)

    monkeypatch.setattr(dicom_write, "_save", boom)
    with pytest.raises(BadInputError, match="disk full"):
        write_image(vol, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BadInputError, match="does not exist"):
        write_image(vol, tmp_path / "missing" / "out")
    assert not os.path.exists(tmp_path / "missing")


def test_real_pydicom_ct_slice_round_trip(tmp_path):
    """pydicom's bundled CT_small.dcm (a real CT slice, MIT): read, write derived, read back."""
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("CT_small.dcm"))
    vol = read_image(src)
    assert vol.modality == "CT" and vol.array.shape == (128, 128, 1) and vol.source_dtype == np.int16
    ds = pydicom.dcmread(src)
    np.testing.assert_array_equal(
        vol.array[:, :, 0], ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    )
    out = write_image(vol.with_array(vol.array - 3), tmp_path / "ct_amir.dcm")
    np.testing.assert_array_equal(read_image(out).array, vol.array - 3)
    if shutil.which("dciodvfy"):
        assert dciodvfy_file_errors(out) <= dciodvfy_file_errors(src)


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "MR_small_expb.dcm"])
def test_big_endian_source_is_written_little_endian(name, tmp_path):
    """pydicom's bundled big-endian MR slices (MIT): the derived file is Explicit VR Little Endian."""
    from pydicom.data import get_testdata_file
    from pydicom.uid import ExplicitVRLittleEndian

    vol = read_image(Path(get_testdata_file(name)))
    out = write_image(vol.with_array(vol.array + 1), tmp_path / "mr_amir.dcm")
    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(read_image(out).array, vol.array + 1)


def test_pixel_padding_is_kept_with_the_source_encoding(tmp_path):
    """A CT slice whose corners are padding (PixelPaddingValue): restored values written in the
    source's encoding keep the padding's stored value, so the tag stays true and is kept."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    pixels = ds.pixel_array.copy()
    pixels[:8, :8] = -2000
    ds.PixelData, ds.PixelPaddingValue = pixels.tobytes(), -2000
    ds["PixelPaddingValue"].VR = "SS"
    ds.save_as(tmp_path / "padded.dcm")
    vol = read_image(tmp_path / "padded.dcm")
    out = pydicom.dcmread(write_image(vol.with_array(vol.array), tmp_path / "out.dcm"))
    assert out.PixelPaddingValue == -2000
    np.testing.assert_array_equal(out.pixel_array, pixels)
    # values that leave the source's encoding: re-encoded, the padding (passed through) keeps its tag
    wild = vol.array.copy()
    wild[20, 20, 0] = 40000.0
    out = pydicom.dcmread(write_image(vol.with_array(wild), tmp_path / "wild.dcm"))
    slope = float(out.RescaleSlope)
    assert slope != 1 and out["PixelPaddingValue"].VR == "SS"
    assert out.PixelPaddingValue == round((-2000 * float(ds.RescaleSlope) + float(ds.RescaleIntercept)) / slope)
    assert (out.pixel_array[:8, :8] == out.PixelPaddingValue).all()


def test_images_beside_dicom_files_make_a_batch(ct_series, mr_series, tmp_path):
    """A folder holding DICOM files and other images (or DICOM folders) beside them is a batch of all
    of them, not one DICOM case that skips the others."""
    from amir_cli.placement import is_batch_input

    folder, hu, _ = ct_series
    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed)
    assert list_cases(mixed) == [mixed] and not is_batch_input(mixed)
    (mixed / "empty").mkdir()
    assert list_cases(mixed) == [mixed] and not is_batch_input(mixed)  # a folder without images is no case
    nib.save(nib.Nifti1Image(hu, np.eye(4)), str(mixed / "other.nii.gz"))
    shutil.copytree(mr_series[0], mixed / "more" / "mr")
    assert list_cases(mixed) == [mixed, mixed / "more" / "mr", mixed / "other.nii.gz"] and is_batch_input(mixed)
    vol = read_image(mixed)
    np.testing.assert_array_equal(vol.array, hu)
    assert vol.meta["notes"] == []


def test_a_single_image_without_geometry_says_what_was_assumed(tmp_path):
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert read_image(Path(get_testdata_file("CT_small.dcm"))).meta["notes"] == []
    for tag in ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient"):
        del ds[tag]
    ds.save_as(tmp_path / "bare.dcm")
    vol = read_image(tmp_path / "bare.dcm")
    assert vol.spacing_mm[:2] == (1.0, 1.0)
    assert vol.meta["notes"] == ["no PixelSpacing: 1 mm pixels assumed",
                                 "no ImageOrientationPatient/ImagePositionPatient: the image's own axes and origin assumed"]


def test_dicom_to_nifti_keeps_integer_hu_and_geometry(ct_series, tmp_path):
    folder, hu, affine = ct_series
    vol = read_image(folder)
    out = write_image(vol, tmp_path / "ct.nii.gz")
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.int16 and int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(img.dataobj), hu)


def test_mr_reencode_adds_no_rescale_tags(mr_series, tmp_path):
    folder, t1, _ = mr_series
    vol = read_image(folder)
    wild = vol.array.copy()
    wild[0, 0, 0] = -100.0  # leaves the unsigned input encoding
    back = read_image(write_image(vol.with_array(wild), tmp_path / "mr"))
    np.testing.assert_array_equal(back.array, wild)
    ds = back.meta["dicom_datasets"][0]
    assert "RescaleSlope" not in ds and ds.PixelRepresentation == 1
