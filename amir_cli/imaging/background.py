"""Whether a PET image's background holds noise: the network reads the noise level there.

Filtered back-projection (SPEC §3, what the network learned PET from) spreads the noise over the
whole field, background included. An iterative (OSEM) reconstruction, as clinical scanners make,
leaves the background almost noise-free; the network then takes the image for a clean one and
removes little of the body's noise (`benchmarks/pet_background.py`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Background: the slice smoothed WIDE_PX wide below BACKGROUND of its peak (a narrower smoothing of
# noise clipped at 0 falls to zero in places, however noisy the background).
WIDE_PX = 8.0
BACKGROUND = 0.01
BODY_PX, BODY = 2.0, 0.1  # body: the slice smoothed this wide above this fraction of its peak
MIN_BACKGROUND = 0.05  # the share of a slice that must be background to judge it
MIN_BODY_PX = 256
QUIET = 0.01  # background noise (RMS) below this fraction of the body's median: noise-free
SLICES = 16  # slices judged, evenly spaced


def background_noise(slice2d: np.ndarray) -> float | None:
    """The RMS of a PET slice's background (times sqrt(2): noise clipped at 0 loses about half) over
    the median activity of its body; None where the slice has too little of either."""
    s = np.asarray(slice2d, dtype=np.float64)
    wide = ndimage.gaussian_filter(s, WIDE_PX, mode="nearest")
    narrow = ndimage.gaussian_filter(s, BODY_PX, mode="nearest")
    if not (wide.max() > 0 and narrow.max() > 0):
        return None
    background, body = wide < BACKGROUND * wide.max(), narrow > BODY * narrow.max()
    if background.mean() < MIN_BACKGROUND or body.sum() < MIN_BODY_PX:
        return None
    return float(np.sqrt(2.0 * np.mean(s[background] ** 2)) / np.median(s[body]))


def noise_free_background(slices: np.ndarray) -> bool:
    """Whether the PET slices (slices first) have backgrounds almost free of noise, as an OSEM
    reconstruction leaves them: the median :func:`background_noise` of up to ``SLICES`` evenly spaced
    slices that can be judged is below ``QUIET``."""
    picked = np.unique(np.linspace(0, len(slices) - 1, min(SLICES, len(slices))).round().astype(int))
    judged = [v for v in (background_noise(slices[i]) for i in picked) if v is not None]
    return bool(judged) and float(np.median(judged)) < QUIET
