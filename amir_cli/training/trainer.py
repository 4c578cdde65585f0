"""One process's training: the model, its optimiser and EMA; a step (L1, the RMSE for MR with
--mr-loss/--ct-loss rmse, or the PSNR deficit to the input, + 0.001 x load loss, under a cosine schedule and
the task weighting; MR scored half on the network's output and half on it made consistent with the
measured k-space band); validation by the protocol of docs/protocol.md with the best weights kept;
atomic checkpoints that resume exactly."""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from amir_cli.errors import AmirError, BadInputError
from amir_cli.imaging.kspace import band_mask, project_band
from amir_cli.restore import CASCADE_STEP
from amir_cli.tasks import CT_DENOISE, MRI_SR, TASKS

from . import checkpoint as ckpt
from .options import TaskWeighting, TrainOptions
from .report import LOG_SECONDS, TrainingReport
from .validation import evaluate, input_scores

PSNR_FLOOR = 1e-8  # added to both MSEs of psnr_deficit: a perfect patch is not worth infinite decibels
WIDEN_JITTER = 0.01  # noise on weights copied by widening, as a fraction of each tensor's spread
TRAIN_DC_ITERATIONS = 5  # data-consistency projections in the MR loss (restore runs more; the first do most)


class TrainingDivergedError(AmirError):
    """The loss became NaN or infinite."""


@dataclass
class Hooks:
    """Seams for tests and tools, given to :func:`~amir_cli.training.train` (never read from the environment)."""

    after_step: Callable[[int], None] | None = None  # called with the number of iterations done
    at_end: Callable[[nn.Module, int], None] | None = None  # called with the trained model and this process's rank


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()


def psnr_deficit(pred, hq, lq):
    """Per sample, 10 log10(MSE(pred, hq) / MSE(lq, hq)): minus the PSNR gain (dB) of ``pred``
    over its input ``lq``, negative once ``pred`` beats it.

    The benchmark scores slices by their mean PSNR gain over the input, whatever the data range;
    this loss is that score on the patches, so every task, level and intensity scale weighs the same.
    """
    mse = (pred - hq).pow(2).mean(dim=(1, 2, 3))
    input_mse = (lq - hq).pow(2).mean(dim=(1, 2, 3))
    return (10.0 / math.log(10.0)) * (torch.log(mse + PSNR_FLOOR) - torch.log(input_mse + PSNR_FLOOR))


def sample_errors(pred, hq, rmse_rows=None):
    """Per sample, the mean absolute error, or the root mean square error in the samples where
    ``rmse_rows`` (a boolean per sample) is true: PSNR's error, whose minimiser is the conditional
    mean where L1's is the median."""
    diff = pred - hq
    l1 = diff.abs().mean(dim=(1, 2, 3))
    if rmse_rows is None:
        return l1
    return torch.where(rmse_rows, diff.square().mean(dim=(1, 2, 3)).add(1e-12).sqrt(), l1)


def rmse_samples(tid, o: TrainOptions):
    """Per sample, whether its task's error is the RMSE (``--mr-loss``, ``--ct-loss``); None where no task's is."""
    tasks = [TASKS.index(t) for t, loss in ((MRI_SR, o.mr_loss), (CT_DENOISE, o.ct_loss)) if loss == "rmse"]
    return torch.isin(tid, torch.tensor(tasks, device=tid.device)) if tasks else None


def _consistent(pred, lq, factors, keeps=None):
    """``pred`` with each MR sample made consistent with the band its zero-filled input ``lq`` measured
    (``factors``: its truncation factor, 0 for other samples; ``keeps``: the fraction of that band
    kept, None: all), as `amir restore` does; differentiable."""
    out = pred
    keeps = torch.ones_like(factors, dtype=torch.float64) if keeps is None else keeps
    for f, keep in sorted({(int(f), float(k)) for f, k in zip(factors.tolist(), keeps.tolist()) if f > 0}):
        idx = ((factors == f) & (keeps == keep)).nonzero()[:, 0]
        band = band_mask(pred.shape[-2:], f, pred.device, keep)
        dc = project_band(pred[idx], lq[idx].float(), band, TRAIN_DC_ITERATIONS, eps=1e-4)
        out = out.index_put((idx,), dc)
    return out


def cascade_errors(forward, consistent, lq, hq, factors, rmse_rows=None, passes=2, keeps=None):
    """(the MR samples' indices, their errors after passes 2 to ``passes`` of `amir restore`'s cascade
    stacked (passes - 1, samples), the later passes' load losses summed): ``forward`` (the network:
    image -> (output, load loss)) run again on the last pass made consistent (the first is
    ``consistent``, :func:`_consistent` of the batch), moved by CASCADE_STEP towards it and made
    consistent; differentiable through every pass. Unlike the restore's, the later passes see the
    patch unflipped: the patches are flipped at random already."""
    idx = (factors > 0).nonzero()[:, 0]
    f, lq_mr, hq_mr = factors[idx], lq[idx], hq[idx]
    k = None if keeps is None else keeps[idx]
    rows = None if rmse_rows is None else rmse_rows[idx]
    last, errors, load = consistent[idx], [], 0.0
    for _ in range(passes - 1):
        out, out_load = forward(last)
        last = _consistent(last + CASCADE_STEP * (out.float() - last), lq_mr, f, k)
        errors.append(sample_errors(last, hq_mr, rows))
        load = load + out_load
    return idx, torch.stack(errors), load


def cosine_lr(it: int, o: TrainOptions) -> float:
    """Learning rate of iteration ``it`` (0-based): linear warm-up, then cosine to eta_min. A function
    of the options, not torch's SequentialLR: a scheduler's saved state would keep the old length
    when --resume is given another --iterations."""
    if o.warmup and it < o.warmup:
        return o.lr * (it + 1) / o.warmup
    span = max(1, o.iterations - o.warmup)
    t = min(1.0, (it - o.warmup) / span)
    return o.eta_min + (o.lr - o.eta_min) * 0.5 * (1.0 + math.cos(math.pi * t))


def adam(params, lr: float, betas=(0.9, 0.999)) -> torch.optim.Adam:
    """The training optimiser: Adam updating all the parameters in one fused kernel on the CPU and
    CUDA (the same algorithm as the per-tensor loop; a fifth of its time for amir-s on a CPU)."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), fused=fused or None)


def weight_average(model: nn.Module, ema: float) -> AveragedModel:
    """The exponential moving average of ``model``'s weights with a warm-up: its n-th update (the copy
    of the initial weights being the first) keeps min(ema, n / (n + 9)) of the average, so that the
    early average is not stuck at the initial weights. The buffers (the routing noise's constant mean
    and std) are copied once, with the initial weights."""

    def update(averaged: list, current: list, n: torch.Tensor) -> None:
        k = int(n)  # read on the host: the step waits for its loss check anyway
        torch._foreach_lerp_(averaged, current, 1.0 - min(ema, k / (k + 9.0)))

    average = AveragedModel(model, multi_avg_fn=update).eval().requires_grad_(False)
    average.update_parameters(model)  # n = 0: a copy
    return average


def _iteration_seed(seed: int, rank: int, it: int) -> int:
    return int(np.random.SeedSequence(int(seed), spawn_key=(int(rank), int(it), 7)).generate_state(1, np.uint64)[0] >> 1)


class Trainer:
    """The model and optimiser of one process, with :meth:`step`, :meth:`validate` and
    :meth:`save_last`; :meth:`fit` runs them over a loader of batches. Only rank 0 writes files."""

    def __init__(self, run_dir: Path, o: TrainOptions, dist: Dist, device: torch.device, state: dict | None = None):
        self.run_dir, self.o, self.dist, self.device = run_dir, o, dist, device
        self.amp = bool(o.amp and device.type == "cuda")
        self.config, self.model, self.init_info = _build_model(o, device, fresh=state is None)
        uncertainty = o.task_weighting == TaskWeighting.UNCERTAINTY
        self.log_vars = nn.Parameter(torch.zeros(len(TASKS), device=device)) if uncertainty else None
        params = list(self.model.parameters()) + ([self.log_vars] if self.log_vars is not None else [])
        self.optimizer = adam(params, o.lr, o.betas)
        self.ema_model = weight_average(self.model, o.ema) if o.ema > 0 else None
        self.start, self.best, self.best_scores = 0, -math.inf, None
        if state is not None:
            self._restore(state)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.net = self.model
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)
        self.val_set, self.val_in, self.log = [], {}, None
        self.window = _Window()
        self.report = TrainingReport(o.quiet or not dist.main, o.iterations)

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema_model is not None and state.get("ema") is not None:
            self.ema_model.module.load_state_dict(state["ema"])
            self.ema_model.n_averaged.fill_(int(state["iteration"]) + 1)  # the initial copy and one update a step
        if self.log_vars is not None and state.get("log_vars") is not None:
            with torch.no_grad():
                self.log_vars.copy_(state["log_vars"])
        ckpt.set_rng_state(state["rng"])
        self.start, self.best = int(state["iteration"]), float(state.get("best", -math.inf))

    @property
    def scored_model(self) -> nn.Module:
        """The weights that are validated and kept: the EMA's when there is one."""
        return self.ema_model.module if self.ema_model is not None else self.model

    def open_run(self, val_set: list, resumed: bool) -> None:
        """Rank 0: the validation set and its input scores, the metrics log, the best score so far."""
        self.val_set, self.val_in = val_set, input_scores(val_set)
        metrics = self.run_dir / ckpt.METRICS
        self.log = ckpt.MetricsLog.resume(metrics, self.start) if resumed else ckpt.MetricsLog(metrics)
        if not resumed:
            ckpt.atomic_file(self.log.path, lambda tmp: Path(tmp).write_text(""))
        if resumed and (self.run_dir / ckpt.BEST).exists():
            self.best_scores = ckpt.load_torch(self.run_dir / ckpt.BEST).get("scores")
            if self.best_scores and self.best_scores.get("mean_gain_db") is not None:
                self.best = max(self.best, float(self.best_scores["mean_gain_db"]))

    # ------------------------------------------------------------------ the loop
    def fit(self, loader, hooks: Hooks) -> int:
        """Train over ``loader``'s batches (iterations start..); returns the iterations done."""
        self.model.train()
        it = self.start
        schedule = ckpt.CheckpointSchedule(self.o.checkpoint_every, self.o.checkpoint_minutes, self.o.iterations)
        with self.report.running(it), schedule:
            for batch in loader:
                lr, check = self.step(it, batch)
                it += 1
                self._log_train(it, lr, check)
                save, stop = self._agree(schedule.due(it), schedule.stop is not None)
                if save:
                    self.save_last(it)  # before validation: a failure there loses nothing
                    schedule.saved()
                if stop:
                    raise ckpt.TrainingStopped(schedule.stop or signal.SIGTERM, it, self.run_dir)
                if it % self.o.val_every == 0 or it == self.o.iterations:
                    self.validate(it)
                self.report.update(it, self.window.live())
                if hooks.after_step is not None:
                    hooks.after_step(it)
        return it

    def _agree(self, *flags: bool) -> tuple[bool, ...]:
        """The flags, true on every process when true on any (a checkpoint or a stop is taken by all)."""
        if self.dist.world == 1:
            return flags
        votes = torch.tensor([float(f) for f in flags], device=self.device)
        torch.distributed.all_reduce(votes, op=torch.distributed.ReduceOp.MAX)
        return tuple(bool(v) for v in votes.tolist())

    def step(self, it: int, batch: dict) -> tuple[float, torch.Tensor]:
        """One optimiser step on iteration ``it``'s batch: (learning rate, [loss, L1, load loss] mean over processes)."""
        o = self.o
        lr = cosine_lr(it, o)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        torch.manual_seed(_iteration_seed(o.seed, self.dist.rank, it))  # the gating noise of this step
        lq = batch["lq"].to(self.device, non_blocking=True)
        hq = batch["hq"].to(self.device, non_blocking=True)
        tid = batch["task"].to(self.device)
        pred, load_loss = self._forward(lq)
        rmse_rows = rmse_samples(tid, o)
        per_sample = sample_errors(pred.float(), hq, rmse_rows)
        factors = batch["kspace_factor"].to(self.device) if "kspace_factor" in batch else None
        keeps = batch["kspace_keep"].to(self.device) if "kspace_keep" in batch else None
        consistent = None  # the first pass made consistent, for both MR terms
        if factors is not None and (self.o.mr_consistency_loss or self.o.mr_cascade_loss):
            consistent = _consistent(pred.float(), lq, factors, keeps)
        if self.o.mr_consistency_loss and consistent is not None:
            per_sample = 0.5 * (per_sample + sample_errors(consistent, hq, rmse_rows))
        if self.o.mr_cascade_loss and consistent is not None and bool((factors > 0).any()):
            n = o.mr_cascade_passes
            idx, errors, later_load = cascade_errors(self._forward, consistent, lq, hq, factors, rmse_rows, n, keeps)
            per_sample = per_sample.index_put((idx,), (per_sample[idx] + errors.sum(0)) / n)
            load_loss = (load_loss + later_load) / n
        l1 = per_sample.mean()
        loss = self._main_loss(per_sample, l1, pred, lq, hq, tid, rmse_rows) + o.load_loss_weight * load_loss.float()
        check = torch.stack([loss.detach(), l1.detach(), load_loss.detach().float()])
        if self.dist.world > 1:
            torch.distributed.all_reduce(check)
            check /= self.dist.world
        if not torch.isfinite(check).all():
            last = self.run_dir / ckpt.LAST
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint had been written yet"
            raise TrainingDivergedError(
                f"loss became {check[0].item()} at iteration {it + 1}; training stopped and {kept} "
                "(lower --lr, use --clip-grad, then --resume)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if o.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.clip_grad)
        self.optimizer.step()
        if self.ema_model is not None:
            self.ema_model.update_parameters(self.model)
        return lr, check

    def _forward(self, lq):
        try:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                return self.net(lq)
        except (ValueError, RuntimeError):
            # weights blown up (the gating's torch.distributions refuses NaN logits): the step stops;
            # with finite weights the error is not divergence and goes up as it is
            if all(torch.isfinite(p).all() for p in self.model.parameters()):
                raise
            nan = torch.full((), float("nan"), device=self.device)
            return nan, nan

    def _main_loss(self, per_sample, l1, pred, lq, hq, tid, rmse_rows):
        weighting = self.o.task_weighting
        if self.log_vars is not None:
            lv = self.log_vars
            present = torch.zeros(len(TASKS), device=self.device).index_add_(0, tid, torch.ones_like(per_sample))
            task_l1 = torch.zeros(len(TASKS), device=self.device).index_add_(0, tid, per_sample) / present.clamp(min=1)
            mask = present > 0
            return (torch.exp(-lv[mask]) * task_l1[mask] + lv[mask]).sum()
        if weighting == TaskWeighting.RELATIVE:
            # each sample's error relative to its input's: every task and level weighs the same
            input_error = sample_errors(lq.float(), hq, rmse_rows).clamp(min=1e-4)
            return (per_sample / input_error).mean()
        if weighting == TaskWeighting.PSNR:
            return psnr_deficit(pred.float(), hq, lq.float()).mean()
        return l1

    def _log_train(self, it: int, lr: float, check: torch.Tensor) -> None:
        self.window.add(*(float(x) for x in check.cpu()))
        due = it % self.o.log_every == 0 or it == self.o.iterations or self.window.seconds() >= LOG_SECONDS
        if not self.dist.main or not due:
            return
        means, rate = self.window.flush()
        rec = {"kind": "train", "iteration": it, **means, "lr": lr, "it_per_s": rate}
        if self.log_vars is not None:
            rec["task_log_var"] = {t: float(self.log_vars[TASKS.index(t)].detach()) for t in self.o.tasks}
        self.log.append(rec)
        self.report.record(rec)

    # ------------------------------------------------------------------ validation and checkpoints
    def validate(self, it: int) -> None:
        """Rank 0 scores the validation set, logs it, and keeps the weights as best.pt when they beat the best."""
        if self.dist.main:
            scores = evaluate(self.scored_model, self.val_set, self.device)
            gain = {t: scores[t]["psnr"] - self.val_in[t]["psnr"] for t in scores}
            mean_gain = float(np.mean(list(gain.values()))) if gain else float("nan")
            is_best = bool(mean_gain > self.best)
            rec = {
                "kind": "val",
                "iteration": it,
                "psnr": {t: s["psnr"] for t, s in scores.items()},
                "ssim": {t: s["ssim"] for t, s in scores.items()},
                "input_psnr": {t: s["psnr"] for t, s in self.val_in.items()},
                "gain": gain,
                "mean_psnr": float(np.mean([s["psnr"] for s in scores.values()])),
                "mean_gain": mean_gain,
                "best": is_best,
            }
            if is_best:
                self.best = mean_gain
                self.best_scores = {"iteration": it, "model": scores, "input": self.val_in, "mean_gain_db": mean_gain}
                best = {"model": self.scored_model.state_dict(), "iteration": it, "scores": self.best_scores, "ema": self.ema_model is not None}
                ckpt.save_torch(best, self.run_dir / ckpt.BEST)
            self.log.append(rec)
            ckpt.plot_curves(self.log.records, self.run_dir / ckpt.CURVES)
            self.report.validation(it, gain, is_best)
        self.dist.barrier()

    def save_last(self, it: int) -> None:
        """Rank 0 writes last.pt: everything an exact resumption at iteration ``it`` needs."""
        if self.dist.main:
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "ema": self.scored_model.state_dict() if self.ema_model is not None else None,
                "log_vars": self.log_vars.detach().cpu() if self.log_vars is not None else None,
                "rng": ckpt.rng_state(),
                "iteration": it,  # iterations done = the data sampler's next position
                "best": self.best,
                "config": self.o.config,
            }
            ckpt.save_torch(state, self.run_dir / ckpt.LAST)
        self.dist.barrier()


class _Window:
    """Sums of the step losses since the last training log record."""

    def __init__(self):
        self.loss = self.l1 = self.load = 0.0
        self.n, self.t = 0, time.perf_counter()

    def add(self, loss: float, l1: float, load: float) -> None:
        self.loss, self.l1, self.load, self.n = self.loss + loss, self.l1 + l1, self.load + load, self.n + 1

    def seconds(self) -> float:
        return time.perf_counter() - self.t

    def live(self) -> str:
        """The mean loss and speed of the window so far, for the progress bar."""
        rate = self.n / max(1e-9, time.perf_counter() - self.t)
        return f"loss {self.loss / max(self.n, 1):.4f} {rate:.2f} it/s"

    def flush(self) -> tuple[dict, float]:
        """(mean losses, iterations per second) since the last flush; starts a new window."""
        now = time.perf_counter()
        means = {"loss": self.loss / self.n, "l1": self.l1 / self.n, "load_loss": self.load / self.n}
        rate = self.n / max(1e-9, now - self.t)
        self.loss = self.l1 = self.load = 0.0
        self.n, self.t = 0, now
        return means, rate


def _build_model(o: TrainOptions, device: torch.device, fresh: bool):
    """(config, model on ``device``, --init record): seeded by the run's seed, from --init's weights on a fresh run."""
    from amir_cli.network import AMIR, get_config

    torch.manual_seed(o.seed)
    config = get_config(o.config)
    init_state = init_info = None
    if o.init and fresh:
        init_state, init_info = _init_weights(o.init)
        from amir_cli.network.growth import grows_into
        from amir_cli.network.widening import widen_state, widens_into
        from amir_cli.weights import infer_config

        init_config = infer_config(init_state)
        if widens_into(init_config, config):
            init_info["widened_from"] = init_config.dim
            wider = replace(init_config, dim=config.dim)
            # the jitter lets the copied channels part; seeded by the run's seed
            try:
                init_state = widen_state(init_state, init_config, wider, jitter=WIDEN_JITTER,
                                         generator=torch.Generator().manual_seed(o.seed))
            except ValueError as exc:
                raise BadInputError(f"--init weights cannot be widened to --config {o.config}: {exc}") from None
            init_config = wider
        if not grows_into(init_config, config):
            raise BadInputError(f"--init weights are a different configuration than --config {o.config} "
                                "(a deeper or wider one may start from them)")
        if init_config != config:  # the same width now, so more blocks
            init_info["grown_from"] = list(init_config.num_blocks) + [init_config.num_refinement_blocks]
    model = AMIR(config)
    # A zero output convolution makes a fresh network the identity (it adds a residual to its input),
    # so training starts from "no worse than the input" and learns corrections from there.
    nn.init.zeros_(model.output.weight)
    model = model.to(device)
    if init_state is not None:
        from amir_cli.network.growth import load_grown

        load_grown(model, init_state)  # of the same configuration: every tensor, as a strict load
    return config, model, init_info


def _init_weights(source: str):
    from amir_cli import weights

    path, entry = weights.resolve(source)
    return weights.read_state_dict(path), {"source": str(source), "sha256": entry.sha256 if entry else weights.sha256_of(path)}
