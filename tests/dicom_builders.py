"""Small DICOM series and third-party checks for the restore/CLI tests.

Re-uses the builders of test_dicom.py (pydicom series written from crops of the real sample data in
tests/fixtures/data, with the LPS conversion done by hand, independent of amir_cli).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from test_dicom import _crop, _dciodvfy_errors, _dcm2niix, _rotation, make_series  # noqa: F401


def ct_series(folder: Path) -> Path:
    """6 slices of 64x64 head CT (uint16 stored, intercept -1024)."""
    hu, affine = _crop("ct/cranium_ct.nii.gz", (slice(96, 160), slice(100, 164), slice(50, 56)))
    stored = (hu.astype(np.int32) + 1024).astype(np.uint16)
    return make_series(folder, stored, affine, "CT", slope=1, intercept=-1024)


def mr_series(folder: Path) -> Path:
    """6 slices of 64x64 oblique T1 MR (uint16, no rescale)."""
    t1, affine = _crop("mr/colin27_t1_1mm.nii.gz", (slice(60, 124), slice(80, 144), slice(80, 86)))
    oblique = affine.copy()
    oblique[:3, :3] = _rotation(12.0, -7.0) @ affine[:3, :3]
    return make_series(folder, t1.astype(np.uint16) * 8, oblique, "MR", seed=1)


def dciodvfy_errors(folder: Path) -> set[str]:
    return set().union(*(_dciodvfy_errors(p) for p in sorted(folder.iterdir())))


dcm2niix = _dcm2niix
