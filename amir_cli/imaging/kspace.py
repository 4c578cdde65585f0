"""k-space operations for MR super-resolution on a zero-filled grid.

- :func:`kspace_upsample`: the `--scale` zero-padding of a coarse slice's k-space onto a finer grid;
- :func:`kspace_downsample`: the coarse image a scanner reconstructs from the central band;
- :func:`kspace_mask`: the central band that a zero-filled image measured;
- :func:`zero_filled_factor`: that band recognised in an image's spectrum (:func:`measured_band`:
  a band of other widths, or cut along one axis only);
- :func:`data_consistency` (torch, :func:`project_band` differentiable for training): an estimate
  made consistent with the measured band, as the note below explains.

A zero-filled input ``z = |IFFT(M FFT(x))|`` fixes the central band ``M`` of the true image's
k-space up to the phase that the magnitude step dropped. :func:`data_consistency` alternates two
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

from collections.abc import Sequence

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


# A zero-filled image's power spectrum falls off a cliff at the band edge along both in-plane axes:
# across the edge the mean power falls below SHEER_RATIO of what it is just inside (below 0.19 on every
# zero-filled volume of `benchmarks/zero_filling.py`: noisy, integer, tapered by a Hamming filter), or
# below CLIFF_RATIO where it also falls more sharply than one step further in (below STEEPNESS times
# that step's ratio), which single noisy slices need. A scan that is not zero-filled can fall as far
# along one axis (0.1 across a shoulder slice's columns), not along both (0.24 and more on the other);
# a smooth spectrum (an averaged template) falls about as fast inside the band as across its edge.
CLIFF_RATIO = 0.35
STEEPNESS = 0.8
SHEER_RATIO = 0.2
DETECT_SLICES = 16  # slices of a volume whose spectra are averaged
MIN_DETECT_SIDE = 64  # on smaller slices the band edge is too few samples wide to tell


def _edge_means(power: np.ndarray, m: int, step: int) -> tuple[float, float, float]:
    """Mean power of a centred 1-D power profile in three bands of 1/``step`` of its central ``m``
    samples (the band of :func:`kspace_mask`), on both sides: just outside its edge, just inside,
    and one step further in."""
    n = len(power)
    lo = n // 2 - m // 2
    hi, w = lo + m, max(2, m // step)
    outside = np.r_[power[max(0, lo - w) : lo], power[hi : hi + w]].mean()
    inside = np.r_[power[lo : lo + w], power[hi - w : hi]].mean()
    deeper = np.r_[power[lo + w : lo + 2 * w], power[hi - 2 * w : hi - w]].mean()
    return outside, inside, deeper


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b > 0 else float("inf")


def _cliff(power: np.ndarray, m: int) -> float | None:
    """How far a centred 1-D power profile falls across the edge of its central ``m`` samples (the
    ratio of the mean power just outside to just inside, over steps of 1/8 of the band), where that
    is a cliff: below SHEER_RATIO, or below CLIFF_RATIO and STEEPNESS times the ratio of just inside
    to one step further in; else None."""
    outside, inside, deeper = _edge_means(power, m, 8)
    across, before = _ratio(outside, inside), _ratio(inside, deeper)
    return across if across < SHEER_RATIO or (across < CLIFF_RATIO and across < STEEPNESS * before) else None


def is_band_edge(power: np.ndarray, factor: int) -> bool:
    """Whether a centred 1-D power profile falls off a cliff (:func:`_cliff`) at the edge of its central 1/``factor``."""
    return _cliff(power, max(1, len(power) // factor)) is not None


def _spectrum_profiles(array: np.ndarray, slice_axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The mean power spectrum of up to ``DETECT_SLICES`` evenly spaced slices (each without its
    mean), as one centred profile per in-plane axis; None when every slice is empty."""
    a = np.moveaxis(np.asarray(array, dtype=np.float32), slice_axis, 0)
    picks = np.unique(np.linspace(0, a.shape[0] - 1, min(DETECT_SLICES, a.shape[0])).round().astype(int))
    slices = a[picks].astype(np.float64)
    slices = slices[slices.max(axis=(1, 2)) > 0]
    if not len(slices):
        return None
    slices -= slices.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fftshift(np.fft.fft2(slices), axes=(1, 2))) ** 2).mean(axis=0)
    return power.mean(axis=1), power.mean(axis=0)


def _magnitude_profiles(array: np.ndarray, slice_axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`_spectrum_profiles` of a magnitude volume whose slices are wide enough to tell a band
    edge (MIN_DETECT_SIDE); None for any other (negative values, small or empty slices)."""
    a = np.moveaxis(np.asarray(array, dtype=np.float32), slice_axis, 0)
    if a.size == 0 or float(a.min()) < 0 or min(a.shape[1:]) < MIN_DETECT_SIDE:
        return None
    return _spectrum_profiles(a, 0)


def zero_filled_factor(array: np.ndarray, slice_axis: int = 2, factors=(4, 2)) -> int | None:
    """The factor f of a magnitude MR volume reconstructed from the central 1/f of k-space along each
    in-plane axis (a scanner's zero-filling interpolation), or None when it is not zero-filled.

    The power spectra of up to ``DETECT_SLICES`` slices are averaged into one profile per in-plane
    axis; f is the coarsest factor at whose band edge both profiles fall off a cliff
    (:func:`is_band_edge`)."""
    profiles = _magnitude_profiles(array, slice_axis)
    return None if profiles is None else _factor_of(profiles, factors)


def _factor_of(profiles, factors=(4, 2)) -> int | None:
    for f in factors:
        if all(is_band_edge(profile, f) for profile in profiles):
            return int(f)
    return None


def measured_band(array: np.ndarray, slice_axis: int = 2) -> tuple[int, int] | None:
    """The central samples per in-plane axis that a magnitude MR volume's k-space measured, where it
    is zero-filled otherwise than :func:`zero_filled_factor` finds (along one axis only, or by a
    factor other than 2 or 4: an acquisition matrix of 192 interpolated to 256): per axis the band
    width, up to MAX_BAND of the axis, at whose edge its spectrum first falls off a cliff
    (:func:`_first_cliff`), the whole axis where none; None when neither axis has one."""
    profiles = _magnitude_profiles(array, slice_axis)
    return None if profiles is None else _widths_of(profiles)


def _widths_of(profiles) -> tuple[int, int] | None:
    band = tuple(_first_cliff(profile) for profile in profiles)
    return None if band == tuple(len(profile) for profile in profiles) else band


def recognised_band(array: np.ndarray, slice_axis: int = 2) -> tuple[int | tuple[int, int] | None, float]:
    """(the band a magnitude MR volume measured: its factor, :func:`zero_filled_factor`, else its
    widths, :func:`measured_band`, else None; the fraction of it the consistency keeps,
    :func:`band_taper`), all from one averaged spectrum."""
    profiles = _magnitude_profiles(array, slice_axis)
    band = None if profiles is None else _factor_of(profiles) or _widths_of(profiles)
    return band, _taper_of(profiles, band) if band else 1.0


MIN_BAND, MAX_BAND = 1 / 8, 0.8  # the band widths measured_band looks at (fractions of the axis)


def _first_cliff(power: np.ndarray) -> int:
    """The narrowest central band at whose edge ``power`` falls off a cliff (:func:`_cliff`) and,
    from the two samples just inside to the two just outside, below SHEER_RATIO; the profile's
    length where there is none. A smooth spectrum can fall steeply over a wide step near its end,
    never between neighbouring samples."""
    n = len(power)
    for m in range(max(16, round(n * MIN_BAND)), round(n * MAX_BAND) + 1):
        if _ratio(*_edge_means(power, m, m)[:2]) < SHEER_RATIO and _cliff(power, m) is not None:
            return m
    return n


# A scanner's k-space filter (Fermi, Hamming) tapers the measured band towards its edge: there the last
# 1/16 of the band holds less than TAPERED_RATIO of the power of the 1/16 before it (0.37 and more on
# the sharp bands of the training and validation MR, 0.11 to 0.46 on tapered ones, most below 0.3;
# `benchmarks/zero_filling.py` counts). The consistency then keeps only the central TAPER_KEEP of the
# band's half-width, which the filter left nearly as measured.
TAPERED_RATIO = 0.3
TAPER_KEEP = 0.8


def band_taper(array: np.ndarray, slice_axis: int, band) -> float:
    """The fraction of the measured ``band`` (a factor, :func:`zero_filled_factor`, or the widths of
    :func:`measured_band`) of a zero-filled volume that its data consistency keeps: ``TAPER_KEEP``
    where a k-space filter tapered it along every axis it cut, else 1."""
    profiles = _spectrum_profiles(array, slice_axis)
    return 1.0 if profiles is None else _taper_of(profiles, band)


def _taper_of(profiles, band) -> float:
    widths = band_widths([len(p) for p in profiles], band)
    tapered = [_ratio(*_edge_means(p, m, 16)[1:]) < TAPERED_RATIO for p, m in zip(profiles, widths) if m < len(p)]
    return TAPER_KEEP if tapered and all(tapered) else 1.0


# ------------------------------------------------------------------- the measured band
def check_factor(factor) -> int:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer, float, np.floating)):
        raise ValueError(f"mri-sr factor must be an integer >= 1, got {factor!r}")
    if float(factor) != int(factor) or int(factor) < 1:
        raise ValueError(f"mri-sr factor must be an integer >= 1, got {factor!r}")
    return int(factor)


def band_widths(shape: Sequence[int], band) -> tuple[int, ...]:
    """The central samples per axis of ``band``: a factor f (``max(1, n // f)`` of each axis of
    length n) or those widths themselves (:func:`measured_band`)."""
    if isinstance(band, (tuple, list)):
        if len(band) != len(shape) or not all(1 <= int(m) <= int(n) for m, n in zip(band, shape)):
            raise ValueError(f"band widths {tuple(band)} do not fit the shape {tuple(shape)}")
        return tuple(int(m) for m in band)
    factor = check_factor(band)
    return tuple(max(1, int(n) // factor) for n in shape)


def band_frequencies(shape: Sequence[int], factor: int) -> tuple[np.ndarray, ...]:
    """Per axis, each centred k-space sample's distance from DC over the half-width of the band of
    ``factor`` (1 at the band's edge: where a scanner's k-space filter is drawn)."""
    return tuple(np.abs(np.arange(n) - n // 2) / (n / 2 / factor) for n in shape)


def kspace_mask(shape: Sequence[int], band, keep: float = 1.0) -> np.ndarray:
    """Boolean mask, in *centred* (fftshift-ed) k-space, of the frequencies that ``mri_truncate`` keeps.

    Along an axis of length ``n`` the central ``max(1, n // band)`` samples around DC are kept (or
    ``band[axis]`` of them, for per-axis widths: :func:`band_widths`); ``keep`` < 1: only those
    within ``keep`` times the band's half-width of DC (:func:`band_taper`).
    """
    if len(shape) != 2:
        raise ValueError(f"shape must be 2-D, got {tuple(shape)}")
    masks = []
    for n, m in zip(shape, band_widths(shape, band)):
        n = int(n)
        start = n // 2 - m // 2
        ax = np.zeros(n, dtype=bool)
        ax[start : start + m] = True
        if keep < 1 and m < n:  # an axis the band does not cut keeps all of it
            ax &= np.abs(np.arange(n) - n // 2) < m / 2 * keep
        masks.append(ax)
    return masks[0][:, None] & masks[1][None, :]


# ------------------------------------------------------------ data consistency (torch)
# Iterations of the data-consistency projections: more gain a little more, at the network's cost
# on a CPU already.
DC_ITERATIONS = 50


def _fine_ramp(shape, scale: int, device):
    """Phase ramp that moves a fine grid by (scale - 1) / 2 voxels: onto the coarse voxel centres
    of :func:`kspace_upsample` (``restore.scaled_affine``)."""
    import torch

    fy = torch.fft.fftfreq(shape[0], device=device)[:, None]
    fx = torch.fft.fftfreq(shape[1], device=device)[None, :]
    return torch.exp(2j * torch.pi * (scale - 1) / 2 * (fy + fx))


def band_mask(shape, band, device=None, keep: float = 1.0):
    """The measured band of a zero-filled image (:func:`kspace_mask`) as a
    torch bool tensor in the unshifted FFT layout."""
    import torch

    return torch.as_tensor(np.fft.ifftshift(kspace_mask(shape, band, keep)), device=device)


def project_band(y, measured, band, iterations: int = DC_ITERATIONS, eps: float = 1e-30):
    """Alternating projections (torch, differentiable) of the estimate ``y`` (…, H, W) onto the images
    whose zero-filled magnitude in ``band`` is ``measured`` (same grid), and onto non-negative images.
    ``eps``: the smallest magnitude divided by (raise it where gradients flow)."""
    import torch

    y = y.clamp(min=0)
    for _ in range(iterations):
        k = torch.fft.fft2(y)
        own = torch.fft.ifft2(k * band)  # the estimate's own zero-filled image
        size = own.abs()
        phased = torch.where(size > eps, own * (measured / size.clamp(min=eps)), measured.to(own.dtype))
        k = torch.where(band, torch.fft.fft2(phased), k)  # measured magnitude, own phase
        y = torch.fft.ifft2(k).real.clamp(min=0)
    return y


def data_consistency(
    estimate: np.ndarray, measured: np.ndarray, factor, iterations: int = DC_ITERATIONS, device=None,
    keep: float = 1.0,
) -> np.ndarray:
    """``estimate`` (…, H, W) made consistent with the magnitude MR image ``measured``, which holds
    the central ``H // factor`` x ``W // factor`` of k-space: either on the estimate's grid (a
    zero-filled image, the band of :func:`kspace_mask`; ``factor`` may be per-axis widths there,
    :func:`band_widths`) or on the coarse grid (…, H / factor, W / factor) that :func:`kspace_upsample`
    takes to the estimate's. ``keep`` (same grid): the fraction of the band kept (:func:`band_taper`).
    Runs on the torch ``device`` (default CPU); returns float32 numpy, never negative."""
    import torch

    fine, meas = np.shape(estimate), np.shape(measured)
    coarse = meas != fine
    if coarse and (meas[:-2] != fine[:-2] or [n * factor for n in meas[-2:]] != list(fine[-2:])):
        raise ValueError(f"measured image {meas} is neither on the estimate's grid {fine} nor {factor} times coarser")
    y = torch.as_tensor(np.asarray(estimate, dtype=np.float32), device=device).clamp(min=0)
    z = torch.as_tensor(np.asarray(measured, dtype=np.float32), device=device)
    if not coarse:
        return project_band(y, z, band_mask(fine[-2:], factor, device, keep), iterations).cpu().numpy()
    # the coarse grid's whole k-space is the fine spectrum's centre, shifted to its voxel centres
    (h, w), (n, m) = fine[-2:], meas[-2:]
    rows, cols = slice(h // 2 - n // 2, h // 2 - n // 2 + n), slice(w // 2 - m // 2, w // 2 - m // 2 + m)
    ramp, area = _fine_ramp((h, w), factor, device), factor * factor
    for _ in range(iterations):
        k = torch.fft.fftshift(torch.fft.fft2(y) * ramp, dim=(-2, -1))
        own = torch.fft.ifft2(torch.fft.ifftshift(k[..., rows, cols], dim=(-2, -1))) / area
        size = own.abs()
        phased = torch.where(size > 0, own * (z / size.clamp(min=1e-30)), z)  # measured magnitude, own phase
        k[..., rows, cols] = torch.fft.fftshift(torch.fft.fft2(phased), dim=(-2, -1)) * area
        y = torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)) / ramp).real.clamp(min=0)
    return y.cpu().numpy()
