"""Reading DICOM: finding and grouping series, geometric sorting, rescale, PET SUV.

Writing a derived series is :mod:`amir_cli.imaging.dicom_write`.

Pixel (row r, column c) of a slice sits at IPP + c * dc * X + r * dr * Y (X, Y: the two cosines
of ImageOrientationPatient; PixelSpacing = [dr, dc]). The volume is indexed (column, row, slice),
so its LPS affine has columns dc*X, dr*Y, slice step and origin IPP of the first slice; the RAS
affine is ``ras_from_lps`` of it (the one LPS<->RAS function, in io.py).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np

from amir_cli.errors import BadInputError, one_line
from amir_cli.imaging.volume import Volume, check_dimensions, check_pixels, integer_dtype_for, ras_from_lps

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_MODALITIES = ("CT", "MR", "PT")
_UNITS = {"CT": "HU", "PT": "SUV"}


def _pydicom():
    import pydicom

    return pydicom


# --------------------------------------------------------------------------------------------
# finding and grouping files


def is_dicom_file(path: str | Path) -> bool:
    """True for a DICOM Part-10 file (128-byte preamble followed by 'DICM')."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def folder_dicom_files(folder: str | Path) -> list[Path]:
    """The DICOM files directly inside ``folder`` (by magic bytes or a .dcm/.dicom/.ima name)."""
    files = []
    for f in sorted(Path(folder).iterdir()):
        if f.name.startswith(".") or f.name.upper() == "DICOMDIR" or not f.is_file():
            continue
        if f.suffix.lower() in DICOM_SUFFIXES or is_dicom_file(f):
            files.append(f)
    return files


def _read_header(path: Path):
    """Header only (no pixel data); BadInputError for anything that is not DICOM."""
    pydicom = _pydicom()
    if not os.access(path, os.R_OK):
        raise BadInputError(f"{path}: file is not readable (permission denied)")
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:
        raise BadInputError(f"{path}: not a readable DICOM file ({one_line(exc)})") from None


def group_series(folder: str | Path) -> dict[str, list[tuple[Path, object]]]:
    """Image files of ``folder`` grouped by SeriesInstanceUID; BadInputError unless exactly one."""
    folder = Path(folder)
    if not any(True for f in folder.iterdir() if not f.name.startswith(".")):
        raise BadInputError(f"{folder}: folder is empty")
    files = folder_dicom_files(folder)
    if not files:
        raise BadInputError(
            f"{folder}: no DICOM files in this folder (a folder of image files or series folders is a batch)"
        )
    series: dict[str, list[tuple[Path, object]]] = {}
    for f in files:
        ds = _read_header(f)
        if str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")) == _DICOMDIR_CLASS:
            continue
        if "Rows" not in ds or "Columns" not in ds:
            continue  # not an image (structured report, presentation state, ...)
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            raise BadInputError(f"{f}: missing required tag SeriesInstanceUID (0020,000E)")
        series.setdefault(uid, []).append((f, ds))
    if not series:
        raise BadInputError(f"{folder}: no DICOM images in this folder")
    if len(series) > 1:
        parts = [
            f"{uid} (series number {items[0][1].get('SeriesNumber', '?')}, {items[0][1].get('Modality', '?')}, {len(items)} files)"
            for uid, items in sorted(series.items(), key=lambda kv: -len(kv[1]))
        ]
        raise BadInputError(f"{folder}: holds {len(series)} DICOM series, give one series folder: " + "; ".join(parts))
    return series


# --------------------------------------------------------------------------------------------
# reading


def read_series_folder(folder: str | Path) -> Volume:
    folder = Path(folder)
    (items,) = group_series(folder).values()
    return _build_volume(items, str(folder))


def read_dicom_file(path: str | Path) -> Volume:
    path = Path(path)
    ds = _read_header(path)
    if "Rows" not in ds or "Columns" not in ds:
        raise BadInputError(f"{path}: DICOM file holds no image (missing Rows/Columns)")
    return _build_volume([(path, ds)], str(path))


def _require(ds, keyword: str, what: str):
    pydicom = _pydicom()
    value = ds.get(keyword)
    if value is None or value == "" or (hasattr(value, "__len__") and len(value) == 0):
        tag = pydicom.datadict.tag_for_keyword(keyword)
        tag_text = f" ({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else ""
        raise BadInputError(f"{what}: missing required DICOM tag {keyword}{tag_text}")
    return value


def _floats(value, n: int, keyword: str, what: str) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except Exception:
        raise BadInputError(f"{what}: DICOM tag {keyword} is not numeric") from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise BadInputError(f"{what}: DICOM tag {keyword} must hold {n} numbers")
    return arr


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


def _check_headers(items: list[tuple[Path, object]], what: str) -> tuple[int, int]:
    """(rows, columns) shared by every slice; single-frame greyscale images only."""
    for _path, ds in items:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise BadInputError(f"{what}: multi-frame DICOM images are not supported")
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise BadInputError(f"{what}: colour DICOM images are not supported (SamplesPerPixel > 1)")
        for key in ("Rows", "Columns", "BitsAllocated"):
            _require(ds, key, str(_path))
    ds0 = items[0][1]
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    if any(int(ds.Rows) != rows or int(ds.Columns) != cols for _p, ds in items):
        raise BadInputError(f"{what}: slices of the series have different sizes")
    return rows, cols


def _sorted_slices(items: list[tuple[Path, object]], what: str):
    """(items, geometries, slice normal): the slices sorted by position along their common normal."""
    n = len(items)
    geo = [_geometry(ds, str(p), required=n > 1) for p, ds in items]
    x, y, dr, dc, _ = geo[0]
    for p_ds, g in zip(items, geo, strict=True):
        if not (
            np.allclose(g[0], x, atol=1e-4)
            and np.allclose(g[1], y, atol=1e-4)
            and abs(g[2] - dr) < 1e-4
            and abs(g[3] - dc) < 1e-4
        ):
            raise BadInputError(f"{what}: slices differ in orientation or pixel spacing ({p_ds[0].name})")
    normal = np.cross(x, y)
    # sort by position along the slice normal, not by file name or instance number
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
        raise BadInputError(
            f"{what}: slices are not evenly spaced (gaps {gaps.min():.3g} to {gaps.max():.3g} mm): missing slices?"
        )
    return (geo[-1][4] - geo[0][4]) / (n - 1)


def _read_pixels(items: list[tuple[Path, object]], rows: int, cols: int):
    """(array (column, row, slice) with the rescale applied, per-slice (slope, intercept), stored dtype)."""
    pydicom = _pydicom()
    array = np.empty((cols, rows, len(items)), dtype=np.float32)
    rescale = []
    source_dtype = None
    for k, (path, _hdr) in enumerate(items):
        try:
            full = pydicom.dcmread(str(path))
            pixels = full.pixel_array
        except Exception as exc:
            raise BadInputError(f"{path}: cannot decode DICOM pixel data ({one_line(exc)})") from None
        if pixels.shape != (rows, cols):
            raise BadInputError(f"{path}: pixel data shape {pixels.shape} does not match Rows x Columns")
        source_dtype = source_dtype or pixels.dtype
        slope = float(full.get("RescaleSlope", 1) or 1)
        intercept = float(full.get("RescaleIntercept", 0) or 0)
        rescale.append((slope, intercept))
        array[:, :, k] = (pixels.astype(np.float64) * slope + intercept).T
    return array, rescale, source_dtype


def _series_meta(items: list[tuple[Path, object]], what: str, rescale: list, affine: np.ndarray) -> dict:
    """What a derived series needs of its source (headers, files, rescale, grid) and its descriptions."""
    ds0 = items[0][1]
    return {
        "source_path": str(Path(what).resolve()),
        "dicom_datasets": [ds for _p, ds in items],
        "dicom_files": [str(p) for p, _ds in items],
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


def _build_volume(items: list[tuple[Path, object]], what: str) -> Volume:
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


# --------------------------------------------------------------------------------------------
# PET: Bq/ml <-> SUV (body weight)


def _parse_da(value) -> dt.date | None:
    text = str(value or "").strip().replace(".", "").replace("-", "")
    if len(text) < 8:
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def _parse_tm(value) -> dt.timedelta | None:
    text = str(value or "").strip().replace(":", "")
    if not text:
        return None
    try:
        whole, _, frac = text.partition(".")
        h = int(whole[0:2])
        m = int(whole[2:4]) if len(whole) >= 4 else 0
        s = int(whole[4:6]) if len(whole) >= 6 else 0
        f = float("0." + frac) if frac else 0.0
    except ValueError:
        return None
    return dt.timedelta(hours=h, minutes=m, seconds=s + f)


def _parse_dt(value) -> dt.datetime | None:
    text = str(value or "").strip()
    for sign in "+-":
        if sign in text[8:]:
            text = text[: 8 + text[8:].index(sign)]  # drop the UTC offset: both times share it
    day = _parse_da(text[:8])
    if day is None:
        return None
    tm = _parse_tm(text[8:]) if len(text) > 8 else dt.timedelta(0)
    return dt.datetime.combine(day, dt.time()) + (tm or dt.timedelta(0))


def _when(date_value, time_value) -> dt.datetime | None:
    day, tm = _parse_da(date_value), _parse_tm(time_value)
    if tm is None:
        return None
    return dt.datetime.combine(day or dt.date(2000, 1, 1), dt.time()) + tm


def suv_factors(datasets: list, what: str = "PET series") -> np.ndarray:
    """Per-slice factor SUV = Bq/ml * factor (body weight), factor = weight_g / decayed dose.

    DecayCorrection START: images are decay-corrected to the series start (SeriesDate/Time, else the
    earliest acquisition), so the dose is decayed from injection to then; ADMIN: corrected to the
    injection, no decay; NONE: each slice is decayed to its own AcquisitionTime. Units GML are
    already SUV (factor 1).
    """
    ds0 = datasets[0]
    units = str(_require(ds0, "Units", what)).strip().upper()
    n = len(datasets)
    if units == "GML":
        return np.ones(n)
    if units != "BQML":
        raise BadInputError(f"{what}: PET Units {units!r} cannot be converted to SUV (need BQML or GML)")
    weight_kg = float(_require(ds0, "PatientWeight", what))
    if not weight_kg > 0:
        raise BadInputError(f"{what}: PatientWeight (0010,1030) must be positive")
    seq = _require(ds0, "RadiopharmaceuticalInformationSequence", what)
    info = seq[0]
    dose = float(_require(info, "RadionuclideTotalDose", what))
    half_life = float(_require(info, "RadionuclideHalfLife", what))
    if not (dose > 0 and half_life > 0):
        raise BadInputError(f"{what}: RadionuclideTotalDose and RadionuclideHalfLife must be positive")
    correction = str(_require(ds0, "DecayCorrection", what)).strip().upper()
    weight_g = weight_kg * 1000.0
    if correction == "ADMIN":
        return np.full(n, weight_g / dose)
    if correction not in ("START", "NONE"):
        raise BadInputError(f"{what}: unknown DecayCorrection {correction!r} (expected START, ADMIN or NONE)")

    date_known = True
    injection = _parse_dt(info.get("RadiopharmaceuticalStartDateTime"))
    if injection is None:
        start_time = _require(info, "RadiopharmaceuticalStartTime", what)
        date = ds0.get("SeriesDate") or ds0.get("AcquisitionDate") or ds0.get("StudyDate")
        date_known = bool(date)
        injection = _when(date, start_time)
        if injection is None:
            raise BadInputError(f"{what}: RadiopharmaceuticalStartTime is not a valid time")

    def acquisition(ds) -> dt.datetime | None:
        return _parse_dt(ds.get("AcquisitionDateTime")) or _when(
            ds.get("AcquisitionDate") or ds.get("SeriesDate"), ds.get("AcquisitionTime")
        )

    if correction == "START":
        ref = _when(ds0.get("SeriesDate") or ds0.get("AcquisitionDate"), ds0.get("SeriesTime"))
        if ref is None:
            times = [t for t in (acquisition(ds) for ds in datasets) if t is not None]
            if not times:
                raise BadInputError(f"{what}: missing required DICOM tag SeriesTime (0008,0031)")
            ref = min(times)
        refs = [ref] * n
    else:  # NONE
        refs = []
        for ds in datasets:
            t = acquisition(ds)
            if t is None:
                raise BadInputError(f"{what}: missing required DICOM tag AcquisitionTime (0008,0032)")
            refs.append(t)

    factors = np.empty(n)
    for k, ref in enumerate(refs):
        seconds = (ref - injection).total_seconds()
        if seconds < 0 and not date_known:
            seconds += 86400.0  # injection before midnight, scan after
        if seconds < 0:
            raise BadInputError(f"{what}: injection time is after the scan time; cannot compute SUV")
        factors[k] = weight_g / (dose * 2.0 ** (-seconds / half_life))
    return factors
