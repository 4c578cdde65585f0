"""PET: Bq/ml <-> SUV (body weight) from the headers of a PET series (per slice or frame)."""

from __future__ import annotations

import datetime as dt

import numpy as np

from amir_cli.errors import BadInputError
from amir_cli.imaging.dicom_tags import _require


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
