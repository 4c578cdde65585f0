"""Reading DICOM: one series (single-frame files, or the frames of one multi-frame file) as a
volume: geometric sorting, rescale, PET SUV.

Grouping a folder into series is :mod:`amir_cli.imaging.dicom_series`, the frames of multi-frame
files :mod:`amir_cli.imaging.dicom_frames`; writing a derived series :mod:`amir_cli.imaging.dicom_write`.

Pixel (row r, column c) of a slice sits at IPP + c * dc * X + r * dr * Y (X, Y: the two cosines
of ImageOrientationPatient; PixelSpacing = [dr, dc]). The volume is indexed (column, row, slice),
so its LPS affine has columns dc*X, dr*Y, slice step and origin IPP of the first slice; the RAS
affine is ``ras_from_lps`` of it (the one LPS<->RAS function, in io.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from amir_cli.errors import BadInputError, one_line
from amir_cli.imaging.dicom_frames import frame_headers, is_multiframe
from amir_cli.imaging.dicom_objects import not_an_image
from amir_cli.imaging.dicom_series import (DICOM_SUFFIXES, describe_series, folder_dicom_files, folder_series,  # noqa: F401
                                           is_dicom_file, read_header, scan_folder)
from amir_cli.imaging.dicom_suv import suv_factors
from amir_cli.imaging.dicom_tags import _floats, _pydicom, _require
from amir_cli.imaging.dicom_tags import rescale as header_rescale  # `rescale` names the series' list here
from amir_cli.imaging.volume import Volume, check_dimensions, check_pixels, integer_dtype_for, ras_from_lps

_MODALITIES = ("CT", "MR", "PT")
_UNITS = {"CT": "HU", "PT": "SUV"}
_TILT_DEGREES = 0.1  # the smallest angle between the slice step and the slice normal that is told


def group_series(folder: str | Path) -> dict[str, list]:
    """The image series of ``folder`` (see :func:`scan_folder`); BadInputError unless exactly one."""
    series, _notes = scan_folder(folder)
    if len(series) > 1:
        raise BadInputError(f"{folder}: holds {len(series)} DICOM series, give one series folder: {describe_series(series)}")
    return series


# --------------------------------------------------------------------------------------------
# reading


def read_series_folder(folder: str | Path, series_uid: str | None = None) -> Volume:
    """One series of a folder: the only one, or the one whose SeriesInstanceUID is ``series_uid``."""
    folder = Path(folder)
    series, notes = scan_folder(folder)
    if series_uid is None and len(series) > 1:
        raise BadInputError(f"{folder}: holds {len(series)} DICOM series, give one series folder: {describe_series(series)}")
    if series_uid is not None and series_uid not in series:
        raise BadInputError(f"{folder}: holds no image series {series_uid}")
    items = series[series_uid] if series_uid is not None else next(iter(series.values()))
    return _build_volume(items, str(folder), notes)


def read_dicom_file(path: str | Path) -> Volume:
    path = Path(path)
    ds = read_header(path)
    kind = not_an_image(ds)
    if kind:
        raise BadInputError(f"{path}: {kind}")
    return _build_volume([(path, ds)], str(path), [])


def _slices(items: list, what: str) -> tuple[list, list[str], object]:
    """[(path, header, frame)] of the series: a file per slice (frame None), or the frames of one
    multi-frame file; notes; the multi-frame header (None for single-frame files)."""
    multi = [ds for _p, ds in items if is_multiframe(ds)]
    if not multi:
        return [(p, ds, None) for p, ds in items], [], None
    if len(items) > 1:
        raise BadInputError(f"{what}: a series of {len(items)} files of which {len(multi)} hold several frames; give one multi-frame file")
    (path, ds), = items
    headers, notes = frame_headers(ds, str(path))
    return [(path, h, k) for k, h in enumerate(headers)], notes, ds


def _geometry(ds, what: str, required: bool):
    """(X, Y, dr, dc, IPP) of one slice; single files without geometry get an identity default."""
    if required or "ImageOrientationPatient" in ds:
        iop = _floats(_require(ds, "ImageOrientationPatient", what), 6, "ImageOrientationPatient", what)
    else:
        iop = np.array([1.0, 0, 0, 0, 1.0, 0])
    if required or "ImagePositionPatient" in ds:
        ipp = _floats(_require(ds, "ImagePositionPatient", what), 3, "ImagePositionPatient", what)
    else:
        ipp = np.zeros(3)
    if "PixelSpacing" in ds or required:
        ps = _floats(_require(ds, "PixelSpacing", what), 2, "PixelSpacing", what)
    elif "ImagerPixelSpacing" in ds:
        ps = _floats(ds.ImagerPixelSpacing, 2, "ImagerPixelSpacing", what)
    else:
        ps = np.ones(2)
    x, y = iop[:3], iop[3:]
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx < 1e-6 or ny < 1e-6 or abs(np.dot(x / nx, y / ny)) > 1e-3 or np.any(ps <= 0):
        raise BadInputError(f"{what}: invalid ImageOrientationPatient or PixelSpacing")
    return x / nx, y / ny, float(ps[0]), float(ps[1]), ipp


def _assumed_geometry(ds) -> list[str]:
    """Notes on what :func:`_geometry` assumed for a single image without those tags."""
    notes = []
    if "PixelSpacing" not in ds and "ImagerPixelSpacing" not in ds:
        notes.append("no PixelSpacing: 1 mm pixels assumed")
    if "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
        notes.append("no ImageOrientationPatient/ImagePositionPatient: the image's own axes and origin assumed")
    return notes


def _check_headers(items: list, what: str) -> tuple[int, int]:
    """(rows, columns) shared by every slice; greyscale images only."""
    for path, ds, _frame in items:
        photometric = str(ds.get("PhotometricInterpretation", "") or "MONOCHROME2").upper()
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or not photometric.startswith("MONOCHROME"):
            raise BadInputError(f"{what}: colour DICOM images are not supported (PhotometricInterpretation {photometric})")
        for key in ("Rows", "Columns", "BitsAllocated"):
            _require(ds, key, str(path))
    ds0 = items[0][1]
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    if any(int(ds.Rows) != rows or int(ds.Columns) != cols for _p, ds, _f in items):
        raise BadInputError(f"{what}: slices of the series have different sizes")
    return rows, cols


def _where(path: Path, frame: int | None) -> str:
    return str(path) if frame is None else f"{path} (frame {frame + 1})"


def _sorted_slices(items: list, what: str):
    """(items, geometries, slice normal): the slices sorted by position along their common normal."""
    n = len(items)
    geo = [_geometry(ds, _where(p, f), required=n > 1) for p, ds, f in items]
    x, y, dr, dc, _ = geo[0]
    for item, g in zip(items, geo, strict=True):
        if not (
            np.allclose(g[0], x, atol=1e-4)
            and np.allclose(g[1], y, atol=1e-4)
            and abs(g[2] - dr) < 1e-4
            and abs(g[3] - dc) < 1e-4
        ):
            raise BadInputError(f"{what}: slices differ in orientation or pixel spacing ({_where(Path(item[0].name), item[2])})")
    normal = np.cross(x, y)
    # sort by position along the slice normal, not by file name, instance or frame number
    order = sorted(range(n), key=lambda i: float(np.dot(geo[i][4], normal)))
    return [items[i] for i in order], [geo[i] for i in order], normal


def _slice_step(geo: list, normal: np.ndarray, ds0, what: str) -> np.ndarray:
    """The LPS step from one slice to the next: even spacing required; one slice: its thickness."""
    n = len(geo)
    if n == 1:
        thickness = float(ds0.get("SpacingBetweenSlices", 0) or 0) or float(ds0.get("SliceThickness", 0) or 0) or 1.0
        return normal * abs(thickness)
    positions = np.array([float(np.dot(g[4], normal)) for g in geo])
    gaps = np.diff(positions)
    if np.any(gaps < 1e-3):
        raise BadInputError(
            f"{what}: several images share one slice position (multiple echoes, phases or series mixed?)"
        )
    step_mean = (positions[-1] - positions[0]) / (n - 1)
    if np.max(np.abs(gaps - step_mean)) > max(0.05, 0.02 * step_mean):
        raise BadInputError(f"{what}: {_uneven(gaps, positions)}")
    return (geo[-1][4] - geo[0][4]) / (n - 1)


def _tilt(step: np.ndarray, normal: np.ndarray) -> list[str]:
    """A note where the slices step off their normal (a CT's gantry tilt): the affine is sheared."""
    degrees = float(np.degrees(np.arccos(min(1.0, abs(float(np.dot(step, normal))) / float(np.linalg.norm(step))))))
    if degrees < _TILT_DEGREES:
        return []
    return [f"slices step {degrees:.1f} degrees off their normal (a CT's gantry tilt): the geometry is sheared, "
            "so viewers that ignore shear display a NIfTI, MetaImage or NRRD of it wrongly"]


def _uneven(gaps: np.ndarray, positions: np.ndarray) -> str:
    """Uneven slice spacing in words: where slices are missing when every gap is a multiple of the
    common step, else the range of the gaps."""
    step = float(np.median(gaps))
    ratio = gaps / step
    missing = np.rint(ratio).astype(int) - 1
    refused = "restore a complete series with even spacing"
    if np.all(np.abs(ratio - np.rint(ratio)) < 0.05) and missing.min() >= 0 and missing.sum() > 0:
        at = ", ".join(f"after slice {i + 1} at {positions[i]:.4g} mm" for i in np.nonzero(missing)[0][:3])
        return (f"slices are not evenly spaced: {missing.sum()} missing where the step is {step:.4g} mm "
                f"({at}); {refused}")
    return f"slices are not evenly spaced (gaps {gaps.min():.3g} to {gaps.max():.3g} mm); {refused}"


def decode_frames(path: Path, cache: dict | None = None) -> np.ndarray:
    """The stored pixel values of a file, all frames (frame, row, column), decoded once per ``cache``."""
    cache = {} if cache is None else cache
    if path not in cache:
        try:
            pixels = _pydicom().dcmread(str(path)).pixel_array
        except Exception as exc:
            raise BadInputError(f"{path}: cannot decode DICOM pixel data ({one_line(exc)})") from None
        cache.clear()  # one file at a time: the series' files in order, or one multi-frame file
        cache[path] = pixels if pixels.ndim == 3 else pixels[None]
    return cache[path]


def _read_pixels(items: list, rows: int, cols: int):
    """(array (column, row, slice) with the rescale applied, per-slice (slope, intercept), stored dtype)."""
    array = np.empty((cols, rows, len(items)), dtype=np.float32)
    rescale = []
    cache: dict = {}
    frames = None
    for k, (path, header, frame) in enumerate(items):
        frames = decode_frames(path, cache)
        if frames.shape[1:] != (rows, cols) or (frame or 0) >= frames.shape[0]:
            raise BadInputError(f"{path}: pixel data shape {frames.shape} does not match Rows x Columns (x frames)")
        slope, intercept = header_rescale(header)
        rescale.append((slope, intercept))
        array[:, :, k] = (frames[frame or 0].astype(np.float64) * slope + intercept).T
    return array, rescale, frames.dtype


def _series_meta(items: list, what: str, rescale: list, affine: np.ndarray) -> dict:
    """What a derived series needs of its source (headers, files, frames, rescale, grid) and its descriptions."""
    ds0 = items[0][1]
    return {
        "source_path": str(what),
        "dicom_datasets": [ds for _p, ds, _f in items],
        "dicom_files": [str(p) for p, _ds, _f in items],
        "dicom_frames": [f for _p, _ds, f in items],
        "dicom_rescale": rescale,
        "dicom_modality": str(ds0.get("Modality", "") or "").upper(),
        "dicom_shape": (int(ds0.Columns), int(ds0.Rows), len(items)),
        "dicom_affine": affine.copy(),
        "series_instance_uid": str(ds0.get("SeriesInstanceUID", "")),
        "series_description": str(ds0.get("SeriesDescription", "") or ""),
        "description": " ".join(
            str(ds0.get(k, "") or "") for k in ("StudyDescription", "SeriesDescription", "ProtocolName")
        ).strip(),
        "body_part": str(ds0.get("BodyPartExamined", "") or ""),
    }


def _build_volume(items: list, what: str, notes: list[str]) -> Volume:
    syntaxes = {str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "") for _p, ds in items}
    items, frame_notes, multiframe = _slices(items, what)
    n = len(items)
    ds0 = items[0][1]
    rows, cols = _check_headers(items, what)
    items, geo, normal = _sorted_slices(items, what)
    x, y, dr, dc, _ = geo[0]

    # header sanity before reading any pixel data
    check_dimensions((cols, rows, n), 2, what)
    step = _slice_step(geo, normal, ds0, what)

    lps = np.eye(4)
    lps[:3, 0] = x * dc
    lps[:3, 1] = y * dr
    lps[:3, 2] = step
    lps[:3, 3] = geo[0][4]
    affine = ras_from_lps(lps)

    modality_raw = str(ds0.get("Modality", "") or "").upper()
    modality = modality_raw if modality_raw in _MODALITIES else None

    array, rescale, source_dtype = _read_pixels(items, rows, cols)
    check_pixels(array, what)

    meta = _series_meta(items, what, rescale, affine)
    meta["notes"] = list(notes) + frame_notes + (_assumed_geometry(ds0) if n == 1 else _tilt(step, normal))
    meta["dicom_transfer_syntax"] = syntaxes.pop() if len(syntaxes) == 1 else ""
    if multiframe is not None:
        meta["dicom_multiframe"] = multiframe
    unit = _UNITS.get(modality or "", "arbitrary")
    integer_valued = all(s == 1.0 and float(b).is_integer() for s, b in rescale)
    if modality == "PT":
        factors = suv_factors(meta["dicom_datasets"], what)
        array *= factors[None, None, :].astype(np.float32)
        meta["suv_factors"] = factors
        meta["pet_units"] = str(ds0.get("Units", "")).upper()
        integer_valued = False
    if integer_valued:
        meta["output_dtype"] = integer_dtype_for(float(array.min()), float(array.max()), source_dtype)
    else:
        meta["output_dtype"] = np.dtype(np.float32)
    return Volume(
        array=array,
        affine=affine,
        modality=modality,
        unit=unit,
        source_format="dicom",
        source_dtype=np.dtype(source_dtype),
        slice_axis=2,
        meta=meta,
    )
