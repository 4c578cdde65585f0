"""Volume -> batched 2-D slices -> AMIR -> volume, plus the files, reports and batches around it.

The library face of `amir restore` (no Typer here):
- ``pick_device`` / ``precision_context``: where and in which precision the network runs;
- ``restore_volume``: one ``Volume`` in physical units to its restored ``Volume`` and an info dict;
- ``tiled_predict``: overlapping tiles blended back (a pure function of the predictor);
- ``restore_case`` / ``restore_batch``: files in, files and JSON reports out.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ._version import __version__
from .errors import BadInputError, DeviceError, WeightsError, one_line
from .files import write_json
from .imaging import intensity, kspace
from .imaging.io import Volume, image_suffix, list_cases, read_image, stem, write_image
from .taskdetect import detect_task
from .tasks import MRI_SR, PET_SYNTHESIS

PRECISIONS = ("fp32", "bf16", "fp16")
SCALES = (1, 2, 4)
DEFAULT_BATCH_SIZE = 4
DEFAULT_TILE_OVERLAP = 0.25  # fraction of the tile size shared by neighbouring tiles
MIN_TILE = 32
# Edge pixels replicated around each slice before the network, a multiple of its 8-pixel grid.
# Anatomy cut by the field of view otherwise came out worse at the border: the whole x2 loss on the
# held-out abdomen MR rows sat in their last two rows (benchmarks/quality.py).
BORDER = 8
DESCRIPTION = "Restored with amir {version} (AMIR all-in-one restoration, task {task}{scale})"

Progress = Callable[[int, int], None]  # (slices done, slices in total)


# ---------------------------------------------------------------------------------------------
# device and precision


def pick_device(spec: str = "auto"):
    """A torch.device for 'auto' (cuda > mps > cpu; cuda:LOCAL_RANK under torchrun), 'cpu',
    'cuda', 'cuda:N' or 'mps'; DeviceError when this machine cannot provide it."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise DeviceError("device mps is not available on this machine (Apple GPU with an MPS-enabled torch needed)")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        index_text = spec[5:] if spec.startswith("cuda:") else ""
        if index_text and not index_text.isdigit():
            raise DeviceError(f"invalid device {spec!r}: use auto, cpu, cuda, cuda:N or mps")
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec} requested but CUDA is not available (torch {torch.__version__}, no GPU found)")
        index = int(index_text) if index_text else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {spec} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device("cuda", index)
    raise DeviceError(f"invalid device {spec!r}: use auto, cpu, cuda, cuda:N or mps")


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def precision_context(device, precision: str = "fp32"):
    """A context manager running the network in ``precision`` on ``device`` (torch.autocast)."""
    import torch

    if precision not in PRECISIONS:
        raise DeviceError(f"invalid precision {precision!r}: use {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu" and precision == "fp16":
        raise DeviceError("fp16 is not supported on the CPU; use --precision fp32 or bf16")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"bf16 is not supported on {torch.cuda.get_device_name(device)}; use fp16 or fp32")
    try:
        return torch.autocast(device_type=device.type, dtype=dtype)
    except (RuntimeError, ValueError) as exc:
        raise DeviceError(f"precision {precision} is not available on {device}: {one_line(exc)}") from None


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
# one volume


def check_options(task: str, scale: int, batch_size: int, tile: int | None, kspace_factor: int | None = None) -> None:
    intensity.check_task(task)
    if scale not in SCALES:
        raise BadInputError(f"--scale must be 1, 2 or 4, got {scale}")
    if scale != 1 and task != MRI_SR:
        raise BadInputError(f"--scale {scale} is for mri-sr only (task is {task}); use --scale 1")
    if kspace_factor is not None:
        if kspace_factor not in SCALES[1:]:
            raise BadInputError(f"--kspace-factor must be 2 or 4, got {kspace_factor}")
        if task != MRI_SR:
            raise BadInputError(f"--kspace-factor is for mri-sr only (task is {task})")
        if scale != 1:
            raise BadInputError("--kspace-factor is for inputs on their own grid; with --scale the coarse input is the measured band")
    if batch_size < 1:
        raise BadInputError(f"--batch-size must be at least 1, got {batch_size}")
    if tile is not None and tile < MIN_TILE:
        raise BadInputError(f"--tile must be at least {MIN_TILE} pixels, got {tile}")


def restore_volume(
    model,
    volume: Volume,
    task: str,
    *,
    scale: int = 1,
    device=None,
    precision: str = "fp32",
    batch_size: int = DEFAULT_BATCH_SIZE,
    tile: int | None = None,
    tile_overlap: float = DEFAULT_TILE_OVERLAP,
    tta: bool = False,
    kspace_factor: int | None = None,
    data_consistency: bool = True,
    progress: Progress | None = None,
) -> tuple[Volume, dict]:
    """Restore ``volume`` (physical units) slice by slice along its acquisition axis.

    Per task: MR is first scaled into the 12-bit range (``mr_scale_factor``), then everything is
    normalised to [0, 1], run through ``model`` in batches (each slice inside a ``BORDER`` of its
    replicated edge pixels), clipped back into [0, 1] and denormalised exactly. Voxels whose input lay outside the normalisation range (CT padding
    below -1024 HU, metal above 3071 HU, PET above SUV 20, the brightest MR spots) keep their input
    value: the network only ever saw the clipped value there. ``scale`` > 1 (mri-sr only)
    zero-pads each slice's k-space to the finer grid before the network. ``tta`` averages the
    network over the 8 flips and rotations of each slice (:func:`self_ensemble`, 8x the time;
    the routing summary is the untransformed slices'). MR whose k-space band is known is then made
    consistent with the frequencies the input measured (``data_consistency``,
    :func:`amir_cli.imaging.kspace.data_consistency`): with ``scale`` > 1 the coarse input is that
    band (skipped if it has negative values, which no magnitude image has); ``kspace_factor`` says
    that the input, on its own grid, is a zero-filled image of the central 1/factor of k-space per
    in-plane axis (negative values are refused). Returns the restored Volume and an info dict
    (timings, shapes, routing instruction summary).
    """
    import torch

    check_options(task, scale, batch_size, tile, kspace_factor)
    dc_factor = (scale if scale > 1 else kspace_factor) if data_consistency else None
    lowest = float(np.min(volume.array)) if dc_factor else 0.0
    if lowest < 0:  # not a magnitude image
        if kspace_factor:
            raise BadInputError(f"--kspace-factor needs a magnitude image, and this one has values down to {lowest:g}")
        dc_factor = None  # a coarse input with negative values: the network alone
    device = pick_device("cpu") if device is None else (pick_device(device) if isinstance(device, str) else device)
    autocast = precision_context(device, precision)
    started = time.perf_counter()
    axis = volume.slice_axis
    slices = np.moveaxis(np.asarray(volume.array, dtype=np.float32), axis, 0)  # (n, a, b), a view
    n = slices.shape[0]
    mr_scale = intensity.mr_scale_factor(volume.array) if task == MRI_SR else None
    low, high = intensity.NORM_RANGE[task]
    out_shape = (n, slices.shape[1] * scale, slices.shape[2] * scale)
    restored = np.empty(out_shape, dtype=np.float32)
    instruction_sum = None
    model_seconds = 0.0
    passthrough = 0

    def network(x):  # the whole AMIR on x; tiles share their slice's instruction
        instruction = model.instruction(x)
        padded = torch.nn.functional.pad(x, (BORDER,) * 4, mode="replicate")
        if tile is None:
            y = model(padded, instruction)
        else:
            y = tiled_predict(lambda t: model(t, instruction), padded, tile, tile_overlap)
        return y[..., BORDER:-BORDER, BORDER:-BORDER], instruction

    with torch.inference_mode():
        for first in range(0, n, batch_size):
            chunk = measured = slices[first : first + batch_size]
            if scale > 1:
                chunk = np.stack([kspace.kspace_upsample(s, scale) for s in chunk])
            x = torch.from_numpy(intensity.normalise(chunk, task, mr_scale)[:, None]).to(device)
            t0 = time.perf_counter()
            with autocast:
                y, inst = network(x)
                if tta:
                    y = self_ensemble(lambda t: network(t)[0], x, identity=y)
            y = y.float().clamp_(0.0, 1.0).cpu().numpy()[:, 0]
            inst = inst.float().sum(0).double().cpu().numpy()
            model_seconds += time.perf_counter() - t0
            instruction_sum = inst if instruction_sum is None else instruction_sum + inst
            values = intensity.denormalise(y, task, mr_scale)
            if dc_factor:  # complex FFTs on CUDA or the CPU
                values = kspace.data_consistency(values, measured, dc_factor, device=device if device.type == "cuda" else None)
            physical = np.asarray(chunk, dtype=np.float32) * (mr_scale or 1.0)  # the units normalise() saw
            outside = (physical < low) | (physical > high)
            if outside.any():
                values[outside] = np.asarray(chunk, dtype=np.float32)[outside]
                passthrough += int(outside.sum())
            restored[first : first + len(chunk)] = values
            if progress is not None:
                progress(min(first + batch_size, n), n)
    array = np.moveaxis(restored, 0, axis)
    affine = scaled_affine(volume.affine, scale, axis) if scale > 1 else volume.affine.copy()
    result = volume.with_array(array, affine=affine)
    seconds = time.perf_counter() - started
    mean_instruction = instruction_sum / max(n, 1)
    info = {
        "task": task,
        "scale": scale,
        "device": str(device),
        "precision": precision,
        "batch_size": batch_size,
        "tile": tile,
        "tile_overlap": tile_overlap if tile else None,
        "tta": tta,
        "slice_axis": axis,
        "slices": n,
        "mr_scale_factor": mr_scale,
        "data_consistency": {"kspace_factor": dc_factor, "grid": "coarse" if scale > 1 else "same", "iterations": kspace.DC_ITERATIONS}
        if dc_factor
        else None,
        "passthrough_voxels": passthrough,
        "seconds": seconds,
        "model_seconds": model_seconds,
        "slices_per_second": n / seconds if seconds > 0 else None,
        "routing": routing_summary(mean_instruction),
    }
    return result, info


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
    batch_size: int = DEFAULT_BATCH_SIZE,
    tile: int | None = None,
    tta: bool = False,
    kspace_factor: int | None = None,
    data_consistency: bool = True,
) -> np.ndarray:
    """Restore a 2-D or 3-D array in physical units (HU, SUV, MR units) and return the new array.

    The library shortcut for notebooks: ``model`` (an AMIR) or ``weights`` (registry name or file,
    default: the shipped default) picks the network.
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
        kspace_factor=kspace_factor, data_consistency=data_consistency,
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


# ---------------------------------------------------------------------------------------------
# weights


@dataclass
class LoadedWeights:
    model: object
    name: str
    path: Path
    sha256: str
    config: dict
    tasks: list = field(default_factory=list)


def load_weights(source: str | None, device) -> LoadedWeights:
    """The eval-mode network for a registry name or a file (sha256 verified for registry entries)."""
    from . import weights

    path, entry = weights.resolve(source)
    state = weights.read_state_dict(path)
    model = weights.build_from_state(state, device)
    sha = entry.sha256 if entry is not None else weights.sha256_of(path)
    return LoadedWeights(
        model=model,
        name=entry.name if entry is not None else str(path),
        path=Path(path),
        sha256=sha,
        config=model.config.to_dict(),
        tasks=list((entry.info.get("tasks") or []) if entry is not None else []),
    )


# ---------------------------------------------------------------------------------------------
# paths and files


def is_dicom_input(path: Path) -> bool:
    from .imaging import dicom

    return path.is_dir() or (not image_suffix(path) and (path.suffix.lower() in dicom.DICOM_SUFFIXES or dicom.is_dicom_file(path)))


def is_batch_input(path: Path) -> bool:
    """A folder that does not itself hold DICOM files is a batch of cases."""
    from .imaging import dicom

    return path.is_dir() and not image_suffix(path) and not dicom.folder_dicom_files(path)


def default_output(input_path: Path, suffix_tag: str = "_amir") -> Path:
    """``<stem>_amir.<same format>`` beside the input; a series folder gives ``<folder>_amir``."""
    p = Path(input_path)
    if p.is_dir():
        return p.parent / f"{p.name}{suffix_tag}"
    suffix = image_suffix(p) or p.suffix
    return p.parent / f"{stem(p) if image_suffix(p) else p.stem}{suffix_tag}{suffix}"


def report_path_for(output: Path) -> Path:
    """``<output>.json`` (a series folder ``x_amir`` gets ``x_amir.json`` beside it)."""
    return output.parent / (output.name.rstrip("/") + ".json")


def _same_or_inside(a: Path, b: Path) -> bool:
    """True when ``a`` is ``b`` or lies inside folder ``b``."""
    ra, rb = os.path.realpath(a), os.path.realpath(b)
    return ra == rb or ra.startswith(rb.rstrip(os.sep) + os.sep)


def check_output(input_path: Path, output: Path, overwrite: bool, what: str = "output") -> None:
    """Refuse to write onto (or around) the input, into a missing folder, or onto an existing
    file without --overwrite; an existing folder is only replaced when it holds a DICOM series."""
    from .imaging import dicom

    if _same_or_inside(output, input_path) or _same_or_inside(input_path, output):
        raise BadInputError(f"{output}: {what} would overwrite the input {input_path}; choose another -o")
    parent = output.parent
    if not parent.is_dir():
        raise BadInputError(f"{output}: {what} folder {parent} does not exist")
    if output.exists() or output.is_symlink():
        if not overwrite:
            raise BadInputError(f"{output}: {what} exists; pass --overwrite to replace it")
        if output.is_dir():
            foreign = [p for p in output.rglob("*") if p.is_file() and not dicom.is_dicom_file(p)]
            if foreign:
                raise BadInputError(
                    f"{output}: refusing to replace a folder that holds files other than a DICOM series ({foreign[0].name})"
                )





@dataclass
class RestoreOptions:
    task: str = "auto"
    scale: int = 1
    device: object = None
    precision: str = "fp32"
    batch_size: int = DEFAULT_BATCH_SIZE
    tile: int | None = None
    tile_overlap: float = DEFAULT_TILE_OVERLAP
    tta: bool = False
    kspace_factor: int | None = None
    data_consistency: bool = True
    overwrite: bool = False


def _geometry(volume: Volume) -> dict:
    return {
        "shape": list(volume.shape),
        "spacing_mm": [round(s, 6) for s in volume.spacing_mm],
        "affine": [[round(float(v), 6) for v in row] for row in volume.affine],
        "slice_axis": volume.slice_axis,
        "format": volume.source_format,
        "modality": volume.modality,
        "unit": volume.unit,
    }


def restore_case(
    weights: LoadedWeights,
    input_path: Path,
    output: Path | None,
    options: RestoreOptions,
    *,
    reference: Path | None = None,
    report: Path | None = None,
    progress: Progress | None = None,
) -> dict:
    """Read, restore, write and report one image; returns the report (also written as JSON)."""
    input_path = Path(input_path)
    output = Path(output) if output is not None else default_output(input_path)
    report = Path(report) if report is not None else report_path_for(output)
    check_output(input_path, output, options.overwrite)
    check_output(input_path, report, options.overwrite, what="report")
    if _same_or_inside(report, output) or _same_or_inside(output, report):
        raise BadInputError(f"{report}: the report path must differ from the output")
    _check_output_format(input_path, output)

    volume = read_image(input_path)
    if options.task == "auto":
        task, reason = detect_task(volume)
    else:
        task, reason = intensity.check_task(options.task), "given with --task"
    warnings = []
    if options.task != "auto":
        try:
            auto_task, auto_reason = detect_task(volume)
            if auto_task != task:
                warnings.append(f"--task {task} given but {auto_reason} suggests {auto_task}")
        except BadInputError:
            pass
    if weights.tasks and task not in weights.tasks:
        warnings.append(f"weights {weights.name} were not trained for {task} (tasks: {', '.join(weights.tasks)})")
    check_options(task, options.scale, options.batch_size, options.tile, options.kspace_factor)

    ref_volume = None
    if reference is not None:
        ref_volume = read_image(reference)
        expected = tuple(n * (options.scale if a != volume.slice_axis else 1) for a, n in enumerate(volume.shape))
        if ref_volume.shape != expected:
            raise BadInputError(
                f"{reference}: reference shape {'x'.join(map(str, ref_volume.shape))} differs from the output shape "
                f"{'x'.join(map(str, expected))}"
            )

    restored, info = restore_volume(
        weights.model,
        volume,
        task,
        scale=options.scale,
        device=options.device,
        precision=options.precision,
        batch_size=options.batch_size,
        tile=options.tile,
        tile_overlap=options.tile_overlap,
        tta=options.tta,
        kspace_factor=options.kspace_factor,
        data_consistency=options.data_consistency,
        progress=progress,
    )
    scale_text = f", scale {options.scale}" if options.scale > 1 else ""
    description = DESCRIPTION.format(version=__version__, task=task, scale=scale_text)
    written = write_image(restored, output, reference=volume, description=description)

    result = {
        "tool": "amir",
        "version": __version__,
        "input": str(input_path),
        "output": str(written),
        "task": task,
        "task_reason": reason,
        "weights": {"name": weights.name, "sha256": weights.sha256, "config": weights.config},
        "device": info["device"],
        "precision": info["precision"],
        "batch_size": info["batch_size"],
        "tile": info["tile"],
        "tta": info["tta"],
        "scale": info["scale"],
        "input_geometry": _geometry(volume),
        "output_geometry": _geometry(restored),
        "slices": info["slices"],
        "seconds": round(info["seconds"], 4),
        "model_seconds": round(info["model_seconds"], 4),
        "slices_per_second": round(info["slices_per_second"], 4) if info["slices_per_second"] else None,
        "mr_scale_factor": info["mr_scale_factor"],
        "data_consistency": info["data_consistency"],
        "passthrough_voxels": info["passthrough_voxels"],
        "routing": info["routing"],
        "warnings": warnings,
    }
    if volume.modality == "PT" or task == PET_SYNTHESIS:
        result["unit"] = "SUV" if volume.unit == "SUV" else volume.unit
    if ref_volume is not None:
        from .metrics import volume_scores

        result["reference"] = str(reference)
        result["metrics"] = {
            "window": list(intensity.EVAL_WINDOW[task]),
            "output": _scores(volume_scores(restored.array, ref_volume.array, task, restored.slice_axis)),
        }
        if options.scale == 1:  # the input on the same grid: what restoration gained
            result["metrics"]["input"] = _scores(volume_scores(volume.array, ref_volume.array, task, volume.slice_axis))
    result["report"] = str(report)
    write_json(report, result)
    return result


def _scores(s: dict) -> dict:
    return {k: s[k] for k in ("psnr", "ssim", "rmse", "n_slices", "n_skipped")}


def _check_output_format(input_path: Path, output: Path) -> None:
    from .imaging import dicom

    if image_suffix(output):
        return
    if is_dicom_input(input_path):
        return  # a DICOM series folder (or a .dcm file for a one-slice input)
    if output.suffix.lower() in dicom.DICOM_SUFFIXES:
        raise BadInputError(f"{output}: DICOM output needs a DICOM input; use .nii, .nii.gz, .mha, .mhd or .nrrd")
    raise BadInputError(f"{output}: unknown output format; use .nii, .nii.gz, .mha, .mhd or .nrrd")


# ---------------------------------------------------------------------------------------------
# batches


def distributed_share(cases: list) -> tuple[list, int, int]:
    """This process's cases under torchrun (cases[rank::world_size]), its rank and the world size."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    if world < 1 or not 0 <= rank < world:
        raise BadInputError(f"invalid torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return cases[rank::world], rank, world


def batch_output_for(case: Path, root: Path, out_root: Path) -> Path:
    """A case's output inside the batch output folder, under its path relative to the input."""
    rel = case.relative_to(root)
    return out_root / rel


def restore_batch(
    weights: LoadedWeights,
    folder: Path,
    out_root: Path | None,
    options: RestoreOptions,
    *,
    on_case: Callable[[Path, dict | None, str | None], None] | None = None,
    progress_for: Callable[[Path], Progress | None] | None = None,
) -> dict:
    """Restore every case of ``folder`` into ``out_root`` with one loaded model; a failing case is
    recorded and skipped. Returns the batch summary (also written as ``<out_root>.json``)."""
    folder = Path(folder)
    out_root = Path(out_root) if out_root is not None else default_output(folder)
    if _same_or_inside(out_root, folder) or _same_or_inside(folder, out_root):
        raise BadInputError(f"{out_root}: the batch output folder must lie outside the input folder {folder}")
    if not out_root.parent.is_dir():
        raise BadInputError(f"{out_root}: output folder {out_root.parent} does not exist")
    if out_root.exists() and not out_root.is_dir():
        raise BadInputError(f"{out_root}: exists and is not a folder")
    cases = list_cases(folder)
    mine, rank, world = distributed_share(cases)
    out_root.mkdir(exist_ok=True)
    done, failed = [], []
    started = time.perf_counter()
    for case in mine:
        target = batch_output_for(case, folder, out_root)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            report = restore_case(
                weights, case, target, options, progress=progress_for(case) if progress_for else None
            )
            done.append({"input": str(case), "output": report["output"], "task": report["task"], "seconds": report["seconds"]})
            if on_case:
                on_case(case, report, None)
        except (BadInputError, WeightsError, DeviceError, OSError, ValueError) as exc:
            message = one_line(exc)
            failed.append({"input": str(case), "error": message})
            if on_case:
                on_case(case, None, message)
    summary = {
        "tool": "amir",
        "version": __version__,
        "input": str(folder),
        "output": str(out_root),
        "weights": {"name": weights.name, "sha256": weights.sha256},
        "cases_total": len(cases),
        "rank": rank,
        "world_size": world,
        "restored": done,
        "failed": failed,
        "seconds": round(time.perf_counter() - started, 4),
    }
    name = f"{out_root.name}.json" if world == 1 else f"{out_root.name}.rank{rank}.json"
    summary["report"] = str(out_root.parent / name)
    write_json(out_root.parent / name, summary)
    return summary
