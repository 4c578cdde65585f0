"""Training volumes: the data folder's layouts read into (slices, H, W) arrays, and the slices
(or rows) each volume keeps out of training for validation.

Two layouts (README, `amir train`):

* **paired** (the paper's): ``DATA/{MRI,CT,PET}/{train,validation}/{LQ,HQ}/<case>.nii[.gz]``,
  pairs matched by name;
* **high-quality volumes** in modality folders ``DATA/{MRI,CT,PET}/`` (image files or DICOM series
  folders; the folder names the task); low-quality inputs are made on the fly by the
  degradations of docs/protocol.md at random levels drawn from :class:`~amir_cli.training.levels.Levels`.

Every volume keeps a block of slices out of training (:func:`split_slices`), a single-slice image
keeps its bottom rows out instead, unless whole validation volumes are given.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amir_cli.errors import BadInputError
from amir_cli.imaging import intensity
from amir_cli.imaging.io import list_cases, paired_names, read_image, stem, unsearched_warnings
from amir_cli.tasks import FOLDER_TASK, MRI_SR, TASKS

VAL_FRACTION = 0.10  # slices (or rows of a single-slice image) held out per volume
VAL_GAP = 2  # slices next to the held-out block left out of training too (neighbours look alike)


class TrainingDataError(BadInputError):
    """A training data folder that cannot be used."""


@dataclass
class TrainVolume:
    """One training volume as (slices, H, W) arrays in physical units (slices first)."""

    name: str
    task: str
    hq: np.ndarray  # (S, H, W) float32 physical units
    lq: np.ndarray | None  # paired layout: the given low-quality volume; None: degrade on the fly
    pixel_mm: float
    mr_scale: float | None
    train_slices: np.ndarray  # indices usable for training
    val_slices: np.ndarray  # held-out indices (for S == 1: [0], with rows split instead)
    train_rows: int  # rows [0, train_rows) usable for training patches
    val_rows: tuple[int, int]  # rows [a, b) of held-out slices used for validation
    path: str = ""
    slice_mm: float = 0.0  # spacing of the slices (0: one slice, or unknown)

    @property
    def n_slices(self) -> int:
        return int(self.hq.shape[0])

    def describe(self) -> dict:
        return {
            "name": self.name,
            "task": self.task,
            "file": self.path,
            "slices": self.n_slices,
            "slice_shape": list(self.hq.shape[1:]),
            "pixel_mm": round(self.pixel_mm, 4),
            "train_slices": len(self.train_slices),
            "validation_slices": len(self.val_slices),
            "validation_rows": list(self.val_rows) if self.n_slices == 1 else None,
            "paired": self.lq is not None,
        }

    def normalise(self, array: np.ndarray, mr_jitter: float = 1.0) -> np.ndarray:
        scale = None if self.mr_scale is None else self.mr_scale * mr_jitter
        return intensity.normalise(array, self.task, scale)


def split_slices(n: int, fraction: float = VAL_FRACTION, gap: int = VAL_GAP) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) slice indices of an n-slice volume.

    The held-out block is ``fraction`` of the slices centred at 55 % of the axis (anatomy, not the
    near-empty ends of a head volume); ``gap`` slices either side of it are used for neither.
    A single slice is returned as both (its rows are split instead, see :func:`split_rows`).
    """
    if n <= 1:
        return np.arange(n), np.arange(n)
    n_val = max(1, int(round(fraction * n)))
    start = min(max(0, int(round(0.55 * n - n_val / 2))), n - n_val)
    val = np.arange(start, start + n_val)
    keep = np.ones(n, bool)
    keep[max(0, start - gap) : start + n_val + gap] = False
    train = np.flatnonzero(keep)
    if train.size == 0:  # tiny volumes: drop the gap
        keep[:] = True
        keep[val] = False
        train = np.flatnonzero(keep)
    return train, val


def split_rows(h: int, fraction: float = 0.2) -> tuple[int, tuple[int, int]]:
    """Single-slice images: rows [0, train_rows) train, the bottom rows validate."""
    n_val = max(1, int(round(fraction * h)))
    return h - n_val, (h - n_val, h)


def _pixel_mm(vol) -> float:
    sp = vol.inplane_spacing_mm
    return float(np.mean(sp)) if min(sp) > 0 else 1.0


def _task_of_folder(name: str) -> str | None:
    return FOLDER_TASK.get(name.lower())


def _modality_folders(root: Path) -> list[tuple[str, Path]]:
    found = []
    for entry in sorted(root.iterdir()):
        task = _task_of_folder(entry.name) if entry.is_dir() else None
        if task:
            found.append((task, entry))
    return found


def is_paired_layout(root: Path) -> bool:
    return any((folder / "train").is_dir() for _, folder in _modality_folders(Path(root)))


def _read(path: Path, what: str) -> object:
    try:
        return read_image(path)
    except BadInputError as exc:
        message = str(exc)
        raise TrainingDataError(message if message.startswith(what) else f"{what}: {message}") from None


def load_volumes(root, tasks=TASKS) -> tuple[list[TrainVolume], list[TrainVolume] | None, str]:
    """Volumes of a training data folder: (train volumes, separate validation volumes or None, layout).

    With separate validation volumes (a ``validation`` split of the paired layout, or a
    ``validation/`` folder beside high-quality volumes) all slices of the training volumes train
    and all slices of the validation volumes validate.
    """
    root = Path(root)
    if not root.is_dir():
        raise TrainingDataError(f"{root}: training data folder {'is not a folder' if root.exists() else 'does not exist'}")
    folders = [(t, f) for t, f in _modality_folders(root) if t in tasks]
    if not folders:
        raise TrainingDataError(
            f"{root}: no modality folders for tasks {', '.join(tasks)} (expected MRI/, CT/ and/or PET/ "
            "holding high-quality volumes, or the paired layout MRI/train/{LQ,HQ}/)"
        )
    paired = is_paired_layout(root)
    train, val = [], []
    for task, folder in folders:
        if paired:
            if list_cases(folder, skip=("train", "validation", "test"), required=False):
                raise TrainingDataError(f"{folder}: holds volumes beside the paired layout of {root} (its "
                                        "{MRI,CT,PET}/train/{LQ,HQ}/ folders); the two layouts cannot be mixed")
            if not (folder / "train").is_dir():
                continue
            train += _paired_volumes(folder / "train", task, holdout=not (folder / "validation").is_dir())
            if (folder / "validation").is_dir():
                val += _paired_volumes(folder / "validation", task, holdout=None)
        else:  # a validation/ subfolder holds whole validation volumes; else each volume holds some out
            separate = (folder / "validation").is_dir()
            for case in _cases(folder, skip=("validation", "test")):  # not validation subjects, nor a test split
                train.append(_make_volume(_read(case, str(case)), None, task, case, holdout=not separate))
            if separate:
                val += [_make_volume(_read(c, str(c)), None, task, c, holdout=None) for c in _cases(folder / "validation")]
    missing = [t for t in tasks if not any(v.task == t for v in train)]
    if missing:
        raise TrainingDataError(f"{root}: no training volumes for task(s) {', '.join(missing)}; pass --tasks to train fewer tasks")
    layout = "paired" if paired else "high-quality volumes, degraded on the fly"
    return train, (val or None), layout


def _cases(folder: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    unsearched: list[Path] = []
    try:
        cases = list_cases(folder, skip, unsearched=unsearched)
    except BadInputError as exc:
        raise TrainingDataError(str(exc)) from None
    _warn_unsearched(unsearched)
    return cases


def _names(folder: Path) -> dict[str, Path]:
    unsearched: list[Path] = []
    try:
        names = paired_names(folder, unsearched)
    except BadInputError as exc:
        raise TrainingDataError(str(exc)) from None
    _warn_unsearched(unsearched)
    return names


def _warn_unsearched(folders: list[Path]) -> None:
    for line in unsearched_warnings(folders):  # `amir train` prints it as one warning line
        warnings.warn(line, stacklevel=3)


def _paired_volumes(split: Path, task: str, holdout: bool | None) -> list[TrainVolume]:
    lq_dir, hq_dir = split / "LQ", split / "HQ"
    if not lq_dir.is_dir() or not hq_dir.is_dir():
        raise TrainingDataError(f"{split}: expected LQ/ and HQ/ folders")
    hq, lq = _names(hq_dir), _names(lq_dir)
    names = sorted(set(hq) & set(lq))
    if not names:
        raise TrainingDataError(f"{split}: no LQ/HQ pairs with matching names")
    out = []
    for name in names:
        h, l = _read(hq[name], str(hq[name])), _read(lq[name], str(lq[name]))
        if h.array.shape != l.array.shape:
            raise TrainingDataError(f"{lq[name]}: shape {l.array.shape} differs from its HQ image's {h.array.shape}; "
                                    "training pairs share one grid (an MR input zero-filled on the HQ grid)")
        out.append(_make_volume(h, l, task, hq[name], holdout=holdout))
    return out


def _make_volume(vol, lq_vol, task: str, path: Path, holdout: bool | None) -> TrainVolume:
    hq = vol.slices_first()
    lq = None if lq_vol is None else lq_vol.slices_first()
    mr_scale = None
    if task == MRI_SR:  # scaled robustly per volume, from the input the network sees (as at inference)
        mr_scale = intensity.mr_scale_factor(lq if lq is not None else hq, str(path))
    s, h, _ = hq.shape
    if holdout is None:  # a validation volume: everything validates
        train, val, rows, vrows = np.arange(0), np.arange(s), 0, (0, h)
    elif not holdout:  # separate validation volumes exist: everything trains
        train, val, rows, vrows = np.arange(s), np.arange(0), h, (0, 0)
    else:
        train, val, rows, vrows = _held_out(s, h)
    name = Path(path).name if Path(path).is_dir() else stem(path)  # a DICOM folder by its whole name
    slice_mm = float(vol.spacing_mm[vol.slice_axis]) if s > 1 else 0.0
    return TrainVolume(name, task, hq, lq, _pixel_mm(vol), mr_scale, train, val, rows, vrows, str(path), slice_mm)


def _held_out(s: int, h: int):
    """(train slices, validation slices, training rows, validation row range) of an s x h x w volume."""
    if s == 1:
        rows, vrows = split_rows(h)
        return np.arange(1), np.arange(1), rows, vrows
    train, val = split_slices(s)
    return train, val, h, (0, h)


