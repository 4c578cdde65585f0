"""The outputs of `amir benchmark`: cases.csv, summary.json (its dict), summary.md and the terminal table."""

from __future__ import annotations

import csv
import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np

from amir_cli import baselines
from amir_cli._version import __version__
from amir_cli.tables import fitted_table
from amir_cli.tasks import MRI_SR, PET_SYNTHESIS, TASK, TASKS

from .cases import Simulation, parse_simulate
from .request import BenchmarkRequest

CSV_COLUMNS = ("case", "task", "level", "method", "psnr", "ssim", "rmse", "n_slices", "seconds_per_slice")
PROTOCOL = (
    "the paper's (docs/protocol.md): per slice, prediction and reference clipped to the task's evaluation window "
    "(CT [-160, 240] HU, PET [0, 20] SUV, MR [0, 4095]); L = max - min of the clipped reference slice; "
    "PSNR over the whole slice; SSIM 11x11 Gaussian window (sigma 1.5); RMSE in physical units. "
    "Case scores are slice means, table scores case means."
)
MAX_SLICES_NOTE = (
    "--max-slices {n}: at most {n} evenly spaced slice{s} scored per case, chosen among the slices whose "
    "windowed reference is not constant"
)



def _fmt(v, nd=2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{nd}f}"


def level_sort_key(task: str, level: str):
    """Unlabelled first, then levels by kind (``dose1-4-spec``: kind ``spec``) and severity (MR factor
    up, dose down), then any other label."""
    if not level:
        return (0, 0.0)
    m = re.fullmatch(r"(?:[xX]|dose)?([\d.]+(?:-[\d.]+)?)(?:-(\D.*))?", level)
    try:
        v = float(Fraction(m.group(1).replace("-", "/")))
    except (AttributeError, ValueError, ZeroDivisionError):
        return (2, level)
    return (1, m.group(2) or "", v if task == MRI_SR else -v)


def _nan_to_none(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({
                **r,
                "psnr": _fmt(r["psnr"], 4), "ssim": _fmt(r["ssim"], 5), "rmse": _fmt(r["rmse"], 4),
                "seconds_per_slice": "" if r["seconds_per_slice"] is None else f"{r['seconds_per_slice']:.4f}",
            })


def _summary(rows, failures, cases, request: BenchmarkRequest, *, weights, device, batch_size, figures, seconds,
             skipped=(), warnings=()) -> dict:
    """summary.json: the request, what ran (``weights``, ``device``, ``batch_size``) and the scores."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["level"], r["method"]), []).append(r)
    method_order = {"input": 0, "amir": 2, "amir-net": 3, "amir-tta": 4}
    keys = sorted(groups, key=lambda k: (TASKS.index(k[0]), level_sort_key(k[0], k[1]), method_order.get(k[2], 1), k[2]))
    results = []
    for task, level, method in keys:
        g = groups[(task, level, method)]
        mean = {m: float(np.mean([r[m] for r in g])) for m in ("psnr", "ssim", "rmse")}
        inp = groups.get((task, level, "input"))
        gain_psnr = gain_ssim = None
        if inp and method != "input":
            gain_psnr = mean["psnr"] - float(np.mean([r["psnr"] for r in inp]))
            gain_ssim = mean["ssim"] - float(np.mean([r["ssim"] for r in inp]))
        sps = [r["seconds_per_slice"] for r in g if r["seconds_per_slice"] is not None]
        results.append({
            "task": task, "level": level, "method": method, "n_cases": len(g),
            "n_slices": int(sum(r["n_slices"] for r in g)),
            **{k: _nan_to_none(v) for k, v in mean.items()},
            "psnr_gain_over_input": _nan_to_none(gain_psnr), "ssim_gain_over_input": _nan_to_none(gain_ssim),
            "seconds_per_slice": float(np.mean(sps)) if sps else None,
        })
    tasks = sorted({c.task for c in cases}, key=TASKS.index)
    sims = [s if isinstance(s, Simulation) else parse_simulate(s) for s in request.simulate]
    return {
        "tool": f"amir {__version__}",
        "data": str(request.data_label or request.data),
        "mode": "simulated" if sims else "paired",
        "simulate": [{"task": s.task, "level": s.level, "label": s.label} for s in sims],
        "weights": weights,
        "device": device,
        "precision": request.precision,
        "batch_size": batch_size,
        "max_slices": request.max_slices,
        "seed": request.seed,
        "data_consistency": request.data_consistency,
        "kspace_factor": request.kspace_factor,
        "protocol": PROTOCOL,
        "baselines": {t: baselines.DESCRIPTIONS[t] for t in tasks} if request.with_baselines else {},
        "n_cases": len(cases),
        "n_failed": len(failures),
        "failed": failures,
        "skipped": list(skipped),
        "warnings": list(warnings),
        "results": results,
        "cases": [{k: _nan_to_none(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
        "figures": figures,
        "notes": _notes(rows, cases, request, sims),
        "seconds": round(seconds, 2),
    }


def _notes(rows, cases, request: BenchmarkRequest, sims: list[Simulation]) -> list[str]:
    """The request's notes and what the reader of the tables must know about how they were made."""
    all_notes = list(request.notes)
    if sims:
        all_notes.append(f"low-quality inputs simulated by the degradations of docs/protocol.md (seed {request.seed}, one stream per case and slice)")
    if any(s.task == PET_SYNTHESIS for s in sims):
        all_notes.append("PET low-count inputs are simulated from the given standard-dose volumes")
    if request.max_slices:
        all_notes.append(MAX_SLICES_NOTE.format(n=request.max_slices, s="" if request.max_slices == 1 else "s"))
    if any(c.task == MRI_SR for c in cases):
        all_notes.append(
            "MR: AMIR runs as plain `amir restore` does: on the input's grid it keeps the k-space band of an input "
            "it recognises as zero-filled (or of --kspace-factor S on an unlabelled LQ folder), on a coarser LQ grid "
            "always (`amir restore --scale`)" if request.data_consistency else
            "MR: the network alone (`--no-data-consistency`), without the data consistency of `amir restore`"
        )
    if any(r["method"] == "amir-net" for r in rows):
        all_notes.append("`amir-net`: the network alone, without data consistency (`amir restore --no-data-consistency`)")
    if any(r["method"] == "amir-tta" for r in rows):
        all_notes.append("`amir-tta`: the same network averaged over the 8 flips and 90-degree rotations of each slice (`--tta`)")
    return all_notes


def markdown_summary(summary: dict) -> str:
    """summary.md: the results table and the notes."""
    w = summary["weights"]
    lines = [
        "# amir benchmark",
        "",
        f"Data: `{summary['data']}` ({summary['mode']}); weights `{w['name']}` (sha256 `{w['sha256'][:16]}…`); "
        f"device {summary['device']}, {summary['precision']}; {summary['n_cases']} cases"
        + (f", **{summary['n_failed']} failed**" if summary["n_failed"] else "") + ".",
        "",
        "| task | level | method | cases | slices | PSNR (dB) | SSIM | RMSE | ΔPSNR vs input | ΔSSIM vs input | s/slice |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["results"]:
        gain = "" if r["psnr_gain_over_input"] is None else f"{r['psnr_gain_over_input']:+.2f}"
        gain_s = "" if r["ssim_gain_over_input"] is None else f"{r['ssim_gain_over_input']:+.4f}"
        sps = "" if r["seconds_per_slice"] is None else f"{r['seconds_per_slice']:.3f}"
        method = f"**{r['method']}**" if r["method"] == "amir" else r["method"]
        unit = " " + TASK[r["task"]].unit if TASK[r["task"]].unit else ""
        lines.append(
            f"| {r['task']} | {r['level'] or '-'} | {method} | {r['n_cases']} | {r['n_slices']} | {_fmt(r['psnr'])} | "
            f"{_fmt(r['ssim'], 4)} | {_fmt(r['rmse'])}{unit} | {gain} | {gain_s} | {sps} |"
        )
    lines += _case_table(summary)
    lines += ["", "## Notes", "", f"- Protocol: {summary['protocol']}"]
    for t, d in summary["baselines"].items():
        lines.append(f"- Baseline for {t}: {d}.")
    lines.append("- `input` is the low-quality image itself (MR on a coarser grid: its k-space zero-filled upsampling).")
    lines.append("- Seconds per slice: wall time on the device above, model loading excluded; `input` has none.")
    for n in summary["notes"]:
        lines.append(f"- {n}")
    for v in summary.get("skipped", []):
        lines.append(f"- Skipped {v['volume']}: {v['task']} ({v['reason']}), which no --simulate names.")
    for f in summary["failed"]:
        lines.append(f"- FAILED {f['task']} {f['level'] or '-'} {f['case']}: {f['error']}")
    if summary["figures"]:
        lines += ["", "## Figures", ""]
        for f in summary["figures"]:
            lines.append(f"![{Path(f).stem}]({f})")
    return "\n".join(lines) + "\n"


def _case_table(summary: dict) -> list[str]:
    """Per case: the input's PSNR and every method's PSNR gain over it (dB)."""
    rows = summary.get("cases") or []
    methods = [m for m in dict.fromkeys(r["method"] for r in summary["results"]) if m != "input"]
    if not rows or not methods:
        return []
    psnr = {(r["task"], r["level"], r["case"], r["method"]): r["psnr"] for r in rows}
    lines = ["", "## Per case (ΔPSNR over the input, dB)", "",
             "| task | level | case | input PSNR | " + " | ".join(methods) + " |",
             "|---|---|---|---:|" + "---:|" * len(methods)]
    keys = sorted({(r["task"], r["level"], r["case"]) for r in rows},
                  key=lambda k: (TASKS.index(k[0]), level_sort_key(k[0], k[1]), k[2]))
    for task, level, case in keys:
        base = psnr.get((task, level, case, "input"))
        cells = []
        for m in methods:
            v = psnr.get((task, level, case, m))
            cells.append("" if v is None or base is None else f"{v - base:+.2f}")
        lines.append(f"| {task} | {level or '-'} | {case} | {_fmt(base)} | " + " | ".join(cells) + " |")
    return lines


def rich_table(summary: dict, width: int = 80):
    """The results as a rich Table for a terminal ``width`` columns wide (the less telling columns
    are left out of a narrower one, and the caption says which; summary.md has them all)."""
    columns = ("task", "level", "method", "cases", "PSNR", "SSIM", "RMSE", "ΔPSNR", "s/slice")
    rows = [
        (r["task"], r["level"] or "-", r["method"], str(r["n_cases"]), _fmt(r["psnr"]), _fmt(r["ssim"], 4), _fmt(r["rmse"]),
         "" if r["psnr_gain_over_input"] is None else f"{r['psnr_gain_over_input']:+.2f}",
         "" if r["seconds_per_slice"] is None else f"{r['seconds_per_slice']:.3f}")
        for r in summary["results"]
    ]
    table, left_out = fitted_table(columns, rows, width=width, drop=("cases", "s/slice", "RMSE", "SSIM"),
                                   right=columns[3:], title="amir benchmark (scores of docs/protocol.md; case means)")
    if left_out:
        table.caption = f"left out at this width (see summary.md): {', '.join(left_out)}"
    return table
