"""`amir degrade`'s job: a high-quality image in, its simulated low-quality version and a summary out
(the degradations themselves: :mod:`amir_cli.imaging.degrade`; docs/protocol.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ._version import __version__
from .errors import AmirError, BadInputError
from .imaging import degrade
from .imaging.io import image_suffix, read_image
from .imaging.volume import output_dtype
from .placement import check_input_format, check_output, check_output_format, default_output, publish
from .taskdetect import task_mismatch
from .tasks import DEFAULT_LEVEL, MIN_DOSE, MR_FACTORS, MRI_SR, PET_SYNTHESIS, TASK, check_choice

PET_NOISE = ("fbp", "osem")
PET_NOTE = "simulated low-count PET (Poisson thinning of projected activity); not a real low-dose acquisition"


def pet_noise_shape(task: str, pet_noise: str) -> dict:
    """The degradation keywords of `amir degrade --pet-noise` (BadInputError for an unknown shape,
    or "osem" for a task other than pet-synthesis)."""
    check_choice("--pet-noise", pet_noise, PET_NOISE)
    if pet_noise != "fbp" and task != PET_SYNTHESIS:
        raise BadInputError(f"--pet-noise applies to pet-synthesis only, not {task}")
    return {"em_exponent": degrade.OSEM_NOISE_EXPONENT} if pet_noise == "osem" else {}


def check_level(task: str, dose: float | None = None, factor: int | None = None) -> float | int:
    """The level of ``task`` from `amir degrade`'s --dose or --factor (None: the task's default);
    BadInputError for the option the task does not take or a value out of range."""
    if task == MRI_SR and dose is not None:
        raise BadInputError("mri-sr takes --factor, not --dose")
    if task != MRI_SR and factor is not None:
        raise BadInputError(f"{task} takes --dose, not --factor")
    check_choice("--factor", factor, MR_FACTORS)
    if dose is not None and not MIN_DOSE <= dose <= 1:
        raise BadInputError(f"--dose must be a fraction in [{MIN_DOSE:g}, 1], got {dose:g}")
    level = factor if task == MRI_SR else dose
    return DEFAULT_LEVEL[task] if level is None else level


def _clipped(values: np.ndarray, volume, out: Path) -> str | None:
    """A warning where the input's integer type cannot hold some simulated values (noise below 0 in
    uint8, say), which a NIfTI/MetaImage/NRRD output stored in that type clips (a DICOM output, or a
    NIfTI with a scale factor, chooses an encoding that holds them)."""
    dtype = output_dtype(volume)
    if dtype.kind not in "iu" or not image_suffix(out) or volume.meta.get("nifti_scaled"):
        return None
    info = np.iinfo(dtype)
    n = int(np.count_nonzero((values < info.min) | (values > info.max)))
    if not n:
        return None
    return (f"{n} simulated value{'s' if n > 1 else ''} lie outside the range of the input's {dtype} "
            f"[{info.min}, {info.max}] and {'are' if n > 1 else 'is'} clipped in the output")


def degrade_case(input_path: Path, task: str, level, *, seed: int = 0, output: Path | None = None,
                 overwrite: bool = False, progress: Callable[[int, int], None] | None = None, pet_noise: str = "fbp") -> dict:
    """Read ``input_path``, degrade every slice (:func:`amir_cli.imaging.degrade.degrade_volume`)
    and publish the result at ``output`` (default ``<stem>_degraded`` beside the input), marked as
    simulated; ``progress(slices done, slices in total)`` after each slice. ``pet_noise``: "fbp"
    (SPEC §3's noise, spread over the field) or "osem" (shaped as an iterative reconstruction shapes
    it, :data:`~amir_cli.imaging.degrade.OSEM_NOISE_EXPONENT`). Returns the summary (`amir degrade --json`)."""
    input_path = Path(input_path)
    shape = pet_noise_shape(task, pet_noise)
    if not input_path.exists():
        raise AmirError(f"{input_path}: no such file or folder")
    out = Path(output) if output is not None else default_output(input_path, "_degraded")
    check_input_format(input_path)
    check_output_format(input_path, out)
    check_output(input_path, out, overwrite)
    volume = read_image(input_path)
    total, done = volume.shape[volume.slice_axis], 0

    def step():
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    degraded = degrade.degrade_volume(volume.array, task, level, slice_axis=volume.slice_axis,
                                      spacing_mm=volume.spacing_mm, seed=seed, progress=step, **shape)
    what = TASK[task].level_name
    noise = f", {pet_noise.upper()}-shaped noise" if task == PET_SYNTHESIS else ""
    description = f"Simulated {task} input ({what} {level}{noise}, seed {seed}) by amir degrade; not an acquisition"
    simulated = volume.with_array(degraded)
    simulated.meta["simulated"] = True  # labels a DICOM series as simulated, not restored
    written = publish(simulated, out, reference=volume, description=description, overwrite=overwrite)
    summary = {
        "tool": "amir", "version": __version__, "command": "degrade", "input": str(input_path), "output": str(written),
        "task": task, "level_name": what, "level": level, "seed": seed, "shape": list(volume.shape),
        "spacing_mm": list(volume.spacing_mm), "simulated": True,
        "warnings": volume.meta.get("notes", []) + [w for w in (task_mismatch(volume, task), _clipped(degraded, volume, out)) if w],
    }
    if task == PET_SYNTHESIS:
        summary["pet_noise"] = pet_noise
    if task == PET_SYNTHESIS or volume.modality == "PT":
        summary["note"] = PET_NOTE
    return summary
