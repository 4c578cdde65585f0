"""Comparison figures of `amir benchmark` and the examples (matplotlib's Agg canvas; no pyplot
global state).

One row: input | baseline(s) | AMIR (| AMIR self-ensemble) | reference | |AMIR - reference|. The
image panels are shown as a reader of each modality expects: PET in inverted grey from 0 to the
reference's SUV maximum, CT in the soft-tissue window, MR from 0 to the reference's 99.5th
percentile. Every panel holds a zoomed inset of the same square (framed in each panel: the tissue
with the most detail in the reference), where noise texture and fine structure can be judged. The
error map is clipped to the task's evaluation window (docs/protocol.md) and scaled to the 99th
percentile of the input's error, so it reads as "how much of the input's error is left".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from amir_cli.tasks import CT_DENOISE, EVAL_WINDOW, PET_SYNTHESIS, TASK

TITLES = {"input": "input (low quality)", "amir": "AMIR", "amir-tta": "AMIR, x8 self-ensemble"}
CT_SOFT_TISSUE = (-160.0, 240.0)  # HU: window width 400, level 40
ZOOM_COLOUR = "#ffb000"


def unit_of(task: str) -> str:
    """The unit shown on a figure (MR has none: arbitrary units)."""
    return TASK[task].unit or "a.u."


def display_range(task: str, reference: np.ndarray) -> tuple[float, float, str, str]:
    """(low, high, colour map, words) of the image panels of ``task``, from its reference image."""
    ref = np.asarray(reference, dtype=np.float64)
    if task == PET_SYNTHESIS:
        top = float(ref.max()) if ref.size and ref.max() > 0 else 1.0
        return 0.0, top, "gray_r", f"SUV 0 to {top:.1f} (the image's maximum), inverted grey"
    if task == CT_DENOISE:
        lo, hi = CT_SOFT_TISSUE
        return lo, hi, "gray", f"soft-tissue window {lo:g} to {hi:g} HU"
    top = float(np.percentile(ref, 99.5)) if ref.size else 0.0
    top = top if top > 0 else float(ref.max()) if ref.size and ref.max() > 0 else 1.0
    return 0.0, top, "gray", f"0 to {top:.0f} (the image's 99.5th percentile)"


def zoom_region(reference: np.ndarray, low: float, high: float, task: str) -> tuple[int, int, int]:
    """(i, j, n): the n x n square of ``reference`` with the most detail (gradient energy within the
    display range ``low``..``high``) among those nearly all tissue (not background, nor bone on CT):
    where a reader judges noise and sharpness. n is a quarter of the smaller side (at least 8)."""
    ref = np.asarray(reference, dtype=np.float64)
    n = max(8, min(ref.shape) // 4)
    if min(ref.shape) <= n:
        return 0, 0, min(ref.shape)
    margin = 0.02 * (high - low)
    other = (ref <= low + margin) | ((ref >= high - margin) if task == CT_DENOISE else False)
    detail = _box_sums(np.hypot(*np.gradient(np.clip(ref, low, high))), n)
    tissue = _box_sums(other.astype(np.float64), n) <= 0.05 * n * n
    i, j = np.unravel_index(int(np.argmax(np.where(tissue, detail, -np.inf) if tissue.any() else detail)), detail.shape)
    return int(i), int(j), n


def _box_sums(a: np.ndarray, n: int) -> np.ndarray:
    """Sums of ``a`` over every n x n square (indexed by its first corner), from the integral image."""
    s = np.pad(a, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return s[n:, n:] - s[:-n, n:] - s[n:, :-n] + s[:-n, :-n]


def _panel(ax, image, region, imshow: dict) -> None:
    """One image with the zoom square framed and shown enlarged in the corner away from it."""
    from matplotlib.patches import Rectangle

    i, j, n = region
    img = np.asarray(image)
    ax.imshow(img.T, **imshow)  # (I, J) in NIfTI voxel order: shown with J upwards
    ax.add_patch(Rectangle((i - 0.5, j - 0.5), n, n, fill=False, edgecolor=ZOOM_COLOUR, linewidth=1.2))
    right = i + n / 2 < img.shape[0] / 2
    top = j + n / 2 < img.shape[1] / 2  # origin lower: small j at the bottom
    inset = ax.inset_axes([0.56 if right else 0.01, 0.56 if top else 0.01, 0.43, 0.43])
    inset.imshow(img[i:i + n, j:j + n].T, **{**imshow, "aspect": "auto"})
    inset.set_xticks([])
    inset.set_yticks([])
    for spine in inset.spines.values():
        spine.set_edgecolor(ZOOM_COLOUR)
        spine.set_linewidth(1.5)


def comparison_figure(show: dict, path: str | Path, *, dpi: int = 110) -> Path:
    """Write the PNG for one representative slice (``show`` as built by `benchmark._score_case`)."""
    path = Path(path)
    comparison(show, dpi=dpi).savefig(path, format="png", metadata={"Software": None})  # the same image gives the same bytes
    return path


def comparison(show: dict, *, dpi: int = 110):
    """The matplotlib Figure of :func:`comparison_figure`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    task = show["task"]
    ref = np.asarray(show["reference"], dtype=np.float32)
    lo, hi, cmap, shown_as = display_range(task, ref)
    panels = list(show["panels"])  # [(method, image, scores or None)], input first
    amir = next(img for name, img, _ in panels if name == "amir")
    inp = next(img for name, img, _ in panels if name == "input")
    elo, ehi = EVAL_WINDOW[task]
    err = np.abs(np.clip(amir, elo, ehi) - np.clip(ref, elo, ehi))
    err_in = np.abs(np.clip(inp, elo, ehi) - np.clip(ref, elo, ehi))
    emax = float(np.percentile(err_in, 99)) or float(err.max()) or 1.0

    h, w = ref.shape[1], ref.shape[0]
    pix = show.get("pixel_mm", (1.0, 1.0))
    ratio = float(pix[1]) / float(pix[0])  # physical height / width of one displayed pixel
    n = len(panels) + 2
    panel_w = 3.2
    fig = Figure(figsize=(panel_w * n + 0.6, panel_w * min(max(h / w * ratio, 0.35), 2.0) + 1.1), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=True)
    region = zoom_region(ref, lo, hi, task)
    image = {"origin": "lower", "interpolation": "nearest", "aspect": ratio, "cmap": cmap, "vmin": lo, "vmax": hi}
    for ax, (name, img, sc) in zip(axes, [*panels, ("reference", ref, None)]):
        _panel(ax, img, region, image)
        title = TITLES.get(name, "reference (high quality)" if name == "reference" else name)
        ax.set_title(title + (f"\nPSNR {sc['psnr']:.2f} dB, SSIM {sc['ssim']:.3f}" if sc is not None else ""), fontsize=9)
    _panel(axes[-1], err, region, {**image, "cmap": "magma", "vmin": 0, "vmax": emax})
    axes[-1].set_title(f"|AMIR − reference| ({unit_of(task)})", fontsize=9)
    cb = fig.colorbar(axes[-1].images[0], ax=axes[-1], fraction=0.046, pad=0.03)
    cb.ax.tick_params(labelsize=7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    level = f", level {show['level']}" if show.get("level") else ""
    fig.suptitle(f"{task}{level}: {show['case']}, slice {show['slice']}\nshown as {shown_as}; the framed square is enlarged "
                 "in each panel", fontsize=10)
    fig.tight_layout()
    return fig
