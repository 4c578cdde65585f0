"""The `amir` command line: thin Typer commands that parse options and call the library.

Errors become exit codes at this edge only (README, Commands): 0 ok, 1 error (one line on stderr, no
traceback unless AMIR_DEBUG=1), 2 usage error (Typer/Click), 3 a batch where some cases failed.
torch and the heavy modules are imported inside command bodies so that `amir --help` starts fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand

from ._version import __version__
from .device import PRECISIONS
from .errors import AmirError, one_line
from .tasks import MRI_SR, PET_SYNTHESIS, TASKS

app = typer.Typer(
    name="amir",
    help="Restore medical images (MRI super-resolution, low-dose CT denoising, low-dose PET "
    "synthesis) with the all-in-one AMIR network.",
    pretty_exceptions_show_locals=False,  # patient data must not spill into tracebacks
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain help: reads at 80 columns, square brackets kept
    epilog="Example: amir restore ct_lowdose.nii.gz (writes ct_lowdose_amir.nii.gz and a JSON report)",
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


class Command(TyperCommand):
    """A command whose usage line names its arguments plainly (INPUT, not {INPUT})."""

    def collect_usage_pieces(self, ctx):
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in super().collect_usage_pieces(ctx)]


def examples(*lines: str, note: str = "") -> str:
    """A command's epilog: example lines kept as written (click's \\b stops the rewrapping)."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines) + (f"\n\n{note}" if note else "")


# ---------------------------------------------------------------------------------------------
# Shared options (defined once, used by every command)
# ---------------------------------------------------------------------------------------------

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary on the terminal.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout.")]
WeightsOpt = Annotated[
    Optional[str],
    typer.Option("--weights", "-w", metavar="NAME|PATH", help="Registry name or a .safetensors/.pth file [default: the shipped default]."),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", metavar="auto|cpu|cuda[:N]|mps", help="Where the network runs; auto picks cuda > mps > cpu.")
]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"amir {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Restore medical images with the all-in-one AMIR network."""


# ---------------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------------


def print_json(data) -> None:
    """The machine-readable summary of a command on stdout (one JSON document)."""
    from .files import jsonable

    sys.stdout.write(json.dumps(jsonable(data), indent=2, default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def info(message: str, quiet: bool = False) -> None:
    """A human-readable line on stderr, so that stdout stays clean for --json."""
    if not quiet:
        typer.echo(message, err=True)


def progress_bar(quiet: bool):
    """A rich progress bar on stderr (disabled by --quiet or when stderr is not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,  # no bar (nor stray newlines) in logs and pipes
        transient=True,
    )


# ---------------------------------------------------------------------------------------------
# Commands: restore, degrade  (restore engineer)
# ---------------------------------------------------------------------------------------------


TASK_CHOICES = ("auto", *TASKS)
PRECISION_CHOICES = PRECISIONS


def _choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}", param_hint=option)
    return value


@app.command(
    "restore",
    cls=Command,
    short_help="Restore an image, a DICOM series or a folder of scans.",
    epilog=examples(
        "amir restore ct_lowdose.nii.gz       # -> ct_lowdose_amir.nii.gz + .json",
        "amir restore t1.nii.gz --task mri-sr --scale 2 -o t1_x2.nii.gz",
        "amir restore t1_zero_filled.nii.gz --task mri-sr --kspace-factor 2",
        "amir restore dicom/series1/ -o restored.nii.gz --reference hq.nii.gz",
        "amir restore scans/ -o restored/     # a batch: every image and series",
    ),
)
def restore_cmd(
    input: Annotated[Path, typer.Argument(metavar="INPUT", help="NIfTI/MetaImage/NRRD file, DICOM file, DICOM series folder, or a folder of scans (batch).", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output file or folder [default: <input stem>_amir.<same format> beside the input].", show_default=False)] = None,
    task: Annotated[str, typer.Option("--task", metavar="auto|mri-sr|ct-denoise|pet-synthesis", help="Restoration task; auto decides from the DICOM Modality, header hints, then intensities.")] = "auto",
    scale: Annotated[int, typer.Option("--scale", metavar="1|2|4", help="mri-sr only: write an s-times finer in-plane grid (k-space zero-padding).")] = 1,
    kspace_factor: Annotated[Optional[int], typer.Option("--kspace-factor", metavar="2|4", help="mri-sr only: the input is a zero-filled image that kept the central 1/s of k-space per in-plane axis; the output keeps those measured frequencies (data consistency).", show_default=False)] = None,
    data_consistency: Annotated[bool, typer.Option("--data-consistency/--no-data-consistency", help="MR with --scale or --kspace-factor: keep the k-space band the input measured.")] = True,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    precision: Annotated[str, typer.Option("--precision", metavar="fp32|bf16|fp16", help="Arithmetic of the network (fp16 needs a GPU).")] = "fp32",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="N", help="Slices per network call.")] = 4,
    tile: Annotated[Optional[int], typer.Option("--tile", min=1, metavar="N", help="Restore large slices in overlapping N x N tiles (saves memory).", show_default=False)] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Average the network over the 8 flips and rotations of each slice (self-ensemble): a little better, 8x the time.")] = False,
    reference: Annotated[Optional[Path], typer.Option("--reference", metavar="HQ", help="High-quality image on the output grid: adds PSNR/SSIM/RMSE to the report.", show_default=False)] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Where to write the JSON report [default: <output>.json].", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output (never the input).")] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Restore an image, a DICOM series or a folder of scans with AMIR and write a JSON report."""
    _choice(task, TASK_CHOICES, "--task")
    _choice(precision, PRECISION_CHOICES, "--precision")
    if scale not in (1, 2, 4):
        raise typer.BadParameter(f"{scale} is not one of 1, 2, 4", param_hint="--scale")
    if kspace_factor is not None and kspace_factor not in (2, 4):
        raise typer.BadParameter(f"{kspace_factor} is not one of 2, 4", param_hint="--kspace-factor")

    from . import restore as R
    from .device import pick_device, precision_context
    from .weights import load_weights

    R.check_scale_task(task, scale, kspace_factor)
    if not input.exists():
        raise AmirError(f"{input}: no such file or folder")
    batch = R.is_batch_input(input)
    if batch and (reference is not None or report is not None):
        raise AmirError("--reference and --report apply to one image, not to a folder of scans")
    dev = pick_device(device)
    precision_context(dev, precision)  # fail early on an impossible precision
    options = R.RestoreOptions(task=task, scale=scale, device=dev, precision=precision, batch_size=batch_size, tile=tile, tta=tta, kspace_factor=kspace_factor,
                               data_consistency=data_consistency, overwrite=overwrite)
    if not batch:
        out = output if output is not None else R.default_output(input)
        rep = report if report is not None else R.report_path_for(out)
        R.check_output(input, out, overwrite)  # before the (slow) model load
        R.check_output(input, rep, overwrite, what="report")
    loaded = load_weights(weights, dev)

    if not batch:
        with progress_bar(quiet or json_out) as bar:
            job = bar.add_task(f"restoring {input.name}", total=None)
            result = R.restore_case(
                loaded, input, output, options, reference=reference, report=report,
                progress=lambda done, total: bar.update(job, completed=done, total=total),
            )
        if json_out:
            print_json(result)
        elif not quiet:
            _print_restore_summary(result)
        return

    def on_case(case, result, error):
        if error is not None:
            typer.echo(f"amir: error: {case}: {error}", err=True)
        elif not quiet and not json_out:
            typer.echo(f"{case} -> {result['output']} ({result['task']}, {result['seconds']:.1f} s)")

    with progress_bar(quiet or json_out) as bar:
        def progress_for(case):
            job = bar.add_task(f"restoring {case.name}", total=None)
            return lambda done, total: bar.update(job, completed=done, total=total)

        summary = R.restore_batch(loaded, input, output, options, on_case=on_case, progress_for=progress_for)
    if json_out:
        print_json(summary)
    elif not quiet:
        typer.echo(f"{len(summary['restored'])} restored, {len(summary['failed'])} failed; report {summary['report']}")
    if summary["failed"]:
        raise typer.Exit(EXIT_PARTIAL)


def _print_restore_summary(r: dict) -> None:
    typer.echo(f"{r['input']} -> {r['output']}")
    typer.echo(f"  task {r['task']} ({r['task_reason']}); weights {r['weights']['name']} ({r['weights']['sha256'][:12]})")
    ensemble = ", x8 self-ensemble" if r["tta"] else ""
    typer.echo(f"  {r['slices']} slices in {r['seconds']:.1f} s ({r['slices_per_second']:.2f}/s) on {r['device']}, {r['precision']}{ensemble}")
    m = r.get("metrics")
    if m:
        o = m["output"]
        line = f"  vs reference: PSNR {o['psnr']:.2f} dB, SSIM {o['ssim']:.4f}, RMSE {o['rmse']:.4g}"
        if "input" in m:
            i = m["input"]
            line += f" (input: {i['psnr']:.2f} dB, {i['ssim']:.4f}, {i['rmse']:.4g})"
        typer.echo(line)
    for w in r.get("warnings", []):
        typer.echo(f"  warning: {w}", err=True)
    typer.echo(f"  report {r['report']}")


@app.command(
    "degrade",
    cls=Command,
    short_help="Simulate a low-quality input from a high-quality image.",
    epilog=examples(
        "amir degrade ct.nii.gz --task ct-denoise --dose 0.25 -o ct_quarter.nii.gz",
        "amir degrade t1.nii.gz --task mri-sr --factor 4 --seed 1 -o t1_lr.nii.gz",
        note="The degradations are described in docs/protocol.md.",
    ),
)
def degrade_cmd(
    input: Annotated[Path, typer.Argument(metavar="INPUT", help="High-quality image (NIfTI, MetaImage/NRRD, DICOM file or series folder).", show_default=False)],
    task: Annotated[str, typer.Option("--task", metavar="mri-sr|ct-denoise|pet-synthesis", help="Which degradation to simulate (docs/protocol.md).", show_default=False)],
    dose: Annotated[Optional[float], typer.Option("--dose", help="Dose fraction for ct-denoise / pet-synthesis [default: 0.25].", show_default=False)] = None,
    factor: Annotated[Optional[int], typer.Option("--factor", metavar="2|4", help="k-space truncation factor for mri-sr [default: 4].", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the simulated noise (same seed, same image).")] = 0,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output path [default: <input stem>_degraded.<same format>].", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output (never the input).")] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Simulate a low-quality input (low dose, low count, truncated k-space) from a high-quality image."""
    _choice(task, TASK_CHOICES[1:], "--task")
    if task == MRI_SR and dose is not None:
        raise typer.BadParameter("mri-sr takes --factor, not --dose", param_hint="--dose")
    if task != MRI_SR and factor is not None:
        raise typer.BadParameter(f"{task} takes --dose, not --factor", param_hint="--factor")
    if factor is not None and factor not in (2, 4):
        raise typer.BadParameter(f"{factor} is not one of 2, 4", param_hint="--factor")
    if dose is not None and not 0 < dose <= 1:
        raise typer.BadParameter(f"{dose} is not a fraction in (0, 1]", param_hint="--dose")

    from . import restore as R
    from .imaging import degrade as D
    from .imaging.io import read_image, write_image

    if not input.exists():
        raise AmirError(f"{input}: no such file or folder")
    level = factor if task == MRI_SR else dose
    level = D.DEFAULT_LEVEL[task] if level is None else level
    out = output if output is not None else R.default_output(input, "_degraded")
    R.check_output(input, out, overwrite)
    volume = read_image(input)
    with progress_bar(quiet or json_out) as bar:
        job = bar.add_task(f"degrading {input.name}", total=volume.shape[volume.slice_axis])
        degraded = D.degrade_volume(volume.array, task, level, slice_axis=volume.slice_axis, spacing_mm=volume.spacing_mm,
                                    seed=seed, progress=lambda: bar.update(job, advance=1))
    what = "factor" if task == MRI_SR else "dose fraction"
    simulated = task == PET_SYNTHESIS or volume.modality == "PT"
    description = f"Simulated {task} input ({what} {level}, seed {seed}) by amir degrade; not an acquisition"
    written = write_image(volume.with_array(degraded), out, reference=volume, description=description)
    summary = {
        "tool": "amir", "version": __version__, "command": "degrade", "input": str(input), "output": str(written),
        "task": task, "level_name": what, "level": level, "seed": seed, "shape": list(volume.shape),
        "spacing_mm": list(volume.spacing_mm), "simulated": True,
    }
    if simulated:
        summary["note"] = "simulated low-count PET (Poisson thinning of projected activity); not a real low-dose acquisition"
    if json_out:
        print_json(summary)
    elif not quiet:
        typer.echo(f"{input} -> {written} ({task}, {what} {level}, seed {seed})")
        if simulated:
            typer.echo(f"  note: {summary['note']}")


# ---------------------------------------------------------------------------------------------
# Commands: weights list | verify | path | import  (restore engineer)
# ---------------------------------------------------------------------------------------------

weights_app = typer.Typer(
    rich_markup_mode=None,
    help="The weights registry: list, verify, locate and import weights.",
    no_args_is_help=True,
    epilog=examples("amir weights list", "amir weights import AMIR_official.pth --name amir-paper"),
)
app.add_typer(weights_app, name="weights")


@weights_app.command(cls=Command, name="list", short_help="List the shipped and user weights.", epilog=examples("amir weights list --json"))
def weights_list(quiet: QuietOpt = False, json_out: JsonOpt = False) -> None:
    """List the shipped and user weights (name, configuration, tasks, sha256, file)."""
    from . import weights as W

    default = W.default_name()
    rows = [
        {
            "name": e.name,
            "default": e.name == default,
            "shipped": e.shipped,
            "config": e.info.get("config_name") or e.info.get("config"),
            "tasks": e.info.get("tasks"),
            "sha256": e.sha256,
            "path": str(e.path),
        }
        for e in W.entries()
    ]
    if json_out:
        print_json({"default": default, "user_dir": str(W.user_dir()), "entries": rows})
        return
    if quiet:
        for r in rows:
            typer.echo(r["name"])
        return
    if not rows:
        typer.echo(f"no weights installed (user folder {W.user_dir()}); import some with `amir weights import`")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "source", "tasks", "sha256", "file")
    for r in rows:
        name = r["name"] + (" (default)" if r["default"] else "")
        tasks = ", ".join(r["tasks"] or []) if isinstance(r["tasks"], list) else str(r["tasks"] or "")
        table.add_row(name, "shipped" if r["shipped"] else "user", tasks, r["sha256"][:12], r["path"])
    Console().print(table)


@weights_app.command(cls=Command, name="verify", short_help="Check every weights file against its sha256.", epilog=examples("amir weights verify", "amir weights verify my-ct-model"))
def weights_verify(
    names: Annotated[Optional[list[str]], typer.Argument(metavar="NAME", help="Entries to check [default: all].", show_default=False)] = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Check every weights file against the sha256 recorded in its manifest."""
    from . import weights as W

    chosen = [W.find(n) for n in names] if names else W.entries()
    results = []
    for e in chosen:
        try:
            W.verify(e)
            results.append({"name": e.name, "ok": True, "sha256": e.sha256})
        except AmirError as exc:
            results.append({"name": e.name, "ok": False, "error": one_line(exc, limit=None)})
    if json_out:
        print_json({"entries": results})
    elif not quiet:
        for r in results:
            typer.echo(f"{r['name']}: " + ("ok" if r["ok"] else f"FAILED ({r['error']})"))
    bad = [r["name"] for r in results if not r["ok"]]
    if bad:
        raise AmirError(f"{len(bad)} of {len(results)} weights failed verification: {', '.join(bad)}")


@weights_app.command(cls=Command, name="path", short_help="Print the file of a weights entry.", epilog=examples("amir weights path amir-s"))
def weights_path(
    name: Annotated[Optional[str], typer.Argument(metavar="NAME", help="Entry name [default: the default weights].", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the file of a weights entry."""
    from . import weights as W

    name = name or W.default_name()
    if name is None:
        raise AmirError("no default weights are installed; give a NAME")
    entry = W.find(name)
    if json_out:
        print_json({"name": entry.name, "path": str(entry.path), "sha256": entry.sha256, "shipped": entry.shipped})
    else:
        typer.echo(str(entry.path))


@weights_app.command(cls=Command, name="import", short_help="Add a published checkpoint to the user registry.", epilog=examples("amir weights import AMIR_official.pth --name amir-paper"))
def weights_import(
    path: Annotated[Path, typer.Argument(metavar="OFFICIAL.pth", help="A published AMIR state_dict (.pth) or a .safetensors file.", show_default=False)],
    name: Annotated[str, typer.Option("--name", help="Registry name for the imported weights.", show_default=False)],
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Check that a published checkpoint loads into AMIR and add it to the user registry."""
    from . import weights as W

    if not path.is_file():
        raise AmirError(f"{path}: no such file")
    entry = W.import_official(path, name)
    if json_out:
        print_json({"name": entry.name, "path": str(entry.path), "sha256": entry.sha256})
    elif not quiet:
        typer.echo(f"imported {path} as {entry.name} -> {entry.path} (sha256 {entry.sha256[:12]})")


# ---------------------------------------------------------------------------------------------
# Commands: train  (train engineer)
# ---------------------------------------------------------------------------------------------


def _tasks_option(text: str, hint: str = "--tasks") -> tuple[str, ...]:
    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    known = TASKS
    if tasks == ("all",):
        return known
    bad = [t for t in tasks if t not in known]
    if bad or not tasks:
        raise typer.BadParameter(f"{text!r}: give 'all' or tasks from {', '.join(known)}, comma-separated", param_hint=hint)
    return tasks


def _task_mix_option(text: str | None) -> dict | None:
    if text is None:
        return None
    mix = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        task, _, share = part.partition("=")
        try:
            mix[task.strip()] = int(share)
        except ValueError:
            raise typer.BadParameter(f"{part!r}: expected TASK=N with an integer N", param_hint="--task-mix") from None
    return mix


@app.command(
    "train",
    cls=Command,
    short_help="Train or fine-tune AMIR; resumable, runs under torchrun.",
    epilog=examples(
        "amir train DATA --config amir-s --iterations 2000 --out runs/r1",
        "amir train --resume runs/r1          # after a crash or kill -9",
        "amir train DATA --config amir-s --init amir-s --tasks ct-denoise \\",
        "    --iterations 500 --lr 5e-5 --export my-ct",
        "torchrun --nproc_per_node=4 -m amir_cli train DATA --out runs/ddp",
        note="DATA: high-quality volumes in DATA/{MRI,CT,PET}/ degraded on the fly (random levels, --ct-dose "
        "etc.; scripts/build_training_data.py makes one), or the paper's paired layout "
        "DATA/{MRI,CT,PET}/{train,validation}/{LQ,HQ}/<case>.nii.gz. The run folder gets last.pt "
        "(resumable), best.pt, metrics.jsonl, curves.png and run.json. --resume of a finished run does nothing.",
    ),
)
def train_cmd(
    data: Annotated[Optional[Path], typer.Argument(metavar="DATA", help="Training data folder (not needed with --resume).", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder (default: runs/amir-DATE-TIME).", show_default=False)] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", metavar="RUN_DIR", help="Continue a run from its last checkpoint (options from its run.json; --iterations, --workers, --device, --val-every, --checkpoint-every, --export may be given again).", show_default=False)] = None,
    config: Annotated[str, typer.Option("--config", metavar="amir|amir-s|amir-tiny", help="Network configuration.")] = "amir",
    tasks: Annotated[str, typer.Option("--tasks", help="'all' (all-in-one, tasks sampled evenly) or a comma-separated subset.")] = "all",
    iterations: Annotated[int, typer.Option("--iterations", help="Training iterations (total, counting those before a --resume).")] = 200_000,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Patches per iteration per process.")] = 8,
    patch_size: Annotated[Optional[int], typer.Option("--patch-size", help="Patch size in pixels (multiple of 8) [default: 128 (the paper's) on CUDA, 64 on CPU].", show_default=False)] = None,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate (cosine-annealed to --eta-min).")] = 2e-4,
    eta_min: Annotated[float, typer.Option("--eta-min", help="Final learning rate of the cosine schedule.")] = 1e-6,
    warmup: Annotated[int, typer.Option("--warmup", help="Linear warm-up iterations.")] = 0,
    ema: Annotated[float, typer.Option("--ema", help="Exponential moving average of the weights (e.g. 0.999; 0: off). Validation and export use it.")] = 0.0,
    task_weighting: Annotated[str, typer.Option("--task-weighting", metavar="uniform|uncertainty|relative|psnr", help="Per-task loss weights: uniform (paper), learned homoscedastic uncertainty, relative (each sample's L1 divided by its input's, so every task and level weighs the same), or psnr (each sample's PSNR deficit to its input in dB, the benchmark's own score, in place of the L1).")] = "uniform",
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="bf16 autocast on CUDA.")] = False,
    clip_grad: Annotated[float, typer.Option("--clip-grad", help="Clip the gradient norm (0: off).")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initial weights and of every batch.")] = 0,
    val_every: Annotated[int, typer.Option("--val-every", help="Validate (docs/protocol.md) every N iterations; the best is kept as best.pt.")] = 5000,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Write last.pt every N iterations.")] = 1000,
    log_every: Annotated[int, typer.Option("--log-every", help="Append training loss to metrics.jsonl every N iterations.")] = 50,
    val_slices: Annotated[int, typer.Option("--val-slices", help="Held-out validation slices per task.")] = 8,
    val_size: Annotated[int, typer.Option("--val-size", help="Centre crop of validation slices (0: whole slices).")] = 256,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Data loader processes (default: min(8, CPUs - 1); 0: in the training process).", show_default=False)] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads of the training process.", show_default=False)] = None,
    crops_per_slice: Annotated[int, typer.Option("--crops-per-slice", help="Patches cut from one degraded slice (1: a fresh slice for every patch, the slowest data).")] = 4,
    mr_scale_jitter: Annotated[float, typer.Option("--mr-scale-jitter", help="Multiply the MR scale factor by exp(U(-j, j)).")] = 0.0,
    mr_noise: Annotated[float, typer.Option("--mr-noise", help="Add a Rician noise floor to MR references, sigma ~ U(0, N) x the MR target level (scanner noise the templates lack).")] = 0.0,
    zoom_jitter: Annotated[float, typer.Option("--zoom-jitter", help="Resample training slices in-plane by a random factor in [1/Z, Z] before degrading them (robustness to pixel size; 1: off).")] = 1.0,
    zoom_tasks: Annotated[str, typer.Option("--zoom-tasks", help="'all' or the comma-separated tasks whose slices --zoom-jitter resamples (e.g. ct-denoise,pet-synthesis: MR super-resolution learns from k-space content that resampling alters).")] = "all",
    task_mix: Annotated[Optional[str], typer.Option("--task-mix", metavar="TASK=N,...", help="Integer shares of the training slices per task, e.g. ct-denoise=3,mri-sr=2,pet-synthesis=1 (default: even).", show_default=False)] = None,
    ct_dose: Annotated[str, typer.Option("--ct-dose", metavar="LOW:HIGH", help="CT dose fraction range (log-uniform).")] = "0.05:0.5",
    ct_i0: Annotated[str, typer.Option("--ct-i0", metavar="LOW:HIGH", help="CT full-dose photons per 1 mm bin per view (log-uniform).")] = "1e5:1e6",
    mr_factors: Annotated[str, typer.Option("--mr-factors", help="MR k-space factors, comma-separated.")] = "2,4",
    pet_dose: Annotated[str, typer.Option("--pet-dose", metavar="LOW:HIGH", help="PET dose fraction range (log-uniform).")] = "1/20:1/2",
    init: Annotated[Optional[str], typer.Option("--init", metavar="NAME|PATH", help="Start from these weights (fine-tuning).", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", metavar="auto|cpu|cuda", help="Where to train.")] = "auto",
    export: Annotated[Optional[str], typer.Option("--export", metavar="NAME", help="At the end, add the best weights to the registry as NAME.", show_default=False)] = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train or fine-tune AMIR (all-in-one or single-task); resumable, runs under torchrun (DDP)."""
    from .training import TrainOptions, train
    from .training.loop import parse_range

    try:
        factors = tuple(int(f) for f in mr_factors.split(",") if f.strip())
    except ValueError:
        raise typer.BadParameter(f"{mr_factors!r} is not a comma-separated list of integers", param_hint="--mr-factors") from None
    options = TrainOptions(
        data=str(data) if data else None, out=str(out) if out else None, config=config, tasks=_tasks_option(tasks),
        iterations=iterations, batch_size=batch_size, patch_size=patch_size, lr=lr, eta_min=eta_min, warmup=warmup,
        ema=ema, task_weighting=task_weighting, amp=amp, clip_grad=clip_grad, seed=seed, val_every=val_every,
        checkpoint_every=checkpoint_every, log_every=log_every, val_slices=val_slices, val_size=val_size,
        workers=workers, threads=threads, crops_per_slice=crops_per_slice, mr_scale_jitter=mr_scale_jitter, task_mix=_task_mix_option(task_mix), mr_noise=mr_noise, zoom_jitter=zoom_jitter,
        zoom_tasks=None if zoom_tasks.strip() == "all" else _tasks_option(zoom_tasks, "--zoom-tasks"),
        ct_dose=parse_range(ct_dose, "ct-dose"), ct_i0=parse_range(ct_i0, "ct-i0"), mr_factors=factors,
        pet_dose=parse_range(pet_dose, "pet-dose"), init=init, device=device, export=export, quiet=quiet or json_out,
    )
    summary = train(options, resume=resume, command=["amir", *sys.argv[1:]])
    if int(os.environ.get("RANK", "0")) != 0:
        return
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


@weights_app.command(cls=Command, name="add", short_help="Add a training run's weights to the user registry.", epilog=examples("amir weights add runs/s1 --name my-amir-s"))
def weights_add(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="An `amir train` run folder.", show_default=False)],
    name: Annotated[str, typer.Option("--name", help="Registry name for the run's weights.", show_default=False)],
    last: Annotated[bool, typer.Option("--last", help="Take the latest weights instead of the best validated ones.")] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Add a training run's best weights (EMA if used) to the user registry, with its recipe and scores."""
    from .training import export_run

    entry = export_run(run_dir, name, which="last" if last else "best")
    if json_out:
        print_json({"name": entry.name, "path": str(entry.path), "sha256": entry.sha256})
    elif not quiet:
        typer.echo(f"added {run_dir} as {entry.name} -> {entry.path} (sha256 {entry.sha256[:12]})")


# ---------------------------------------------------------------------------------------------
# Commands: benchmark  (benchmark engineer)
# ---------------------------------------------------------------------------------------------


@app.command(
    "benchmark",
    cls=Command,
    short_help="Score the input, classical baselines and AMIR.",
    epilog=examples(
        "amir benchmark DATA -o bench/        # DATA/{MRI,CT,PET}/test/{LQ,HQ}/",
        "amir benchmark hq/ --simulate ct-denoise:0.25 --simulate mri-sr:4 -o bench/",
        note="In a flat folder each volume's task is decided as `amir restore --task auto` decides it; "
        "each --simulate takes the volumes of its task. Protocol: docs/protocol.md; "
        "fields of summary.json: docs/reports.md.",
    ),
)
def benchmark(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="DATA/{MRI,CT,PET}/test/{LQ,HQ}/ (paired), or high-quality volumes with --simulate (flat, or in {MRI,CT,PET}/ folders).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="OUTDIR", help="Folder for cases.csv, summary.json, summary.md, figures/.")] = Path("amir_benchmark"),
    weights: WeightsOpt = None,
    simulate: Annotated[
        Optional[list[str]],
        typer.Option("--simulate", metavar="TASK[:LEVEL]", help="Degrade high-quality volumes (docs/protocol.md); repeatable, e.g. ct-denoise:0.25, mri-sr:4, pet-synthesis:1/12."),
    ] = None,
    with_baselines: Annotated[bool, typer.Option("--baselines/--no-baselines", help="Also score classical baselines (CT NLM, PET Gaussian, MR POCS or bicubic).")] = True,
    device: DeviceOpt = "auto",
    precision: Annotated[str, typer.Option("--precision", metavar="fp32|bf16|fp16", help="Arithmetic of the network.")] = "fp32",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="N", help="Slices per network call.")] = 4,
    max_slices: Annotated[Optional[int], typer.Option("--max-slices", min=1, metavar="N", help="Score N evenly spaced slices per case (shorter runs).")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, metavar="N", help="Seed of the simulated degradations.")] = 0,
    tta: Annotated[bool, typer.Option("--tta", help="Also score AMIR's x8 flip/rotation self-ensemble (method amir-tta).")] = False,
    data_consistency: Annotated[bool, typer.Option("--data-consistency/--no-data-consistency", help="Same-grid MR levels named xS (LQ_x2, --simulate mri-sr:2): restore with --kspace-factor S and score the pocs baseline.")] = True,
    kspace_factor: Annotated[Optional[int], typer.Option("--kspace-factor", metavar="2|4", help="The k-space factor of the zero-filled MR images in the paired LQ folder (it has no level name).", show_default=False)] = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Score the input, classical baselines and AMIR by the paper's protocol (PSNR, SSIM, RMSE)."""
    from . import benchmark as bench

    if kspace_factor is not None and kspace_factor not in (2, 4):
        raise typer.BadParameter(f"{kspace_factor} is not one of 2, 4", param_hint="--kspace-factor")
    try:
        simulations = [bench.parse_simulate(text) for text in simulate or ()]
    except AmirError as exc:  # a malformed option value is a usage error (exit 2)
        raise typer.BadParameter(str(exc), param_hint="--simulate") from None
    with progress_bar(quiet or json_out) as bar:
        job = bar.add_task("reading the cases", total=None)

        def advance(done, total, label):
            bar.update(job, completed=done, total=total, description=label)

        result = bench.run_benchmark(
            data, out, weights=weights, simulate=simulations, with_baselines=with_baselines, device=device,
            precision=precision, batch_size=batch_size, max_slices=max_slices, seed=seed, tta=tta,
            data_consistency=data_consistency, kspace_factor=kspace_factor, progress=advance,
        )
    for v in result.summary.get("skipped", []):
        info(f"skipped {v['volume']}: {v['task']} ({v['reason']}), which no --simulate names", quiet or json_out)
    for f in result.failures:
        typer.echo(f"amir: case failed: {f['task']} {f['level'] or '-'} {f['case']}: {f['error']}", err=True)
    if json_out:
        print_json(result.summary)
    elif not quiet:
        from rich.console import Console

        Console().print(bench.rich_table(result.summary))
        info(f"wrote {out}/cases.csv, summary.json, summary.md and {len(result.figures)} figure(s)")
    if result.exit_code:
        raise typer.Exit(EXIT_PARTIAL)


# ---------------------------------------------------------------------------------------------
# Entry point: errors -> one line on stderr and an exit code
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (`amir = amir_cli.cli:main`).

    Click handles usage errors itself (message + exit 2); everything else that escapes a command
    becomes one line `amir: error: <message>` on stderr and exit code 1.
    """
    debug = os.environ.get("AMIR_DEBUG", "") not in ("", "0")
    try:
        app(args=argv, prog_name="amir")
    except SystemExit:
        raise
    except KeyboardInterrupt:
        typer.echo("amir: error: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place where errors become exit codes
        if debug:
            raise
        if isinstance(exc, (AmirError, OSError, ValueError, MemoryError)):
            typer.echo(f"amir: error: {one_line(exc, limit=None)}", err=True)
        else:
            typer.echo(f"amir: error: unexpected {type(exc).__name__}: {one_line(exc, limit=None)} (AMIR_DEBUG=1 shows details)", err=True)
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":
    main()
