"""k-space operations for MR super-resolution on a zero-filled grid.

- :func:`kspace_upsample`: the `--scale` zero-padding of a coarse slice's k-space onto a finer grid;
- :func:`data_consistency`: makes a restored slice agree with the k-space its input measured, a
  zero-filled image on the same grid or a coarser image.

A zero-filled input ``z = |IFFT(M FFT(x))|`` fixes the central band ``M`` of the true image's
k-space up to the phase that the magnitude step dropped. :func:`data_consistency` alternates two
projections, starting from the network's estimate ``y``: (1) give ``y``'s own zero-filled image its
measured magnitude ``z`` (keeping ``y``'s phase) and put that band back into ``y``'s k-space, which
leaves every frequency outside the band as the network made it; (2) clip the image at zero (MR
magnitude is never negative). The phase comes from the estimate because the magnitude step removed
the sign of the ringing around edges: copying ``z``'s own band in instead puts that ringing back.
For `--scale` the measured magnitude lives on the coarse grid, so the estimate's own image is taken
there (its spectrum's centre, moved to the coarse voxel centres); using the k-space upsampling of
the coarse input as if it were a zero-filled image instead cost ICBM152 slices 1.1 dB at x2.
"""

from __future__ import annotations

import numpy as np

from amir_cli.imaging.degrade import kspace_mask

# Held-out MR x2, over the network alone: +0.57 dB after 10 iterations, +0.69 after 30, +0.82 after
# 100, +0.92 after 300 (whole slices); 50 keeps the cost near the network's on a CPU.
DC_ITERATIONS = 50


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


def _fine_ramp(shape, scale: int, device):
    """Phase ramp that moves a fine grid by (scale - 1) / 2 voxels: onto the coarse voxel centres
    of :func:`kspace_upsample` (``restore.scaled_affine``)."""
    import torch

    fy = torch.fft.fftfreq(shape[0], device=device)[:, None]
    fx = torch.fft.fftfreq(shape[1], device=device)[None, :]
    return torch.exp(2j * torch.pi * (scale - 1) / 2 * (fy + fx))


def data_consistency(
    estimate: np.ndarray, measured: np.ndarray, factor: int, iterations: int = DC_ITERATIONS, device=None
) -> np.ndarray:
    """``estimate`` (…, H, W) made consistent with the magnitude MR image ``measured``, which holds
    the central ``H // factor`` x ``W // factor`` of k-space: either on the estimate's grid (a
    zero-filled image, the band of :func:`amir_cli.imaging.degrade.kspace_mask`) or on the coarse
    grid (…, H / factor, W / factor) that :func:`kspace_upsample` takes to the estimate's. Runs on
    the torch ``device`` (default CPU); returns float32 numpy, never negative."""
    import torch

    fine, meas = np.shape(estimate), np.shape(measured)
    coarse = meas != fine
    if coarse and (meas[:-2] != fine[:-2] or [n * factor for n in meas[-2:]] != list(fine[-2:])):
        raise ValueError(f"measured image {meas} is neither on the estimate's grid {fine} nor {factor} times coarser")
    y = torch.as_tensor(np.asarray(estimate, dtype=np.float32), device=device).clamp(min=0)
    z = torch.as_tensor(np.asarray(measured, dtype=np.float32), device=device)
    if coarse:  # the coarse grid's whole k-space is the fine spectrum's centre, shifted to its voxel centres
        (h, w), (n, m) = fine[-2:], meas[-2:]
        rows, cols = slice(h // 2 - n // 2, h // 2 - n // 2 + n), slice(w // 2 - m // 2, w // 2 - m // 2 + m)
        ramp, area = _fine_ramp((h, w), factor, device), factor * factor
    else:
        band = torch.as_tensor(np.fft.ifftshift(kspace_mask(fine[-2:], factor)), device=device)  # unshifted FFT layout
    for _ in range(iterations):
        k = torch.fft.fft2(y)
        if coarse:
            k = torch.fft.fftshift(k * ramp, dim=(-2, -1))
            own = torch.fft.ifft2(torch.fft.ifftshift(k[..., rows, cols], dim=(-2, -1))) / area
        else:
            own = torch.fft.ifft2(k * band)  # the estimate's own zero-filled image
        size = own.abs()
        phased = torch.where(size > 0, own * (z / size.clamp(min=1e-30)), z)  # measured magnitude, own phase
        if coarse:
            k[..., rows, cols] = torch.fft.fftshift(torch.fft.fft2(phased), dim=(-2, -1)) * area
            k = torch.fft.ifftshift(k, dim=(-2, -1)) / ramp
        else:
            k = torch.where(band, torch.fft.fft2(phased), k)
        y = torch.fft.ifft2(k).real.clamp(min=0)
    return y.cpu().numpy()
