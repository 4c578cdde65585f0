"""Classical restorations that `amir benchmark` scores beside AMIR (no network here).

All functions take a slices-first stack ``(S, H, W)`` in physical units and return a float32 stack
in the same units.

* **ct-denoise: non-local means** (scikit-image ``denoise_nl_means``, fast mode, 5x5 patches,
  13x13 search window) on each slice mapped to the network's [0, 1] range (HU clipped to
  [-1024, 3071]), with the noise level sigma estimated per slice (:func:`noise_sigma`) and
  ``h = 1.2 sigma``; and **BM3D** (PyPI ``bm3d``) with
  sigma = :data:`BM3D_SIGMA_FACTOR` x the robust spread of the slice's fine residual
  (:func:`residual_sigma`; FBP noise is correlated, so the finest wavelet band underestimates it).
* **pet-synthesis: Gaussian post-filters**, in-plane, sigma per axis from the pixel spacing: a
  fixed :data:`PET_FWHM_MM` (5 mm, the middle of the 4-6 mm clinical range) and an oracle whose
  FWHM is chosen per case and level on the reference (``gauss-oracle``: the best any Gaussian
  post-filter can do). 2-D, because the degradation and AMIR are slice-wise. BM3D's white-noise
  model does not fit PET noise, which is correlated over several millimetres.
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
from collections.abc import Callable

import numpy as np
from scipy import ndimage
from scipy.stats import median_abs_deviation

from amir_cli.imaging import intensity
from amir_cli.imaging.degrade import FWHM_PER_SIGMA, PET_POSTFILTER_FWHM_MM
from amir_cli.tasks import CT_DENOISE, MRI_SR, PET_SYNTHESIS

NLM_H_FACTOR = 1.2  # h = 1.2 sigma: best of 0.6-2.0 sigma on quarter-dose head CT slices (fast mode)
NLM_PATCH_SIZE = 5
NLM_PATCH_DISTANCE = 6
PET_FWHM_MM = PET_POSTFILTER_FWHM_MM  # the scanner's own post-filter in the simulation
_MAD_TO_SIGMA = 0.6744897501960817  # median(|N(0, 1)|)

BM3D_SIGMA_FACTOR = 2.0  # best of 1-3 on the CT validation subject at doses 1/4 and 1/20
ORACLE_FWHM_MM = np.arange(0.5, 12.01, 0.5)

DESCRIPTIONS = {
    CT_DENOISE: (
        f"non-local means (nlm: scikit-image, fast mode, {NLM_PATCH_SIZE}x{NLM_PATCH_SIZE} patches, "
        f"{2 * NLM_PATCH_DISTANCE + 1}x{2 * NLM_PATCH_DISTANCE + 1} search, h = {NLM_H_FACTOR} x sigma, "
        "sigma estimated per slice by the wavelet MAD rule) and BM3D (bm3d: PyPI bm3d, sigma = "
        f"{BM3D_SIGMA_FACTOR:g} x the MAD of the slice's residual to a 2-pixel Gaussian), on HU mapped to "
        "[0, 1] from [-1024, 3071]"
    ),
    PET_SYNTHESIS: (
        f"Gaussian post-filters in-plane: {PET_FWHM_MM:g} mm FWHM (gauss-{PET_FWHM_MM:g}mm, the clinical 4-6 mm "
        "range) and the FWHM that is best on the reference for each case and level (gauss-oracle)"
    ),
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


def _each_ct_slice(hu_slices, denoise) -> np.ndarray:
    """``denoise(x)`` of each CT slice mapped to [0, 1] (HU in, HU out); ``None`` keeps the slice."""
    stack = np.asarray(hu_slices, dtype=np.float32)
    out = np.empty_like(stack)
    for i, hu in enumerate(stack):
        y = denoise(intensity.normalise(hu, CT_DENOISE).astype(np.float64))
        out[i] = hu if y is None else intensity.denormalise(y, CT_DENOISE)
    return out


def nlm_ct(hu_slices) -> np.ndarray:
    """Non-local means of each CT slice (HU in, HU out)."""
    from skimage.restoration import denoise_nl_means

    def nlm(x):
        sigma = noise_sigma(x)
        if sigma <= 0:
            return None
        return denoise_nl_means(x, h=NLM_H_FACTOR * sigma, sigma=sigma, fast_mode=True,
                                patch_size=NLM_PATCH_SIZE, patch_distance=NLM_PATCH_DISTANCE)

    return _each_ct_slice(hu_slices, nlm)


def residual_sigma(image2d, sigma_px: float = 2.0) -> float:
    """Noise standard deviation of a slice from its residual to a Gaussian smoothing (1.4826 MAD)."""
    x = np.asarray(image2d, dtype=np.float64)
    r = x - ndimage.gaussian_filter(x, sigma_px)
    return float(1.4826 * median_abs_deviation(r, axis=None))


def bm3d_ct(hu_slices) -> np.ndarray:
    """BM3D of each CT slice (HU in, HU out)."""
    import bm3d

    def denoise(x):
        sigma = BM3D_SIGMA_FACTOR * residual_sigma(x)
        return None if sigma <= 0 else bm3d.bm3d(x, sigma)

    return _each_ct_slice(hu_slices, denoise)


def gaussian_pet(suv_slices, pixel_mm: tuple[float, float], fwhm_mm: float = PET_FWHM_MM) -> np.ndarray:
    """In-plane Gaussian post-filter of ``fwhm_mm`` (pixel_mm: spacing of the H and W axes)."""
    stack = np.asarray(suv_slices, dtype=np.float32)
    sig = [fwhm_mm / FWHM_PER_SIGMA / float(p) for p in pixel_mm]
    return ndimage.gaussian_filter(stack, sigma=(0.0, sig[0], sig[1]), mode="nearest").astype(np.float32)


def gaussian_oracle_pet(suv_slices, reference, pixel_mm: tuple[float, float]) -> tuple[float, np.ndarray]:
    """(FWHM, filtered stack): the Gaussian post-filter of :data:`ORACLE_FWHM_MM` whose mean PSNR
    (docs/protocol.md) against the reference slices is highest."""
    from amir_cli.metrics import volume_scores

    best = (-math.inf, 0.0, None)
    for fwhm in ORACLE_FWHM_MM:
        filtered = gaussian_pet(suv_slices, pixel_mm, float(fwhm))
        psnr = volume_scores(filtered, reference, PET_SYNTHESIS, slice_axis=0)["psnr"]
        if psnr > best[0]:
            best = (psnr, float(fwhm), filtered)
    return best[1], best[2]


def bicubic_upsample(slices, scale: int) -> np.ndarray:
    """Cubic-spline interpolation onto an s-times finer in-plane grid; the field of view is kept
    (pixel edges aligned), which puts the samples where `restore.scaled_affine` says they are."""
    stack = np.asarray(slices, dtype=np.float32)
    if scale == 1:
        return stack.copy()
    return ndimage.zoom(stack, (1, scale, scale), order=3, mode="grid-mirror", grid_mode=True).astype(np.float32)


def pocs_mr(zero_filled_slices, kspace_factor: int) -> np.ndarray:
    """Projection onto convex sets from a zero-filled MR stack (:func:`amir_cli.imaging.kspace.data_consistency`
    started from the input itself)."""
    from amir_cli.imaging.kspace import data_consistency

    stack = np.asarray(zero_filled_slices, dtype=np.float32)
    return data_consistency(stack, stack, kspace_factor)


def baseline_methods(
    task: str, lq_slices, reference, pixel_mm: tuple[float, float], scale: int = 1, kspace_factor: int | None = None
) -> list[tuple[str, Callable[[], np.ndarray]]]:
    """``(method name, function giving the restored stack)`` of the task's classical baselines; none
    where the input itself is the classical answer (same-grid MR of unknown k-space factor)."""
    if task == CT_DENOISE:
        return [("nlm", lambda: nlm_ct(lq_slices)), ("bm3d", lambda: bm3d_ct(lq_slices))]
    if task == PET_SYNTHESIS:
        return [(f"gauss-{PET_FWHM_MM:g}mm", lambda: gaussian_pet(lq_slices, pixel_mm)),
                ("gauss-oracle", lambda: gaussian_oracle_pet(lq_slices, reference, pixel_mm)[1])]
    if task == MRI_SR:
        if scale > 1:
            return [("bicubic", lambda: bicubic_upsample(lq_slices, scale))]
        return [("pocs", lambda: pocs_mr(lq_slices, kspace_factor))] if kspace_factor else []
    raise ValueError(f"unknown task {task!r}")
