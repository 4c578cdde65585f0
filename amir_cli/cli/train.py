"""`amir train`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..device import torchrun
from ..network.config import CONFIGS
from ..tasks import TASKS, choices
from ..training.options import TaskWeighting, TrainOptions, range_text
from .common import Command, JsonOpt, QuietOpt, app, examples, info, print_json, usage_errors


def _tasks_option(text: str, hint: str = "--tasks") -> tuple[str, ...]:
    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    known = TASKS
    if tasks == ("all",):
        return known
    bad = [t for t in tasks if t not in known]
    if bad or not tasks:
        raise typer.BadParameter(f"{text!r}: give 'all' or tasks from {', '.join(known)}, comma-separated", param_hint=hint)
    return tasks


def _keyed_option(text: str | None, hint: str, kind=int) -> dict | None:
    """'ct-denoise=3,mri-sr=2' -> {'ct-denoise': 3, 'mri-sr': 2}; ``kind`` converts the values (task
    names and patterns are checked against the run's tasks and volumes later)."""
    if text is None:
        return None
    values = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, _, value = part.rpartition("=")
        try:
            if not key.strip():
                raise ValueError(part)
            values[key.strip()] = kind(value)
        except ValueError:
            what = "an integer N" if kind is int else "a number N"
            raise typer.BadParameter(f"{part!r}: expected KEY=N with {what}", param_hint=hint) from None
    return values


def _factors_option(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(f) for f in text.split(",") if f.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of integers", param_hint="--mr-factors") from None


_TRAIN = TrainOptions()  # the defaults of `amir train`'s options


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given (on the command line or in the environment), not defaulted."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


@app.command(
    "train",
    cls=Command,
    short_help="Train or fine-tune AMIR; resumable, runs under torchrun.",
    epilog=examples(
        "amir train DATA --config amir-s --iterations 2000 --out runs/r1",
        "amir train --resume runs/r1          # after a crash or kill -9",
        "amir train DATA --config amir-s --init amir-s --tasks ct-denoise \\",
        "    --iterations 500 --export my-ct   # fine-tuning: lr 5e-5",
        "torchrun --nproc_per_node=4 -m amir_cli train DATA --out runs/ddp",
        note="DATA: high-quality volumes in DATA/{MRI,CT,PET}/ degraded on the fly (random levels, --ct-dose "
        "etc.; scripts/build_training_data.py makes one), or the paper's paired layout "
        "DATA/{MRI,CT,PET}/{train,validation}/{LQ,HQ}/<case>.nii.gz. The run folder gets last.pt "
        "(resumable; every --checkpoint-every iterations, every --checkpoint-minutes, and on SIGINT or SIGTERM, "
        "which stop the run), best.pt, metrics.jsonl, curves.png and run.json. --resume of a finished run does nothing.",
    ),
)
def train_cmd(
    ctx: typer.Context,
    data: Annotated[Optional[Path], typer.Argument(metavar="DATA", help="Training data folder (not needed with --resume).", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder (default: runs/amir-DATE-TIME).", show_default=False)] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", metavar="RUN_DIR", help="Continue a run from its last checkpoint (options from its run.json; --iterations, --workers, --threads, --device, --val-every, --checkpoint-every, --checkpoint-minutes, --log-every, --export may be given again).", show_default=False)] = None,
    config: Annotated[Optional[str], typer.Option("--config", metavar=choices(CONFIGS), help="Network configuration [default: amir (the paper's) on CUDA, amir-s on CPU].", show_default=False)] = None,
    tasks: Annotated[str, typer.Option("--tasks", help="'all' (all-in-one, tasks sampled evenly) or a comma-separated subset.")] = "all",
    iterations: Annotated[int, typer.Option("--iterations", help="Training iterations (total, counting those before a --resume).")] = _TRAIN.iterations,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Patches per iteration per process.")] = _TRAIN.batch_size,
    patch_size: Annotated[Optional[int], typer.Option("--patch-size", help="Patch size in pixels (multiple of 8) [default: 128 (the paper's) on CUDA, 64 on CPU].", show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Adam learning rate (cosine-annealed to --eta-min) [default: 2e-4 (the paper's); 5e-5 with --init].", show_default=False)] = None,
    eta_min: Annotated[float, typer.Option("--eta-min", help="Final learning rate of the cosine schedule.")] = _TRAIN.eta_min,
    warmup: Annotated[int, typer.Option("--warmup", help="Linear warm-up iterations.")] = _TRAIN.warmup,
    ema: Annotated[float, typer.Option("--ema", help="Exponential moving average of the weights (e.g. 0.999; 0: off). Validation and export use it.")] = _TRAIN.ema,
    task_weighting: Annotated[TaskWeighting, typer.Option("--task-weighting", help="Per-task loss weights: uniform (paper), learned homoscedastic uncertainty, relative (each sample's L1 divided by its input's, so every task and level weighs the same), or psnr (each sample's PSNR deficit to its input in dB, the benchmark's own score, in place of the L1).")] = TaskWeighting(_TRAIN.task_weighting),
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="bf16 autocast on CUDA.")] = _TRAIN.amp,
    clip_grad: Annotated[float, typer.Option("--clip-grad", help="Clip the gradient norm (0: off).")] = _TRAIN.clip_grad,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initial weights and of every batch.")] = _TRAIN.seed,
    val_every: Annotated[int, typer.Option("--val-every", help="Validate (docs/protocol.md) every N iterations; the best is kept as best.pt.")] = _TRAIN.val_every,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Write last.pt every N iterations.")] = _TRAIN.checkpoint_every,
    checkpoint_minutes: Annotated[float, typer.Option("--checkpoint-minutes", help="Also write last.pt after this many minutes since the last one (0: off); SIGINT and SIGTERM write it too.")] = _TRAIN.checkpoint_minutes,
    log_every: Annotated[int, typer.Option("--log-every", help="Append training loss to metrics.jsonl every N iterations.")] = _TRAIN.log_every,
    val_slices: Annotated[int, typer.Option("--val-slices", help="Held-out validation slices per task.")] = _TRAIN.val_slices,
    val_size: Annotated[int, typer.Option("--val-size", help="Centre crop of validation slices (0: whole slices).")] = _TRAIN.val_size,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Data loader processes (default: min(8, CPUs - 1); 0: in the training process).", show_default=False)] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads of the training process.", show_default=False)] = None,
    crops_per_slice: Annotated[int, typer.Option("--crops-per-slice", help="Patches cut from one degraded slice (1: a fresh slice for every patch, the slowest data).")] = _TRAIN.crops_per_slice,
    mr_scale_jitter: Annotated[float, typer.Option("--mr-scale-jitter", help="Multiply the MR scale factor by exp(U(-j, j)).")] = _TRAIN.mr_scale_jitter,
    mr_consistency_loss: Annotated[bool, typer.Option("--mr-consistency-loss/--no-mr-consistency-loss", help="MR: score the output also after the k-space data consistency that amir restore applies to whole slices, here applied to each patch (approximate: a patch of a zero-filled slice is not itself zero-filled).")] = _TRAIN.mr_consistency_loss,
    mr_cascade_loss: Annotated[bool, typer.Option("--mr-cascade-loss/--no-mr-cascade-loss", help="MR: score also the later passes of the cascade that amir restore runs where the band is known (each pass on the last one's consistent output, moved half way towards it and made consistent), with gradients through all; an MR step takes about --mr-cascade-passes times as long.")] = _TRAIN.mr_cascade_loss,
    mr_cascade_passes: Annotated[int, typer.Option("--mr-cascade-passes", help="The passes --mr-cascade-loss runs (its loss is the mean of their errors).")] = _TRAIN.mr_cascade_passes,
    mr_loss: Annotated[str, typer.Option("--mr-loss", metavar="l1|rmse", help="The error of MR samples: l1, or rmse (PSNR's error: the network predicts the mean of what the input allows, not its median; relative to the input's under --task-weighting relative).")] = _TRAIN.mr_loss,
    ct_loss: Annotated[str, typer.Option("--ct-loss", metavar="l1|rmse", help="The error of CT samples, as --mr-loss.")] = _TRAIN.ct_loss,
    mr_noise: Annotated[float, typer.Option("--mr-noise", help="Add a Rician noise floor to MR references, sigma ~ U(0, N) x the MR target level (scanner noise the templates lack).")] = _TRAIN.mr_noise,
    zoom_jitter: Annotated[float, typer.Option("--zoom-jitter", help="Resample training slices in-plane by a random factor in [1/Z, Z] before degrading them (robustness to pixel size; 1: off).")] = _TRAIN.zoom_jitter,
    zoom_tasks: Annotated[str, typer.Option("--zoom-tasks", help="'all' or the comma-separated tasks whose slices --zoom-jitter resamples (e.g. ct-denoise,pet-synthesis: MR super-resolution learns from k-space content that resampling alters).")] = "all",
    mr_zoom_max: Annotated[Optional[float], typer.Option("--mr-zoom-max", help="MR slices: the largest --zoom-jitter factor, in [1, Z] (default Z). Below Z, more MR references are cropped in k-space: full to its edge, as a native acquisition is.", show_default=False)] = None,
    mr_slab: Annotated[float, typer.Option("--mr-slab", metavar="MM", help="MR references: the mean of the neighbouring slices within a slab of random thickness up to MM mm (the partial volume of a 2-D clinical series' thick slices; 0: off).")] = _TRAIN.mr_slab,
    pet_standard_dose: Annotated[bool, typer.Option("--pet-standard-dose/--no-pet-standard-dose", help="PET references: the activity plus the noise of its own full-dose counts, as a real standard-dose scan is, and the input degraded from that (for noise-free simulated activity such as scripts/build_training_data.py's; real PET volumes hold that noise already). A network trained on noise-free references removes all noise, and falls below the input against real standard-dose scans at mild doses.")] = _TRAIN.pet_standard_dose,
    task_mix: Annotated[Optional[str], typer.Option("--task-mix", metavar="TASK=N,...", help="Integer shares of the training slices per task, e.g. ct-denoise=3,mri-sr=2,pet-synthesis=1 (default: even).", show_default=False)] = None,
    volume_weight: Annotated[Optional[str], typer.Option("--volume-weight", metavar="PATTERN=W,...", help="Draw the training volumes whose names (file names without extension) match a pattern W times as often as the others of their task, e.g. 'niivue_head*=4' (shell-style patterns; the first match counts).", show_default=False)] = None,
    task_patch_size: Annotated[Optional[str], typer.Option("--task-patch-size", metavar="TASK=P,...", help="The patch size of these tasks, e.g. ct-denoise=128,pet-synthesis=128 (the others: --patch-size). Sizes that differ need one slice per batch (--crops-per-slice at least --batch-size).", show_default=False)] = None,
    ct_dose: Annotated[str, typer.Option("--ct-dose", metavar="LOW:HIGH", help="CT dose fraction range (log-uniform).")] = range_text(_TRAIN.ct_dose),
    ct_soft_kernels: Annotated[float, typer.Option("--ct-soft-kernels", metavar="P", help="The share of CT training pairs from a softer kernel (the ramp apodised by a Hann window ending at 0.5 to 1 x Nyquist), which reconstructs the added noise and shows the reference, as a scanner's soft kernels shape a real low-dose scan and its full-dose pair; 0: the ramp only.")] = _TRAIN.ct_soft_kernels,
    ct_i0: Annotated[str, typer.Option("--ct-i0", metavar="LOW:HIGH", help="CT full-dose photons per 1 mm bin per view (log-uniform).")] = range_text(_TRAIN.ct_i0),
    mr_factors: Annotated[str, typer.Option("--mr-factors", help="MR k-space factors, comma-separated.")] = ",".join(map(str, _TRAIN.mr_factors)),
    mr_fermi: Annotated[float, typer.Option("--mr-fermi", metavar="P", help="The share of MR training pairs whose measured band is tapered by a radial Fermi filter (width 0.02 to 0.1 of the band), as scanners filter k-space; their loss keeps what amir restore would keep of that band (its central 80% where it recognises the taper). 0: sharp bands only.")] = _TRAIN.mr_fermi,
    pet_dose: Annotated[str, typer.Option("--pet-dose", metavar="LOW:HIGH", help="PET dose fraction range (log-uniform).")] = range_text(_TRAIN.pet_dose),
    pet_em_noise: Annotated[float, typer.Option("--pet-em-noise", metavar="P", help="The share of PET training pairs whose noise (reference and input) is shaped as an iterative (OSEM) reconstruction shapes it: its variance follows the local activity, so air is almost noise-free as in a clinical PET image (noise ~ activity^0.5 to ^1); 0: evenly spread, as filtered back-projection spreads it.")] = _TRAIN.pet_em_noise,
    pet_em_ref: Annotated[float, typer.Option("--pet-em-ref", metavar="P", help="The share of PET training pairs whose reference is shaped so (a clinical OSEM image) but whose low dose adds noise spread evenly over the field, as filtered back-projection spreads it: the protocol's low dose of a clinical scan, as `amir degrade` makes it. With --pet-em-noise, at most 1 together.")] = _TRAIN.pet_em_ref,
    init: Annotated[Optional[str], typer.Option("--init", metavar="NAME|PATH", help="Start from these weights (fine-tuning); weights of a shallower configuration with the same widths start a deeper --config that computes what they did.", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", metavar="auto|cpu|cuda", help="Where to train.")] = _TRAIN.device,
    export: Annotated[Optional[str], typer.Option("--export", metavar="NAME", help="At the end, add the best weights to the registry as NAME.", show_default=False)] = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train or fine-tune AMIR (all-in-one or single-task); resumable, runs under torchrun (DDP)."""
    from ..device import keep_freed_memory, wait_passively_if_busy

    wait_passively_if_busy()  # before torch is imported
    from ..training import train
    from ..training.checkpoint import TrainingStopped
    from ..training.report import say
    from ..training.options import parse_range

    if data is None and resume is None:
        raise typer.BadParameter("give the training DATA folder, or --resume RUN_DIR", param_hint="DATA")
    with usage_errors():  # every option value is checked here, before any work: a bad one is a usage error (exit 2)
        options = TrainOptions(
            data=str(data) if data else None, out=str(out) if out else None, config=config, tasks=_tasks_option(tasks),
            iterations=iterations, batch_size=batch_size, patch_size=patch_size, lr=lr, eta_min=eta_min, warmup=warmup,
            ema=ema, task_weighting=task_weighting.value, amp=amp, clip_grad=clip_grad, seed=seed, val_every=val_every,
            checkpoint_every=checkpoint_every, checkpoint_minutes=checkpoint_minutes, log_every=log_every, val_slices=val_slices,
            val_size=val_size, workers=workers, threads=threads, crops_per_slice=crops_per_slice, mr_scale_jitter=mr_scale_jitter,
            task_mix=_keyed_option(task_mix, "--task-mix"),
            task_patch_size=_keyed_option(task_patch_size, "--task-patch-size"), volume_weights=_keyed_option(volume_weight, "--volume-weight", float),
            mr_noise=mr_noise,
            mr_consistency_loss=mr_consistency_loss, mr_cascade_loss=mr_cascade_loss, mr_cascade_passes=mr_cascade_passes, mr_loss=mr_loss, ct_loss=ct_loss,
            zoom_jitter=zoom_jitter,
            zoom_tasks=None if zoom_tasks.strip() == "all" else _tasks_option(zoom_tasks, "--zoom-tasks"), mr_zoom_max=mr_zoom_max,
            mr_slab=mr_slab, pet_standard_dose=pet_standard_dose, ct_dose=parse_range(ct_dose, "ct-dose"), ct_i0=parse_range(ct_i0, "ct-i0"), ct_soft_kernels=ct_soft_kernels, mr_factors=_factors_option(mr_factors),
            mr_fermi=mr_fermi,
            pet_dose=parse_range(pet_dose, "pet-dose"), pet_em_noise=pet_em_noise, pet_em_ref=pet_em_ref, init=init, device=device, export=export, quiet=quiet or json_out,
        )
        options.check()
    fields = {"json_out": "quiet", "volume_weight": "volume_weights"}  # --json: --quiet
    changed = {fields.get(name, name) for name in ctx.params if name != "resume" and _given(ctx, name)}
    keep_freed_memory()
    try:
        summary = train(options, resume=resume, command=["amir", *sys.argv[1:]], changed=changed)
    except TrainingStopped as stopped:  # last.pt is written: a stop asked for, not an error
        say(f"amir: {stopped}", quiet=False)
        raise typer.Exit(128 + stopped.signum) from None
    if torchrun().rank == 0:
        _print_train_summary(summary, quiet, json_out)


def _print_train_summary(summary: dict, quiet: bool, json_out: bool) -> None:
    if json_out:
        print_json(summary)
    elif summary.get("already_finished"):
        info(summary["note"], quiet)
    elif not quiet:
        best = summary.get("best_mean_gain_db")
        msg = f"trained {summary['iterations']} iterations -> {summary['run_dir']}"
        if best is not None:
            msg += f"; best validation mean PSNR gain {best:+.2f} dB"
        if summary.get("exported"):
            msg += f"; exported as {summary['exported']['name']}"
        info(msg)

