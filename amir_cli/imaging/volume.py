"""``Volume``: one image's pixels in physical units with the geometry and header to write it back,
and the checks every reader applies (sizes, pixel values, geometry, output data types).

Imported by ``io`` and ``dicom`` (neither imports the other at module level). No torch here.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import numpy as np

from amir_cli.errors import BadInputError

MIN_INPLANE = 16  # smallest in-plane size the network can take (pixel-unshuffle levels)
MAX_INPLANE = 8192  # largest in-plane size accepted (header checked before pixel data is read)
MAX_VOXELS = 2**31


@dataclass
class Volume:
    """One image: pixels in physical units plus the geometry and header needed to write it back."""

    array: np.ndarray  # float32, (I, J, K); a 2-D image is (I, J, 1)
    affine: np.ndarray  # 4x4 voxel -> world (RAS+, mm), float64
    modality: str | None = None  # 'CT', 'MR', 'PT' or None
    unit: str = "arbitrary"  # 'HU', 'SUV', 'arbitrary'
    source_format: str = "nifti"  # 'nifti', 'itk', 'dicom'
    source_dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))
    slice_axis: int = 2  # acquisition axis along which 2-D slices are taken
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array, dtype=np.float32)
        if self.array.ndim == 2:
            self.array = self.array[:, :, None]
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array must be 2-D or 3-D, got shape {self.array.shape}")
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume.affine must be 4x4, got {self.affine.shape}")
        self.source_dtype = np.dtype(self.source_dtype)
        if self.slice_axis not in (0, 1, 2):
            raise ValueError(f"Volume.slice_axis must be 0, 1 or 2, got {self.slice_axis}")

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along I, J, K in mm (norms of the affine's columns)."""
        s = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(s[0]), float(s[1]), float(s[2]))

    @property
    def inplane_spacing_mm(self) -> tuple[float, float]:
        """Pixel size along the two axes other than the slice axis, in mm."""
        s = self.spacing_mm
        return tuple(s[a] for a in range(3) if a != self.slice_axis)  # type: ignore[return-value]

    @property
    def inplane_shape(self) -> tuple[int, int]:
        """Pixels along the two axes other than the slice axis."""
        return tuple(n for a, n in enumerate(self.shape) if a != self.slice_axis)  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    def slices_first(self) -> np.ndarray:
        """The pixels as a contiguous float32 (slices, rows, columns) stack."""
        return np.ascontiguousarray(np.moveaxis(self.array, self.slice_axis, 0), dtype=np.float32)

    def with_array(self, array: np.ndarray, affine: np.ndarray | None = None) -> "Volume":
        """A copy with new pixels (physical units) and optionally a new affine (e.g. after --scale)."""
        return dataclasses.replace(
            self,
            array=np.asarray(array, dtype=np.float32),
            affine=self.affine.copy() if affine is None else np.asarray(affine, dtype=np.float64),
            meta=dict(self.meta),
        )


# --------------------------------------------------------------------------------------------
# LPS <-> RAS: the one place where the convention changes.


def ras_from_lps(x: np.ndarray) -> np.ndarray:
    """Flip the sign of the first two world axes (x, y): LPS (DICOM, ITK) <-> RAS (NIfTI).

    The flip is its own inverse, so this single function serves both directions. Takes a 4x4
    voxel->world affine (flips its world rows) or points / vectors of shape (..., 3).
    """
    x = np.array(x, dtype=np.float64)
    if x.shape == (4, 4):
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ x
    if x.shape[-1] != 3:
        raise ValueError(f"expected a 4x4 affine or (..., 3) points, got shape {x.shape}")
    x[..., :2] *= -1.0
    return x


lps_from_ras = ras_from_lps


# --------------------------------------------------------------------------------------------
# checks and data types shared by the readers and writers


def choose_slice_axis(shape: tuple[int, ...], spacing: tuple[float, ...], hint: int | None = None) -> int:
    """Acquisition axis: a header hint if given, else the only axis of size 1, else the axis with
    the coarsest spacing (ties -> 2) among those whose slices are large enough to restore."""
    if hint in (0, 1, 2):
        return int(hint)
    singles = [a for a in range(3) if shape[a] == 1]
    if len(singles) == 1:
        return singles[0]
    axes = [a for a in range(3) if min(shape[b] for b in range(3) if b != a) >= MIN_INPLANE] or [0, 1, 2]
    top = max(spacing[a] for a in axes)
    tied = [a for a in axes if spacing[a] >= top * (1 - 1e-3)]
    return 2 if 2 in tied else tied[-1]


def check_dimensions(shape: tuple[int, ...], slice_axis: int, what: str) -> None:
    """Reject images too small or absurdly large for restoration (before reading pixel data)."""
    inplane = [int(shape[a]) for a in range(3) if a != slice_axis]
    if min(inplane) < MIN_INPLANE:
        raise BadInputError(
            f"{what}: image is {inplane[0]}x{inplane[1]} in-plane; at least {MIN_INPLANE}x{MIN_INPLANE} is needed"
        )
    if max(inplane) > MAX_INPLANE:
        raise BadInputError(
            f"{what}: header claims {inplane[0]}x{inplane[1]} pixels in-plane; "
            f"at most {MAX_INPLANE} per axis is accepted"
        )
    n = int(np.prod([int(s) for s in shape], dtype=np.int64))
    if n > MAX_VOXELS:
        raise BadInputError(f"{what}: header claims {n} voxels; at most {MAX_VOXELS} are accepted")


READ_COPIES = 3  # the stored voxels, their float32 values and one working copy


def available_memory() -> int | None:
    """Bytes of memory available now (MemAvailable of /proc/meminfo, else free pages), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(shape, what: str, copies: float = READ_COPIES, doing: str = "reading") -> None:
    """Refuse before allocating when ``copies`` float32 arrays of ``shape`` exceed the available memory."""
    need = int(np.prod([int(s) for s in shape], dtype=np.int64)) * 4 * copies
    have = available_memory()
    if have is not None and need > have:
        raise BadInputError(
            f"{what}: {doing} a {'x'.join(str(int(s)) for s in shape)} image needs about {need / 2**30:.1f} GiB "
            f"of memory; {have / 2**30:.1f} GiB is available"
        )


def check_pixels(array: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        raise BadInputError(f"{what}: image contains {int(bad.sum())} NaN or infinite voxels")


def check_affine(affine: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise BadInputError(f"{what}: invalid geometry (singular or non-finite voxel-to-world matrix)")


def integer_dtype_for(lo: float, hi: float, preferred: np.dtype) -> np.dtype:
    """``preferred`` if [lo, hi] fits it, else the smallest of int16/int32 that does."""
    for dt in (np.dtype(preferred), np.dtype(np.int16), np.dtype(np.int32)):
        if dt.kind in "iu":
            info = np.iinfo(dt)
            if lo >= info.min and hi <= info.max:
                return dt
    return np.dtype(np.int32)


def output_dtype(volume: Volume) -> np.dtype:
    """Data type for NIfTI/ITK output: integer sources with integer physical values keep an
    integer type (CT stays integer HU); everything else is float32."""
    dt = volume.meta.get("output_dtype")
    if dt is not None:
        return np.dtype(dt)
    if volume.source_dtype.kind in "iu":
        return volume.source_dtype
    return np.dtype(np.float32)


def to_dtype(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round and clip a volume (I, J, K) to an integer type's range (a slab at a time: no float
    copy of the whole volume), or cast it to float32."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        return np.asarray(array, dtype=np.float32)
    info = np.iinfo(dtype)
    out = np.empty(np.shape(array), dtype)
    step = max(1, (1 << 22) // max(1, int(np.prod(out.shape[1:]))))
    for i in range(0, len(out), step):
        out[i : i + step] = np.clip(np.rint(array[i : i + step]), info.min, info.max)
    return out
