"""Volume -> batched 2-D slices -> AMIR -> volume, and one case's files and report around it.

The library face of `amir restore` (no Typer here):
- ``restore_volume``: one ``Volume`` in physical units to its restored ``Volume`` and an info dict
  (the network itself runs in :mod:`amir_cli.inference`, on the device of :mod:`amir_cli.device`);
- ``case_files``: where one case's files go, checked before any work; ``restore_case``: that file
  in, the restored file and its JSON report out (how they are placed: :mod:`amir_cli.placement`);
  a folder of cases: :mod:`amir_cli.batch`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ._version import __version__
from .device import ENGINES, check_device_spec, pick_device, precision_context
from .errors import BadInputError
from .imaging import background, dicom, dicom_write, intensity, kspace
from .inference import DEFAULT_TILE_OVERLAP, predict
from .imaging.io import Volume, read_image, stem
from .imaging.volume import check_memory
from .placement import (check_input_format, check_output, check_output_format, default_output, publish,
                        report_path_for, same_or_inside, written_files)
from .taskdetect import detect_task, task_mismatch
from .tasks import EVAL_WINDOW, MIN_TILE, MR_FACTORS, MR_PASSES, MR_SCALES, MRI_SR, NORM_RANGE, PET_SYNTHESIS, TASK, check_choice
from .weights import LoadedWeights, load_weights

DEFAULT_BATCH_SIZE = 4  # slices per network call off the CPU
CPU_BATCH_SIZE = 1
CASCADE_STEP = 0.5  # each later MR pass moves the output this far towards the network's output on it
# The image axes each later pass flips its input along (and its output back), in turn: the cascade
# then also averages the network over flips, at no extra cost.
PASS_FLIPS = ((-1,), (-2,), (-2, -1))
RESTORE_COPIES = 4  # input, normalised and restored float32 volumes, and the output being encoded
DESCRIPTION = "Restored with amir {version} (AMIR all-in-one restoration, task {task}{scale})"

Progress = Callable[[int, int], None]  # (slices done, slices in total)


# ---------------------------------------------------------------------------------------------
# pure array helpers


def scaled_affine(affine: np.ndarray, scale: int, slice_axis: int) -> np.ndarray:
    """The affine of a grid ``scale`` times finer in-plane with the same field of view.

    In-plane columns shrink by ``scale``; voxel 0's centre moves towards the outer corner so that
    the outer voxel edges (centre -/+ half a voxel) stay where they were.
    """
    out = np.array(affine, dtype=np.float64)
    for axis in (a for a in range(3) if a != slice_axis):
        column = out[:3, axis].copy()
        out[:3, axis] = column / scale
        out[:3, 3] -= column * (scale - 1) / (2 * scale)
    return out


# ---------------------------------------------------------------------------------------------
# one volume


def check_scale_task(task: str, scale: int, kspace_factor: int | None) -> None:
    """``--scale`` and ``--kspace-factor`` are for MR (``task`` 'auto' is decided later) and exclude each other."""
    mr = task in ("auto", MRI_SR)
    if scale != 1 and not mr:
        raise BadInputError(f"--scale {scale} is for mri-sr only (task is {task}); use --scale 1")
    if kspace_factor is not None:
        if not mr:
            raise BadInputError(f"--kspace-factor is for mri-sr only (task is {task})")
        if scale != 1:
            raise BadInputError("--kspace-factor is for inputs on their own grid; with --scale the coarse input is the measured band")


def check_options(task: str, scale: int, batch_size: int | None, tile: int | None, kspace_factor: int | None = None,
                  *, engine: str = "auto", decided: bool = True, passes: int | None = None, background_sd: float | None = None) -> None:
    """The restore options that need no image; ``decided=False`` lets ``task`` be 'auto' (decided from
    the image later, and checked again then)."""
    if decided or task != "auto":
        intensity.check_task(task)
    check_choice("--scale", scale, MR_SCALES)
    check_choice("--kspace-factor", kspace_factor, MR_FACTORS)
    check_choice("--engine", engine, ENGINES)
    check_scale_task(task, scale, kspace_factor)
    if batch_size is not None and batch_size < 1:
        raise BadInputError(f"--batch-size must be at least 1, got {batch_size}")
    if tile is not None and tile < MIN_TILE:
        raise BadInputError(f"--tile must be at least {MIN_TILE} pixels, got {tile}")
    if passes is not None and passes < 1:
        raise BadInputError(f"--passes must be at least 1, got {passes}")
    if background_sd is not None:
        if not (np.isfinite(background_sd) and background_sd > 0):
            raise BadInputError(f"--pet-background-noise must be a positive SUV, got {background_sd}")
        if task not in ("auto", PET_SYNTHESIS):
            raise BadInputError(f"--pet-background-noise is for pet-synthesis only (task is {task})")


def batch_size_for(device, batch_size: int | None) -> int:
    """``batch_size``, or where None the default of the device: one slice at a time on the CPU,
    where larger batches are slower per slice (their maps leave the caches), four elsewhere."""
    if batch_size is not None:
        return batch_size
    return CPU_BATCH_SIZE if device is None or getattr(device, "type", str(device)) == "cpu" else DEFAULT_BATCH_SIZE


@dataclass
class _Batch:
    first: int
    measured: np.ndarray  # the input slices as given
    chunk: np.ndarray  # on the output grid (k-space zero-padded when scale > 1)
    x: object  # their normalised torch tensor (B, 1, H, W) on the device
    filled: list | None = None  # per slice, the background mask that got noise, or None


@dataclass
class _SliceJob:
    """What is done to each batch of slices before and after the network (numpy and FFTs, run by a
    worker thread while the network runs on the next batch, see :attr:`finish_overlaps`), writing
    into ``restored``."""

    slices: np.ndarray
    restored: np.ndarray
    task: str
    scale: int
    mr_scale: float | None
    dc_factor: int | tuple[int, int] | None  # a factor, or the band's widths (kspace.measured_band)
    device: object
    dc_keep: float = 1.0  # the fraction of the band the consistency keeps (kspace.band_taper)
    passes: int = 1
    background_sd: float | None = None  # PET: fill noise-free backgrounds with noise of this SD
    pixel_mm: float = 1.0
    passthrough: int = 0
    filled_slices: int = 0

    def prepare(self, first: int, batch_size: int) -> _Batch:
        import torch

        chunk = measured = self.slices[first : first + batch_size]
        if self.scale > 1:
            chunk = np.stack([kspace.kspace_upsample(s, self.scale) for s in chunk])
        seen, filled = chunk, None
        if self.background_sd:  # each slice's noise from its own generator: the same in any batch
            pairs = [background.fill_background(s, self.background_sd, self.pixel_mm, np.random.default_rng(first + i))
                     for i, s in enumerate(chunk)]
            seen, filled = np.stack([p[0] for p in pairs]), [p[1] for p in pairs]
        x = torch.from_numpy(intensity.normalise(seen, self.task, self.mr_scale)[:, None]).to(self.device)
        return _Batch(first, measured, chunk, x, filled)

    def consistent(self, batch: _Batch, y: np.ndarray) -> np.ndarray:
        """The network's [0, 1] output ``y`` (B, H, W) in physical units, made consistent with the
        measured k-space band where it is known."""
        values = intensity.denormalise(y, self.task, self.mr_scale)
        if self.dc_factor:  # complex FFTs on CUDA or the CPU
            on = self.device if self.device.type == "cuda" else None
            values = kspace.data_consistency(values, batch.measured, self.dc_factor, device=on, keep=self.dc_keep)
        return values

    def next_input(self, batch: _Batch, y: np.ndarray):
        """The cascade's next network input: the last pass's consistent output, normalised."""
        import torch

        values = self.consistent(batch, y)
        return torch.from_numpy(intensity.normalise(values, self.task, self.mr_scale)[:, None]).to(self.device)

    @property
    def finish_overlaps(self) -> bool:
        """Whether :meth:`finish` may run beside the network: not where its data consistency computes
        on the CPU, whose threads the network already takes (two thread teams on the same cores run
        several times slower than one after the other)."""
        return not (self.dc_factor and self.device.type == "cpu")

    def finish(self, batch: _Batch, y: np.ndarray) -> None:
        """Make the network's [0, 1] output ``y`` (B, H, W) `consistent`, keep the input where it lay
        outside the normalisation range, store."""
        values = self.consistent(batch, y)
        chunk = np.asarray(batch.chunk, dtype=np.float32)
        physical = chunk * (self.mr_scale or 1.0)  # the units normalise() saw
        low, high = NORM_RANGE[self.task]
        outside = (physical < low) | (physical > high)
        if outside.any():
            values[outside] = chunk[outside]
            self.passthrough += int(outside.sum())
        for k, mask in enumerate(batch.filled or ()):
            if mask is not None:  # the filled background given back as it was
                values[k][mask] = chunk[k][mask]
                self.filled_slices += 1
        self.restored[batch.first : batch.first + len(chunk)] = values


def restore_volume(
    model,
    volume: Volume,
    task: str,
    *,
    scale: int = 1,
    device=None,
    precision: str = "fp32",
    batch_size: int | None = None,
    tile: int | None = None,
    tile_overlap: float = DEFAULT_TILE_OVERLAP,
    tta: bool = False,
    kspace_factor: int | None = None,
    data_consistency: bool = True,
    detect_zero_filling: bool = False,
    passes: int | None = None,
    background_sd: float | None = None,
    choose_background: bool = False,
    progress: Progress | None = None,
) -> tuple[Volume, dict]:
    """Restore ``volume`` (physical units) slice by slice along its acquisition axis.

    Per task: MR is first scaled into the 12-bit range (``mr_scale_factor``), then everything is
    normalised to [0, 1], run through ``model`` in batches (each slice inside a ``BORDER`` of its
    replicated edge pixels), clipped back into [0, 1] and denormalised exactly. Voxels whose input lay outside the normalisation range (CT padding
    below -1024 HU, metal above 3071 HU, PET above SUV 20, the brightest MR spots) keep their input
    value: the network only ever saw the clipped value there. ``scale`` > 1 (mri-sr only)
    zero-pads each slice's k-space to the finer grid before the network. ``tta`` averages the
    network over the 8 flips and rotations of each slice (:func:`amir_cli.inference.self_ensemble`, 8x the time;
    the routing summary is the untransformed slices'). MR whose k-space band is known is then made
    consistent with the frequencies the input measured (``data_consistency``,
    :func:`amir_cli.imaging.kspace.data_consistency`): with ``scale`` > 1 the coarse input is that
    band (skipped if it has negative values, which no magnitude image has); ``kspace_factor`` says
    that the input, on its own grid, is a zero-filled image of the central 1/factor of k-space per
    in-plane axis (negative values are refused); without it, ``detect_zero_filling`` looks for that
    factor in the input's spectrum (:func:`amir_cli.imaging.kspace.zero_filled_factor`), or a band of other
    widths per axis (:func:`amir_cli.imaging.kspace.measured_band`); on the input's grid
    a band that a k-space filter tapered keeps only its central part (:func:`amir_cli.imaging.kspace.band_taper`). There the
    network runs ``passes`` times (None: ``MR_PASSES`` of the factor): each later pass runs on the
    last output made consistent (flipped by ``PASS_FLIPS`` in turn and flipped back), moves that
    output ``CASCADE_STEP`` of the way towards its own and makes it consistent again (a damped
    cascade of network and data consistency: the later passes see less truncation ringing).
    ``background_sd`` (PET, SUV: the noise's standard deviation in the body): each slice whose
    background holds almost no noise, as an iterative reconstruction leaves it, has it filled with
    noise of ``background.FILL_FRACTION`` of that before the network
    (:func:`amir_cli.imaging.background.fill_background`; the network reads the noise level there)
    and given back as it was after. Without it, ``choose_background`` chooses that SD for a 3-D PET
    whose background is noise-free from its neighbouring slices
    (:func:`amir_cli.imaging.background.choose_sd`; a few probe slices restored at each level tried).
    ``batch_size`` None: :func:`batch_size_for` the device. A worker thread prepares the next batch
    and finishes the last one while the network runs (the network's thread finishes it where a data
    consistency would compete with the network for the CPU's cores). Returns the restored Volume
    and an info dict (timings, shapes, engine, routing instruction summary).
    """
    device = pick_device("cpu") if device is None else (pick_device(device) if isinstance(device, str) else device)
    batch_size = batch_size_for(device, batch_size)
    check_options(task, scale, batch_size, tile, kspace_factor, passes=passes, background_sd=background_sd)
    dc_factor, factor_from, dc_keep = _measured_band(volume, task, scale, kspace_factor, data_consistency, detect_zero_filling)
    autocast = precision_context(device, precision)
    started = time.perf_counter()
    axis = volume.slice_axis
    slices = np.moveaxis(np.asarray(volume.array, dtype=np.float32), axis, 0)  # (n, a, b), a view
    n = slices.shape[0]
    pixel_mm = float(np.mean(volume.inplane_spacing_mm))
    background_from = "option" if background_sd else None
    if task == PET_SYNTHESIS and background_sd is None and choose_background:
        chosen = chosen_background_sd(model, slices, volume.spacing_mm[axis], pixel_mm, device=device, precision=precision,
                                      batch_size=batch_size, tile=tile, tile_overlap=tile_overlap)
        if chosen is not None:
            background_sd, background_from = chosen or None, "neighbour slices"
    job = _SliceJob(slices, np.empty((n, slices.shape[1] * scale, slices.shape[2] * scale), dtype=np.float32), task,
                    scale, intensity.mr_scale_factor(volume.array, volume.meta.get("source_path")) if task == MRI_SR else None, dc_factor, device,
                    dc_keep, passes=(passes or MR_PASSES[_passes_factor(volume, dc_factor)]) if dc_factor else 1, background_sd=background_sd,
                    pixel_mm=pixel_mm)

    def network(batch: _Batch):
        with autocast:
            y, inst = predict(model, batch.x, tile=tile, tile_overlap=tile_overlap, tta=tta)
        y = y.float().clamp_(0.0, 1.0)
        for k in range(job.passes - 1):
            last = job.next_input(batch, y.cpu().numpy()[:, 0])
            flips = () if tta else PASS_FLIPS[k % len(PASS_FLIPS)]  # tta: every flip already
            with autocast:
                y, _ = predict(model, last.flip(flips), tile=tile, tile_overlap=tile_overlap, tta=tta)
            y = last + CASCADE_STEP * (y.flip(flips).float().clamp_(0.0, 1.0) - last)
        return y.cpu().numpy()[:, 0], inst.float().sum(0).double().cpu().numpy()

    model_seconds, instruction_sum = _pipeline(job, network, n, batch_size, progress)
    array = np.moveaxis(job.restored, 0, axis)
    affine = scaled_affine(volume.affine, scale, axis) if scale > 1 else volume.affine.copy()
    result = volume.with_array(array, affine=affine)
    seconds = time.perf_counter() - started
    info = {
        "task": task, "scale": scale, "device": str(device), "precision": precision, "batch_size": batch_size,
        "engine": engine(model, device, precision),
        "tile": tile, "tile_overlap": tile_overlap if tile else None, "tta": tta, "slice_axis": axis, "slices": n,
        "mr_scale_factor": job.mr_scale,
        "data_consistency": {"kspace_factor": dc_factor if isinstance(dc_factor, int) else None,
                             "band": _band_samples(volume, dc_factor) if scale == 1 else None, "factor_from": factor_from,
                             "grid": "coarse" if scale > 1 else "same", "band_kept": dc_keep, "iterations": kspace.DC_ITERATIONS,
                             "passes": job.passes}
        if dc_factor
        else None,
        "passthrough_voxels": job.passthrough,
        "background_noise": {"sd": background_sd or 0.0, "from": background_from, "filled_slices": job.filled_slices}
        if background_from
        else None,
        "seconds": seconds, "model_seconds": model_seconds,
        "slices_per_second": n / seconds if seconds > 0 else None,
        "routing": routing_summary(instruction_sum / max(n, 1)),
    }
    return result, info


def chosen_background_sd(model, slices: np.ndarray, slice_mm: float, pixel_mm: float, **run) -> float | None:
    """The `--pet-background-noise` SD that `amir restore` chooses for the slices-first PET ``slices``
    (``slice_mm`` apart) where none is given (:func:`amir_cli.imaging.background.choose_sd`, its probe
    slices restored by :func:`restore_volume` with ``run``'s keywords); None where the background holds
    noise or the image has too few slices, or too far apart, to choose by."""
    if not background.noise_free_background(slices):
        return None

    def probe(chosen: np.ndarray, sd: float) -> np.ndarray:
        vol = Volume(np.moveaxis(chosen, 0, -1).astype(np.float32), np.diag([pixel_mm, pixel_mm, 1.0, 1.0]))
        return restore_volume(model, vol, PET_SYNTHESIS, background_sd=sd or None, **run)[0].slices_first()

    return background.choose_sd(slices, slice_mm, probe)


def _measured_band(volume: Volume, task: str, scale: int, kspace_factor: int | None, data_consistency: bool,
                   detect_zero_filling: bool) -> tuple[int | tuple[int, int] | None, str | None, float]:
    """(the k-space factor or per-axis widths whose band the output keeps, or None; where it comes from: "scale",
    "option" or "detected"; the fraction of that band kept: below 1 where a filter tapered it on the
    input's grid, :func:`amir_cli.imaging.kspace.band_taper`), as :func:`restore_volume` describes."""
    factor_from, keep = "scale" if scale > 1 else "option" if kspace_factor else None, 1.0
    if task == MRI_SR and factor_from is None and detect_zero_filling and data_consistency:
        kspace_factor, keep = kspace.recognised_band(volume.array, volume.slice_axis)
        factor_from = "detected" if kspace_factor else None
    dc_factor = (scale if scale > 1 else kspace_factor) if data_consistency else None
    lowest = float(np.min(volume.array)) if dc_factor else 0.0
    if lowest < 0:  # not a magnitude image
        if kspace_factor:
            raise BadInputError(f"--kspace-factor needs a magnitude image, and this one has values down to {lowest:g}")
        dc_factor = None  # a coarse input with negative values: the network alone
    if dc_factor and factor_from == "option":
        keep = kspace.band_taper(volume.array, volume.slice_axis, dc_factor)
    return dc_factor, factor_from, keep


def _band_samples(volume: Volume, band) -> list[list[int]]:
    """[[kept, of], ...] per in-plane axis: the central k-space samples the consistency keeps."""
    shape = volume.inplane_shape
    return [[m, n] for m, n in zip(kspace.band_widths(shape, band), shape)]


def _passes_factor(volume: Volume, band) -> int:
    """The MR factor whose cascade passes a band runs: its own, or for per-axis widths
    (:func:`kspace.measured_band`) x4 where an axis kept a third or less of its samples, else x2."""
    if isinstance(band, int):
        return band
    return 4 if min(m / n for m, n in zip(band, volume.inplane_shape)) <= 1 / 3 else 2


def _pipeline(job: _SliceJob, network, n: int, batch_size: int, progress: Progress | None) -> tuple[float, np.ndarray]:
    """Run ``network`` on each batch in the calling thread while one worker thread prepares the
    next batch and finishes the previous one (or the calling thread finishes each, where
    ``job.finish_overlaps`` says no); returns (network seconds, summed instructions)."""
    import torch
    from concurrent.futures import Future, ThreadPoolExecutor

    model_seconds, instruction_sum = 0.0, None
    with ThreadPoolExecutor(1, thread_name_prefix="amir-slices") as worker, torch.inference_mode():
        upcoming = worker.submit(job.prepare, 0, batch_size)
        finishing = None
        for first in range(0, n, batch_size):
            batch = upcoming.result()
            if first + batch_size < n:
                upcoming = worker.submit(job.prepare, first + batch_size, batch_size)
            t0 = time.perf_counter()
            y, inst = network(batch)
            model_seconds += time.perf_counter() - t0
            instruction_sum = inst if instruction_sum is None else instruction_sum + inst
            if finishing is not None:
                finishing.result()
                if progress is not None:
                    progress(first, n)
            if job.finish_overlaps:
                finishing = worker.submit(job.finish, batch, y)
            else:
                finishing = Future()
                finishing.set_result(job.finish(batch, y))
        finishing.result()
    if progress is not None:
        progress(n, n)
    return model_seconds, instruction_sum


def engine(model, device, precision: str = "fp32") -> str:
    """How the network computes on ``device``: "native" (amir's compiled kernels), "fused" (oneDNN's
    fused operators), or "plain" (PyTorch's operators alone). Both serve CPU fp32 inference; auto
    takes the kernels wherever they build, else fuses with one torch thread."""
    import torch

    from .network import native, onednn

    choice = "plain" if getattr(model, "reference", False) else getattr(model, "engine", "plain")
    device = torch.device(device)
    used = [name for name, runs in (("native", native.runs), ("fused", onednn.fuses)) if runs(choice, device, precision)]
    return "+".join(used) or "plain"


def restore_array(
    array: np.ndarray,
    task: str,
    *,
    model=None,
    weights: str | None = None,
    spacing_mm=(1.0, 1.0, 1.0),
    slice_axis: int = 2,
    scale: int = 1,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int | None = None,
    tile: int | None = None,
    tta: bool = False,
    kspace_factor: int | None = None,
    data_consistency: bool = True,
    detect_zero_filling: bool = True,
    passes: int | None = None,
    background_sd: float | None = None,
    choose_background: bool = True,
) -> np.ndarray:
    """Restore a 2-D or 3-D array in physical units (HU, SUV, MR units) and return the new array.

    The library shortcut for notebooks: ``model`` (an AMIR) or ``weights`` (registry name or file,
    default: the shipped default) picks the network; the other keywords are :func:`restore_volume`'s
    (``background_sd``: `amir restore --pet-background-noise`; ``choose_background``: its choice
    without one, on by default as in `amir restore`).
    """
    a = np.asarray(array, dtype=np.float32)
    two_d = a.ndim == 2
    dev = pick_device(device)
    if model is None:
        model = load_weights(weights, dev).model
    spacing = list(spacing_mm) + [1.0] * (3 - len(spacing_mm))
    volume = Volume(array=a, affine=np.diag([*spacing[:3], 1.0]), slice_axis=2 if two_d else slice_axis)
    out, _ = restore_volume(
        model, volume, task, scale=scale, device=dev, precision=precision, batch_size=batch_size, tile=tile, tta=tta,
        kspace_factor=kspace_factor, data_consistency=data_consistency, detect_zero_filling=detect_zero_filling,
        passes=passes, background_sd=background_sd, choose_background=choose_background,
    )
    return out.array[:, :, 0] if two_d else out.array


def routing_summary(mean_instruction: np.ndarray, top: int = 5) -> dict:
    """The mean routing instruction in a few numbers: its L2 norm and its largest entries."""
    v = np.asarray(mean_instruction, dtype=np.float64)
    order = np.argsort(v)[::-1][:top]
    return {
        "dimension": int(v.size),
        "mean_instruction_norm": float(np.linalg.norm(v)),
        "top_indices": [int(i) for i in order],
        "top_values": [round(float(v[i]), 6) for i in order],
    }


@dataclass
class RestoreOptions:
    task: str = "auto"
    scale: int = 1
    device: object = None
    precision: str = "fp32"
    batch_size: int | None = None  # None: batch_size_for the device
    tile: int | None = None
    tile_overlap: float = DEFAULT_TILE_OVERLAP
    tta: bool = False
    kspace_factor: int | None = None
    data_consistency: bool = True
    detect_zero_filling: bool = True
    passes: int | None = None  # None: MR_PASSES of the k-space factor
    background_sd: float | None = None  # PET: --pet-background-noise
    choose_background: bool = True  # PET: --fill-pet-background
    overwrite: bool = False
    engine: str = "auto"  # ENGINES (`engine`)

    def check(self) -> None:
        """The option values that need no image (the task may still be 'auto'; a device named by its
        text, not whether this machine has it): BadInputError or DeviceError, which `amir restore`
        shows as usage errors before any work."""
        check_options(self.task, self.scale, self.batch_size, self.tile, self.kspace_factor, engine=self.engine,
                      decided=False, passes=self.passes, background_sd=self.background_sd)
        if isinstance(self.device, str):
            check_device_spec(self.device)


@dataclass(frozen=True)
class CaseFiles:
    """One case's files, checked by :func:`case_files` before any work."""

    input: Path
    output: Path
    report: Path
    reference: Path | None = None
    series: str | None = None  # the SeriesInstanceUID of one series of a DICOM folder that holds several


def case_files(input_path: Path, output: Path | None = None, *, overwrite: bool = False, reference: Path | None = None,
               report: Path | None = None, series: str | None = None, weights_file: Path | None = None) -> CaseFiles:
    """Where one case's image and report go (defaults beside the input), refused where they would
    overwrite an input (the image, ``reference``, ``weights_file``) or an existing file without
    ``overwrite``, or where a format cannot be read or written."""
    input_path = Path(input_path)
    check_input_format(input_path)
    output = Path(output) if output is not None else default_output(input_path)
    report = Path(report) if report is not None else report_path_for(output)
    inputs = (reference, weights_file)
    check_output(input_path, output, overwrite, inputs=inputs)
    check_output(input_path, report, overwrite, what="report", inputs=inputs, option="--report")
    if any(same_or_inside(report, o) or same_or_inside(o, report) for o in written_files(output)):
        raise BadInputError(f"{report}: the report path must differ from the output")
    check_output_format(input_path, output)
    return CaseFiles(input_path, output, report, None if reference is None else Path(reference), series)


def value_unit(volume: Volume, task: str) -> str:
    """The unit of the values: the file's where it names one, else the task's (a CT NIfTI holds HU)."""
    if volume.unit not in ("", "arbitrary"):
        return volume.unit
    return TASK[task].unit or "arbitrary"


def _geometry(volume: Volume, unit: str | None = None) -> dict:
    return {
        "shape": list(volume.shape),
        "spacing_mm": [round(s, 6) for s in volume.spacing_mm],
        "affine": [[round(float(v), 6) for v in row] for row in volume.affine],
        "slice_axis": volume.slice_axis,
        "format": volume.source_format,
        "modality": volume.modality,
        "unit": unit or volume.unit,
    }


def _choose_task(volume: Volume, given: str, weights: LoadedWeights) -> tuple[str, str, list[str]]:
    """(task, why, warnings): ``given`` or, for 'auto', the detected task; warns where the image
    suggests another task than the one given, or the weights were not trained for it."""
    if given == "auto":
        task, reason = detect_task(volume)
    else:
        task, reason = intensity.check_task(given), "given with --task"
    mismatch = task_mismatch(volume, task) if given != "auto" else None
    warnings = [mismatch] if mismatch else []
    if weights.tasks and task not in weights.tasks:
        warnings.append(f"weights {weights.name} were not trained for {task} (tasks: {', '.join(weights.tasks)})")
    return task, reason, warnings


def _mr_warnings(volume: Volume, path: Path, options: RestoreOptions, info: dict) -> list[str]:
    """What an MR restoration's options did not do: a zero-filled-looking name restored without its
    band, a --kspace-factor the spectrum disagrees with, zero filling not looked for on small slices,
    --passes without a known band."""
    dc = info["data_consistency"]
    warnings = []
    if dc is None and options.scale == 1 and options.data_consistency and options.kspace_factor is None:
        small = min(volume.inplane_shape) < kspace.MIN_DETECT_SIDE
        hint = zero_filled_hint(path)
        if small and options.detect_zero_filling:
            warnings.append(f"zero filling is not looked for on slices under {kspace.MIN_DETECT_SIDE} pixels a side"
                            + ("" if hint else ": --kspace-factor S restores a zero-filled image with the band it measured"))
        warnings += hint
    if dc is not None and dc["factor_from"] == "option":
        seen = kspace.zero_filled_factor(volume.array, volume.slice_axis)
        if seen and seen != options.kspace_factor:
            warnings.append(f"--kspace-factor {options.kspace_factor} was given, though the image looks zero-filled "
                            f"to the central 1/{seen} of k-space")
    if options.passes is not None and dc is None:
        warnings.append("--passes applies where the k-space band is known (--kspace-factor, --scale or recognised "
                        "zero filling); the network ran once")
    return warnings


_ZERO_FILLED_NAME = re.compile(r"(?:^|[^a-z0-9])(?:x([24])|zf|zero[_-]?fill(?:ed)?)(?:$|[^a-z0-9])")


def zero_filled_hint(path: Path) -> list[str]:
    """A one-line hint when an MR file's name suggests a zero-filled image (``_x4``, ``zf``) and
    ``--kspace-factor`` was not given; [] otherwise."""
    found = _ZERO_FILLED_NAME.search(stem(Path(path)).lower())
    if not found:
        return []
    factor = found.group(1) or "S"
    return [f"the name suggests a zero-filled image: if it kept the central 1/{factor} of k-space, "
            f"--kspace-factor {factor} keeps the frequencies it measured"]


def quiet_background_hint(volume: Volume) -> list[str]:
    """A one-line hint when a PET image's background holds almost no noise, as an iterative (OSEM)
    reconstruction leaves it (:func:`amir_cli.imaging.background.noise_free_background`); [] otherwise."""
    if not background.noise_free_background(volume.slices_first()):
        return []
    return ["the background around the body holds almost no noise, as an iterative (OSEM) reconstruction "
            "leaves it: the network reads the noise level there and removes little of this image's noise; "
            "--pet-background-noise SD (the noise's standard deviation in a uniform region of the body, SUV) "
            f"gives it that level (chosen from neighbouring slices where an image has {background.MIN_SLICES} or more, "
            f"at most {background.MAX_SLICE_MM:g} mm apart)"]


def restore_case(weights: LoadedWeights, files: CaseFiles, options: RestoreOptions, *, progress: Progress | None = None) -> dict:
    """Read, restore, write and report one image (its files checked by :func:`case_files`); returns
    the report (also written as JSON)."""
    volume = read_image(files.input, files.series)
    if files.output.suffix.lower() in dicom.DICOM_SUFFIXES:  # before the restoration, not after it
        dicom_write.check_one_file(volume, volume, files.output)
    task, reason, warnings = _choose_task(volume, options.task, weights)
    warnings = volume.meta.get("notes", []) + warnings  # what reading left out or assumed
    check_options(task, options.scale, options.batch_size, options.tile, options.kspace_factor, engine=options.engine,
                  passes=options.passes, background_sd=options.background_sd)
    out_shape = [n * (options.scale if a != volume.slice_axis else 1) for a, n in enumerate(volume.shape)]
    check_memory(out_shape, str(files.input), copies=RESTORE_COPIES, doing="restoring")
    out_affine = scaled_affine(volume.affine, options.scale, volume.slice_axis) if options.scale > 1 else volume.affine
    ref_volume, ref_scale = (None, 1.0) if files.reference is None else _read_reference(files.reference, tuple(out_shape), out_affine, task)

    if options.engine == "native":
        from .network import native

        if not native.available():
            raise BadInputError(f"--engine native is not available here: {native.reason()}")
    weights.model.set_computation(engine=options.engine)
    restored, info = restore_volume(
        weights.model, volume, task, scale=options.scale, device=options.device, precision=options.precision,
        batch_size=options.batch_size, tile=options.tile, tile_overlap=options.tile_overlap, tta=options.tta,
        kspace_factor=options.kspace_factor, data_consistency=options.data_consistency,
        detect_zero_filling=options.detect_zero_filling, passes=options.passes, background_sd=options.background_sd,
        choose_background=options.choose_background, progress=progress,
    )
    if task == MRI_SR:
        warnings += _mr_warnings(volume, files.input, options, info)
    elif options.passes is not None:
        warnings.append(f"--passes applies to mri-sr only; {task} ran the network once")
    if task == PET_SYNTHESIS and info["background_noise"] is None:
        warnings += quiet_background_hint(volume)
    scale_text = f", scale {options.scale}" if options.scale > 1 else ""
    description = DESCRIPTION.format(version=__version__, task=task, scale=scale_text)

    result = _case_report(files, task, reason, weights, volume, restored, info, warnings)
    if ref_volume is not None:
        result["reference"] = str(files.reference)
        result["metrics"] = _reference_metrics(volume, restored, ref_volume, task, options.scale, ref_scale)
        ratio = (info["mr_scale_factor"] or ref_scale) / ref_scale  # MR: the reference's units over the input's
        if not 0.5 <= ratio <= 2:
            result["warnings"].append(f"the reference's intensities are about {ratio:.3g} times the input's: the scores "
                                      "compare the output with a reference in other units")
    result["report"] = str(files.report)
    publish(restored, files.output, reference=volume, description=description, overwrite=options.overwrite,
            report=files.report, result=result)
    return result


def _read_reference(reference: Path, expected: tuple[int, ...], affine: np.ndarray, task: str) -> tuple[Volume, float]:
    """The --reference image, which must lie on the output grid (``expected``: its shape, ``affine``:
    its voxel-to-world map): no voxel centre more than half the finest spacing from the output's; and
    the factor its scores take (:func:`amir_cli.metrics.protocol_scale`)."""
    from .metrics import protocol_scale

    ref_volume = read_image(reference)
    if ref_volume.shape != expected:
        raise BadInputError(
            f"{reference}: reference shape {'x'.join(map(str, ref_volume.shape))} differs from the output shape "
            f"{'x'.join(map(str, expected))}"
        )
    corners = np.array([[i, j, k, 1.0] for i in (0, expected[0] - 1) for j in (0, expected[1] - 1) for k in (0, expected[2] - 1)]).T
    apart = float(np.linalg.norm((ref_volume.affine @ corners - affine @ corners)[:3], axis=0).max())
    if apart > 0.5 * min(np.linalg.norm(affine[:3, :3], axis=0)):
        raise BadInputError(f"{reference}: the reference does not lie on the output's grid (voxels up to {apart:.1f} mm "
                            "from the output's); scores need the same voxels in the same place")
    return ref_volume, protocol_scale(ref_volume.array, task, str(reference))


_RUN_FIELDS = ("device", "precision", "engine", "batch_size", "tile", "tta", "scale")  # of restore_volume's info
_RESULT_FIELDS = ("mr_scale_factor", "data_consistency", "background_noise", "passthrough_voxels", "routing")


def _case_report(files: CaseFiles, task: str, reason: str, weights: LoadedWeights, volume: Volume, restored: Volume,
                 info: dict, warnings: list[str]) -> dict:
    """The JSON report of one restored case (docs/reports.md), without the reference's metrics."""
    unit = value_unit(volume, task)
    return {
        "tool": "amir",
        "version": __version__,
        "input": str(files.input),
        **({"series_instance_uid": files.series} if files.series else {}),
        "output": str(files.output),
        "task": task,
        "task_reason": reason,
        "weights": {**weights.record(), "config": weights.config},
        **{k: info[k] for k in _RUN_FIELDS},
        "unit": unit,
        "input_geometry": _geometry(volume, unit),
        "output_geometry": _geometry(restored, unit),
        "slices": info["slices"],
        "seconds": round(info["seconds"], 4),
        "model_seconds": round(info["model_seconds"], 4),
        "slices_per_second": round(info["slices_per_second"], 4) if info["slices_per_second"] else None,
        **{k: info[k] for k in _RESULT_FIELDS},
        "warnings": warnings,
    }


def _reference_metrics(volume: Volume, restored: Volume, ref_volume: Volume, task: str, scale: int, k: float) -> dict:
    """Scores of the output against the reference, and of the input too where it lies on the same grid,
    all multiplied by ``k`` (:func:`amir_cli.metrics.protocol_scale`)."""
    from .metrics import volume_scores

    metrics = {
        "window": list(EVAL_WINDOW[task]),
        "scale": k,
        "output": _scores(volume_scores(restored.array, ref_volume.array, task, restored.slice_axis, scale=k)),
    }
    if scale == 1:  # the input on the same grid: what restoration gained
        metrics["input"] = _scores(volume_scores(volume.array, ref_volume.array, task, volume.slice_axis, scale=k))
    return metrics


def _scores(s: dict) -> dict:
    """The report's scores; ``psnr_identical`` says why an infinite PSNR (a slice equal to the
    reference) is null in the JSON."""
    return {**{k: s[k] for k in ("psnr", "ssim", "rmse", "n_slices", "n_skipped")}, "psnr_identical": s["psnr"] == float("inf")}
