"""Validation: a fixed, seeded set of degraded slices per task from the held-out parts of the
volumes, and the docs/protocol.md scores of a network (and of the inputs) on it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from amir_cli.imaging import degrade, intensity
from amir_cli.metrics import slice_scores
from amir_cli.tasks import FOREGROUND, TASKS

from .levels import Levels
from .options import TrainOptions
from .volumes import TrainVolume


@dataclass
class ValSlice:
    task: str
    volume: str
    index: int
    level: object
    lq: np.ndarray  # normalised [0, 1]
    hq_phys: np.ndarray  # physical units
    mr_scale: float | None


def validation_set(volumes: list[TrainVolume], tasks, per_task: int = TrainOptions.val_slices, size: int | None = TrainOptions.val_size, seed: int = 0, levels: Levels | None = None) -> list[ValSlice]:
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


@torch.no_grad()
def evaluate(model, val_set, device, batch: int = 4) -> dict:
    """Scores (docs/protocol.md) of the network on the validation slices: per-task PSNR/SSIM/RMSE means."""
    was_training = model.training
    model.eval()
    per = {}
    groups = {}
    for s in val_set:
        groups.setdefault((s.task, s.lq.shape), []).append(s)
    for (task, _), items in groups.items():
        for i in range(0, len(items), batch):
            chunk = items[i : i + batch]
            x = torch.from_numpy(np.stack([s.lq for s in chunk])[:, None]).to(device)
            y = model(x)  # fp32 even under --amp: scores must not depend on the training precision
            y = y.float().clamp(0, 1).cpu().numpy()[:, 0]
            for s, pred in zip(chunk, y):
                per.setdefault(task, []).append(slice_scores(intensity.denormalise(pred, task, s.mr_scale), s.hq_phys, task))
    model.train(was_training)
    return _means(per)


def input_scores(val_set) -> dict:
    """Scores (docs/protocol.md) of the low-quality inputs of the validation slices (what a network must beat)."""
    per = {}
    for s in val_set:
        per.setdefault(s.task, []).append(slice_scores(intensity.denormalise(s.lq, s.task, s.mr_scale), s.hq_phys, s.task))
    return _means(per)


def _means(per: dict) -> dict:
    return {t: {k: float(np.nanmean([s[k] for s in v])) for k in ("psnr", "ssim", "rmse")} for t, v in per.items()}
