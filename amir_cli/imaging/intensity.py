"""Task intensity conventions (docs/protocol.md): physical units <-> the network's [0, 1] range.

ct-denoise works in HU, pet-synthesis in SUV (body weight), mri-sr in the paper's 12-bit range.
MR has no absolute unit, so a user's MR volume is first multiplied by ``mr_scale_factor(volume)``
and the output divided by the same factor: the restored image comes back in the input's units.
"""

from __future__ import annotations

import numpy as np

from amir_cli.errors import BadInputError
from amir_cli.tasks import MRI_SR, NORM_RANGE, TASKS

__all__ = ["check_task", "ct_padding", "denormalise", "mr_scale_factor", "normalise"]


# MR scaling: the 99.5th percentile of the foreground maps to this value of the 12-bit range,
# which leaves headroom below 4095 for bright structures (vessels, fat) and for the restoration.
MR_TARGET = 3000.0
MR_PERCENTILE = 99.5
# Foreground: voxels above this fraction of the 99.9th percentile of the positive voxels
# (excludes air/background so that the percentile describes tissue, whatever the field of view).
MR_FOREGROUND_FRACTION = 0.02


def check_task(task: str) -> str:
    if task not in TASKS:
        raise BadInputError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    return task


def mr_scale_factor(array: np.ndarray, what: str | None = None) -> float:
    """Factor mapping an MR volume's arbitrary units into the trained 12-bit range (``what``: the
    file its messages name).

    factor = MR_TARGET / P99.5(foreground), foreground = voxels > 2% of P99.9(positive voxels).
    Every step is homogeneous in the intensity scale, so ``mr_scale_factor(k * a) ==
    mr_scale_factor(a) / k``; a few extreme voxels (< 0.1%) barely move it. Deterministic.
    """
    where = f"{what}: " if what else ""
    a = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise BadInputError(f"{where}MR image contains NaN or infinite values")
    positive = a[a > 0]
    if positive.size == 0:
        raise BadInputError(f"{where}MR image has no positive voxels (all zero or negative): cannot scale it")
    top = float(np.percentile(positive, 99.9))
    foreground = positive[positive > MR_FOREGROUND_FRACTION * top]
    if foreground.size == 0:  # top == 0 cannot happen for positives; keep the guard anyway
        foreground = positive
    reference = float(np.percentile(foreground, MR_PERCENTILE))
    if not reference > 0:
        raise BadInputError(f"{where}MR image foreground is zero: cannot scale it")
    return MR_TARGET / reference


def _scale(task: str, mr_scale: float | None) -> float:
    if task == MRI_SR and mr_scale is not None:
        if not (np.isfinite(mr_scale) and mr_scale > 0):
            raise BadInputError(f"MR scale factor must be a positive number, got {mr_scale!r}")
        return float(mr_scale)
    return 1.0


def normalise(array: np.ndarray, task: str, mr_scale: float | None = None) -> np.ndarray:
    """Physical units -> float32 in [0, 1]: (MR: times mr_scale), clip to NORM_RANGE, rescale."""
    low, high = NORM_RANGE[check_task(task)]
    x = np.asarray(array, dtype=np.float64) * _scale(task, mr_scale)
    return ((np.clip(x, low, high) - low) / (high - low)).astype(np.float32)


def denormalise(array01: np.ndarray, task: str, mr_scale: float | None = None) -> np.ndarray:
    """[0, 1] -> physical units (float32); the exact inverse of ``normalise`` inside the range."""
    low, high = NORM_RANGE[check_task(task)]
    x = np.asarray(array01, dtype=np.float64) * (high - low) + low
    return (x / _scale(task, mr_scale)).astype(np.float32)


# CT pixel padding (the scanner's value outside its field of view: -3024, -2048 or -2000 HU) lies far
# below air, which noise and reconstruction leave a little below -1024 HU in places.
CT_PADDING_BELOW_HU = -1500.0


def ct_padding(hu) -> np.ndarray:
    """Where a CT image (HU) holds pixel padding: below CT_PADDING_BELOW_HU (`amir restore` passes it
    through as any value below the CT normalisation range; `amir degrade` adds it no noise)."""
    return np.asarray(hu) < CT_PADDING_BELOW_HU
