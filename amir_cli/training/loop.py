"""The entry point of `amir train`: the run folder (new or resumed), the processes of a torchrun
job, the data, a :class:`~amir_cli.training.trainer.Trainer` over it, run.json and the export."""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import sys
import time
from collections.abc import Collection
from pathlib import Path

import torch

from amir_cli import weights
from amir_cli._version import __version__
from amir_cli.device import pick_device, torchrun
from amir_cli.errors import BadInputError, one_line
from amir_cli.files import json_writer
from amir_cli.tasks import TASKS

from . import checkpoint as ckpt
from .options import TrainOptions, resumed_options, started_options
from .report import say
from .sampling import PatchSampler, SamplerOptions, make_loader
from .trainer import Dist, Hooks, Trainer
from .validation import validation_set
from .volumes import load_volumes


def train(
    options: TrainOptions,
    resume: str | os.PathLike | None = None,
    command: list[str] | None = None,
    *,
    hooks: Hooks | None = None,
    changed: Collection[str] | None = None,
) -> dict:
    """Train (or resume) a run; returns a summary dict. Only rank 0 writes to the run folder.

    ``hooks``: seams for tests and tools (:class:`Hooks`). ``changed``: with ``resume``, the names of
    the options given again, which replace the run's recorded values (see :func:`resumed_options`)."""
    run_dir, o, state = _prepare_run(options, resume, changed)
    o.check()
    if state is not None and int(state["iteration"]) >= o.iterations:
        return _finished_run(run_dir, o, int(state["iteration"]))
    if o.export and torchrun().rank == 0:  # a name already taken is refused now, not after the training
        weights.check_free_name(o.export)
    created = not run_dir.exists()
    dist = _init_distributed(_pick(o.device).type)
    try:
        return _run(run_dir, o, state, dist, command if command is not None else sys.argv, hooks or Hooks())
    except BaseException:
        if created and dist.main:
            _remove_unstarted(run_dir)
        raise
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
    if o.export and torchrun().rank == 0:
        from .export import export_run, exported_entry

        entry = exported_entry(run_dir, o.export)
        if entry is None:
            entry = export_run(run_dir, o.export)
        else:
            summary["note"] += f"; its weights are already in the registry as {entry.name}"
        summary["exported"] = {"name": entry.name, "path": str(entry.path), "sha256": entry.sha256}
    return summary


def _remove_unstarted(run_dir: Path) -> None:
    """A run folder this command created and that holds no checkpoint yet is removed on failure
    (only the files a starting run writes, then the folder if it is empty)."""
    if not run_dir.is_dir() or (run_dir / ckpt.LAST).exists() or (run_dir / ckpt.BEST).exists():
        return
    for name in (ckpt.RUN_JSON, ckpt.METRICS):
        (run_dir / name).unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        pass  # something else is in there: leave it


def _init_distributed(device_kind: str) -> Dist:
    env = torchrun()
    if env.world_size <= 1:
        return Dist()
    import torch.distributed as dist

    if device_kind == "cuda":  # one GPU per process, before NCCL starts
        torch.cuda.set_device(env.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), env.local_rank, dist.get_world_size())


def _default_workers() -> int:
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def _pick(spec: str) -> torch.device:
    """The training device: no Apple GPU; under torchrun each process its LOCAL_RANK's GPU."""
    return pick_device(spec, mps=False, per_process=True)


def _prepare_run(options: TrainOptions, resume, changed):
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / ckpt.LAST).exists():
            begun = _begun(run_dir)
            if begun:
                raise ckpt.RunFolderError(f"{run_dir} holds a run stopped before its first checkpoint ({begun[0]}, no "
                                          f"{ckpt.LAST}): nothing to resume; start it again with another --out")
            raise ckpt.RunFolderError(f"{run_dir}: no {ckpt.LAST} to resume from")
        saved = ckpt.read_json(run_dir / ckpt.RUN_JSON)
        try:
            root = (saved.get("data") or {}).get("root") or saved["options"]["data"]  # where DATA was, from anywhere
            o = resumed_options({**saved["options"], "out": str(run_dir), "data": root}, options, changed)
        except (KeyError, TypeError, ValueError) as exc:
            raise ckpt.RunFolderError(f"{run_dir / ckpt.RUN_JSON}: missing or invalid field {one_line(exc)}; cannot resume") from None
        return run_dir, o, ckpt.load_torch(run_dir / ckpt.LAST)
    if not options.data:
        raise BadInputError("give the training DATA folder (or --resume RUN_DIR)")
    run_dir = Path(options.out or f"runs/amir-{time.strftime('%Y%m%d-%H%M%S')}")
    if (run_dir / ckpt.LAST).exists():
        raise ckpt.RunFolderError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    begun = _begun(run_dir)
    if begun:  # killed before its first last.pt: nothing to resume, and its log is not ours to empty
        raise ckpt.RunFolderError(f"{run_dir} holds a run stopped before its first checkpoint ({begun[0]}, no last.pt); "
                                  "remove that folder or choose another --out")
    o = dataclasses.replace(options, out=str(run_dir), tasks=tuple(t for t in TASKS if t in options.tasks) or tuple(options.tasks))
    return run_dir, started_options(o, _pick(o.device).type), None


def _begun(run_dir: Path) -> list[str]:
    """The files a run writes before its first checkpoint, where they exist."""
    return [name for name in (ckpt.RUN_JSON, ckpt.METRICS, ckpt.BEST) if (run_dir / name).exists()]


def _run(run_dir: Path, o: TrainOptions, state: dict | None, dist: Dist, command, hooks: Hooks) -> dict:
    device = _pick(o.device)
    if o.threads:
        torch.set_num_threads(int(o.threads))
    workers = _default_workers() if o.workers is None else int(o.workers)
    if dist.main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ckpt.RunFolderError(f"cannot create run folder {run_dir} ({exc.strerror or exc})") from None
    start = int(state["iteration"]) if state is not None else 0
    say(f"amir train: {o.config} on {device}, iterations {start} to {o.iterations}, into {run_dir}; "
        "reading the data and making the validation set", o.quiet or not dist.main)

    volumes, val_volumes, layout = load_volumes(o.data, o.tasks)
    sampler = PatchSampler(volumes, o.tasks, SamplerOptions.of(o), seed=o.seed, rank=dist.rank)
    trainer = Trainer(run_dir, o, dist, device, state)
    if dist.main:
        val_set = validation_set(val_volumes or volumes, o.tasks, o.val_slices, o.val_size or None, o.seed, o.levels(), o.pet_standard_dose)
        trainer.open_run(val_set, resumed=state is not None)
        data = {"layout": layout, "volumes": volumes, "validation_volumes": val_volumes}
        ckpt.atomic_file(run_dir / ckpt.RUN_JSON, json_writer(_run_info(trainer, command, data, workers), keep_nan=True))
    dist.barrier()

    it = trainer.fit(make_loader(sampler, trainer.start, o.iterations, workers), hooks)
    if hooks.at_end is not None:
        hooks.at_end(trainer.model, dist.rank)
    best = trainer.best
    summary = {"run_dir": str(run_dir), "iterations": it, "best_mean_gain_db": best if best > -math.inf else None, "best": trainer.best_scores}
    if o.export and dist.main:
        from .export import export_run

        entry = export_run(run_dir, o.export)
        summary["exported"] = {"name": entry.name, "path": str(entry.path), "sha256": entry.sha256}
    dist.barrier()
    return summary


def _run_info(trainer: Trainer, command, data: dict, workers: int) -> dict:
    """run.json: the recipe, the data and the validation set, with every invocation of the run."""
    run_dir, o, dist = trainer.run_dir, trainer.o, trainer.dist
    previous = ckpt.read_json(run_dir / ckpt.RUN_JSON) if (run_dir / ckpt.RUN_JSON).exists() else {}
    cmd = shlex.join([Path(command[0]).name if command else "amir", *command[1:]]) if command else ""
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    invocation = {"command": cmd, "time": now, "world_size": dist.world, "device": str(trainer.device), "workers": workers}
    val_volumes = data["validation_volumes"]
    return {
        "tool": f"amir {__version__}",
        "created": previous.get("created", now),
        "command": previous.get("command", cmd),
        "invocations": previous.get("invocations", []) + [invocation],
        "options": o.to_dict(),
        "seed": o.seed,
        "world_size": dist.world,
        "global_batch": o.batch_size * dist.world,
        "amp_bf16": trainer.amp,
        "config_name": o.config,
        "config": trainer.config.to_dict(),
        "parameters": trainer.n_params,
        "init": trainer.init_info or previous.get("init"),
        "data": {
            "root": str(Path(o.data).resolve()),
            "layout": data["layout"],
            "levels": o.levels().describe(),
            "volumes": [v.describe() for v in data["volumes"]],
            "validation_volumes": [v.describe() for v in val_volumes] if val_volumes else None,
        },
        "validation": {
            "slices": [{"task": s.task, "volume": s.volume, "slice": s.index, "level": s.level, "shape": list(s.lq_phys.shape)} for s in trainer.val_set],
            "input_scores": trainer.val_in,
            "best_by": "mean over tasks of the PSNR gain over the low-quality input (docs/protocol.md), "
            "equivalent to the mean PSNR on this fixed set",
        },
    }
