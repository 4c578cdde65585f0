"""PET backgrounds: whether they hold noise (the network reads the noise level there), and filling them.

Filtered back-projection (SPEC §3, what the network learned PET from) spreads the noise over the
whole field, background included. An iterative (OSEM) reconstruction, as clinical scanners make,
leaves the background almost noise-free; the network then takes the image for a clean one and
removes little of the body's noise (`benchmarks/pet_background.py`). Given that noise's level,
:func:`fill_background` fills such a background with noise as filtered back-projection spreads it;
without it, :func:`choose_sd` chooses a level for a 3-D image from its neighbouring slices.
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
# Choosing the level without one given (:func:`choose_sd`): the SDs tried, over the body's median
# activity; the probe slices restored at each; the share of the best level used, and the larger share
# used where that level is at least NOISY_LEVEL (the noisiest images, whose best share is larger);
# the slices needed.
CHOICES = (0.0, *(0.03 * 1.25**k for k in range(18)))
PROBES = 6
CHOSEN_SHARE = 0.25
NOISY_LEVEL, NOISY_SHARE = 0.03 * 1.25**15, 0.75
MIN_SLICES = 5
# Slices farther apart than this are not chosen by (the choice was validated on 2 to 4 mm slices,
# `benchmarks/pet_background.py --choice`): on 6 mm slices the anatomy between them misleads the
# prediction, and the choice lost up to 0.67 dB at dose 1/2.
MAX_SLICE_MM = 4.0


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


def neighbour_prediction(slices: np.ndarray, i: int, lag: int = 1) -> np.ndarray:
    """Slice ``i`` of slices-first ``slices`` predicted from the slices ``lag`` and ``2 lag`` away on
    either side by fourth-order interpolation along the slice axis: a smooth anatomy's curvature
    cancels, and the prediction's noise is those slices' own, independent of slice ``i``'s."""
    near = np.asarray(slices[i - lag], np.float64) + slices[i + lag]
    far = np.asarray(slices[i - 2 * lag], np.float64) + slices[i + 2 * lag]
    return (4.0 * near - far) / 6.0


def neighbour_lag(n: int, slice_mm: float) -> int:
    """How many slices apart :func:`choose_sd` takes the neighbours of ``n`` slices ``slice_mm`` apart:
    as far as ``MAX_SLICE_MM`` and the slices allow (a 3-D post-filter correlates the noise of adjacent
    thin slices, and neighbours whose noise is the probe's own favour keeping it); 0: none can."""
    if n < MIN_SLICES or not 0 < slice_mm <= MAX_SLICE_MM:
        return 0
    return max(1, min(int(MAX_SLICE_MM // slice_mm), (n - 1) // 4))


def probe_slices(slices: np.ndarray, slice_mm: float) -> np.ndarray:
    """The indices of the slices :func:`choose_sd` restores: up to ``PROBES`` evenly spaced slices that
    have two neighbours either side (:func:`neighbour_lag` apart) and a body; none where there are
    fewer than ``MIN_SLICES`` or they lie more than ``MAX_SLICE_MM`` apart."""
    n, lag = len(slices), neighbour_lag(len(slices), slice_mm)
    if not lag:
        return np.array([], dtype=int)
    spaced = np.unique(np.linspace(2 * lag, n - 1 - 2 * lag, min(PROBES, n - 4 * lag)).round().astype(int))
    return np.array([i for i in spaced if body_mask(slices[i]).any()], dtype=int)


def chosen_level(slices: np.ndarray, slice_mm: float, restore) -> tuple[float, float] | None:
    """(the level of ``CHOICES`` that restores the noise-free activity best, the probes' body median
    activity) for slices-first PET whose slices lie ``slice_mm`` apart; None: no
    :func:`probe_slices` to choose by.

    ``restore(probes, sd)`` restores the slices ``probes`` with their backgrounds filled for ``sd``
    (0: as they are). Up to ``PROBES`` slices, each with two neighbours on either side
    (:func:`neighbour_lag` apart), are restored at every SD of ``CHOICES`` (times the median); the
    level whose outputs lie nearest their :func:`neighbour_prediction` in the body wins: the
    neighbours' noise is independent of the probe's, so that distance is least where the output is
    nearest the noise-free activity."""
    picked = probe_slices(slices, slice_mm)
    if not len(picked):
        return None
    probes = np.asarray(slices[picked], dtype=np.float64)
    masks = [body_mask(s) for s in probes]
    median = float(np.median(np.concatenate([s[m] for s, m in zip(probes, masks)])))
    lag = neighbour_lag(len(slices), slice_mm)
    targets = [neighbour_prediction(slices, i, lag) for i in picked]

    def distance(sd: float) -> float:
        out = np.asarray(restore(probes, sd), dtype=np.float64)
        return float(np.mean([np.mean((o - t)[m] ** 2) for o, t, m in zip(out, targets, masks)]))

    return min(CHOICES, key=lambda r: distance(r * median)), median


def level_share(level: float) -> float:
    """The share of a :func:`chosen_level` that is filled: a standard-dose scan keeps noise of its
    own, and the best level for the activity removes too much of it at mild doses, so
    ``CHOSEN_SHARE``, or ``NOISY_SHARE`` where the level is at least ``NOISY_LEVEL`` (both chosen on
    validation and training subjects' simulated PET, `benchmarks/pet_background.py --choice`)."""
    return NOISY_SHARE if level >= NOISY_LEVEL else CHOSEN_SHARE


def choose_sd(slices: np.ndarray, slice_mm: float, restore) -> float | None:
    """The `--pet-background-noise` SD (SUV) for slices-first PET whose background is noise-free and
    whose slices lie ``slice_mm`` apart, chosen from the image alone: the :func:`level_share` of the
    :func:`chosen_level` (``restore`` as there); 0.0: fill nothing; None: no :func:`probe_slices` to
    choose by."""
    chosen = chosen_level(slices, slice_mm, restore)
    if chosen is None:
        return None
    level, median = chosen
    return level_share(level) * level * median
