"""The three restoration tasks as data: every other module asks here for a task's name, folders,
intensity range, evaluation window and defaults (docs/protocol.md).

ct-denoise works in HU, pet-synthesis in SUV (body weight), mri-sr in the paper's 12-bit range.
Imports nothing of ours, so any layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .errors import BadInputError

MRI_SR = "mri-sr"
CT_DENOISE = "ct-denoise"
PET_SYNTHESIS = "pet-synthesis"


class Window(NamedTuple):
    """An intensity interval [low, high] in physical units (a tuple, so it unpacks and compares)."""

    low: float
    high: float

    @property
    def width(self) -> float:
        return self.high - self.low


@dataclass(frozen=True)
class Task:
    """One restoration task."""

    name: str
    folder: str  # the modality folder of the data layouts (DATA/MRI, DATA/CT, DATA/PET)
    folder_names: tuple[str, ...]  # folder names (lower case) that name this task
    modality: str  # DICOM Modality
    unit: str  # physical unit of the intensities ("" for MR: none)
    norm_range: Window  # physical range mapped to the network's [0, 1]
    eval_window: Window  # evaluation window of the paper's protocol (docs/protocol.md)
    default_level: float  # degradation level when none is given: MR k-space factor, else dose fraction
    foreground: float  # normalised intensity above which a pixel counts as foreground (training patches)
    level_name: str  # what the degradation level is


TASK_LIST: tuple[Task, ...] = (
    Task(MRI_SR, "MRI", ("mri", "mr"), "MR", "", Window(0.0, 4095.0), Window(0.0, 4095.0), 4, 0.02, "factor"),
    Task(CT_DENOISE, "CT", ("ct",), "CT", "HU", Window(-1024.0, 3071.0), Window(-160.0, 240.0), 0.25,
         (-800.0 + 1024.0) / 4095.0, "dose fraction"),
    Task(PET_SYNTHESIS, "PET", ("pet", "pt"), "PT", "SUV", Window(0.0, 20.0), Window(0.0, 20.0), 0.25, 0.01, "dose fraction"),
)
TASK: dict[str, Task] = {t.name: t for t in TASK_LIST}
TASKS: tuple[str, ...] = tuple(TASK)
"""Task names in their canonical order (the network's task index, the tables' row order)."""

FOLDER_TASK: dict[str, str] = {f: t.name for t in TASK_LIST for f in t.folder_names}
"""Lower-case modality folder name -> task."""
TASK_FOLDER: dict[str, str] = {t.name: t.folder for t in TASK_LIST}
MODALITY_TASK: dict[str, str] = {t.modality: t.name for t in TASK_LIST}

# The window tables keep the order CT, PET, MR in which they have always been listed.
_WINDOW_ORDER = (CT_DENOISE, PET_SYNTHESIS, MRI_SR)
NORM_RANGE: dict[str, Window] = {name: TASK[name].norm_range for name in _WINDOW_ORDER}
EVAL_WINDOW: dict[str, Window] = {name: TASK[name].eval_window for name in _WINDOW_ORDER}
MR_FACTORS: tuple[int, ...] = (2, 4)
"""k-space factors of mri-sr: the low-resolution image kept the central 1/f of k-space per in-plane axis."""
MR_SCALES: tuple[int, ...] = (1, *MR_FACTORS)
"""Output grids of mri-sr (--scale): the input's, or finer by a k-space factor."""
MIN_TILE = 32
"""The smallest --tile of `amir restore` (pixels)."""
MR_PASSES: dict[int, int] = {2: 3, 4: 4}
"""Network passes of `amir restore`'s damped cascade for MR whose measured k-space band is known, per
k-space factor (chosen on the validation subjects: a fourth pass gains at x4 and loses at x2)."""


def choices(values, sep: str = "|") -> str:
    """``values`` as option text: ``choices((2, 4))`` is "2|4", with ``sep=", "`` "2, 4"."""
    return sep.join(str(v) for v in values)


def one_of(values) -> str:
    """``values`` as prose: "1, 2 or 4"."""
    *head, last = (str(v) for v in values)
    return f"{', '.join(head)} or {last}" if head else last


def check_choice(option: str, value, allowed) -> None:
    """BadInputError naming ``option`` unless ``value`` is None (not given) or one of ``allowed``."""
    if value is not None and value not in allowed:
        raise BadInputError(f"{option} must be {one_of(allowed)}, got {value}")


DEFAULT_LEVEL: dict[str, float] = {t.name: t.default_level for t in TASK_LIST}
MIN_DOSE = 1e-3  # the lowest simulated dose fraction: below it almost every simulated count is zero
FOREGROUND: dict[str, float] = {t.name: t.foreground for t in TASK_LIST}
SCORED_LEVELS: dict[str, dict[str, float]] = {
    CT_DENOISE: {"dose1-2": 0.5, "dose1-4": 0.25, "dose1-20": 0.05},
    MRI_SR: {"x2": 2, "x4": 4},
    PET_SYNTHESIS: {"dose1-2": 0.5, "dose1-4": 0.25, "dose1-12": 1 / 12, "dose1-20": 0.05},
}
"""The degradation levels that choose and report weights (validation and the test split), by label."""
