"""DICOM series for the tests, and third-party checks of what amir writes.

Series are written with pydicom from crops of the real sample data in tests/fixtures/data, with the
LPS conversion done by hand, independent of amir_cli.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from amir_cli.imaging import dicom_write
from conftest import real_crop

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
MR_CLASS = "1.2.840.10008.5.1.4.1.1.4"
PT_CLASS = "1.2.840.10008.5.1.4.1.1.128"
WEIGHT_KG = 72.0


def crop(name: str, sl) -> tuple[np.ndarray, np.ndarray]:
    data, affine, _ = real_crop(name, sl)
    return data, affine


def rotation(deg_x: float, deg_z: float) -> np.ndarray:
    ax, az = np.radians(deg_x), np.radians(deg_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


def make_series(
    folder: Path,
    stored: np.ndarray,
    affine_ras: np.ndarray,
    modality: str,
    *,
    slope=None,
    intercept=None,
    extra=None,
    seed=0,
) -> Path:
    """Write ``stored`` (I, J, K integers) as a DICOM series whose geometry is ``affine_ras``.

    The LPS conversion is done here by hand (independent of amir_cli), file names are shuffled.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras
    dc, dr = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    iop = np.concatenate([lps[:3, 0] / dc, lps[:3, 1] / dr])
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    sop_class = {"CT": CT_CLASS, "MR": MR_CLASS, "PT": PT_CLASS}[modality]
    n = stored.shape[2]
    names = [f"slice_{i:03d}.dcm" for i in range(n)]
    random.Random(seed).shuffle(names)
    for k in range(n):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240102"
        ds.StudyTime, ds.SeriesTime, ds.AcquisitionTime, ds.ContentTime = "093000", "100000", "100000", "100000"
        ds.AccessionNumber = "A123"
        ds.Modality = modality
        ds.Manufacturer = "amir tests"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "Test study"
        ds.SeriesDescription = f"Test {modality}"
        ds.PatientName = "Test^Patient"
        ds.PatientID = "P001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.PatientWeight = str(WEIGHT_KG)
        ds.SliceThickness = str(round(float(np.linalg.norm(lps[:3, 2])), 4))
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.StudyID = "1"
        ds.SeriesNumber = 3
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.PatientOrientation = ""
        ds.ImagePositionPatient = [f"{v:.6f}" for v in (lps @ [0, 0, k, 1])[:3]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
        ds.FrameOfReferenceUID = frame
        ds.PositionReferenceIndicator = ""
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.PixelSpacing = [f"{dr:.6f}", f"{dc:.6f}"]
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        signed = stored.dtype.kind == "i"
        ds.PixelRepresentation = 1 if signed else 0
        if modality == "CT":
            ds.KVP = "120"
        if modality == "MR":
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "GR", "SP", ""
            ds.MRAcquisitionType = "3D"
            ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "9.7", "4", "1"
        if slope is not None:
            s = slope[k] if np.ndim(slope) else slope
            ds.RescaleSlope = str(s)
            ds.RescaleIntercept = str(intercept if intercept is not None else 0)
            if modality == "CT":
                ds.RescaleType = "HU"
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2" if signed else "<u2").tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        dicom_write._save(ds, folder / names[k])
    return folder


def ct_series(folder: Path) -> Path:
    """6 slices of 64x64 head CT (uint16 stored, intercept -1024)."""
    hu, affine = crop("ct/cranium_ct.nii.gz", (slice(96, 160), slice(100, 164), slice(50, 56)))
    stored = (hu.astype(np.int32) + 1024).astype(np.uint16)
    return make_series(folder, stored, affine, "CT", slope=1, intercept=-1024)


def mr_series(folder: Path) -> Path:
    """6 slices of 64x64 oblique T1 MR (uint16, no rescale)."""
    t1, affine = crop("mr/colin27_t1_1mm.nii.gz", (slice(60, 124), slice(80, 144), slice(80, 86)))
    oblique = affine.copy()
    oblique[:3, :3] = rotation(12.0, -7.0) @ affine[:3, :3]
    return make_series(folder, t1.astype(np.uint16) * 8, oblique, "MR", seed=1)


def dciodvfy_errors(folder: Path) -> set[str]:
    return set().union(*(dciodvfy_file_errors(p) for p in sorted(folder.iterdir())))


def dciodvfy_file_errors(path: Path) -> set[str]:
    res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (res.stdout + res.stderr).splitlines()
    return {" ".join(line.split()) for line in lines if line.startswith("Error")}


def dcm2niix(folder: Path, out: Path) -> nib.Nifti1Image:
    out.mkdir()
    subprocess.run(
        ["dcm2niix", "-z", "n", "-b", "n", "-f", "vol", "-o", str(out), str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (nii,) = sorted(out.glob("*.nii"))
    return nib.load(str(nii))
