"""Training data: volumes on disk -> deterministic batches of (low-quality, high-quality) patches.

Two layouts (README, `amir train`):

* **paired** (the paper's): ``DATA/{MRI,CT,PET}/{train,validation}/{LQ,HQ}/<case>.nii[.gz]``,
  pairs matched by name;
* **high-quality volumes** in modality folders ``DATA/{MRI,CT,PET}/`` (image files or DICOM series
  folders; the folder names the task); low-quality inputs are made on the fly by the docs/protocol.md
  degradations at random levels drawn from :class:`Levels`.

A batch is a pure function of ``(seed, rank, iteration)``: every random choice (task order, volume,
slice, degradation level, degradation noise, crop, flips) comes from a generator seeded with that
triple, so a resumed run sees exactly the batches an uninterrupted run would have seen, whatever
the number of loader workers.  A 2-D patch is cut from a whole degraded slice (CT and PET noise
needs the projection of the full slice), so one degraded slice gives ``crops_per_slice`` patches.

Validation: every volume keeps a block of slices out of training (:func:`split_slices`), a
single-slice image keeps its bottom rows out instead; a fixed, seeded set of degraded slices per
task is drawn from those held-out parts (:func:`validation_set`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from amir_cli.errors import BadInputError
from amir_cli.imaging import degrade, intensity
from amir_cli.imaging.io import image_suffix, list_cases, read_image, stem
from amir_cli.tasks import FOLDER_TASK, FOREGROUND, MRI_SR, TASKS
VAL_FRACTION = 0.10  # slices (or rows of a single-slice image) held out per volume
VAL_GAP = 2  # slices next to the held-out block left out of training too (neighbours look alike)
MIN_FOREGROUND = 0.2  # fraction of foreground pixels a training patch should have (best of tries)
PATCH_TRIES = 6


class TrainingDataError(BadInputError):
    """A training data folder that cannot be used."""


# --------------------------------------------------------------------------------- levels
@dataclass(frozen=True)
class Levels:
    """Ranges of the on-the-fly degradation levels (issue 6 defaults, around docs/protocol.md)."""

    ct_dose: tuple[float, float] = (0.05, 0.5)  # dose fraction, log-uniform
    ct_i0: tuple[float, float] = (1e5, 1e6)  # photons per 1 mm bin per view, log-uniform
    mr_factors: tuple[int, ...] = (2, 4)  # k-space truncation factor, uniform choice
    pet_dose: tuple[float, float] = (1 / 20, 1 / 2)  # dose fraction, log-uniform
    pet_counts: tuple[float, float] = (1e6, 1e7)  # full-dose true coincidences per slice, log-uniform
    pet_recon_mm: tuple[float, float] = (2.0, 4.0)  # reconstruction pixel, uniform
    pet_fwhm_mm: tuple[float, float] = (4.0, 6.0)  # post-filter, uniform
    # validation levels (fixed): CT quarter dose at the default I0, MR x2 and x4 alternating, PET 1/4
    val_ct_dose: float = 0.25
    val_pet_dose: float = 0.25

    def draw(self, task: str, rng: np.random.Generator) -> tuple[object, dict]:
        """(level, extra keywords for degrade_slice)."""
        if task == "mri-sr":
            return int(self.mr_factors[rng.integers(len(self.mr_factors))]), {}
        if task == "ct-denoise":
            return _log_uniform(rng, *self.ct_dose), {"i0": _log_uniform(rng, *self.ct_i0)}
        return _log_uniform(rng, *self.pet_dose), {
            "total_counts": _log_uniform(rng, *self.pet_counts),
            "recon_mm": float(rng.uniform(*self.pet_recon_mm)),
            "fwhm_mm": float(rng.uniform(*self.pet_fwhm_mm)),
        }

    def validation(self, task: str, k: int) -> tuple[object, dict]:
        if task == "mri-sr":
            return int(self.mr_factors[k % len(self.mr_factors)]), {}
        if task == "ct-denoise":
            return self.val_ct_dose, {}
        return self.val_pet_dose, {}

    def describe(self) -> dict:
        return {
            "ct-denoise": {"dose_fraction": list(self.ct_dose), "i0": list(self.ct_i0), "distribution": "log-uniform"},
            "mri-sr": {"factor": list(self.mr_factors)},
            "pet-synthesis": {
                "dose_fraction": list(self.pet_dose), "distribution": "log-uniform", "total_counts": list(self.pet_counts),
                "recon_mm": list(self.pet_recon_mm), "postfilter_fwhm_mm": list(self.pet_fwhm_mm),
            },
            "validation": {"ct-denoise": self.val_ct_dose, "mri-sr": list(self.mr_factors), "pet-synthesis": self.val_pet_dose},
        }


def _log_uniform(rng, lo, hi) -> float:
    lo, hi = float(lo), float(hi)
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else lo


# --------------------------------------------------------------------------------- volumes
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


def _slices_first(vol) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(vol.array, vol.slice_axis, 0), dtype=np.float32)


def _pixel_mm(vol) -> float:
    sp = [s for a, s in enumerate(vol.spacing_mm) if a != vol.slice_axis]
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
        raise TrainingDataError(f"{what}: {exc}") from None


def load_volumes(root, tasks=TASKS) -> tuple[list[TrainVolume], list[TrainVolume] | None, str]:
    """Volumes of a training data folder: (train volumes, separate validation volumes or None, layout).

    With separate validation volumes (a ``validation`` split of the paired layout, or a
    ``validation/`` folder beside high-quality volumes) all slices of the training volumes train
    and all slices of the validation volumes validate.
    """
    root = Path(root)
    if not root.is_dir():
        raise TrainingDataError(f"training data folder {root} does not exist")
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
            if not (folder / "train").is_dir():
                continue
            train += _paired_volumes(folder / "train", task, holdout=not (folder / "validation").is_dir())
            if (folder / "validation").is_dir():
                val += _paired_volumes(folder / "validation", task, holdout=None)
        else:  # a validation/ subfolder holds whole validation volumes; else each volume holds some out
            separate = (folder / "validation").is_dir()
            for case in _cases(folder):
                train.append(_make_volume(_read(case, str(case)), None, task, case, holdout=not separate))
            if separate:
                val += [_make_volume(_read(c, str(c)), None, task, c, holdout=None) for c in _cases(folder / "validation")]
    missing = [t for t in tasks if not any(v.task == t for v in train)]
    if missing:
        raise TrainingDataError(f"{root}: no training volumes for task(s) {', '.join(missing)}; pass --tasks to train fewer tasks")
    layout = "paired" if paired else "high-quality volumes, degraded on the fly"
    return train, (val or None), layout


def _cases(folder: Path) -> list[Path]:
    try:
        return list_cases(folder)
    except BadInputError as exc:
        raise TrainingDataError(str(exc)) from None


def _paired_volumes(split: Path, task: str, holdout: bool | None) -> list[TrainVolume]:
    lq_dir, hq_dir = split / "LQ", split / "HQ"
    if not lq_dir.is_dir() or not hq_dir.is_dir():
        raise TrainingDataError(f"{split}: expected LQ/ and HQ/ folders")
    hq = {stem(p): p for p in _cases(hq_dir)}
    lq = {stem(p): p for p in _cases(lq_dir)}
    names = sorted(set(hq) & set(lq))
    if not names:
        raise TrainingDataError(f"{split}: no LQ/HQ pairs with matching names")
    out = []
    for name in names:
        h, l = _read(hq[name], str(hq[name])), _read(lq[name], str(lq[name]))
        if h.array.shape != l.array.shape:
            raise TrainingDataError(f"{split}: {name} LQ shape {l.array.shape} differs from HQ {h.array.shape}")
        out.append(_make_volume(h, l, task, hq[name], holdout=holdout))
    return out


def _make_volume(vol, lq_vol, task: str, path: Path, holdout: bool | None) -> TrainVolume:
    hq = _slices_first(vol)
    lq = None if lq_vol is None else _slices_first(lq_vol)
    mr_scale = None
    if task == MRI_SR:  # scaled robustly per volume, from the input the network sees (as at inference)
        mr_scale = intensity.mr_scale_factor(lq if lq is not None else hq)
    s, h, _ = hq.shape
    if holdout is None:  # a validation volume: everything validates
        train, val, rows, vrows = np.arange(0), np.arange(s), 0, (0, h)
    elif not holdout:  # separate validation volumes exist: everything trains
        train, val, rows, vrows = np.arange(s), np.arange(0), h, (0, 0)
    else:
        train, val, rows, vrows = _held_out(s, h)
    name = stem(path) if image_suffix(path) else Path(path).name
    return TrainVolume(name, task, hq, lq, _pixel_mm(vol), mr_scale, train, val, rows, vrows, str(path))


def _held_out(s: int, h: int):
    """(train slices, validation slices, training rows, validation row range) of an s x h x w volume."""
    if s == 1:
        rows, vrows = split_rows(h)
        return np.arange(1), np.arange(1), rows, vrows
    train, val = split_slices(s)
    return train, val, h, (0, h)


def synthetic_volume(task: str, hq: np.ndarray, name: str = "synthetic", pixel_mm: float = 1.0, lq=None) -> TrainVolume:
    """A TrainVolume from an in-memory (S, H, W) array (tests, notebooks)."""
    hq = np.asarray(hq, np.float32)
    s, h, _ = hq.shape
    mr_scale = intensity.mr_scale_factor(hq) if task == MRI_SR else None
    train, val, rows, vrows = _held_out(s, h)
    return TrainVolume(name, task, hq, None if lq is None else np.asarray(lq, np.float32), pixel_mm, mr_scale, train, val, rows, vrows)


# --------------------------------------------------------------------------------- sampling
@dataclass(kw_only=True)
class SamplerOptions:
    batch_size: int = 8
    patch_size: int = 128
    crops_per_slice: int = 1  # patches cut from one degraded slice (cheaper data on fast GPUs)
    flips: bool = True
    mr_scale_jitter: float = 0.0  # MR scale factor multiplied by exp(U(-j, j)) (robustness to scaling)
    levels: Levels = field(default_factory=Levels)
    task_mix: dict | None = None  # task -> relative share of the slices (None: even)
    mr_noise: float = 0.0  # MR noise floor added to the reference: sigma ~ U(0, mr_noise) x MR_TARGET
    zoom_jitter: float = 1.0  # slices resampled in-plane by a factor in [1/z, z] before degradation
    zoom_tasks: tuple[str, ...] | None = None  # the tasks whose slices zoom_jitter resamples (None: all)


def batch_rng(seed: int, rank: int, iteration: int, group: int = 0) -> np.random.Generator:
    """The generator of one group of patches of one batch: a pure function of its coordinates."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(rank), int(iteration), int(group))))


class PatchSampler:
    """Makes the training batch of any iteration: ``sampler.batch(iteration)`` (numpy arrays).

    Patch groups cycle through the tasks, continuing from batch to batch: evenly by default, so every
    task gets the same number of slices (to within one) over any stretch of iterations, or in the
    integer shares of ``options.task_mix`` (:func:`task_cycle`).
    Within a task, every volume is drawn with the same probability, then one of its slices: a
    single-slice scanner image weighs as much as a template volume of 200 slices.
    """

    def __init__(self, volumes: list[TrainVolume], tasks, options: SamplerOptions, seed: int = 0, rank: int = 0):
        self.tasks = [t for t in TASKS if t in tasks]
        self.opt = options
        self.seed, self.rank = int(seed), int(rank)
        self.cycle = task_cycle(self.tasks, options.task_mix)
        self.by_task = {}
        for t in self.tasks:
            vols = [v for v in volumes if v.task == t and len(v.train_slices) and v.train_rows > 0]
            if not vols:
                raise TrainingDataError(f"no training slices for task {t}")
            self.by_task[t] = (vols, np.full(len(vols), 1.0 / len(vols)))
        if options.patch_size < 16 or options.patch_size % 8:
            raise BadInputError(f"--patch-size must be a multiple of 8 and at least 16, got {options.patch_size}")
        if options.batch_size < 1 or options.crops_per_slice < 1:
            raise BadInputError("--batch-size and --crops-per-slice must be at least 1")

    def groups(self) -> int:
        return math.ceil(self.opt.batch_size / self.opt.crops_per_slice)

    def task_of(self, iteration: int, group: int) -> str:
        g = self.groups()
        return self.cycle[(iteration * g + group) % len(self.cycle)]

    def batch(self, iteration: int) -> dict:
        """{'lq': (B,1,P,P) float32, 'hq': same, 'task': (B,) int64 index into TASKS}."""
        B, P, K = self.opt.batch_size, self.opt.patch_size, self.opt.crops_per_slice
        lq, hq, tid = [], [], []
        for g in range(self.groups()):
            rng = batch_rng(self.seed, self.rank, iteration, g)
            task = self.task_of(iteration, g)
            n = min(K, B - g * K)
            pairs = self._patches(task, rng, n, P)
            for a, b in pairs:
                lq.append(a)
                hq.append(b)
                tid.append(TASKS.index(task))
        return {
            "lq": np.stack(lq)[:, None].astype(np.float32),
            "hq": np.stack(hq)[:, None].astype(np.float32),
            "task": np.asarray(tid, np.int64),
        }

    def _patches(self, task, rng, n, P):
        vols, weights = self.by_task[task]
        vol = vols[rng.choice(len(vols), p=weights)]
        z = int(vol.train_slices[rng.integers(len(vol.train_slices))])
        hq_slice, rows = vol.hq[z], vol.train_rows
        if vol.lq is not None:
            lq_slice = vol.lq[z]
        else:  # degraded on the fly, after the augmentations of the reference
            pixel_mm = vol.pixel_mm
            if self.opt.zoom_jitter > 1 and (self.opt.zoom_tasks is None or task in self.opt.zoom_tasks):
                hq_slice, f = _zoom(hq_slice, self.opt.zoom_jitter, rng)
                pixel_mm, rows = pixel_mm / f, round(rows * f)
            if task == MRI_SR and self.opt.mr_noise > 0:
                hq_slice = _rician(hq_slice, self.opt.mr_noise * intensity.MR_TARGET / vol.mr_scale, rng)
            level, kw = self.opt.levels.draw(task, rng)
            noise_rng = np.random.default_rng(rng.integers(2**63))
            lq_slice = degrade.degrade_slice(hq_slice, task, level, noise_rng, pixel_mm=pixel_mm, **kw)
        jitter = 1.0
        if task == MRI_SR and self.opt.mr_scale_jitter > 0:
            jitter = float(math.exp(rng.uniform(-self.opt.mr_scale_jitter, self.opt.mr_scale_jitter)))
        lq_n = vol.normalise(lq_slice[:rows], jitter)
        hq_n = vol.normalise(hq_slice[:rows], jitter)
        lq_n, hq_n = _pad_to(lq_n, P), _pad_to(hq_n, P)
        out = []
        for _ in range(n):
            a, b = _foreground_crop(lq_n, hq_n, P, rng, FOREGROUND[task])
            if self.opt.flips:
                a, b = _augment(a, b, rng)
            out.append((a, b))
        return out


def _zoom(image: np.ndarray, max_factor: float, rng) -> tuple[np.ndarray, float]:
    """(image, f): the slice resampled in-plane by f, drawn log-uniformly in [1/max_factor, max_factor].

    Scanners reconstruct the same anatomy on other pixel sizes; without this a network trained at
    about 1 mm blurs the finer detail per pixel of coarser images. f is rounded so that the longer
    side is a multiple of 64 (at least 64, at most 512 or the slice's own size): the few sizes keep
    the CT/PET projector cache warm.
    """
    n = max(image.shape)
    f = math.exp(rng.uniform(-math.log(max_factor), math.log(max_factor)))
    side = min(max(64, round(n * f / 64) * 64), max(512, n))
    if side == n:
        return image, 1.0
    f = side / n
    return ndimage.zoom(image, f, order=3, mode="nearest").astype(np.float32), f


def _rician(image: np.ndarray, sigma_max: float, rng) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise of sigma ~ U(0, sigma_max) (physical units).

    Scanner MR carries a noise floor that the templates in the training data lack; with it in the
    reference (and so in the input), the network learns to keep MR texture rather than smooth it.
    """
    sigma = float(rng.uniform(0.0, sigma_max))
    noise_rng = np.random.default_rng(rng.integers(2**63))
    re = image + noise_rng.normal(0.0, sigma, image.shape)
    im = noise_rng.normal(0.0, sigma, image.shape)
    return np.hypot(re, im).astype(np.float32)


def task_cycle(tasks, mix: dict | None = None) -> list[str]:
    """One period of the task order: task t appears mix[t] times (default 1), spread evenly
    (smooth weighted round robin), e.g. {ct: 2, mr: 1, pet: 1} -> [ct, mr, pet, ct]."""
    weights = {t: int((mix or {}).get(t, 1)) for t in tasks}
    if any(w < 0 for w in weights.values()) or not any(weights.values()):
        raise BadInputError(f"--task-mix shares must be non-negative integers, not all zero: {weights}")
    total, credit, cycle = sum(weights.values()), dict.fromkeys(tasks, 0), []
    for _ in range(total):
        for t in tasks:
            credit[t] += weights[t]
        pick = max(tasks, key=lambda t: credit[t])
        credit[pick] -= total
        cycle.append(pick)
    return cycle


def _pad_to(a: np.ndarray, P: int) -> np.ndarray:
    ph, pw = max(0, P - a.shape[0]), max(0, P - a.shape[1])
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw)), mode="reflect" if min(a.shape) > max(ph, pw) else "edge")
    return a


def _foreground_crop(lq, hq, P, rng, threshold):
    best, best_frac = None, -1.0
    H, W = hq.shape
    for _ in range(PATCH_TRIES):
        y, x = int(rng.integers(H - P + 1)), int(rng.integers(W - P + 1))
        frac = float((hq[y : y + P, x : x + P] > threshold).mean())
        if frac > best_frac:
            best, best_frac = (y, x), frac
        if frac >= MIN_FOREGROUND:
            break
    y, x = best
    return lq[y : y + P, x : x + P], hq[y : y + P, x : x + P]


def _augment(a, b, rng):
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    a, b = np.rot90(a, k), np.rot90(b, k)
    if flip:
        a, b = a[:, ::-1], b[:, ::-1]
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


class BatchDataset(Dataset):
    """Map-style dataset whose item ``i`` is the whole batch of iteration ``i``."""

    def __init__(self, sampler: PatchSampler):
        self.sampler = sampler

    def __getitem__(self, iteration):
        b = self.sampler.batch(int(iteration))
        return {k: torch.from_numpy(v) for k, v in b.items()}


class IterationRange:
    """Sampler yielding iterations start..stop-1 (the data position restored on --resume)."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = int(start), int(stop)

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self):
        return max(0, self.stop - self.start)


def make_loader(sampler: PatchSampler, start: int, stop: int, workers: int):
    """A DataLoader over iterations [start, stop): batches are made in ``workers`` processes."""
    from torch.utils.data import DataLoader

    return DataLoader(
        BatchDataset(sampler),
        batch_size=None,
        sampler=IterationRange(start, stop),
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=_worker_init,
    )


def _worker_init(_):
    torch.set_num_threads(1)  # numpy/scipy do the work here; keep the cores for the other workers


# --------------------------------------------------------------------------------- validation
@dataclass
class ValSlice:
    task: str
    volume: str
    index: int
    level: object
    lq: np.ndarray  # normalised [0, 1]
    hq_phys: np.ndarray  # physical units
    mr_scale: float | None


def validation_set(volumes: list[TrainVolume], tasks, per_task: int = 8, size: int | None = 256, seed: int = 0, levels: Levels | None = None) -> list[ValSlice]:
    """A fixed, seeded set of held-out slices per task, degraded at the validation levels.

    Slices are spread round-robin over the task's volumes, skipping near-empty ones; each is
    degraded whole, then cropped to ``size`` x ``size`` around its centre (``None``: whole slice).
    """
    levels = levels or Levels()
    out = []
    for t_i, task in enumerate(t for t in TASKS if t in tasks):
        vols = [v for v in volumes if v.task == task and len(v.val_slices)]
        if not vols:
            continue
        rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(10_000 + t_i,)))
        candidates = []
        for v in vols:
            good = [int(z) for z in v.val_slices if _foreground_fraction(v, int(z)) >= 0.05] or [int(z) for z in v.val_slices]
            candidates.append(list(rng.permutation(good)))
        k = 0
        while len([s for s in out if s.task == task]) < per_task and any(candidates):
            v_i = k % len(vols)
            k += 1
            if not candidates[v_i]:
                continue
            v, z = vols[v_i], int(candidates[v_i].pop(0))
            n_have = len([s for s in out if s.task == task])
            a, b = v.val_rows
            hq = v.hq[z]
            if v.lq is not None:
                lq, level = v.lq[z], "paired"
            else:
                level, kw = levels.validation(task, n_have)
                lq = degrade.degrade_slice(hq, task, level, degrade.slice_rng(int(seed), 1_000_000 * t_i + n_have), pixel_mm=v.pixel_mm, **kw)
            lq, hq = lq[a:b], hq[a:b]
            lq, hq = _centre_crop(lq, size), _centre_crop(hq, size)
            out.append(ValSlice(task, v.name, z, level, v.normalise(lq), np.asarray(hq, np.float32), v.mr_scale))
    return out


def _foreground_fraction(v: TrainVolume, z: int) -> float:
    a, b = v.val_rows
    return float((v.normalise(v.hq[z][a:b]) > FOREGROUND[v.task]).mean())


def _centre_crop(a: np.ndarray, size: int | None) -> np.ndarray:
    if not size:
        return a
    h, w = a.shape
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return a[y : y + size, x : x + size]
