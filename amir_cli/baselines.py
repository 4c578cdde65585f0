"""Classical restorations that `amir benchmark` scores beside AMIR (no network here).

All functions take a slices-first stack ``(S, H, W)`` in physical units and return a float32 stack
in the same units.

* **ct-denoise: non-local means** (scikit-image ``denoise_nl_means``, fast mode, 5x5 patches,
  13x13 search window) on each slice mapped to the network's [0, 1] range (HU clipped to
  [-1024, 3071]), with the noise level sigma estimated per slice (:func:`noise_sigma`) and
  ``h = 1.2 sigma``.  BM3D (PyPI ``bm3d``) was tried: about 9 s per 256x256 slice on one CPU core
  against 0.13 s for NLM, no better on quarter-dose CT with the same sigma estimate, and it needs a
  compiled extra package; so NLM is the CT baseline.
* **pet-synthesis: Gaussian post-filter**, in-plane FWHM :data:`PET_FWHM_MM` (5 mm, the middle of
  the 4-6 mm clinical range), sigma per axis from the pixel spacing.  2-D, because the degradation
  and AMIR are slice-wise (and ``--max-slices`` keeps slices that are not neighbours).
* **mri-sr**: on the paper's same-grid setting the zero-filled input is the ``input`` row; where the
  k-space factor is known (``LQ_x2``, ``--simulate mri-sr:2``) the baseline is projection onto
  convex sets from that input (:func:`pocs_mr`: the measured k-space band and a non-negative
  image, the data consistency that `amir restore --kspace-factor` applies to the network's
  output); where the low-resolution grid is coarser than the reference (a paired case with an
  s-times smaller in-plane grid) the input is upsampled by k-space zero filling (as
  `amir restore --scale` does before the network; the ``input`` row) and
  :func:`bicubic_upsample` is the baseline.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from amir_cli.imaging import intensity
from amir_cli.tasks import CT_DENOISE, MRI_SR, PET_SYNTHESIS

NLM_H_FACTOR = 1.2  # h = 1.2 sigma: best of 0.6-2.0 sigma on quarter-dose head CT slices (fast mode)
NLM_PATCH_SIZE = 5
NLM_PATCH_DISTANCE = 6
PET_FWHM_MM = 5.0
_MAD_TO_SIGMA = 0.6744897501960817  # median(|N(0, 1)|)

BASELINE_NAMES = {CT_DENOISE: "nlm", PET_SYNTHESIS: f"gauss-{PET_FWHM_MM:g}mm", MRI_SR: "bicubic"}
DESCRIPTIONS = {
    CT_DENOISE: (
        f"non-local means (scikit-image, fast mode, {NLM_PATCH_SIZE}x{NLM_PATCH_SIZE} patches, "
        f"{2 * NLM_PATCH_DISTANCE + 1}x{2 * NLM_PATCH_DISTANCE + 1} search, h = {NLM_H_FACTOR} x sigma, "
        "sigma estimated per slice by the wavelet MAD rule) on HU mapped to [0, 1] from [-1024, 3071]"
    ),
    PET_SYNTHESIS: f"Gaussian post-filter, {PET_FWHM_MM:g} mm FWHM in-plane (clinical 4-6 mm range)",
    MRI_SR: (
        "same grid: the zero-filled input (input row) and, where the k-space factor is known (LQ_x2, LQ_x4), "
        "projection onto convex sets from it (measured k-space band, non-negative image; pocs row); "
        "coarser LQ grid: k-space zero filling (input row) and bicubic interpolation (bicubic row)"
    ),
}


def noise_sigma(image2d) -> float:
    """Gaussian noise standard deviation of a slice by Donoho's rule: median(|HH|) / 0.6745 of the
    finest diagonal Haar wavelet coefficients (what ``skimage.restoration.estimate_sigma`` does,
    without needing PyWavelets)."""
    x = np.asarray(image2d, dtype=np.float64)
    x = x[: x.shape[0] // 2 * 2, : x.shape[1] // 2 * 2]
    hh = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2.0
    return float(np.median(np.abs(hh)) / _MAD_TO_SIGMA)


def nlm_ct(hu_slices) -> np.ndarray:
    """Non-local means of each CT slice (HU in, HU out)."""
    from skimage.restoration import denoise_nl_means

    stack = np.asarray(hu_slices, dtype=np.float32)
    out = np.empty_like(stack)
    for i, hu in enumerate(stack):
        x = intensity.normalise(hu, CT_DENOISE).astype(np.float64)
        sigma = noise_sigma(x)
        if sigma <= 0:
            out[i] = hu
            continue
        y = denoise_nl_means(
            x,
            h=NLM_H_FACTOR * sigma,
            sigma=sigma,
            fast_mode=True,
            patch_size=NLM_PATCH_SIZE,
            patch_distance=NLM_PATCH_DISTANCE,
        )
        out[i] = intensity.denormalise(y, CT_DENOISE)
    return out


def gaussian_pet(suv_slices, pixel_mm: tuple[float, float], fwhm_mm: float = PET_FWHM_MM) -> np.ndarray:
    """In-plane Gaussian post-filter of ``fwhm_mm`` (pixel_mm: spacing of the H and W axes)."""
    stack = np.asarray(suv_slices, dtype=np.float32)
    sig = [fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / float(p) for p in pixel_mm]
    return ndimage.gaussian_filter(stack, sigma=(0.0, sig[0], sig[1]), mode="nearest").astype(np.float32)


def bicubic_upsample(slices, scale: int) -> np.ndarray:
    """Cubic-spline interpolation onto an s-times finer in-plane grid; the field of view is kept
    (pixel edges aligned), which puts the samples where `restore.scaled_affine` says they are."""
    stack = np.asarray(slices, dtype=np.float32)
    if scale == 1:
        return stack.copy()
    return ndimage.zoom(stack, (1, scale, scale), order=3, mode="grid-mirror", grid_mode=True).astype(np.float32)


def pocs_mr(zero_filled_slices, kspace_factor: int) -> np.ndarray:
    """Projection onto convex sets from a zero-filled MR stack (:func:`amir_cli.inference.data_consistency`
    started from the input itself)."""
    from amir_cli.inference import data_consistency

    stack = np.asarray(zero_filled_slices, dtype=np.float32)
    return data_consistency(stack, stack, kspace_factor)


def run_baseline(
    task: str, lq_slices, pixel_mm: tuple[float, float], scale: int = 1, kspace_factor: int | None = None
) -> tuple[str, np.ndarray] | None:
    """``(method name, restored stack)`` of the task's classical baseline, or None where the input
    itself is the classical answer (same-grid MR of unknown k-space factor)."""
    if task == CT_DENOISE:
        return BASELINE_NAMES[task], nlm_ct(lq_slices)
    if task == PET_SYNTHESIS:
        return BASELINE_NAMES[task], gaussian_pet(lq_slices, pixel_mm)
    if task == MRI_SR:
        if scale > 1:
            return BASELINE_NAMES[task], bicubic_upsample(lq_slices, scale)
        return ("pocs", pocs_mr(lq_slices, kspace_factor)) if kspace_factor else None
    raise ValueError(f"unknown task {task!r}")
