"""Writing DICOM: a derived series (or one file) from a restored volume and the series it was read from.

New SeriesInstanceUID and SOPInstanceUIDs, DERIVED image type, a reference to each source image,
the source's own pixel encoding where the values fit it (else int16/uint16 with a rescale), the
source's transfer syntax where it is lossless and an encoder is installed (else uncompressed), and
the grid of the output where it differs from the source's (:mod:`amir_cli.imaging.dicom` reads).
A multi-frame source gives one multi-frame object (:mod:`amir_cli.imaging.dicom_write_frames`).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np

from amir_cli.errors import BadInputError, failures_as_bad_input
from amir_cli.files import atomic_write, public_path, replace_dir, temp_dir
from amir_cli.imaging.dicom_derive import (Derivation, Encoded, derive_header, ds_string, new_derivation,
                                           rescale_image, set_pixels, stored_range, valid_uid)
from amir_cli.imaging.dicom_tags import rescale
from amir_cli.imaging.dicom_write_frames import derived_multiframe
from amir_cli.imaging.intensity import ct_padding
from amir_cli.imaging.volume import Volume, check_dimensions

# Pixel padding (the air outside a CT's reconstruction circle) passes through the restore unchanged
_PADDING_TAGS = ("PixelPaddingValue", "PixelPaddingRangeLimit")
_PRIMARY_ONLY_CLASSES = {"1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.20"}  # PET, NM images


def _encode(values: np.ndarray, datasets: list, modality: str | None) -> list[Encoded]:
    """Stored integers and the rescale of each slice: the input's own encoding when every value fits
    it (lossless round trip), else int16/uint16 with a RescaleSlope chosen to fit."""
    n = values.shape[0]
    orig = []
    fits = True
    for k, ds in enumerate(datasets):
        slope, intercept = rescale(ds)
        bits = int(ds.get("BitsStored", ds.BitsAllocated))
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        lo, hi = stored_range(bits, signed)
        stored = np.rint((values[k] - intercept) / slope)
        if stored.size and (stored.min() < lo or stored.max() > hi):
            fits = False
            break
        orig.append(Encoded(stored, int(ds.BitsAllocated), bits, signed))
    if fits:
        return orig

    had_unit_slope = all(rescale(ds)[0] == 1.0 for ds in datasets)
    if modality != "PT" and had_unit_slope:
        v = np.rint(values)
        lo, hi = float(v.min()), float(v.max())
        signed = not (lo >= 0 and hi > 32767 and hi <= 65535)
        r = stored_range(16, signed)
        if lo >= r[0] and hi <= r[1]:
            return [Encoded(v[k], 16, 16, signed, slope="1") for k in range(n)]
    groups = [[k] for k in range(n)] if modality == "PT" else [list(range(n))]
    result: list = [None] * n
    for g in groups:
        m = float(np.max(np.abs(values[g]))) if values[g].size else 0.0
        slope_text = ds_string(m / 32767.0) if m > 0 else "1"
        slope = float(slope_text)
        for k in g:
            stored = np.clip(np.rint(values[k] / slope), -32768, 32767)
            result[k] = Encoded(stored, 16, 16, True, slope=slope_text)
    return result


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
    derivation = new_derivation(volume, ref, description)
    if "dicom_multiframe" in ref.meta:
        return [derived_multiframe(ref.meta["dicom_multiframe"], ref.meta["dicom_frames"], datasets, encoded, derivation)]
    return [_derived_slice(src, k, enc, derivation) for k, (src, enc) in enumerate(zip(datasets, encoded, strict=True))]


def _derived_slice(src, k: int, encoded: Encoded, d: Derivation):
    """Slice ``k`` of a derived series of single-frame images, from its source image ``src``."""
    from pydicom.dataset import Dataset

    # Image Type value 2: SECONDARY, except IODs that enumerate PRIMARY only (PET, NM)
    ds = derive_header(src, d, "PRIMARY" if str(src.get("SOPClassUID", "")) in _PRIMARY_ONLY_CLASSES else "SECONDARY")
    ds.DerivationDescription = d.description
    if valid_uid(src.get("SOPClassUID")) and valid_uid(src.get("SOPInstanceUID")):
        item = Dataset()
        item.ReferencedSOPClassUID = src.SOPClassUID
        item.ReferencedSOPInstanceUID = src.SOPInstanceUID
        ds.SourceImageSequence = [item]
    if not d.same_geometry:  # the new grid, in the tags the source had (geometry it lacked is not invented)
        ds.Rows, ds.Columns = encoded.stored.shape
        if "PixelSpacing" in src:
            ds.PixelSpacing = d.pixel_spacing
        if "ImageOrientationPatient" in src and "ImagePositionPatient" in src:
            ds.ImageOrientationPatient = d.orientation
            ds.ImagePositionPatient = d.position(k)
    if encoded.slope is None:
        if d.same_geometry:  # the source's own encoding: padding kept its stored value
            for tag in _PADDING_TAGS:
                if tag in src:
                    ds[tag] = copy.deepcopy(src[tag])
    else:
        rescale_image(ds, src, encoded)
        if d.same_geometry:
            _re_encoded_padding(ds, src, float(encoded.slope), encoded.signed)
    set_pixels(ds, [encoded.stored], encoded.bits_allocated, encoded.bits_stored, encoded.signed, d.transfer_syntax)
    return ds


def _re_encoded_padding(ds, src, slope: float, signed: bool) -> None:
    """The source's padding values in the new encoding, where the restore passed them through: below
    the CT window that the network reads (a padding value inside it was restored like any voxel)."""
    m, b = rescale(src)
    lo, hi = stored_range(16, signed)
    values = {tag: m * float(src[tag].value) + b for tag in _PADDING_TAGS if tag in src and src[tag].value is not None}
    if str(src.get("Modality", "")).upper() != "CT" or not values or not ct_padding(list(values.values())).all():
        return
    for tag, value in values.items():
        stored = int(np.rint(value / slope))
        if lo <= stored <= hi:
            ds.add_new(tag, "SS" if signed else "US", stored)


def _save(ds, path: Path) -> None:
    import pydicom

    try:  # dcmwrite, unlike save_as, writes a big-endian source's copy in the file meta's little endian
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
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


def check_one_file(volume: Volume, ref: Volume, dest: Path) -> None:
    """A single .dcm output holds one slice, or the one object of a multi-frame image."""
    if volume.array.shape[2] != 1 and "dicom_multiframe" not in ref.meta:
        raise BadInputError(
            f"{dest}: a .dcm file holds one slice; give a folder path for a {volume.array.shape[2]}-slice series"
        )


def write_dicom_file(volume: Volume, ref: Volume, dest: str | Path, description: str = "") -> Path:
    """Write a one-slice derived image, or the derived object of a multi-frame image, as a single
    DICOM file (atomic)."""
    dest = Path(dest)
    check_one_file(volume, ref, dest)
    (ds,) = _derived_datasets(volume, ref, description)
    with failures_as_bad_input(f"{public_path(dest)}: cannot write DICOM file"):
        atomic_write(dest, lambda tmp: _save(ds, tmp))
    return dest
