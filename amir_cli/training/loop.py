"""The training loop: L1 (or the PSNR deficit to the input) + 0.001 x load loss, Adam, cosine
schedule, EMA, task weighting, AMP, DDP, validation by the protocol of docs/protocol.md, atomic checkpoints and exact
resumption."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from amir_cli._version import __version__
from amir_cli.device import pick_device
from amir_cli.errors import AmirError, BadInputError
from amir_cli.imaging import intensity
from amir_cli.metrics import slice_scores
from amir_cli.tasks import TASKS

from . import checkpoint as ckpt
from .data import Levels, PatchSampler, SamplerOptions, load_volumes, make_loader, task_cycle, validation_set


class TrainingDivergedError(AmirError):
    """The loss became NaN or infinite."""


@dataclass
class Hooks:
    """Seams for tests and tools, given to :func:`train` (never read from the environment)."""

    after_step: Callable[[int], None] | None = None  # called with the number of iterations done
    at_end: Callable[[nn.Module, int], None] | None = None  # called with the trained model and this process's rank


PAPER_PATCH_SIZE, CPU_PATCH_SIZE = 128, 64  # default --patch-size on CUDA and elsewhere
TASK_WEIGHTINGS = ("uniform", "uncertainty", "relative", "psnr")
PSNR_FLOOR = 1e-8  # added to both MSEs of psnr_deficit: a perfect patch is not worth infinite decibels
# Options that may change when a run is resumed (everything else is fixed by run.json).
RESUMABLE = ("iterations", "workers", "threads", "device", "val_every", "checkpoint_every", "log_every", "quiet", "export")


@dataclass
class TrainOptions:
    """Every option of `amir train`; defaults are the paper's recipe where it has one."""

    data: str | None = None
    out: str | None = None
    config: str = "amir"
    tasks: tuple[str, ...] = TASKS
    iterations: int = 200_000
    batch_size: int = 8  # per process; under torchrun the global batch is K x this
    patch_size: int | None = None  # None: 128 (the paper's) on CUDA, 64 elsewhere (CPU_PATCH_SIZE)
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eta_min: float = 1e-6
    warmup: int = 0
    load_loss_weight: float = 0.001
    ema: float = 0.0  # 0: off; e.g. 0.999 (decay min(ema, (1 + it) / (10 + it)))
    task_weighting: str = "uniform"  # or "uncertainty", "relative", "psnr"
    amp: bool = False  # bf16 autocast on CUDA
    clip_grad: float = 0.0  # max gradient norm; 0: off
    seed: int = 0
    val_every: int = 5000
    checkpoint_every: int = 1000
    log_every: int = 50
    val_slices: int = 8  # per task
    val_size: int = 256  # centre crop of the validation slices (0: whole slice)
    workers: int | None = None  # default min(8, cpu_count - 1)
    threads: int | None = None  # torch CPU threads of the training process (default: torch's)
    crops_per_slice: int = 4  # one degraded slice gives 4 patches: the degradation costs more than a CPU step
    mr_scale_jitter: float = 0.0
    task_mix: dict | None = None  # task -> integer share of the training slices (None: even)
    mr_noise: float = 0.0  # MR noise floor augmentation (fraction of the MR target level)
    zoom_jitter: float = 1.0  # pixel-size augmentation: in-plane resampling by a factor in [1/z, z]
    zoom_tasks: tuple[str, ...] | None = None  # tasks the pixel-size augmentation applies to (None: all)
    ct_dose: tuple[float, float] = (0.05, 0.5)
    ct_i0: tuple[float, float] = (1e5, 1e6)
    mr_factors: tuple[int, ...] = (2, 4)
    pet_dose: tuple[float, float] = (1 / 20, 1 / 2)
    init: str | None = None
    device: str = "auto"
    export: str | None = None
    quiet: bool = False

    def levels(self) -> Levels:
        return Levels(tuple(self.ct_dose), tuple(self.ct_i0), tuple(int(f) for f in self.mr_factors), tuple(self.pet_dose))

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainOptions":
        names = {f.name: f for f in dataclasses.fields(cls)}
        kw = {}
        for k, v in d.items():
            if k in names:
                kw[k] = tuple(v) if isinstance(v, list) else v
        return cls(**kw)

    def check(self) -> None:
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise BadInputError(f"unknown task(s) {', '.join(bad) or '(none)'}: choose from {', '.join(TASKS)}")
        from amir_cli.network import CONFIGS

        if self.config not in CONFIGS:
            raise BadInputError(f"unknown --config {self.config!r}; known: {', '.join(CONFIGS)}")
        for name in ("iterations", "batch_size", "val_every", "checkpoint_every", "log_every", "val_slices"):
            if int(getattr(self, name)) < 1:
                raise BadInputError(f"--{name.replace('_', '-')} must be at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise BadInputError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.ema < 1:
            raise BadInputError(f"--ema must be in [0, 1), got {self.ema}")
        if self.task_weighting not in TASK_WEIGHTINGS:
            raise BadInputError("--task-weighting must be uniform, uncertainty, relative or psnr")
        for name, (lo, hi) in (("ct-dose", self.ct_dose), ("pet-dose", self.pet_dose)):
            if not 0 < lo <= hi <= 1:
                raise BadInputError(f"--{name} range must satisfy 0 < low <= high <= 1, got {lo}-{hi}")
        if not 0 < self.ct_i0[0] <= self.ct_i0[1]:
            raise BadInputError("--ct-i0 range must be positive and ordered")
        if self.task_mix is not None:
            unknown = set(self.task_mix) - set(self.tasks)
            if unknown:
                raise BadInputError(f"--task-mix names tasks that are not trained: {', '.join(sorted(unknown))}")
            task_cycle(self.tasks, self.task_mix)  # raises on negative or all-zero shares
        if not 0 <= self.mr_noise < 1:
            raise BadInputError(f"--mr-noise must be in [0, 1), got {self.mr_noise}")
        if not 1 <= self.zoom_jitter <= 4:
            raise BadInputError(f"--zoom-jitter must be in [1, 4], got {self.zoom_jitter}")
        if self.zoom_tasks is not None and (not self.zoom_tasks or set(self.zoom_tasks) - set(self.tasks)):
            raise BadInputError(f"--zoom-tasks must name trained tasks, got {','.join(self.zoom_tasks) or '(none)'}")
        if not self.mr_factors or any(int(f) < 2 for f in self.mr_factors):
            raise BadInputError("--mr-factors must be integers >= 2")


# ------------------------------------------------------------------------------ distributed
@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()


def _init_distributed(device_kind: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if device_kind == "cuda":  # one GPU per process, before NCCL starts
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())


def _default_workers() -> int:
    return max(0, min(8, (os.cpu_count() or 1) - 1))


# ------------------------------------------------------------------------------ helpers
def parse_range(text: str, name: str) -> tuple[float, float]:
    """'0.1:0.5', '0.1,0.5', '1/12:1/2' or one value -> (low, high)."""
    parts = [p for p in str(text).replace(",", ":").split(":") if p.strip()]
    try:
        vals = [float(p.split("/")[0]) / float(p.split("/")[1]) if "/" in p else float(p) for p in parts]
    except (ValueError, ZeroDivisionError):
        raise BadInputError(f"--{name} must be LOW:HIGH (numbers or fractions like 1/12), got {text!r}") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or vals[0] > vals[1]:
        raise BadInputError(f"--{name} must be LOW:HIGH with LOW <= HIGH, got {text!r}")
    return vals[0], vals[1]


def psnr_deficit(pred, hq, lq):
    """Per sample, 10 log10(MSE(pred, hq) / MSE(lq, hq)): minus the PSNR gain (dB) of ``pred``
    over its input ``lq``, negative once ``pred`` beats it.

    The benchmark scores slices by their mean PSNR gain over the input, whatever the data range;
    this loss is that score on the patches, so every task, level and intensity scale weighs the same.
    """
    mse = (pred - hq).pow(2).mean(dim=(1, 2, 3))
    input_mse = (lq - hq).pow(2).mean(dim=(1, 2, 3))
    return (10.0 / math.log(10.0)) * (torch.log(mse + PSNR_FLOOR) - torch.log(input_mse + PSNR_FLOOR))


def cosine_lr(it: int, o: TrainOptions) -> float:
    """Learning rate of iteration ``it`` (0-based): linear warm-up, then cosine to eta_min."""
    if o.warmup and it < o.warmup:
        return o.lr * (it + 1) / o.warmup
    span = max(1, o.iterations - o.warmup)
    t = min(1.0, (it - o.warmup) / span)
    return o.eta_min + (o.lr - o.eta_min) * 0.5 * (1.0 + math.cos(math.pi * t))


def _iteration_seed(seed: int, rank: int, it: int) -> int:
    return int(np.random.SeedSequence(int(seed), spawn_key=(int(rank), int(it), 7)).generate_state(1, np.uint64)[0] >> 1)


def state_hash(state: dict) -> str:
    """sha256 over a state_dict's names and tensor bytes (to compare weights across processes)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _progress(quiet: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=quiet,
        transient=False,
    )


# ------------------------------------------------------------------------------ validation
@torch.no_grad()
def evaluate(model: nn.Module, val_set, device, batch: int = 4) -> dict:
    """Scores (docs/protocol.md) of the network on the validation slices: per-task PSNR/SSIM means (dB)."""
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
                sc = slice_scores(intensity.denormalise(pred, task, s.mr_scale), s.hq_phys, task)
                per.setdefault(task, []).append(sc)
    model.train(was_training)
    return {t: {k: float(np.nanmean([s[k] for s in v])) for k in ("psnr", "ssim", "rmse")} for t, v in per.items()}


def input_scores(val_set) -> dict:
    per = {}
    for s in val_set:
        sc = slice_scores(intensity.denormalise(s.lq, s.task, s.mr_scale), s.hq_phys, s.task)
        per.setdefault(s.task, []).append(sc)
    return {t: {k: float(np.nanmean([s[k] for s in v])) for k in ("psnr", "ssim", "rmse")} for t, v in per.items()}


def _pick(spec: str) -> torch.device:
    """The training device: no Apple GPU; under torchrun each process its LOCAL_RANK's GPU."""
    return pick_device(spec, mps=False, per_process=True)


# ------------------------------------------------------------------------------ the run
def train(options: TrainOptions, resume: str | os.PathLike | None = None, command: list[str] | None = None, *, hooks: Hooks | None = None) -> dict:
    """Train (or resume) a run; returns a summary dict. Only rank 0 writes to the run folder.

    ``hooks``: seams for tests and tools (:class:`Hooks`)."""
    run_dir, o, state = _prepare_run(options, resume)
    o.check()
    if state is not None and int(state["iteration"]) >= o.iterations:
        return _finished_run(run_dir, o, int(state["iteration"]))
    dist = _init_distributed(_pick(o.device).type)
    try:
        return _train(run_dir, o, state, dist, command if command is not None else sys.argv, hooks or Hooks())
    finally:
        if dist.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _finished_run(run_dir: Path, o: TrainOptions, done: int) -> dict:
    """`--resume` of a run that has done its iterations: nothing to train, and the export (when asked
    and not done before) of its weights; the summary says so."""
    best = ckpt.load_torch(run_dir / ckpt.BEST).get("scores") if (run_dir / ckpt.BEST).exists() else None
    note = f"{run_dir} has already done its {done} iterations: nothing to train (a larger --iterations continues it)"
    summary = {"run_dir": str(run_dir), "iterations": done, "already_finished": True, "note": note,
               "best_mean_gain_db": (best or {}).get("mean_gain_db"), "best": best}
    if o.export and int(os.environ.get("RANK", "0")) == 0:
        from .export import export_run, exported_entry

        entry = exported_entry(run_dir, o.export)
        if entry is None:
            entry = export_run(run_dir, o.export)
        else:
            summary["note"] += f"; its weights are already in the registry as {entry.name}"
        summary["exported"] = {"name": entry.name, "path": str(entry.path), "sha256": entry.sha256}
    return summary


def _prepare_run(options: TrainOptions, resume):
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / ckpt.LAST).exists():
            raise ckpt.RunFolderError(f"{run_dir}: no {ckpt.LAST} to resume from")
        saved = ckpt.read_json(run_dir / ckpt.RUN_JSON)
        o = TrainOptions.from_dict(saved["options"])
        for k in RESUMABLE:  # options given again on the command line win
            v = getattr(options, k)
            if v != getattr(TrainOptions(), k):
                setattr(o, k, v)
        o.out = str(run_dir)
        return run_dir, o, ckpt.load_torch(run_dir / ckpt.LAST)
    if not options.data:
        raise BadInputError("give the training DATA folder (or --resume RUN_DIR)")
    run_dir = Path(options.out or f"runs/amir-{time.strftime('%Y%m%d-%H%M%S')}")
    if (run_dir / ckpt.LAST).exists():
        raise ckpt.RunFolderError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    o = dataclasses.replace(options, out=str(run_dir), tasks=tuple(t for t in TASKS if t in options.tasks) or tuple(options.tasks))
    if o.patch_size is None:  # recorded in run.json, so a resumed run keeps it on any device
        o.patch_size = PAPER_PATCH_SIZE if _pick(o.device).type == "cuda" else CPU_PATCH_SIZE
    return run_dir, o, None


def _train(run_dir: Path, o: TrainOptions, state: dict | None, dist: Dist, command, hooks: Hooks) -> dict:
    from amir_cli.network import AMIR, get_config

    device = _pick(o.device)
    if o.threads:
        torch.set_num_threads(int(o.threads))
    amp = bool(o.amp and device.type == "cuda")
    workers = _default_workers() if o.workers is None else int(o.workers)
    if dist.main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ckpt.RunFolderError(f"cannot create run folder {run_dir} ({exc.strerror or exc})") from None

    volumes, val_volumes, layout = load_volumes(o.data, o.tasks)
    sampler = PatchSampler(
        volumes,
        o.tasks,
        SamplerOptions(batch_size=o.batch_size, patch_size=o.patch_size, crops_per_slice=o.crops_per_slice, flips=True, mr_scale_jitter=o.mr_scale_jitter,
                       levels=o.levels(), task_mix=o.task_mix, mr_noise=o.mr_noise, zoom_jitter=o.zoom_jitter, zoom_tasks=o.zoom_tasks),
        seed=o.seed,
        rank=dist.rank,
    )

    torch.manual_seed(o.seed)
    config = get_config(o.config)
    init_info = None
    if o.init and state is None:
        init_state, init_info = _init_weights(o.init)
        from amir_cli.weights import infer_config

        if infer_config(init_state) != config:
            raise BadInputError(f"--init weights are a different configuration than --config {o.config}")
    model = AMIR(config)
    # A zero output convolution makes a fresh network the identity (it adds a residual to its input),
    # so training starts from "no worse than the input" and learns corrections from there.
    nn.init.zeros_(model.output.weight)
    model = model.to(device)
    if o.init and state is None:
        model.load_state_dict(init_state, strict=True)
    log_vars = nn.Parameter(torch.zeros(len(TASKS), device=device)) if o.task_weighting == "uncertainty" else None
    params = list(model.parameters()) + ([log_vars] if log_vars is not None else [])
    optimizer = torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas))
    ema_model = copy.deepcopy(model).eval().requires_grad_(False) if o.ema > 0 else None

    start, best, best_scores = 0, -math.inf, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema_model is not None and state.get("ema") is not None:
            ema_model.load_state_dict(state["ema"])
        if log_vars is not None and state.get("log_vars") is not None:
            with torch.no_grad():
                log_vars.copy_(state["log_vars"])
        ckpt.set_rng_state(state["rng"])
        start, best = int(state["iteration"]), float(state.get("best", -math.inf))
    n_params = sum(p.numel() for p in model.parameters())

    net = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)

    val_set, val_in = [], {}
    if dist.main:
        val_set = validation_set(val_volumes or volumes, o.tasks, o.val_slices, o.val_size or None, o.seed, o.levels())
        val_in = input_scores(val_set)
        log = ckpt.MetricsLog.resume(run_dir / ckpt.METRICS, start) if state is not None else ckpt.MetricsLog(run_dir / ckpt.METRICS)
        if state is None:
            ckpt.atomic_file(log.path, lambda tmp: Path(tmp).write_text(""))
        run_info = _run_info(run_dir, o, command, dist, config, n_params, layout, volumes, val_volumes, val_set, val_in, init_info, workers, device, amp)
        ckpt.write_json(run_dir / ckpt.RUN_JSON, run_info)
        if (run_dir / ckpt.BEST).exists() and state is not None:
            best_scores = ckpt.load_torch(run_dir / ckpt.BEST).get("scores")
            if best_scores and best_scores.get("mean_gain_db") is not None:
                best = max(best, float(best_scores["mean_gain_db"]))
    dist.barrier()

    def save_last(it):
        if dist.main:
            ckpt.save_torch(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "ema": ema_model.state_dict() if ema_model is not None else None,
                    "log_vars": log_vars.detach().cpu() if log_vars is not None else None,
                    "rng": ckpt.rng_state(),
                    "iteration": it,  # iterations done = the data sampler's next position
                    "best": best,
                    "config": o.config,
                },
                run_dir / ckpt.LAST,
            )
        dist.barrier()

    loader = make_loader(sampler, start, o.iterations, workers)
    window = {"loss": 0.0, "l1": 0.0, "load": 0.0, "n": 0, "t": time.perf_counter(), "task": {}}
    last_val = None
    stats = ""
    progress = _progress(o.quiet or not dist.main)
    model.train()
    with progress:
        bar = progress.add_task("train", total=o.iterations, completed=start, stats="")
        it = start
        for batch in loader:
            lr = cosine_lr(it, o)
            for g in optimizer.param_groups:
                g["lr"] = lr
            torch.manual_seed(_iteration_seed(o.seed, dist.rank, it))  # the gating noise of this step
            lq = batch["lq"].to(device, non_blocking=True)
            hq = batch["hq"].to(device, non_blocking=True)
            tid = batch["task"].to(device)
            try:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    pred, load_loss = net(lq)
            except (ValueError, RuntimeError):
                # weights blown up (the gating's torch.distributions refuses NaN logits): stop below;
                # with finite weights the error is not divergence and goes up as it is
                if all(torch.isfinite(p).all() for p in model.parameters()):
                    raise
                pred = load_loss = torch.full((), float("nan"), device=device)  # diverged weights: stop below
            per_sample = (pred.float() - hq).abs().mean(dim=(1, 2, 3))
            l1 = per_sample.mean()
            if log_vars is not None:
                present = torch.zeros(len(TASKS), device=device).index_add_(0, tid, torch.ones_like(per_sample))
                task_l1 = torch.zeros(len(TASKS), device=device).index_add_(0, tid, per_sample) / present.clamp(min=1)
                mask = present > 0
                main = (torch.exp(-log_vars[mask]) * task_l1[mask] + log_vars[mask]).sum()
            elif o.task_weighting == "relative":
                # each sample's error relative to its input's: every task and level weighs the same
                input_l1 = (lq.float() - hq).abs().mean(dim=(1, 2, 3)).clamp(min=1e-4)
                main = (per_sample / input_l1).mean()
            elif o.task_weighting == "psnr":
                main = psnr_deficit(pred.float(), hq, lq.float()).mean()
            else:
                main = l1
            loss = main + o.load_loss_weight * load_loss.float()
            check = torch.stack([loss.detach(), l1.detach(), load_loss.detach().float()])
            if dist.world > 1:
                torch.distributed.all_reduce(check)
                check /= dist.world
            if not torch.isfinite(check).all():
                kept = f"the last good checkpoint is {run_dir / ckpt.LAST}" if (run_dir / ckpt.LAST).exists() else "no checkpoint had been written yet"
                raise TrainingDivergedError(
                    f"loss became {check[0].item()} at iteration {it + 1}; training stopped and {kept} "
                    "(lower --lr, use --clip-grad, then --resume)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if o.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad)
            optimizer.step()
            if ema_model is not None:
                decay = min(o.ema, (1.0 + it) / (10.0 + it))  # warm-up: early EMA is not stuck at the init
                with torch.no_grad():
                    for pe, pm in zip(ema_model.parameters(), model.parameters()):
                        pe.lerp_(pm, 1.0 - decay)
                    for be, bm in zip(ema_model.buffers(), model.buffers()):
                        be.copy_(bm)
            it += 1

            loss_v, l1_v, load_v = (float(x) for x in check.cpu())
            window["loss"] += loss_v
            window["l1"] += l1_v
            window["load"] += load_v
            window["n"] += 1
            live = window["n"] / max(1e-9, time.perf_counter() - window["t"])  # the bar's loss and speed, every step
            stats = f"loss {window['loss'] / window['n']:.4f} {live:.2f} it/s" + (f" | val {last_val}" if last_val else "")
            if dist.main and (it % o.log_every == 0 or it == o.iterations):
                now = time.perf_counter()
                rate = window["n"] / max(1e-9, now - window["t"])
                rec = {
                    "kind": "train",
                    "iteration": it,
                    "loss": window["loss"] / window["n"],
                    "l1": window["l1"] / window["n"],
                    "load_loss": window["load"] / window["n"],
                    "lr": lr,
                    "it_per_s": rate,
                }
                if log_vars is not None:
                    rec["task_log_var"] = {t: float(log_vars[TASKS.index(t)].detach()) for t in o.tasks}
                log.append(rec)
                window.update(loss=0.0, l1=0.0, load=0.0, n=0, t=now)
            if it % o.checkpoint_every == 0 or it == o.iterations:
                save_last(it)  # before validation: a failure there loses nothing
            if it % o.val_every == 0 or it == o.iterations:
                if dist.main:
                    scores = evaluate(ema_model if ema_model is not None else model, val_set, device)
                    gain = {t: scores[t]["psnr"] - val_in[t]["psnr"] for t in scores}
                    mean_gain = float(np.mean(list(gain.values()))) if gain else float("nan")
                    is_best = bool(mean_gain > best)
                    rec = {
                        "kind": "val",
                        "iteration": it,
                        "psnr": {t: s["psnr"] for t, s in scores.items()},
                        "ssim": {t: s["ssim"] for t, s in scores.items()},
                        "input_psnr": {t: s["psnr"] for t, s in val_in.items()},
                        "gain": gain,
                        "mean_psnr": float(np.mean([s["psnr"] for s in scores.values()])),
                        "mean_gain": mean_gain,
                        "best": is_best,
                    }
                    if is_best:
                        best = mean_gain
                        best_scores = {"iteration": it, "model": scores, "input": val_in, "mean_gain_db": mean_gain}
                        weights = (ema_model if ema_model is not None else model).state_dict()
                        ckpt.save_torch({"model": weights, "iteration": it, "scores": best_scores, "ema": ema_model is not None}, run_dir / ckpt.BEST)
                    log.append(rec)
                    ckpt.plot_curves(log.records, run_dir / ckpt.CURVES)
                    last_val = " ".join(f"{t.split('-')[0]} {g:+.2f}dB" for t, g in gain.items())
                    stats = stats.split(" | val")[0] + f" | val {last_val}"
                    window["t"] = time.perf_counter() - window["n"] / max(live, 1e-9)  # the speed shown leaves validation out
                dist.barrier()
            progress.update(bar, completed=it, stats=stats)
            if hooks.after_step is not None:
                hooks.after_step(it)

    if hooks.at_end is not None:
        hooks.at_end(model, dist.rank)
    summary = {"run_dir": str(run_dir), "iterations": it, "best_mean_gain_db": best if best > -math.inf else None, "best": best_scores}
    if o.export and dist.main:
        from .export import export_run

        entry = export_run(run_dir, o.export)
        summary["exported"] = {"name": entry.name, "path": str(entry.path), "sha256": entry.sha256}
    dist.barrier()
    return summary


def _init_weights(source: str):
    from amir_cli import weights

    path, entry = weights.resolve(source)
    return weights.read_state_dict(path), {"source": str(source), "sha256": entry.sha256 if entry else weights.sha256_of(path)}


def _run_info(run_dir, o, command, dist, config, n_params, layout, volumes, val_volumes, val_set, val_in, init_info, workers, device, amp):
    previous = ckpt.read_json(run_dir / ckpt.RUN_JSON) if (run_dir / ckpt.RUN_JSON).exists() else {}
    cmd = shlex.join([Path(command[0]).name if command else "amir", *command[1:]]) if command else ""
    invocation = {"command": cmd, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "world_size": dist.world, "device": str(device), "workers": workers}
    return {
        "tool": f"amir {__version__}",
        "created": previous.get("created", invocation["time"]),
        "command": previous.get("command", cmd),
        "invocations": previous.get("invocations", []) + [invocation],
        "options": o.to_dict(),
        "seed": o.seed,
        "world_size": dist.world,
        "global_batch": o.batch_size * dist.world,
        "amp_bf16": amp,
        "config_name": o.config,
        "config": config.to_dict(),
        "parameters": n_params,
        "init": init_info or previous.get("init"),
        "data": {
            "root": str(Path(o.data).resolve()),
            "layout": layout,
            "levels": o.levels().describe(),
            "volumes": [v.describe() for v in volumes],
            "validation_volumes": [v.describe() for v in val_volumes] if val_volumes else None,
        },
        "validation": {
            "slices": [{"task": s.task, "volume": s.volume, "slice": s.index, "level": s.level, "shape": list(s.lq.shape)} for s in val_set],
            "input_scores": val_in,
            "best_by": "mean over tasks of the PSNR gain over the low-quality input (docs/protocol.md), "
            "equivalent to the mean PSNR on this fixed set",
        },
    }
