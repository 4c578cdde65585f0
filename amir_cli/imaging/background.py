"""PET backgrounds: whether they hold noise (the network reads the noise level there), and filling them.

Filtered back-projection (SPEC §3, what the network learned PET from) spreads the noise over the
whole field, background included. An iterative (OSEM) reconstruction, as clinical scanners make,
leaves the background almost noise-free; the network then takes the image for a clean one and
removes little of the body's noise (`benchmarks/pet_background.py`). Given that noise's level,
:func:`fill_background` fills such a background with noise as filtered back-projection spreads it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .degrade import FWHM_PER_SIGMA, PET_POSTFILTER_FWHM_MM

# Background: the slice smoothed WIDE_PX wide below BACKGROUND of its peak (a narrower smoothing of
# noise clipped at 0 falls to zero in places, however noisy the background).
WIDE_PX = 8.0
BACKGROUND = 0.01
BODY_PX, BODY = 2.0, 0.1  # body: the slice smoothed this wide above this fraction of its peak
MIN_BACKGROUND = 0.05  # the share of a slice that must be background to judge it
MIN_BODY_PX = 256
QUIET = 0.01  # background noise (RMS) below this fraction of the body's median: noise-free
SLICES = 16  # slices judged, evenly spaced
# The filled noise's standard deviation over the body's: chosen on the validation subjects' OSEM-shaped
# PET (`amir restore --pet-background-noise`), the largest of 0.5, 0.7, 0.85 and 1 that left no dose
# from 1/2 to 1/12 below its input (more reads the finest texture as noise at dose 1/2).
FILL_FRACTION = 0.5


def body_mask(slice2d: np.ndarray) -> np.ndarray:
    """The body of a PET slice: the slice smoothed over ``BODY_PX`` above ``BODY`` of its peak."""
    narrow = ndimage.gaussian_filter(np.asarray(slice2d, dtype=np.float64), BODY_PX, mode="nearest")
    return narrow > BODY * narrow.max()


def _judged(s: np.ndarray) -> tuple[float | None, np.ndarray]:
    """(:func:`background_noise` of the float64 slice ``s``, ``s`` smoothed over ``BODY_PX``)."""
    narrow = ndimage.gaussian_filter(s, BODY_PX, mode="nearest")
    wide = ndimage.gaussian_filter(s, WIDE_PX, mode="nearest")
    if not (wide.max() > 0 and narrow.max() > 0):
        return None, narrow
    background, body = wide < BACKGROUND * wide.max(), narrow > BODY * narrow.max()
    if background.mean() < MIN_BACKGROUND or body.sum() < MIN_BODY_PX:
        return None, narrow
    return float(np.sqrt(2.0 * np.mean(s[background] ** 2)) / np.median(s[body])), narrow


def background_noise(slice2d: np.ndarray) -> float | None:
    """The RMS of a PET slice's background (times sqrt(2): noise clipped at 0 loses about half) over
    the median activity of its body; None where the slice has too little of either."""
    return _judged(np.asarray(slice2d, dtype=np.float64))[0]


def noise_free_background(slices: np.ndarray) -> bool:
    """Whether the PET slices (slices first) have backgrounds almost free of noise, as an OSEM
    reconstruction leaves them: the median :func:`background_noise` of up to ``SLICES`` evenly spaced
    slices that can be judged is below ``QUIET``."""
    picked = np.unique(np.linspace(0, len(slices) - 1, min(SLICES, len(slices))).round().astype(int))
    judged = [v for v in (background_noise(slices[i]) for i in picked) if v is not None]
    return bool(judged) and float(np.median(judged)) < QUIET


def fill_background(slice2d: np.ndarray, sd: float, pixel_mm: float, rng) -> tuple[np.ndarray, np.ndarray | None]:
    """(``slice2d`` with its noise-free background filled with noise as filtered back-projection
    spreads it, ``FILL_FRACTION`` of the body's noise standard deviation ``sd`` (SUV); the filled
    mask), or the slice itself and None where its background already holds noise or cannot be judged.

    The noise is correlated as the post-filter of SPEC §3 correlates it (a Gaussian of
    ``degrade.PET_POSTFILTER_FWHM_MM``) and clipped at 0, as PET is; the background filled is where the
    slice smoothed over BODY_PX stays below BACKGROUND of its peak (nearer the body than what
    :func:`background_noise` judges)."""
    s = np.asarray(slice2d, dtype=np.float64)
    level, narrow = _judged(s)
    if level is None or level >= QUIET:
        return slice2d, None
    mask = narrow < BACKGROUND * narrow.max()
    sigma_px = PET_POSTFILTER_FWHM_MM / FWHM_PER_SIGMA / pixel_mm
    noise = ndimage.gaussian_filter(rng.standard_normal(s.shape), sigma_px, mode="wrap")
    noise *= FILL_FRACTION * sd / noise.std()
    filled = np.where(mask, np.clip(s + noise, 0.0, None), s)
    return filled.astype(np.asarray(slice2d).dtype, copy=False), mask
