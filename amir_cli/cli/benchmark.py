"""`amir benchmark`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..device import PRECISIONS
from ..errors import EXIT_PARTIAL
from ..tasks import MR_FACTORS, choices
from .common import (Command, DeviceOpt, JsonOpt, QuietOpt, WeightsOpt, _choice, app, examples, info, print_json,
                     progress_bar, usage_errors)


@app.command(
    "benchmark",
    cls=Command,
    short_help="Score the input, classical baselines and AMIR.",
    epilog=examples(
        "amir benchmark DATA -o bench/        # DATA/{MRI,CT,PET}/test/{LQ,HQ}/",
        "amir benchmark hq/ --simulate ct-denoise:0.25 --simulate mri-sr:4 -o sim/",
        "amir benchmark DATA -o bench/ --overwrite    # replace its earlier results",
        note="In a flat folder each volume's task is decided as `amir restore --task auto` decides it; "
        "each --simulate takes the volumes of its task. Protocol: docs/protocol.md; "
        "fields of summary.json: docs/reports.md.",
    ),
)
def benchmark(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="DATA/{MRI,CT,PET}/test/{LQ,HQ}/ (paired), or high-quality volumes with --simulate (flat, or in {MRI,CT,PET}/ folders).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="OUTDIR", help="Folder for cases.csv, summary.json, summary.md, figures/ (written whole; an existing one must be empty, or hold an earlier run's results and --overwrite).")] = Path("amir_benchmark"),
    weights: WeightsOpt = None,
    simulate: Annotated[
        Optional[list[str]],
        typer.Option("--simulate", metavar="TASK[:LEVEL]", help="Degrade high-quality volumes (docs/protocol.md); repeatable, e.g. ct-denoise:0.25, mri-sr:4, pet-synthesis:1/12."),
    ] = None,
    with_baselines: Annotated[bool, typer.Option("--baselines/--no-baselines", help="Also score classical baselines (CT NLM and BM3D, PET Gaussians, MR POCS or bicubic).")] = True,
    device: DeviceOpt = "auto",
    precision: Annotated[str, typer.Option("--precision", metavar=choices(PRECISIONS), help="Arithmetic of the network.")] = "fp32",
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, metavar="N", help="Slices per network call [default: 1 on the CPU, 4 on a GPU].", show_default=False)] = None,
    max_slices: Annotated[Optional[int], typer.Option("--max-slices", min=1, metavar="N", help="Score at most N evenly spaced slices per case (shorter runs).")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, metavar="N", help="Seed of the simulated degradations.")] = 0,
    tta: Annotated[bool, typer.Option("--tta", help="Also score AMIR's x8 flip/rotation self-ensemble (method amir-tta).")] = False,
    data_consistency: Annotated[bool, typer.Option("--data-consistency/--no-data-consistency", help="Same-grid MR levels named xS (LQ_x2, --simulate mri-sr:2): restore with --kspace-factor S and score the pocs baseline.")] = True,
    kspace_factor: Annotated[Optional[int], typer.Option("--kspace-factor", metavar=choices(MR_FACTORS), help="The k-space factor of the zero-filled MR images in the paired LQ folder (it has no level name).", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the results of an earlier amir benchmark in OUTDIR.")] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Score the input, classical baselines and AMIR by the paper's protocol (PSNR, SSIM, RMSE)."""
    from ..device import keep_freed_memory, wait_passively_if_busy

    wait_passively_if_busy()  # before torch is imported
    from .. import scoring as bench

    _choice(precision, PRECISIONS, "--precision")
    with usage_errors("--simulate"):
        simulations = tuple(bench.parse_simulate(text) for text in simulate or ())
    request = bench.BenchmarkRequest(
        data, out, weights=weights, simulate=simulations, with_baselines=with_baselines, device=device,
        precision=precision, batch_size=batch_size, max_slices=max_slices, seed=seed, tta=tta,
        data_consistency=data_consistency, kspace_factor=kspace_factor, overwrite=overwrite,
    )
    with usage_errors():
        request.check()
    with progress_bar(quiet or json_out) as bar:
        job = bar.add_task("reading the cases", total=None)

        def advance(done, total, label):
            bar.update(job, completed=done, total=total, description=label)

        keep_freed_memory()
        result = bench.run_benchmark(request, progress=advance)
    for v in result.summary.get("skipped", []):
        info(f"skipped {v['volume']}: {v['task']} ({v['reason']}), which no --simulate names", quiet or json_out)
    for w in result.summary["warnings"]:
        typer.echo(f"amir: warning: {w}", err=True)
    for f in result.failures:
        typer.echo(f"amir: case failed: {f['task']} {f['level'] or '-'} {f['case']}: {f['error']}", err=True)
    if json_out:
        print_json(result.summary)
    elif not quiet:
        from rich.console import Console

        console = Console()
        console.print(bench.rich_table(result.summary, width=console.width))
        n = len(result.figures)
        info(f"wrote {out}/cases.csv, summary.json, summary.md and {n} figure{'' if n == 1 else 's'}")
    if result.exit_code:
        raise typer.Exit(EXIT_PARTIAL)

