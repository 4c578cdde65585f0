"""Writing DICOM: a derived series (or one file) from a restored volume and the series it was read from.

New SeriesInstanceUID and SOPInstanceUIDs, DERIVED image type, a reference to each source image,
the source's own pixel encoding where the values fit it (else int16/uint16 with a rescale), the
source's transfer syntax where it is lossless and an encoder is installed (else uncompressed), and
the grid of the output where it differs from the source's (:mod:`amir_cli.imaging.dicom` reads).
A multi-frame source gives one multi-frame object (:mod:`amir_cli.imaging.dicom_write_frames`).
"""

from __future__ import annotations

import copy
import datetime as dt
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from amir_cli.errors import BadInputError, failures_as_bad_input
from amir_cli.files import atomic_write, public_path, replace_dir, temp_dir
from amir_cli.imaging.dicom import _pydicom
from amir_cli.imaging.volume import Volume, check_dimensions, ras_from_lps

_PRIMARY_ONLY_CLASSES = {"1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.20"}  # PET, NM images
# tags whose value no longer describes re-encoded pixels (some have a VR that depends on the sign)
_DROP_TAGS = (
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
)


def _ds(value: float) -> str:
    """A number as a valid DS string (at most 16 characters)."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def _stored_range(bits_stored: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
    return 0, 2**bits_stored - 1


class Encoded(NamedTuple):
    """One slice's stored integers and how they read back."""

    stored: np.ndarray
    bits_allocated: int
    bits_stored: int
    signed: bool
    slope: str | None = None  # a new RescaleSlope (DS text; its intercept is 0); None: the source's rescale holds

    @property
    def unit_slope(self) -> bool:
        """A new rescale that changes nothing: written only where the source had one."""
        return self.slope == "1"


def _encode(values: np.ndarray, datasets: list, modality: str | None) -> list[Encoded]:
    """Stored integers and the rescale of each slice: the input's own encoding when every value fits
    it (lossless round trip), else int16/uint16 with a RescaleSlope chosen to fit."""
    n = values.shape[0]
    orig = []
    fits = True
    for k, ds in enumerate(datasets):
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        bits = int(ds.get("BitsStored", ds.BitsAllocated))
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        lo, hi = _stored_range(bits, signed)
        stored = np.rint((values[k] - intercept) / slope)
        if stored.size and (stored.min() < lo or stored.max() > hi):
            fits = False
            break
        orig.append(Encoded(stored, int(ds.BitsAllocated), bits, signed))
    if fits:
        return orig

    had_unit_slope = all(float(ds.get("RescaleSlope", 1) or 1) == 1.0 for ds in datasets)
    if modality != "PT" and had_unit_slope:
        v = np.rint(values)
        lo, hi = float(v.min()), float(v.max())
        signed = not (lo >= 0 and hi > 32767 and hi <= 65535)
        r = _stored_range(16, signed)
        if lo >= r[0] and hi <= r[1]:
            return [Encoded(v[k], 16, 16, signed, slope="1") for k in range(n)]
    groups = [[k] for k in range(n)] if modality == "PT" else [list(range(n))]
    result: list = [None] * n
    for g in groups:
        m = float(np.max(np.abs(values[g]))) if values[g].size else 0.0
        slope_text = _ds(m / 32767.0) if m > 0 else "1"
        slope = float(slope_text)
        for k in g:
            stored = np.clip(np.rint(values[k] / slope), -32768, 32767)
            result[k] = Encoded(stored, 16, 16, True, slope=slope_text)
    return result


def _same_geometry(volume: Volume, ref: Volume) -> bool:
    """True when the volume still has the grid of the DICOM files it was read from."""
    shape, affine = ref.meta.get("dicom_shape"), ref.meta.get("dicom_affine")
    if shape is None or affine is None:
        return False
    return tuple(volume.array.shape) == tuple(shape) and np.allclose(volume.affine, affine, atol=1e-6)


@dataclass
class Derivation:
    """What every object of one derived series shares: its UIDs, dates, grid and encoding."""

    series_uid: str
    series_number: int
    date: str
    time: str
    description: str
    same_geometry: bool
    lps: np.ndarray  # voxel -> LPS affine of the output grid
    transfer_syntax: str

    @property
    def pixel_spacing(self) -> list[str]:
        return [_ds(np.linalg.norm(self.lps[:3, 1])), _ds(np.linalg.norm(self.lps[:3, 0]))]

    @property
    def orientation(self) -> list[str]:
        cosines = self.lps[:3, :2] / np.linalg.norm(self.lps[:3, :2], axis=0)
        return [_ds(v) for v in np.concatenate([cosines[:, 0], cosines[:, 1]])]

    def position(self, k: int) -> list[str]:
        return [_ds(v) for v in (self.lps @ [0.0, 0.0, float(k), 1.0])[:3]]


def _derivation(volume: Volume, ref: Volume, description: str) -> Derivation:
    from pydicom.uid import generate_uid

    now = dt.datetime.now()
    return Derivation(
        series_uid=generate_uid(),
        series_number=int(ref.meta["dicom_datasets"][0].get("SeriesNumber", 0) or 0) + 1000,
        date=now.strftime("%Y%m%d"),
        time=now.strftime("%H%M%S"),
        description=(description or "Restored with amir (AMIR all-in-one medical image restoration)")[:1024],
        same_geometry=_same_geometry(volume, ref),
        lps=ras_from_lps(volume.affine),
        transfer_syntax=output_syntax(ref.meta.get("dicom_transfer_syntax", "")),
    )


def output_syntax(source: str) -> str:
    """The source's transfer syntax where it is lossless and pydicom has an encoder for it, else
    Explicit VR Little Endian: a lossy input is never re-encoded lossily."""
    from pydicom import uid
    from pydicom.pixels import get_encoder

    if source in (uid.RLELossless, uid.JPEGLSLossless, uid.JPEG2000Lossless) and get_encoder(source).is_available:
        return source
    return uid.ExplicitVRLittleEndian


def _derived_datasets(volume: Volume, ref: Volume, description: str) -> list:
    datasets = ref.meta["dicom_datasets"]
    n = len(datasets)
    if volume.array.ndim != 3 or volume.array.shape[2] != n:
        raise BadInputError(
            f"cannot write a DICOM series of {volume.array.shape[2]} slices from a reference of {n} slices"
        )
    check_dimensions(volume.array.shape, 2, "output")
    values = np.transpose(np.asarray(volume.array, dtype=np.float64), (2, 1, 0))  # (slice, row, col)
    modality = ref.meta.get("dicom_modality") or ref.modality
    if modality == "PT" and "suv_factors" in ref.meta:
        values = values / np.asarray(ref.meta["suv_factors"], dtype=np.float64)[:, None, None]
    encoded = _encode(values, datasets, modality)
    derivation = _derivation(volume, ref, description)
    if "dicom_multiframe" in ref.meta:
        from amir_cli.imaging.dicom_write_frames import derived_multiframe

        return [derived_multiframe(ref.meta["dicom_multiframe"], ref.meta["dicom_frames"], datasets, encoded, derivation)]
    return [_derived_slice(src, k, enc, derivation) for k, (src, enc) in enumerate(zip(datasets, encoded, strict=True))]


def _derived_slice(src, k: int, encoded: Encoded, d: Derivation):
    """Slice ``k`` of a derived series of single-frame images, from its source image ``src``."""
    from pydicom.dataset import Dataset

    # Image Type value 2: SECONDARY, except IODs that enumerate PRIMARY only (PET, NM)
    ds = derive_header(src, d, "PRIMARY" if str(src.get("SOPClassUID", "")) in _PRIMARY_ONLY_CLASSES else "SECONDARY")
    ds.DerivationDescription = d.description
    if _valid_uid(src.get("SOPClassUID")) and _valid_uid(src.get("SOPInstanceUID")):
        item = Dataset()
        item.ReferencedSOPClassUID = src.SOPClassUID
        item.ReferencedSOPInstanceUID = src.SOPInstanceUID
        ds.SourceImageSequence = [item]
    if not d.same_geometry:
        ds.Rows, ds.Columns = encoded.stored.shape
        if "PixelSpacing" in src or "ImageOrientationPatient" in src:
            ds.PixelSpacing = d.pixel_spacing
            ds.ImageOrientationPatient = d.orientation
            ds.ImagePositionPatient = d.position(k)
    # add rescale tags only where needed (MR images, for instance, usually have none)
    if encoded.slope is not None and not (encoded.unit_slope and "RescaleSlope" not in src):
        ds.RescaleSlope, ds.RescaleIntercept = encoded.slope, "0"
    set_pixels(ds, [encoded.stored], encoded.bits_allocated, encoded.bits_stored, encoded.signed, d.transfer_syntax)
    return ds


def derive_header(src, d: Derivation, second_type: str):
    """A copy of the source header with new UIDs, series, dates and a DERIVED Image Type, without
    the attributes that described the source's pixel values or its own references."""
    from pydicom.uid import generate_uid

    ds = copy.deepcopy(src)
    for tag in _DROP_TAGS + ("SourceImageSequence", "DerivationImageSequence"):
        if tag in ds:
            del ds[tag]
    _drop_empty_references(ds)
    image_type = [str(v) for v in (ds.get("ImageType") or [])]
    ds.ImageType = ["DERIVED", second_type] + image_type[2:]
    ds.SeriesInstanceUID = d.series_uid
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesNumber = d.series_number
    ds.SeriesDescription = (str(src.get("SeriesDescription", "") or "").strip() + " AMIR").strip()[:64]
    ds.InstanceCreationDate, ds.InstanceCreationTime = d.date, d.time
    ds.ContentDate, ds.ContentTime = d.date, d.time
    return ds


def set_pixels(ds, frames: list, bits_alloc: int, bits_stored: int, signed: bool, transfer_syntax: str) -> None:
    """Store integer frames (row, column) in ``ds`` with its file meta, compressed losslessly in
    ``transfer_syntax`` where that is not Explicit VR Little Endian."""
    pydicom = _pydicom()
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    dtype = np.dtype(("<i" if signed else "<u") + str(bits_alloc // 8))
    lo, hi = _stored_range(bits_stored, signed)
    pixels = np.stack([np.clip(f, lo, hi).astype(dtype) for f in frames])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_alloc, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.SamplesPerPixel = 1
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    if int(pydicom.__version__.split(".")[0]) < 3:
        ds.is_little_endian, ds.is_implicit_VR = True, False
    if transfer_syntax != ExplicitVRLittleEndian:
        try:
            ds.compress(transfer_syntax, pixels if len(frames) > 1 else pixels[0])
            return
        except Exception:  # noqa: BLE001 - an encoder that cannot take these pixels: store them uncompressed
            pass
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW" if bits_alloc > 8 else "OB"


_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def _valid_uid(value) -> bool:
    text = str(value or "")
    return 0 < len(text) <= 64 and bool(_UID.match(text))


def _drop_empty_references(ds) -> None:
    """Remove copied sequence items that reference an empty or invalid UID (derived files never
    carry an empty UID), and sequences left without items."""
    for elem in list(ds):
        if elem.VR != "SQ":
            continue
        keep = []
        for item in elem.value:
            _drop_empty_references(item)
            refs = [item.get(k) for k in ("ReferencedSOPInstanceUID", "ReferencedSOPClassUID") if k in item]
            if all(_valid_uid(r) for r in refs):
                keep.append(item)
        if keep:
            elem.value = keep
        else:
            del ds[elem.tag]


def _save(ds, path: Path) -> None:
    try:
        ds.save_as(str(path), enforce_file_format=True)
    except TypeError:  # pydicom < 3
        ds.save_as(str(path), write_like_original=False)


def write_dicom_series(volume: Volume, ref: Volume, dest: str | Path, description: str = "") -> Path:
    """Write a derived series folder atomically (temp folder beside ``dest``, then rename)."""
    dest = Path(dest)
    datasets = _derived_datasets(volume, ref, description)
    tmp_dir = temp_dir(dest)
    try:
        with failures_as_bad_input(f"{public_path(dest)}: cannot write DICOM series"):
            for k, ds in enumerate(datasets):
                _save(ds, tmp_dir / f"IM{k + 1:05d}.dcm")
            replace_dir(tmp_dir, dest)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # gone already once it became dest
    return dest


def write_dicom_file(volume: Volume, ref: Volume, dest: str | Path, description: str = "") -> Path:
    """Write a one-slice derived image, or the derived object of a multi-frame image, as a single
    DICOM file (atomic)."""
    dest = Path(dest)
    if volume.array.shape[2] != 1 and "dicom_multiframe" not in ref.meta:
        raise BadInputError(
            f"{dest}: a .dcm file holds one slice; give a folder path for a {volume.array.shape[2]}-slice series"
        )
    (ds,) = _derived_datasets(volume, ref, description)
    with failures_as_bad_input(f"{public_path(dest)}: cannot write DICOM file"):
        atomic_write(dest, lambda tmp: _save(ds, tmp))
    return dest
