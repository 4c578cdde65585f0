"""Validation: a fixed, seeded set of degraded slices per task from the held-out parts of the
volumes, and the docs/protocol.md scores of a network (and of the inputs) on it, each slice
restored exactly as `amir restore` restores a one-slice image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from amir_cli.imaging import degrade
from amir_cli.metrics import protocol_scale, slice_scores
from amir_cli.tasks import FOREGROUND, MRI_SR, TASKS

from .levels import Levels
from .options import TrainOptions
from .volumes import TrainVolume


@dataclass
class ValSlice:
    task: str
    volume: str
    index: int
    level: object
    lq_phys: np.ndarray  # physical units
    hq_phys: np.ndarray  # physical units
    scale: float = 1.0  # both are scored multiplied by it (metrics.protocol_scale of the whole volume)


def validation_set(volumes: list[TrainVolume], tasks, per_task: int = TrainOptions.val_slices, size: int | None = TrainOptions.val_size, seed: int = 0, levels: Levels | None = None, pet_standard_dose: bool = False) -> list[ValSlice]:
    """A fixed, seeded set of held-out slices per task, degraded at the validation levels.

    Slices are spread round-robin over the task's volumes, skipping near-empty ones; each is
    degraded whole, then cropped to ``size`` x ``size`` around its centre (``None``: whole slice;
    MR slices stay whole: a crop of a zero-filled image is no longer one). With
    ``pet_standard_dose`` a PET reference is its standard-dose image (:func:`degrade.pet_standard_dose`).
    """
    levels = levels or Levels()
    out = []
    for t_i, task in enumerate(t for t in TASKS if t in tasks):
        vols = [v for v in volumes if v.task == task and len(v.val_slices)]
        if not vols:
            continue
        scales = [protocol_scale(v.hq, task, v.path) for v in vols]
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
                noise_rng = degrade.slice_rng(int(seed), 1_000_000 * t_i + n_have)
                hq, lq = degrade.degrade_pair(hq, task, level, noise_rng, pixel_mm=v.pixel_mm, standard_dose=pet_standard_dose, **kw)
            lq, hq = lq[a:b], hq[a:b]
            if task != MRI_SR:
                lq, hq = _centre_crop(lq, size), _centre_crop(hq, size)
            lq = np.asarray(lq, np.float32)
            out.append(ValSlice(task, v.name, z, level, lq, np.asarray(hq, np.float32), scales[v_i]))
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


@torch.no_grad()
def evaluate(model, val_set, device, passes: int | None = None) -> dict:
    """Scores (docs/protocol.md) of the network on the validation slices: per-task PSNR/SSIM/RMSE means.

    Each slice goes through :func:`amir_cli.restore.restore_volume` as a one-slice image, with the
    defaults of `amir restore` (border padding, routing instruction, recognised zero filling and its
    data consistency, the MR cascade of ``passes``, None: amir restore's), in fp32 whatever the training precision."""
    from amir_cli.imaging.volume import Volume
    from amir_cli.restore import restore_volume

    was_training = model.training
    model.eval()
    per = {}
    for s in val_set:
        restored, _ = restore_volume(model, Volume(s.lq_phys, np.eye(4)), s.task, device=device, detect_zero_filling=True,
                                     passes=passes)
        per.setdefault(s.task, []).append(slice_scores(restored.array[:, :, 0], s.hq_phys, s.task, s.scale))
    model.train(was_training)
    return _means(per)


def input_scores(val_set) -> dict:
    """Scores (docs/protocol.md) of the low-quality inputs of the validation slices (what a network must beat)."""
    per = {}
    for s in val_set:
        per.setdefault(s.task, []).append(slice_scores(s.lq_phys, s.hq_phys, s.task, s.scale))
    return _means(per)


def _means(per: dict) -> dict:
    return {t: {k: float(np.nanmean([s[k] for s in v])) for k in ("psnr", "ssim", "rmse")} for t, v in per.items()}
