"""Pure torch on arrays: the AMIR network over batches of normalised slices, with edge padding,
overlapping tiles and test-time augmentation (self-ensemble); MR data consistency is in
:mod:`amir_cli.imaging.kspace`.

No files and no physical units here: the caller normalises and denormalises (``amir_cli.restore``).
"""

from __future__ import annotations

import numpy as np

DEFAULT_TILE_OVERLAP = 0.25  # fraction of the tile size shared by neighbouring tiles
# Edge pixels replicated around each slice before the network, a multiple of its 8-pixel grid:
# anatomy cut by the field of view otherwise comes out worse at the border.
BORDER = 8


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
