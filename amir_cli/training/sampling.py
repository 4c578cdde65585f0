"""Deterministic training batches of (low-quality, high-quality) patches.

A batch is a pure function of ``(seed, rank, iteration)``: every random choice (task order, volume,
slice, degradation level, degradation noise, crop, flips) comes from a generator seeded with that
triple, so a resumed run sees exactly the batches an uninterrupted run would have seen, whatever
the number of loader workers.  A 2-D patch is cut from a whole degraded slice (CT and PET noise
needs the projection of the full slice), so one degraded slice gives ``crops_per_slice`` patches.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass, field
from fnmatch import fnmatch

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from amir_cli.errors import BadInputError
from amir_cli.imaging import degrade, intensity, kspace
from amir_cli.tasks import FOREGROUND, MRI_SR, TASKS

from .levels import Levels
from .options import PAPER_PATCH_SIZE, TrainOptions, task_cycle
from .volumes import TrainingDataError, TrainVolume

MIN_FOREGROUND = 0.2  # fraction of foreground pixels a training patch should have (best of tries)
PATCH_TRIES = 6
MAX_ZOOMED_SIDE = 512  # the longest side the MR pixel-size augmentation makes


@dataclass(kw_only=True)
class SamplerOptions:
    """How batches are made; the defaults are :class:`TrainOptions`'s."""

    batch_size: int = TrainOptions.batch_size
    patch_size: int = PAPER_PATCH_SIZE
    crops_per_slice: int = 1  # patches cut from one degraded slice (`amir train` passes its own default)
    flips: bool = True
    mr_scale_jitter: float = TrainOptions.mr_scale_jitter  # MR scale factor multiplied by exp(U(-j, j))
    levels: Levels = field(default_factory=Levels)
    task_mix: dict | None = None  # task -> relative share of the slices (None: even)
    task_patch_size: dict | None = None  # task -> its patch size (None or a task not in it: patch_size)
    volume_weights: dict | None = None  # volume-name pattern (fnmatch) -> relative draw weight (others: 1)
    mr_noise: float = TrainOptions.mr_noise  # MR noise floor added to the reference: sigma ~ U(0, mr_noise) x MR_TARGET
    zoom_jitter: float = TrainOptions.zoom_jitter  # slices resampled in-plane by a factor in [1/z, z] before degradation
    zoom_tasks: tuple[str, ...] | None = None  # the tasks whose slices zoom_jitter resamples (None: all)
    mr_zoom_max: float | None = None  # MR slices: f in [1/zoom_jitter, mr_zoom_max] (None: zoom_jitter)
    mr_slab: float = 0.0  # MR references: the mean over a slab of neighbouring slices up to this thick (mm; 0: off)
    pet_standard_dose: bool = False  # PET references: the activity plus the noise of its full-dose counts

    @classmethod
    def of(cls, o: TrainOptions) -> "SamplerOptions":
        """The sampling part of a run's options."""
        return cls(batch_size=o.batch_size, patch_size=o.patch_size, crops_per_slice=o.crops_per_slice, flips=True,
                   mr_scale_jitter=o.mr_scale_jitter, levels=o.levels(), task_mix=o.task_mix,
                   task_patch_size=o.task_patch_size, volume_weights=o.volume_weights, mr_noise=o.mr_noise,
                   zoom_jitter=o.zoom_jitter, zoom_tasks=o.zoom_tasks, mr_zoom_max=o.mr_zoom_max,
                   mr_slab=o.mr_slab, pet_standard_dose=o.pet_standard_dose)


def draw_weights(volumes: list[TrainVolume], patterns: dict | None) -> np.ndarray:
    """Each volume's chance of being drawn among ``volumes``: even, times the weight of the first
    pattern of ``patterns`` that its name matches (fnmatch)."""
    w = np.array([next((x for p, x in (patterns or {}).items() if fnmatch(v.name, p)), 1.0) for v in volumes])
    return w / w.sum()


def batch_rng(seed: int, rank: int, iteration: int, group: int = 0) -> np.random.Generator:
    """The generator of one group of patches of one batch: a pure function of its coordinates."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(rank), int(iteration), int(group))))


class PatchSampler:
    """Makes the training batch of any iteration: ``sampler.batch(iteration)`` (numpy arrays).

    Patch groups cycle through the tasks, continuing from batch to batch: evenly by default, so every
    task gets the same number of slices (to within one) over any stretch of iterations, or in the
    integer shares of ``options.task_mix`` (:func:`task_cycle`).
    Within a task, every volume is drawn with the same probability (times its ``volume_weights``
    entry), then one of its slices: a single-slice scanner image weighs as much as a template
    volume of 200 slices.
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
            self.by_task[t] = (vols, draw_weights(vols, options.volume_weights))
        unmatched = [p for p in options.volume_weights or {} if not any(fnmatch(v.name, p) for v in volumes)]
        if unmatched:
            raise TrainingDataError(f"--volume-weight {unmatched[0]!r} matches no training volume "
                                    f"(names: {', '.join(sorted(v.name for v in volumes))})")
        sizes = [self.patch_size(t) for t in self.tasks]
        if any(p < 16 or p % 8 for p in sizes):
            raise BadInputError(f"patch sizes must be multiples of 8 and at least 16, got {sizes}")
        if options.batch_size < 1 or options.crops_per_slice < 1:
            raise BadInputError("--batch-size and --crops-per-slice must be at least 1")

    def patch_size(self, task: str) -> int:
        return int((self.opt.task_patch_size or {}).get(task, self.opt.patch_size))

    def groups(self) -> int:
        return math.ceil(self.opt.batch_size / self.opt.crops_per_slice)

    def task_of(self, iteration: int, group: int) -> str:
        g = self.groups()
        return self.cycle[(iteration * g + group) % len(self.cycle)]

    def batch(self, iteration: int) -> dict:
        """{'lq': (B,1,P,P) float32, 'hq': same, 'task': (B,) int64 index into TASKS}."""
        B, K = self.opt.batch_size, self.opt.crops_per_slice
        lq, hq, tid, factors, keeps = [], [], [], [], []
        for g in range(self.groups()):
            rng = batch_rng(self.seed, self.rank, iteration, g)
            task = self.task_of(iteration, g)
            n = min(K, B - g * K)
            pairs, factor, keep = self._patches(task, rng, n, self.patch_size(task))
            for a, b in pairs:
                lq.append(a)
                hq.append(b)
                tid.append(TASKS.index(task))
                factors.append(factor)
                keeps.append(keep)
        return {
            "lq": np.stack(lq)[:, None].astype(np.float32),
            "hq": np.stack(hq)[:, None].astype(np.float32),
            "task": np.asarray(tid, np.int64),
            "kspace_factor": np.asarray(factors, np.int64),  # MR truncated on the fly: its factor; else 0
            "kspace_keep": np.asarray(keeps, np.float64),  # the fraction of that band restore keeps (a taper: less)
        }

    def _patches(self, task, rng, n, P):
        """(n patch pairs of one slice, the MR k-space factor of its degradation or 0, the fraction of
        that band `amir restore` keeps: less than 1 where it recognises the taper of a Fermi filter)."""
        vols, weights = self.by_task[task]
        vol = vols[rng.choice(len(vols), p=weights)]
        z = int(vol.train_slices[rng.integers(len(vol.train_slices))])
        hq_slice, rows, factor, keep = vol.hq[z], vol.train_rows, 0, 1.0
        if vol.lq is not None:
            lq_slice = vol.lq[z]
        else:  # degraded on the fly, after the augmentations of the reference
            pixel_mm = vol.pixel_mm
            if task == MRI_SR and self.opt.mr_slab > 0:
                hq_slice = _slab(vol, z, self.opt.mr_slab, rng)
            if self.opt.zoom_jitter > 1 and (self.opt.zoom_tasks is None or task in self.opt.zoom_tasks):
                if task == MRI_SR:
                    hq_slice, f = _fourier_zoom(hq_slice, self.opt.zoom_jitter, rng, self.opt.mr_zoom_max)
                else:
                    hq_slice, f = _zoom(hq_slice, self.opt.zoom_jitter, rng)
                pixel_mm, rows = pixel_mm / f, round(rows * f)
            if task == MRI_SR and self.opt.mr_noise > 0:
                hq_slice = _rician(hq_slice, self.opt.mr_noise * intensity.MR_TARGET / vol.mr_scale, rng)
            level, kw = self.opt.levels.draw(task, rng)
            noise_rng = np.random.default_rng(rng.integers(2**63))
            hq_slice, lq_slice = degrade.degrade_pair(hq_slice, task, level, noise_rng, pixel_mm=pixel_mm,
                                                      standard_dose=self.opt.pet_standard_dose, **kw)
            factor = int(level) if task == MRI_SR else 0
            if "fermi" in kw:  # the kept fraction `amir restore` would see in the whole slice
                keep = kspace.band_taper(lq_slice[None], 0, factor)
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
        return out, factor, keep


def _slab(vol: TrainVolume, z: int, max_mm: float, rng) -> np.ndarray:
    """Slice ``z`` as a thicker slice would see it: the mean of the n neighbouring training slices
    that a slab of thickness U(0, max_mm) covers (n = 1: the slice itself). A 2-D clinical series
    images slabs of 3 to 7 mm, whose in-plane edges the partial volume of oblique anatomy softens
    and doubles; thin slices of 1 mm volumes never show that."""
    n = int(round(rng.uniform(0.0, max_mm) / vol.slice_mm)) if vol.slice_mm > 0 else 1
    if n <= 1:
        return vol.hq[z]
    start = z - int(rng.integers(n))  # the slab holds z somewhere
    ids = np.arange(start, start + n)
    if ids[0] < 0 or ids[-1] >= vol.n_slices or not np.isin(ids, vol.train_slices).all():
        return vol.hq[z]  # past the volume's end or into held-out slices: the slice alone
    return np.asarray(vol.hq[ids], np.float32).mean(0)


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


def _fourier_zoom(image: np.ndarray, max_factor: float, rng, finest: float | None = None) -> tuple[np.ndarray, float]:
    """(image, f): an MR slice on an f-times finer grid, f log-uniform in [1/max_factor, finest]
    (None: max_factor), by cropping (f < 1: a coarser acquisition) or zero-padding (f > 1: a
    scanner's zero-filling interpolation) its centred k-space, then the magnitude. Unlike a spatial
    resampling this keeps what MR pixels hold: the finer grid has an empty outer k-space, as on a
    scanner. A cropped band is full to its edge, as a native acquisition is, where the resampled
    1 mm brains of the training data are smooth: a ``finest`` below ``max_factor`` leans the
    training towards such sharp references."""
    f = math.exp(rng.uniform(-math.log(max_factor), math.log(finest or max_factor)))
    f = min(f, max(1.0, MAX_ZOOMED_SIDE / max(image.shape)))  # a finer grid than 512 pixels costs time, teaches nothing new
    shape = tuple(max(16, 2 * round(n * f / 2)) for n in image.shape)
    if shape == image.shape:
        return image, 1.0
    k = np.fft.fftshift(np.fft.fft2(image))
    out = np.zeros(shape, np.complex128)
    src = tuple(slice(max(0, (n - m) // 2), max(0, (n - m) // 2) + min(n, m)) for n, m in zip(image.shape, shape))
    dst = tuple(slice(max(0, (m - n) // 2), max(0, (m - n) // 2) + min(n, m)) for n, m in zip(image.shape, shape))
    out[dst] = k[src]
    area = shape[0] * shape[1] / (image.shape[0] * image.shape[1])  # keeps intensities
    return (np.abs(np.fft.ifft2(np.fft.ifftshift(out))) * area).astype(np.float32), shape[0] / image.shape[0]


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
    for s in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C reaches the whole group: the main process stops the run
        signal.signal(s, signal.SIG_IGN)

