"""k-space operations for MR super-resolution on a zero-filled grid.

- :func:`kspace_upsample`: the `--scale` zero-padding of a coarse slice's k-space onto a finer grid;
- :func:`kspace_downsample`: the coarse image a scanner reconstructs from the central band.

The data consistency that uses them (:func:`amir_cli.inference.data_consistency`, torch) lives on
the inference side; the note below explains it.

A zero-filled input ``z = |IFFT(M FFT(x))|`` fixes the central band ``M`` of the true image's
k-space up to the phase that the magnitude step dropped. :func:`amir_cli.inference.data_consistency` alternates two
projections, starting from the network's estimate ``y``: (1) give ``y``'s own zero-filled image its
measured magnitude ``z`` (keeping ``y``'s phase) and put that band back into ``y``'s k-space, which
leaves every frequency outside the band as the network made it; (2) clip the image at zero (MR
magnitude is never negative). The phase comes from the estimate because the magnitude step removed
the sign of the ringing around edges: copying ``z``'s own band in instead puts that ringing back.
For `--scale` the measured magnitude lives on the coarse grid, so the estimate's own image is taken
there (its spectrum's centre, moved to the coarse voxel centres); using the k-space upsampling of
the coarse input as if it were a zero-filled image instead scores lower on brain MR.
"""

from __future__ import annotations

import numpy as np




def kspace_upsample(image2d: np.ndarray, scale: int) -> np.ndarray:
    """Zero-pad the centred 2-D spectrum to a ``scale``-times finer grid, inverse FFT, magnitude.

    The new samples sit where ``restore.scaled_affine`` says: the field of view is kept, so the
    first fine voxel centre lies (scale - 1) / (2 scale) of an old voxel before the old first
    centre; a phase ramp makes the band-limited interpolation land exactly there. Intensities are
    preserved (a constant image stays the same constant).
    """
    a = np.asarray(image2d, dtype=np.float64)
    if scale == 1:
        return a.astype(np.float32)
    h, w = a.shape
    shift = -(scale - 1) / (2 * scale)  # in old voxels
    ky = np.fft.fftfreq(h)[:, None]  # cycles per old voxel, signed
    kx = np.fft.fftfreq(w)[None, :]
    spectrum = np.fft.fft2(a) * np.exp(2j * np.pi * shift * (ky + kx))
    spectrum = np.fft.fftshift(spectrum)
    big = np.zeros((h * scale, w * scale), dtype=np.complex128)
    top, left = (h * scale) // 2 - h // 2, (w * scale) // 2 - w // 2  # DC stays at the centre
    big[top : top + h, left : left + w] = spectrum
    return (np.abs(np.fft.ifft2(np.fft.ifftshift(big))) * scale * scale).astype(np.float32)


def kspace_downsample(image2d: np.ndarray, scale: int) -> np.ndarray:
    """The coarse MR image that keeps the central 1/``scale`` of ``image2d``'s k-space: what a scanner
    reconstructs from that band on a ``scale``-times coarser grid (magnitude, float32). The inverse
    of :func:`kspace_upsample` on the band: the coarse voxels sit where it puts them. Each in-plane
    size must be a multiple of ``scale``."""
    a = np.asarray(image2d, dtype=np.float64)
    (h, w), (n, m) = a.shape, (a.shape[0] // scale, a.shape[1] // scale)
    if (n * scale, m * scale) != (h, w):
        raise ValueError(f"image {a.shape} is not a multiple of {scale} in-plane")
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    k = np.fft.fftshift(np.fft.fft2(a) * np.exp(2j * np.pi * (scale - 1) / 2 * (fy + fx)))
    band = k[h // 2 - n // 2 : h // 2 - n // 2 + n, w // 2 - m // 2 : w // 2 - m // 2 + m]
    return (np.abs(np.fft.ifft2(np.fft.ifftshift(band))) / (scale * scale)).astype(np.float32)


# A zero-filled image's power spectrum falls off a cliff at the band edge: the mean power just
# outside is below this fraction of the mean power just inside (about 0.4 to 0.7 on scanner images
# that are not zero-filled, below 0.25 on zero-filled ones with noise and integer rounding).
CLIFF_RATIO = 0.3
DETECT_SLICES = 16  # slices of a volume whose spectra are averaged
MIN_DETECT_SIDE = 64  # on smaller slices the band edge is too few samples wide to tell


def band_edge_ratio(power: np.ndarray, factor: int) -> float:
    """Mean power just outside over just inside the central ``n // factor`` samples (the band of
    :func:`amir_cli.imaging.degrade.kspace_mask`) of a centred 1-D power profile of length n."""
    n = len(power)
    m = max(1, n // factor)
    lo = n // 2 - m // 2
    hi, w = lo + m, max(2, m // 8)
    inside = np.r_[power[lo : lo + w], power[hi - w : hi]].mean()
    outside = np.r_[power[max(0, lo - w) : lo], power[hi : hi + w]].mean()
    return float(outside / inside) if inside > 0 else float("inf")


def zero_filled_factor(array: np.ndarray, slice_axis: int = 2, factors=(4, 2)) -> int | None:
    """The factor f of a magnitude MR volume reconstructed from the central 1/f of k-space along each
    in-plane axis (a scanner's zero-filling interpolation), or None when it is not zero-filled.

    The power spectra of up to ``DETECT_SLICES`` slices are averaged into one profile per in-plane
    axis; f is the coarsest factor at whose band edge both profiles drop below ``CLIFF_RATIO``."""
    a = np.moveaxis(np.asarray(array, dtype=np.float32), slice_axis, 0)
    if a.size == 0 or float(a.min()) < 0 or min(a.shape[1:]) < MIN_DETECT_SIDE:
        return None
    picks = np.unique(np.linspace(0, a.shape[0] - 1, min(DETECT_SLICES, a.shape[0])).round().astype(int))
    slices = a[picks].astype(np.float64)
    slices = slices[slices.max(axis=(1, 2)) > 0]
    if not len(slices):
        return None
    slices -= slices.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fftshift(np.fft.fft2(slices), axes=(1, 2))) ** 2).mean(axis=0)
    rows, cols = power.mean(axis=1), power.mean(axis=0)
    for f in factors:
        if max(band_edge_ratio(rows, f), band_edge_ratio(cols, f)) < CLIFF_RATIO:
            return int(f)
    return None
