"""What every derived DICOM object shares, single-frame slice or multi-frame image: the derivation
(new series and instance UIDs, dates, output grid, transfer syntax), the source header copied with
that new identity, and the re-encoded pixels stored in it (:mod:`amir_cli.imaging.dicom_write` and
:mod:`amir_cli.imaging.dicom_write_frames` build on it).
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from amir_cli.imaging.dicom import _pydicom
from amir_cli.imaging.dicom_tags import rescale
from amir_cli.imaging.volume import Volume, ras_from_lps

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


def ds_string(value: float) -> str:
    """A number as a valid DS string (at most 16 characters)."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def stored_range(bits_stored: int, signed: bool) -> tuple[int, int]:
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


def _same_geometry(volume: Volume, ref: Volume) -> bool:
    """True when the volume still has the grid of the DICOM files it was read from."""
    shape, affine = ref.meta.get("dicom_shape"), ref.meta.get("dicom_affine")
    if shape is None or affine is None:
        return False
    return tuple(volume.array.shape) == tuple(shape) and np.allclose(volume.affine, affine, atol=1e-6)


# SeriesDescription labels: a restored series, and a simulated low-quality one (`amir degrade`, whose
# Volume.meta says "simulated"), which a viewer must never show as a restoration
RESTORED_LABEL, SIMULATED_LABEL = "AMIR", "SIMULATED (amir degrade)"


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
    label: str  # appended to the source's SeriesDescription

    @property
    def pixel_spacing(self) -> list[str]:
        return [ds_string(np.linalg.norm(self.lps[:3, 1])), ds_string(np.linalg.norm(self.lps[:3, 0]))]

    @property
    def orientation(self) -> list[str]:
        cosines = self.lps[:3, :2] / np.linalg.norm(self.lps[:3, :2], axis=0)
        return [ds_string(v) for v in np.concatenate([cosines[:, 0], cosines[:, 1]])]

    def position(self, k: int) -> list[str]:
        return [ds_string(v) for v in (self.lps @ [0.0, 0.0, float(k), 1.0])[:3]]


def new_derivation(volume: Volume, ref: Volume, description: str) -> Derivation:
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
        label=SIMULATED_LABEL if volume.meta.get("simulated") else RESTORED_LABEL,
    )


def output_syntax(source: str) -> str:
    """The source's transfer syntax where it is lossless and pydicom has an encoder for it, else
    Explicit VR Little Endian: a lossy input is never re-encoded lossily."""
    from pydicom import uid
    from pydicom.pixels import get_encoder

    if source in (uid.RLELossless, uid.JPEGLSLossless, uid.JPEG2000Lossless) and get_encoder(source).is_available:
        return source
    return uid.ExplicitVRLittleEndian


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
    source = str(src.get("SeriesDescription", "") or "").strip()[: 64 - len(d.label) - 1]  # the label is never cut
    ds.SeriesDescription = (source + " " + d.label).strip()
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
    lo, hi = stored_range(bits_stored, signed)
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


def valid_uid(value) -> bool:
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
            if all(valid_uid(r) for r in refs):
                keep.append(item)
        if keep:
            elem.value = keep
        else:
            del ds[elem.tag]


# The stored value -> real-world value maps beside the rescale: DICOM's (per frame or per image) and
# Philips' private scale slope, from which its "floating point" values are computed
_PHILIPS_MR = "Philips MR Imaging DD 001"
_FIRST_MAPPED, _LAST_MAPPED = 0x00409216, 0x00409211


def rescale_image(ds, src, encoded: Encoded) -> None:
    """A re-encoded image's new rescale in its own attributes, where needed (MR images, for instance,
    usually have none), and its other maps of stored values kept true."""
    if not (encoded.unit_slope and "RescaleSlope" not in src):
        ds.RescaleSlope, ds.RescaleIntercept = encoded.slope, "0"
    rescale_value_maps(ds, rescale(src), (float(encoded.slope), 0.0), encoded.signed)


def rescale_value_maps(ds, old: tuple[float, float], new: tuple[float, float], signed: bool) -> None:
    """Keep ``ds``'s other maps of stored values true after the rescale (slope, intercept) ``old``
    became ``new``, the stored values re-encoded (``signed``: int16, else uint16)."""
    (m, b), (m2, b2) = old, new
    lo, hi = stored_range(16, signed)
    for item in ds.get("RealWorldValueMappingSequence") or []:  # real = S stored + I, on the old stored values
        if "RealWorldValueSlope" in item:
            slope, intercept = float(item.RealWorldValueSlope), float(item.get("RealWorldValueIntercept", 0) or 0)
            item.RealWorldValueSlope = slope * m2 / m
            item.RealWorldValueIntercept = intercept + slope * (b2 - b) / m
        for tag, value in ((_FIRST_MAPPED, lo), (_LAST_MAPPED, hi)):
            if tag in item:
                item.add_new(tag, "SS" if signed else "US", value)
    try:
        scale = ds.get_private_item(0x2005, 0x0E, _PHILIPS_MR)  # Philips: float = displayed / (RS x this)
    except KeyError:
        return
    if scale.value is not None:
        scale.value = float(scale.value) * m / m2
