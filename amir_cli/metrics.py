"""Image-quality scores of the paper's evaluation protocol (docs/protocol.md).

Per 2-D slice: clip prediction and reference to the task's evaluation window; data range
``L = max - min`` of the clipped reference slice; PSNR = 10 log10(L² / MSE) over the whole slice;
SSIM with an 11x11 Gaussian window (sigma 1.5, ``truncate=3.5``, reflect padding),
C1 = (0.01 L)², C2 = (0.03 L)², population covariance, averaged over the slice without a 5-pixel
border (identical to ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=L)``); RMSE in physical units on the clipped slices.
Case scores are slice means (:func:`volume_scores`). MR in scanner units is first multiplied, prediction
and reference alike, by the reference volume's scale into the 12-bit window (:func:`protocol_scale`).

A slice whose clipped reference is constant (L = 0) has no defined PSNR or SSIM: those scores are
NaN for that slice and :func:`volume_scores` skips it (and counts it in ``n_skipped``).
"""

from __future__ import annotations

import math

import numpy as np

from amir_cli.tasks import EVAL_WINDOW  # evaluation windows in physical units (HU, SUV, 12-bit MR)

SSIM_SIGMA = 1.5
SSIM_WIN = 11  # skimage truncates the Gaussian at 3.5 sigma: radius int(3.5 * 1.5 + 0.5) = 5 -> 11 x 11
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _window(window) -> tuple[float, float]:
    if isinstance(window, str):
        if window not in EVAL_WINDOW:
            raise ValueError(f"unknown task {window!r}; choose one of {', '.join(EVAL_WINDOW)}")
        return EVAL_WINDOW[window]
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window must be a (low, high) pair or a task name, got {window!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise ValueError(f"window must satisfy low < high, got {window!r}")
    return lo, hi


def _prepare(pred2d, ref2d, window):
    lo, hi = _window(window)
    p = np.asarray(pred2d, dtype=np.float64)
    r = np.asarray(ref2d, dtype=np.float64)
    if p.ndim != 2 or r.ndim != 2:
        raise ValueError(f"slices must be 2-D, got shapes {p.shape} and {r.shape}")
    if p.shape != r.shape:
        raise ValueError(f"prediction and reference shapes differ: {p.shape} vs {r.shape}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(r))):
        raise ValueError("slices contain NaN or infinite values")
    p = np.clip(p, lo, hi)
    r = np.clip(r, lo, hi)
    return p, r, float(r.max() - r.min())


def rmse(pred2d, ref2d, window) -> float:
    """Root-mean-square error in physical units after clipping both slices to ``window``."""
    p, r, _ = _prepare(pred2d, ref2d, window)
    return float(np.sqrt(np.mean((p - r) ** 2)))


def psnr(pred2d, ref2d, window) -> float:
    """PSNR (dB) with L = range of the clipped reference; ``inf`` if identical, NaN if L = 0."""
    p, r, L = _prepare(pred2d, ref2d, window)
    if L == 0:
        return float("nan")
    mse = float(np.mean((p - r) ** 2))
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(L * L / mse))


def ssim(pred2d, ref2d, window) -> float:
    """Mean SSIM (11x11 Gaussian window, sigma 1.5) of the clipped slices; NaN if L = 0."""
    p, r, L = _prepare(pred2d, ref2d, window)
    if min(p.shape) < SSIM_WIN:
        raise ValueError(f"SSIM needs slices of at least {SSIM_WIN}x{SSIM_WIN}, got {p.shape}")
    if L == 0:
        return float("nan")
    from skimage.metrics import structural_similarity

    # population (co)variances, the mean over the pixels at least 5 from the border (reflected edges)
    return float(structural_similarity(p, r, data_range=L, gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False,
                                       K1=SSIM_K1, K2=SSIM_K2))


def slice_scores(pred2d, ref2d, task: str, scale: float = 1.0) -> dict:
    """``{"psnr", "ssim", "rmse"}`` of one slice in the evaluation window of ``task``, both slices
    multiplied by ``scale`` first (:func:`protocol_scale`)."""
    window = _window(task) if isinstance(task, str) else None
    if window is None:
        raise ValueError(f"task must be one of {', '.join(EVAL_WINDOW)}, got {task!r}")
    if scale != 1:
        pred2d, ref2d = np.asarray(pred2d) * scale, np.asarray(ref2d) * scale
    return {
        "psnr": psnr(pred2d, ref2d, window),
        "ssim": ssim(pred2d, ref2d, window),
        "rmse": rmse(pred2d, ref2d, window),
    }


def volume_scores(pred, ref, task: str, slice_axis: int = 2, scale: float = 1.0) -> dict:
    """Slice means of PSNR, SSIM and RMSE over a 2-D or 3-D image, each slice of both multiplied by
    ``scale`` first (:func:`protocol_scale`; slice by slice, so no copy of either image is made).

    Slices whose clipped reference is constant are skipped.  Returns ``psnr``, ``ssim``, ``rmse``
    (NaN if every slice was skipped), ``n_slices`` (slices scored), ``n_skipped`` and ``skipped``
    (their indices).  An infinite slice PSNR (identical slices) makes the mean PSNR infinite.
    """
    if not isinstance(task, str) or task not in EVAL_WINDOW:
        raise ValueError(f"task must be one of {', '.join(EVAL_WINDOW)}, got {task!r}")
    lo, hi = EVAL_WINDOW[task]
    p = np.asarray(pred)
    r = np.asarray(ref)
    if p.shape != r.shape:
        raise ValueError(f"prediction and reference shapes differ: {p.shape} vs {r.shape}")
    if p.ndim == 2:
        p, r, ax = p[..., None], r[..., None], 2
    elif p.ndim == 3:
        if isinstance(slice_axis, bool) or int(slice_axis) != slice_axis or not -3 <= int(slice_axis) < 3:
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis!r}")
        ax = int(slice_axis) % 3
    else:
        raise ValueError(f"images must be 2-D or 3-D, got shape {p.shape}")
    scores = {"psnr": [], "ssim": [], "rmse": []}
    skipped = []
    for i in range(p.shape[ax]):
        rs = np.take(r, i, axis=ax)
        rc = np.clip(rs.astype(np.float64) * scale, lo, hi)
        if rc.max() == rc.min():
            skipped.append(i)
            continue
        s = slice_scores(np.take(p, i, axis=ax), rs, task, scale)
        for k in scores:
            scores[k].append(s[k])
    out = {k: (float(np.mean(v)) if v else float("nan")) for k, v in scores.items()}
    out.update(n_slices=len(scores["psnr"]), n_skipped=len(skipped), skipped=skipped)
    return out


def protocol_scale(reference, task: str, what: str | None = None) -> float:
    """The factor prediction and reference are multiplied by before scoring: for MR, the whole reference
    volume's scale into the 12-bit window (``intensity.mr_scale_factor``: a scanner's units above 4095
    are not clipped away; ``what`` names the file in its messages); 1 for CT and PET, which have
    physical units."""
    from amir_cli.imaging.intensity import mr_scale_factor
    from amir_cli.tasks import MRI_SR

    return mr_scale_factor(reference, what) if task == MRI_SR else 1.0
