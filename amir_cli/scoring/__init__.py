"""`amir benchmark`: paired cases -> scores of the input, classical baselines and AMIR (docs/protocol.md).

This module scores and runs; :mod:`.cases` finds the cases, :mod:`.report` writes the outputs.

Data
----
* **Paired** (the paper's layout): ``DATA/{MRI,CT,PET}/test/{LQ,HQ}/<case>.nii[.gz]`` (any image
  format `read_image` takes), pairs matched by name, the task named by the modality folder.  Extra
  low-quality folders ``LQ_<level>`` beside ``LQ`` (e.g. ``LQ_x2``, ``LQ_x4``, ``LQ_dose1-12``) share
  the ``HQ`` folder; ``<level>`` is the label in the tables (``LQ`` alone has no level, shown "-").
* **Simulated**: a folder of high-quality volumes and ``--simulate TASK[:LEVEL]`` (repeatable).  With
  modality folders ``DATA/{MRI,CT,PET}/`` each task takes the volumes of its folder; in a flat folder
  each volume's task is decided as `amir restore --task auto` decides it (Modality, header and file
  name words, intensities), each simulation takes the volumes of its task, the others are listed as
  skipped, an unreadable volume is one failed case, of the first simulation (its task cannot be told), and a
  volume that cannot be placed is an error.  The low-quality input is made by the
  degradation (docs/protocol.md) of each scored slice with the generator :func:`degrade.slice_rng` of (case seed,
  slice index), so a slice degrades the same whether or not ``--max-slices`` is used.

Scoring
-------
Every case is read, its slices put first ``(S, H, W)``, optionally reduced to ``max_slices`` evenly
spaced slices among those whose windowed reference is not constant (slices that §4 cannot score),
then scored by :func:`metrics.volume_scores` in physical units (MR times the whole reference volume's
:func:`metrics.protocol_scale`) for: ``input`` (the low-quality
image; for MR on a coarser grid its k-space zero-filled upsampling), the task's classical
baseline (:mod:`amir_cli.baselines`) and ``amir``, run as plain `amir restore` runs (a zero-filled
MR input recognised by its spectrum; ``--kspace-factor`` forces a factor on an unlabelled ``LQ``
folder).  Same-grid MR cases whose level names their k-space factor (``LQ_x2``, ``--simulate
mri-sr:2``: :func:`kspace_factor_of`) give that factor to the ``pocs`` baseline and add ``amir-net``,
the network without data consistency.  Case scores are slice means, table scores case
means.  Time per slice is wall time of the method over the case's scored slices (model loading
excluded).  MR intensity scaling (``mr_scale_factor``) is computed by `restore_volume` from the
slices it is given, i.e. from the scored slices.  A case that fails (unreadable file, LQ/HQ shape mismatch, ...) is recorded and skipped;
the others complete and the command exits 3.
"""

from __future__ import annotations

import os
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amir_cli import baselines
from amir_cli.errors import EXIT_OK, EXIT_PARTIAL, AmirError, BadInputError, one_line
from amir_cli.files import Staging, write_json
from amir_cli.imaging import degrade
from amir_cli.imaging.io import read_image, unsearched_warnings
from amir_cli.metrics import protocol_scale, volume_scores
from amir_cli.tasks import EVAL_WINDOW, MR_FACTORS, MRI_SR, PET_SYNTHESIS

from .cases import CaseSpec, Simulation, parse_simulate, place_volumes, plan_cases
from .request import BenchmarkRequest
from .report import CSV_COLUMNS, PROTOCOL, _summary, _write_csv, level_sort_key, markdown_summary, rich_table

__all__ = [
    "BenchmarkRequest", "BenchmarkResult", "CaseSpec", "Simulation", "CSV_COLUMNS", "PROTOCOL", "case_seed", "kspace_factor_of",
    "level_sort_key", "markdown_summary", "parse_simulate", "place_volumes", "plan_cases", "rich_table", "run_benchmark",
    "select_slices", "zero_filled",
]


@dataclass
class BenchmarkResult:
    rows: list[dict]  # one per case and method (the CSV)
    summary: dict  # summary.json
    failures: list[dict]
    out_dir: Path
    figures: list[Path] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_PARTIAL if self.failures else EXIT_OK



# ------------------------------------------------------------------------------------ helpers
def select_slices(ref: np.ndarray, task: str, max_slices: int | None) -> np.ndarray:
    """Indices of the slices to score: all, or ``max_slices`` evenly spaced among the scorable ones."""
    n = ref.shape[0]
    if not max_slices:
        return np.arange(n)
    lo, hi = EVAL_WINDOW[task]
    clipped = np.clip(ref, lo, hi)
    scorable = np.flatnonzero(clipped.reshape(n, -1).max(1) > clipped.reshape(n, -1).min(1))
    pool = scorable if scorable.size else np.arange(n)
    if max_slices >= pool.size:
        return pool
    pick = np.linspace(0, pool.size - 1, max_slices).round().astype(int)
    return pool[np.unique(pick)]


def case_seed(seed: int, name: str, task: str) -> int:
    """Per-case degradation seed: stable across runs, different for each case and task."""
    return (int(seed) * 1_000_003 + zlib.crc32(f"{task}/{name}".encode())) % (2**31)


def _scale_between(lq_shape, hq_shape) -> int:
    """Integer in-plane factor s with lq * s == hq (1 if equal); 0 if there is none."""
    if tuple(lq_shape) == tuple(hq_shape):
        return 1
    if lq_shape[0] != hq_shape[0]:
        return 0
    for s in MR_FACTORS:
        if lq_shape[1] * s == hq_shape[1] and lq_shape[2] * s == hq_shape[2]:
            return s
    return 0


def _run_amir(model, lq_vol, task: str, *, scale: int, tta: bool = False, **options) -> np.ndarray:
    """AMIR on a Volume through :func:`amir_cli.restore.restore_volume` (``options``: its keyword
    arguments); slices-first array out."""
    from amir_cli.restore import restore_volume

    vol, _ = restore_volume(model, lq_vol, task, scale=scale, tta=tta, **options)
    return vol.slices_first()


def kspace_factor_of(spec: CaseSpec, scale: int, unlabelled: int | None = None) -> int | None:
    """The k-space truncation factor of a same-grid MR input, where the case says it: ``--simulate
    mri-sr:S`` or a paired level ``xS`` (``LQ_x2``, ``LQ_x4``); ``unlabelled`` for the paired
    ``LQ`` folder (``--kspace-factor``); None otherwise (and on a coarser grid)."""
    if spec.task != MRI_SR or scale != 1:
        return None
    if spec.simulation is not None:
        return int(spec.simulation.level)
    if not spec.level:
        return unlabelled
    m = re.fullmatch(r"[xX]([24])", spec.level)
    return int(m.group(1)) if m else None


def zero_filled(slices: np.ndarray, scale: int) -> np.ndarray:
    """k-space zero-filled upsampling of each slice, exactly as `restore` does before the network."""
    from amir_cli.imaging.kspace import kspace_upsample

    return np.stack([kspace_upsample(s, scale) for s in slices]).astype(np.float32)


def _load_pair(spec: CaseSpec, seed: int, max_slices: int | None):
    """(hq Volume, hq slices, lq Volume restricted to the scored slices, lq slices, scale, indices,
    every lq slice where the case has an LQ file, else None)."""
    if spec.hq_path is None:
        raise BadInputError(f"no HQ image named {spec.name} (LQ: {spec.lq_path})")
    if spec.simulation is None and spec.lq_path is None:
        raise BadInputError(f"no LQ image named {spec.name} in LQ{'_' + spec.level if spec.level else ''} (HQ: {spec.hq_path})")
    hq_vol = read_image(spec.hq_path)
    hq_all = hq_vol.slices_first()
    idx = select_slices(hq_all, spec.task, max_slices)
    hq = hq_all[idx]
    if spec.simulation is not None:
        lq_vol_full, lq_all = hq_vol, None
        pix = float(np.mean(hq_vol.inplane_spacing_mm))
        cs = case_seed(seed, spec.name, spec.task)
        lq = np.stack(
            [degrade.degrade_slice(hq_all[i], spec.task, spec.simulation.level, degrade.slice_rng(cs, int(i)), pixel_mm=pix) for i in idx]
        ).astype(np.float32)
        scale = 1
    else:
        lq_vol_full = read_image(spec.lq_path)
        lq_all = lq_vol_full.slices_first()
        scale = _scale_between(lq_all.shape, hq_all.shape)
        if scale == 0 or (scale > 1 and spec.task != MRI_SR):
            raise BadInputError(f"LQ shape {tuple(lq_vol_full.shape)} does not match HQ shape {tuple(hq_vol.shape)}")
        lq = lq_all[idx]
    # a Volume holding just the scored slices, in the file's axis order, for restore_volume
    lq_vol = lq_vol_full.with_array(np.moveaxis(lq, 0, lq_vol_full.slice_axis))
    return hq_vol, hq, lq_vol, lq, scale, idx, lq_all


# ---------------------------------------------------------------------------------------- run
def run_benchmark(request: BenchmarkRequest, *, model=None, progress=None) -> BenchmarkResult:
    """Score every case of ``request.data`` and write ``cases.csv``, ``summary.json``, ``summary.md``
    and ``figures/*.png`` into ``request.out_dir``.

    ``progress(done, total, case_label)`` is called after each case.  ``model``: an already loaded
    network (then ``request.weights`` only names it in the summary).  ``tta`` adds the method ``amir-tta``:
    AMIR averaged over the 8 flips and rotations of each slice.  ``data_consistency``: same-grid MR
    cases whose level names their k-space factor (:func:`kspace_factor_of`) get the ``pocs`` baseline
    and AMIR with `amir restore --kspace-factor`, coarser MR grids AMIR with the data consistency of
    `amir restore --scale`; off, AMIR is the network alone.  ``kspace_factor``:
    the factor of the same-grid MR cases in the paired ``LQ`` folder, which has no level.  ``data_label`` replaces the data path
    in the summaries (e.g. for data built in a temporary folder).  Raises :class:`AmirError` when nothing
    can be run (no cases, weights unusable); per-case failures are returned in ``failures``.
    """
    request.check()
    unsearched: list[Path] = []
    cases, skipped = plan_cases(request.data, request.simulate, unsearched)
    out = Path(request.out_dir)
    replace = _check_out(out, request)
    t_start = time.perf_counter()
    from amir_cli.device import pick_device, precision_context
    from amir_cli.restore import batch_size_for

    dev = pick_device(request.device)
    precision_context(dev, request.precision)  # an unsupported precision fails here, before any case
    batch_size = batch_size_for(dev, request.batch_size)
    if model is None and progress is not None:
        progress(0, len(cases), "loading the model")
    model, winfo = _model_for(request, dev, model)

    rows: list[dict] = []
    failures: list[dict] = []
    warnings = unsearched_warnings(unsearched)
    showcase: dict[tuple[str, str], list[dict]] = {}
    for k, spec in enumerate(cases):
        label = f"{spec.task} {spec.level or '-'} {spec.name}"
        try:
            case_rows, show = _score_case(spec, model, request, dev, batch_size)
            rows += case_rows
            warnings += [f"{spec.task} {spec.level or '-'} {spec.name}: {w}" for w in show.pop("warnings")]
            showcase.setdefault((spec.task, spec.level), []).append(show)
        except (AmirError, OSError, ValueError, MemoryError, RuntimeError) as exc:
            failures.append({"case": spec.name, "task": spec.task, "level": spec.level, "error": one_line(exc)})
        if progress is not None:
            progress(k + 1, len(cases), label)

    try:
        with Staging(overwrite=replace) as staging:  # written whole beside OUTDIR, then put in its place
            folder = staging.path(out)
            folder.mkdir()
            figures = [p.relative_to(folder) for p in (_write_figures(showcase, folder) if request.figures else [])]
            summary = _summary(rows, failures, cases, request, weights=winfo, device=str(dev), batch_size=batch_size,
                               figures=[str(p) for p in figures], skipped=skipped, warnings=warnings,
                               seconds=time.perf_counter() - t_start)
            _write_csv(folder / "cases.csv", rows)
            write_json(folder / "summary.json", summary, keep_nan=True)
            (folder / "summary.md").write_text(markdown_summary(summary))
            staging.publish()
    except FileExistsError:
        raise BadInputError(f"{out}: appeared while this command ran (another amir?); pass --overwrite to replace it") from None
    except OSError as exc:
        raise BadInputError(f"{out}: cannot write the results ({exc.strerror or exc})") from None
    return BenchmarkResult(rows, summary, failures, out, [out / p for p in figures])


def _check_out(out: Path, request: BenchmarkRequest) -> bool:
    """Refuse an output folder inside the data (or holding it), or one that exists, unless it is empty
    or --overwrite replaces the results of an earlier run; returns whether an existing folder is replaced."""
    from amir_cli.placement import amir_json, same_or_inside

    if same_or_inside(out, request.data) or same_or_inside(request.data, out):
        raise BadInputError(f"{out}: the output folder must lie outside the data folder {request.data}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"{out}: cannot create folder {out.parent} ({exc.strerror or exc})") from None
    if not os.access(out.parent, os.W_OK):
        raise BadInputError(f"{out}: folder {out.parent} is not writable")
    if not (out.exists() or out.is_symlink()):
        return False
    if not out.is_dir() or out.is_symlink():
        raise BadInputError(f"{out}: exists and is not a folder")
    if not any(out.iterdir()):
        return True
    if not request.overwrite:
        raise BadInputError(f"{out}: exists; pass --overwrite to replace its results")
    if amir_json(out / "summary.json") is None:
        raise BadInputError(f"{out}: refusing to replace a folder that amir benchmark did not write")
    return True


def _model_for(request: BenchmarkRequest, dev, model) -> tuple[object, dict]:
    """(the network, its record for the summary): ``model`` if given, else the request's weights loaded."""
    from amir_cli.weights import describe, load_weights

    if model is not None:
        return model, describe(request.weights)
    loaded = load_weights(request.weights, dev)
    return loaded.model, loaded.record()


def _write_figures(showcase: dict[tuple[str, str], list[dict]], out: Path) -> list[Path]:
    """One comparison figure per task and level (its median case), into ``out/figures``."""
    if not showcase:
        return []
    from amir_cli.figures import comparison_figure

    (out / "figures").mkdir(exist_ok=True)
    paths = []
    for (task, level), shows in sorted(showcase.items(), key=lambda kv: (kv[0][0], level_sort_key(*kv[0]))):
        path = out / "figures" / f"{task}_{_slug(level or 'paired')}.png"
        comparison_figure(_representative(shows), path)
        paths.append(path)
    return paths


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "level"


def _score_case(spec: CaseSpec, model, request: BenchmarkRequest, device, batch_size: int):
    hq_vol, hq, lq_vol, lq, scale, idx, lq_all = _load_pair(spec, request.seed, request.max_slices)
    task = spec.task
    n = len(idx)
    k = protocol_scale(hq_vol.array, task)  # MR: the whole reference volume's scale into the 12-bit window
    lo, hi = EVAL_WINDOW[task]
    if not any(np.ptp(np.clip(hq[i] * k, lo, hi)) > 0 for i in range(n)):
        raise BadInputError(f"the reference is constant in the {task} window [{lo:g}, {hi:g}] on every scored slice: nothing to score")
    warnings = _case_warnings(spec, hq_vol, hq, lq)
    dc = request.data_consistency
    factor = kspace_factor_of(spec, scale, request.kspace_factor) if dc else None  # same grid; a coarser one: --scale's
    # amir runs as plain `amir restore` does: the zero filling recognised, unless --kspace-factor forces a factor
    forced = request.kspace_factor if task == MRI_SR and scale == 1 and not spec.level else None
    options = dict(device=device, precision=request.precision, batch_size=batch_size, kspace_factor=forced,
                   data_consistency=dc, detect_zero_filling=True)
    methods: list[tuple[str, np.ndarray, float | None]] = []
    if scale > 1:
        t = time.perf_counter()
        zf = zero_filled(lq, scale)
        methods.append(("input", zf, (time.perf_counter() - t) / n))
    else:
        methods.append(("input", lq, None))
    if request.with_baselines:
        for name, run in baselines.baseline_methods(task, lq, hq, lq_vol.inplane_spacing_mm, scale, factor):
            t = time.perf_counter()
            methods.append((name, run(), (time.perf_counter() - t) / n))
    t = time.perf_counter()
    if task == PET_SYNTHESIS and lq_all is not None:  # the background's fill chosen on the whole volume, timed with amir
        from amir_cli.restore import chosen_background_sd

        chosen = chosen_background_sd(model, lq_all, lq_vol.spacing_mm[lq_vol.slice_axis], float(np.mean(lq_vol.inplane_spacing_mm)),
                                      device=device, precision=request.precision, batch_size=batch_size)
        options["background_sd"] = chosen or None
    restored = _run_amir(model, lq_vol, task, scale=scale, **options)
    methods.append(("amir", restored, (time.perf_counter() - t) / n))
    if factor:  # the network alone, without data consistency
        t = time.perf_counter()
        alone = _run_amir(model, lq_vol, task, scale=scale, **{**options, "data_consistency": False})
        methods.append(("amir-net", alone, (time.perf_counter() - t) / n))
    if request.tta:
        t = time.perf_counter()
        ensembled = _run_amir(model, lq_vol, task, scale=scale, tta=True, **options)
        methods.append(("amir-tta", ensembled, (time.perf_counter() - t) / n))

    rows = []
    scores = {}
    hq = hq * k
    methods = [(name, pred * k, sps) for name, pred, sps in methods]
    for name, pred, sps in methods:
        if pred.shape != hq.shape:
            raise BadInputError(f"{name} output shape {pred.shape} differs from the reference {hq.shape}")
        sc = volume_scores(pred, hq, task, slice_axis=0)
        scores[name] = sc
        rows.append({
            "case": spec.name, "task": task, "level": spec.level, "method": name,
            "psnr": sc["psnr"], "ssim": sc["ssim"], "rmse": sc["rmse"], "n_slices": sc["n_slices"],
            "seconds_per_slice": sps,
        })
    # the figure slice: the scored slice with the most reference signal in the window
    signal = np.clip(hq, lo, hi).reshape(n, -1).std(1)
    j = int(np.argmax(signal))
    from amir_cli.metrics import slice_scores

    panels = [(name, pred[j], slice_scores(pred[j], hq[j], task) if np.ptp(np.clip(hq[j], lo, hi)) > 0 else None)
              for name, pred, _ in methods]
    show = {
        "warnings": warnings,
        "case": spec.name, "task": task, "level": spec.level, "slice": int(idx[j]),
        "reference": hq[j], "panels": panels, "amir_psnr": scores["amir"]["psnr"],
        "pixel_mm": hq_vol.inplane_spacing_mm,
    }
    return rows, show


def _case_warnings(spec: CaseSpec, hq_vol, hq: np.ndarray, lq: np.ndarray) -> list[str]:
    """What a reader of the scores should know: a paired image that --task auto would give another
    task than its folder's, or a low-quality image equal to its reference."""
    from amir_cli.taskdetect import task_mismatch

    warnings = []
    if spec.simulation is None:
        mismatch = task_mismatch(hq_vol, spec.task, given=f"its folder names {spec.task}")
        warnings += [mismatch] if mismatch else []
        if lq.shape == hq.shape and np.array_equal(lq, hq):
            warnings.append("its LQ image equals its HQ image on the scored slices: nothing to restore")
    return warnings


def _representative(shows: list[dict]) -> dict:
    """The case whose AMIR PSNR is the median of its task and level."""
    vals = [s["amir_psnr"] if np.isfinite(s["amir_psnr"]) else -np.inf for s in shows]
    order = np.argsort(vals)
    return shows[int(order[(len(order) - 1) // 2])]
