"""Comparison figures of `amir benchmark` (matplotlib's Agg canvas; no pyplot global state).

One row: input | baseline(s) | AMIR (| AMIR self-ensemble) | reference | |AMIR - reference|.  The image panels share the
task's evaluation window (docs/protocol.md; MR whose values sit far below the 12-bit window is shown in
[0, 99.9th percentile of the reference] instead and the title says so); the error map has its own
colour bar, scaled to the 99th percentile of the input's error so that it reads as "how much of the
input's error is left".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from amir_cli.tasks import EVAL_WINDOW, MRI_SR, TASK


def unit_of(task: str) -> str:
    """The unit shown on a figure (MR has none: arbitrary units)."""
    return TASK[task].unit or "a.u."


TITLES = {"input": "input (low quality)", "amir": "AMIR", "amir-tta": "AMIR, x8 self-ensemble"}


def display_window(task: str, reference: np.ndarray) -> tuple[float, float, str]:
    lo, hi = EVAL_WINDOW[task]
    if task == MRI_SR:
        top = float(np.percentile(reference, 99.9)) if reference.size else hi
        if 0 < top < 0.25 * (hi - lo):
            return 0.0, top, f"[0, {top:.0f}] (data below the 12-bit window)"
    return float(lo), float(hi), f"[{lo:g}, {hi:g}] {unit_of(task)}"


def comparison_figure(show: dict, path: str | Path, *, dpi: int = 110) -> Path:
    """Write the PNG for one representative slice (``show`` as built by `benchmark._score_case`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    task = show["task"]
    ref = np.asarray(show["reference"], dtype=np.float32)
    lo, hi, wtext = display_window(task, ref)
    panels = list(show["panels"])  # [(method, image, scores or None)], input first
    amir = next(img for name, img, _ in panels if name == "amir")
    inp = next(img for name, img, _ in panels if name == "input")
    err = np.abs(np.clip(amir, lo, hi) - np.clip(ref, lo, hi))
    err_in = np.abs(np.clip(inp, lo, hi) - np.clip(ref, lo, hi))
    emax = float(np.percentile(err_in, 99)) or float(err.max()) or 1.0

    # arrays are (I, J) in NIfTI voxel order: shown transposed with J upwards (the usual neuro view)
    h, w = ref.shape[1], ref.shape[0]
    pix = show.get("pixel_mm", (1.0, 1.0))
    ratio = float(pix[1]) / float(pix[0])  # physical height / width of one displayed pixel
    n = len(panels) + 2
    panel_w = 3.2
    fig = Figure(figsize=(panel_w * n + 0.6, panel_w * min(max(h / w * ratio, 0.35), 2.0) + 1.0), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=True)
    imshow = {"origin": "lower", "interpolation": "nearest", "aspect": ratio}
    for ax, (name, img, sc) in zip(axes, panels):
        ax.imshow(np.asarray(img).T, cmap="gray", vmin=lo, vmax=hi, **imshow)
        title = TITLES.get(name, name)
        if sc is not None:
            title += f"\nPSNR {sc['psnr']:.2f} dB  SSIM {sc['ssim']:.3f}"
        ax.set_title(title, fontsize=9)
    axes[-2].imshow(ref.T, cmap="gray", vmin=lo, vmax=hi, **imshow)
    axes[-2].set_title("reference (high quality)", fontsize=9)
    im = axes[-1].imshow(err.T, cmap="magma", vmin=0, vmax=emax, **imshow)
    axes[-1].set_title(f"|AMIR − reference| ({unit_of(task)})", fontsize=9)
    cb = fig.colorbar(im, ax=axes[-1], fraction=0.046, pad=0.03)
    cb.ax.tick_params(labelsize=7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    level = f"level {show['level']}" if show.get("level") else ""
    parts = [f"{task}  {level}".strip(), f"case {show['case']}, slice {show['slice']}", f"window {wtext}"]
    fig.suptitle("  —  ".join(parts), fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png", metadata={"Software": None})  # the same image gives the same bytes
    return path
