"""`--task auto`: which restoration task fits an image, and which rule decided (README, `amir restore`).

Rules, in order: the DICOM (or MetaImage/NRRD) Modality; words in the header description or the file
name; the intensities. Each rule is conservative: when it cannot decide, the next one is tried, and
when none can, the user is asked for `--task`. No torch here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .errors import BadInputError
from .imaging.io import Volume, stem
from .tasks import CT_DENOISE, MODALITY_TASK, MRI_SR, PET_SYNTHESIS

# Whole words (split at anything that is not a letter or digit), lower case.
HINT_WORDS = {
    CT_DENOISE: {"ct", "cta", "cect", "ldct", "ndct", "hu"},
    MRI_SR: {"mr", "mri", "t1", "t2", "t1w", "t2w", "flair", "mprage", "pdw", "dwi", "swi", "tse", "bold"},
    PET_SYNTHESIS: {"pet", "fdg", "suv", "petct", "amyloid", "psma", "fet", "dotatate"},
}

CT_AIR_HU = -900.0  # voxels at or below are air (or scanner padding) in HU
CT_MIN_AIR_FRACTION = 0.01
PET_MAX_SUV = 50.0
MR_RAW_CT_BAND = (980.0, 1120.0)  # soft tissue of a CT stored without its -1024 intercept
UNSAID_MODALITY = "OT"  # DICOM's "other": says nothing, so the later rules decide


def _words(text: str) -> set[str]:
    return {w for w in re.split(r"[^a-z0-9]+", text.lower()) if w}


def _hint_task(text: str) -> str | None:
    """The one task whose words occur in ``text``; None for none or several."""
    words = _words(text)
    found = {task for task, vocab in HINT_WORDS.items() if words & vocab}
    return found.pop() if len(found) == 1 else None


def _modality_rule(volume: Volume) -> tuple[str, str] | None:
    """The task of a CT, MR or PT Modality; a DICOM image of another modality (a radiograph,
    ultrasound...) is refused rather than restored as whatever its intensities suggest."""
    raw = str(volume.meta.get("dicom_modality") or volume.modality or "").strip().upper()
    if raw in MODALITY_TASK:
        source = {"dicom": "DICOM Modality", "itk": "MetaImage/NRRD Modality field"}.get(volume.source_format, "Modality")
        return MODALITY_TASK[raw], f"{source} is {raw}"
    if volume.source_format == "dicom" and raw and raw != UNSAID_MODALITY:
        where = volume.meta.get("source_path") or "the input"
        raise BadInputError(f"{where}: DICOM Modality is {raw}, not CT, MR or PT; amir restores those only "
                            "(pass --task to restore it anyway)")
    return None


def _header_rule(volume: Volume) -> tuple[str, str] | None:
    fields = [("header description", volume.meta.get("description", ""))]
    fields += [("header intent name", volume.meta.get("intent_name", "")), ("header aux_file", volume.meta.get("aux_file", ""))]
    source = volume.meta.get("source_path")
    if source:
        fields.append(("file name", stem(Path(source))))
    for label, text in fields:
        task = _hint_task(str(text or ""))
        if task:
            return task, f"{label} {str(text).strip()[:60]!r} names {task}"
    return None


def _intensity_rule(array: np.ndarray) -> tuple[str, str] | None:
    a = np.asarray(array, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    sample = a.ravel()[:: max(1, a.size // 2_000_000)]  # a fixed subsample keeps this fast
    integer = bool(np.all(sample == np.rint(sample)))
    if integer and -3100.0 <= lo <= CT_AIR_HU:
        air = float(np.mean(sample <= CT_AIR_HU))
        if air >= CT_MIN_AIR_FRACTION:
            return CT_DENOISE, f"intensities: integer values down to {lo:.0f} with {100 * air:.0f}% air at <= -900 (CT in HU)"
    if lo < 0:
        return None
    if not integer and 2.0 <= hi <= PET_MAX_SUV:
        background = float(np.mean(sample < 0.05 * hi))
        if background >= 0.3:
            return PET_SYNTHESIS, (
                f"intensities: non-negative non-integer values up to {hi:.1f} with {100 * background:.0f}% "
                "background (PET in SUV)"
            )
        return None
    if hi > PET_MAX_SUV:
        fg = sample[sample > 0.05 * hi]
        in_band = float(np.mean((fg >= MR_RAW_CT_BAND[0]) & (fg <= MR_RAW_CT_BAND[1]))) if fg.size else 0.0
        if in_band < 0.3:
            return MRI_SR, f"intensities: non-negative values up to {hi:.0f} without a physical unit (MR magnitude)"
    return None


def detect_task(volume: Volume) -> tuple[str, str]:
    """(task, reason) from the Modality, then header words, then intensities; else BadInputError."""
    for rule in (_modality_rule, _header_rule):
        found = rule(volume)
        if found:
            return found
    found = _intensity_rule(volume.array)
    if found:
        return found
    where = volume.meta.get("source_path") or "the input"
    raise BadInputError(
        f"{where}: cannot tell the task from the header or the intensities; "
        "pass --task mri-sr, --task ct-denoise or --task pet-synthesis"
    )


def task_mismatch(volume: Volume, task: str, given: str | None = None) -> str | None:
    """A warning where ``--task auto`` would choose another task than ``task`` for this image
    (``given``: what chose ``task``, default the --task option)."""
    try:
        auto_task, auto_reason = detect_task(volume)
    except BadInputError:
        return None
    if auto_task == task:
        return None
    return f"{given or f'--task {task} was given'}, though --task auto would choose {auto_task} ({auto_reason})"
