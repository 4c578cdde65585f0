"""Pure torch on arrays: the AMIR network over batches of normalised slices, with edge padding,
overlapping tiles, test-time augmentation (self-ensemble) and k-space data consistency for MR.

No files and no physical units here: the caller normalises and denormalises (``amir_cli.restore``).
"""

from __future__ import annotations

import numpy as np

DEFAULT_TILE_OVERLAP = 0.25  # fraction of the tile size shared by neighbouring tiles
# Edge pixels replicated around each slice before the network, a multiple of its 8-pixel grid:
# anatomy cut by the field of view otherwise comes out worse at the border.
BORDER = 8
# Iterations of the data-consistency projections: more gain a little more, at the network's cost
# on a CPU already.
DC_ITERATIONS = 50


def predict(model, x, *, tile: int | None = None, tile_overlap: float = DEFAULT_TILE_OVERLAP, tta: bool = False):
    """``(restored, instruction)`` of ``model`` (an AMIR) on ``x`` (B, 1, H, W) in [0, 1].

    Each slice runs inside a ``BORDER`` of its replicated edge pixels; with ``tile`` in overlapping
    tiles that share their slice's instruction; with ``tta`` averaged over the 8 flips and
    rotations (:func:`self_ensemble`; the instruction is the untransformed slices')."""
    import torch

    def network(t):
        instruction = model.instruction(t)
        padded = torch.nn.functional.pad(t, (BORDER,) * 4, mode="replicate")
        if tile is None:
            y = model(padded, instruction)
        else:
            y = tiled_predict(lambda p: model(p, instruction), padded, tile, tile_overlap)
        return y[..., BORDER:-BORDER, BORDER:-BORDER], instruction

    y, instruction = network(x)
    if tta:
        y = self_ensemble(lambda t: network(t)[0], x, identity=y)
    return y, instruction


def _blend_window(size: int, overlap: int) -> np.ndarray:
    """1-D weights: 1 in the middle, linear ramps over the overlap (never 0, so borders count)."""
    w = np.ones(size, dtype=np.float32)
    if overlap > 0:
        ramp = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
        w[:overlap] = ramp
        w[size - overlap :] = ramp[::-1]
    return w


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def tiled_predict(predictor, x, tile: int, overlap: float = DEFAULT_TILE_OVERLAP):
    """Run ``predictor`` on overlapping ``tile`` x ``tile`` windows of ``x`` (B, C, H, W) and blend.

    Like MONAI's sliding_window_inference: a pure function of the predictor; tiles overlap by
    ``overlap`` of their size and are blended with linear ramps. Slices no larger than the tile
    go through in one piece.
    """
    import torch

    H, W = x.shape[-2:]
    if H <= tile and W <= tile:
        return predictor(x)
    th, tw = min(tile, H), min(tile, W)
    ov = int(round(tile * overlap))
    stride = max(1, tile - ov)
    wy = torch.from_numpy(_blend_window(th, min(ov, th // 2) if H > th else 0))
    wx = torch.from_numpy(_blend_window(tw, min(ov, tw // 2) if W > tw else 0))
    weight = (wy[:, None] * wx[None, :]).to(x.device)
    out = None
    norm = torch.zeros((H, W), dtype=torch.float32, device=x.device)
    for top in _starts(H, th, stride):
        for left in _starts(W, tw, stride):
            y = predictor(x[..., top : top + th, left : left + tw]).float()
            if out is None:
                out = torch.zeros((*y.shape[:-2], H, W), dtype=torch.float32, device=x.device)
            out[..., top : top + th, left : left + tw] += y * weight
            norm[top : top + th, left : left + tw] += weight
    return out / norm


def self_ensemble(network, x, identity=None):
    """Geometric self-ensemble: the mean of ``network`` over the 8 flips and 90-degree rotations of
    ``x`` (B, C, H, W), each output mapped back. ``identity``: the untransformed output, if known."""
    import torch

    total = None
    for k in range(4):
        for flip in (False, True):
            if k == 0 and not flip and identity is not None:
                y = identity.float()
            else:
                t = torch.rot90(x, k, (-2, -1))
                y = network(t.flip(-1) if flip else t).float()
                y = torch.rot90(y.flip(-1) if flip else y, -k, (-2, -1))
            total = y if total is None else total + y
    return total / 8


# ---------------------------------------------------------------------------------------------
# k-space data consistency (MR)


def _fine_ramp(shape, scale: int, device):
    """Phase ramp that moves a fine grid by (scale - 1) / 2 voxels: onto the coarse voxel centres
    of :func:`amir_cli.imaging.kspace.kspace_upsample` (``restore.scaled_affine``)."""
    import torch

    fy = torch.fft.fftfreq(shape[0], device=device)[:, None]
    fx = torch.fft.fftfreq(shape[1], device=device)[None, :]
    return torch.exp(2j * torch.pi * (scale - 1) / 2 * (fy + fx))


def band_mask(shape, factor: int, device=None):
    """The measured band of a zero-filled image (:func:`amir_cli.imaging.degrade.kspace_mask`) as a
    torch bool tensor in the unshifted FFT layout."""
    import torch

    return torch.as_tensor(np.fft.ifftshift(kspace_mask(shape, factor)), device=device)


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
    estimate: np.ndarray, measured: np.ndarray, factor: int, iterations: int = DC_ITERATIONS, device=None
) -> np.ndarray:
    """``estimate`` (…, H, W) made consistent with the magnitude MR image ``measured``, which holds
    the central ``H // factor`` x ``W // factor`` of k-space: either on the estimate's grid (a
    zero-filled image, the band of :func:`amir_cli.imaging.degrade.kspace_mask`) or on the coarse
    grid (…, H / factor, W / factor) that :func:`amir_cli.imaging.kspace.kspace_upsample` takes to the estimate's. Runs on
    the torch ``device`` (default CPU); returns float32 numpy, never negative."""
    import torch

    from amir_cli.imaging.degrade import kspace_mask  # here: degrade imports scipy, which restoring CT or PET never needs

    fine, meas = np.shape(estimate), np.shape(measured)
    coarse = meas != fine
    if coarse and (meas[:-2] != fine[:-2] or [n * factor for n in meas[-2:]] != list(fine[-2:])):
        raise ValueError(f"measured image {meas} is neither on the estimate's grid {fine} nor {factor} times coarser")
    y = torch.as_tensor(np.asarray(estimate, dtype=np.float32), device=device).clamp(min=0)
    z = torch.as_tensor(np.asarray(measured, dtype=np.float32), device=device)
    if not coarse:
        return project_band(y, z, band_mask(fine[-2:], factor, device), iterations).cpu().numpy()
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
