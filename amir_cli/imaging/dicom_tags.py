"""DICOM tag values as the readers need them: required tags named in one-line errors, numbers checked."""

from __future__ import annotations

import numpy as np

from amir_cli.errors import BadInputError


def _pydicom():
    import pydicom

    return pydicom


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


def rescale(ds) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of an image's header; (1, 0) where it has none."""
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
