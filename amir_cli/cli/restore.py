"""`amir restore` and `amir degrade`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..device import ENGINES, PRECISIONS
from ..errors import EXIT_PARTIAL, AmirError
from ..tasks import MIN_TILE, MR_FACTORS, MR_PASSES, MR_SCALES, TASKS, choices
from .common import (TASK_CHOICES, Command, DeviceOpt, JsonOpt, QuietOpt, WeightsOpt,
                     _choice, app, examples, print_json, progress_bar, usage_errors)


@app.command(
    "restore",
    cls=Command,
    short_help="Restore an image, a DICOM series or a folder of scans.",
    epilog=examples(
        "amir restore ct_lowdose.nii.gz       # -> ct_lowdose_amir.nii.gz + .json",
        "amir restore t1.nii.gz --task mri-sr --scale 2 -o t1_x2.nii.gz",
        "amir restore t1_zero_filled.nii.gz --task mri-sr --kspace-factor 2",
        "amir restore pet_osem.nii.gz --task pet-synthesis --pet-background-noise 0.3",
        "amir restore dicom/series1/ -o restored.nii.gz --reference hq.nii.gz",
        "amir restore scans/ -o restored/     # a batch: every image and series",
    ),
)
def restore_cmd(
    input: Annotated[Path, typer.Argument(metavar="INPUT", help="NIfTI/MetaImage/NRRD file, DICOM file, DICOM series folder, or a folder of scans (batch).", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output file or folder [default: <input stem>_amir.<same format> beside the input].", show_default=False)] = None,
    task: Annotated[str, typer.Option("--task", metavar=choices(TASK_CHOICES), help="Restoration task; auto decides from the DICOM Modality, header hints, then intensities.")] = "auto",
    scale: Annotated[int, typer.Option("--scale", metavar=choices(MR_SCALES), help="mri-sr only: write an s-times finer in-plane grid (k-space zero-padding).")] = 1,
    kspace_factor: Annotated[Optional[int], typer.Option("--kspace-factor", metavar=choices(MR_FACTORS), help="mri-sr only: the input is a zero-filled image that kept the central 1/s of k-space per in-plane axis; the output keeps those measured frequencies (data consistency).", show_default=False)] = None,
    data_consistency: Annotated[bool, typer.Option("--data-consistency/--no-data-consistency", help="MR with --scale, --kspace-factor or a recognised zero-filled input: keep the k-space band the input measured.")] = True,
    detect_zero_filling: Annotated[bool, typer.Option("--detect-zero-filling/--no-detect-zero-filling", help="mri-sr on the input's grid: recognise a zero-filled image (the central 1/2 or 1/4 of k-space) by its spectrum and keep its band, as --kspace-factor does.")] = True,
    pet_background_noise: Annotated[Optional[float], typer.Option("--pet-background-noise", metavar="SD", help="pet-synthesis only: the standard deviation (SUV) of the image's noise in a uniform region of the body. Slices whose background holds almost no noise, as an iterative (OSEM) reconstruction leaves it, get it filled with noise (half that level, as chosen on validation data) before the network, which reads the noise level there, and given back after.", show_default=False)] = None,
    fill_pet_background: Annotated[bool, typer.Option("--fill-pet-background/--no-fill-pet-background", help="pet-synthesis without --pet-background-noise: where a 3-D image's background holds almost no noise, choose that level from the image (a few slices restored at each level tried, the output nearest to what their neighbouring slices predict wins; 5 or more slices at most 4 mm apart).")] = True,
    passes: Annotated[Optional[int], typer.Option("--passes", min=1, metavar="N", help=f"MR whose k-space band is kept: network passes of a damped cascade, each later one run on the last output made consistent and flipped (left-right, then up-down, then both), averaged with it and made consistent again (1: the network once; each pass costs the network's time). Default: {MR_PASSES[2]} at x2, {MR_PASSES[4]} at x4.", show_default=False)] = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    precision: Annotated[str, typer.Option("--precision", metavar=choices(PRECISIONS), help="Arithmetic of the network (fp16 needs a GPU).")] = "fp32",
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, metavar="N", help="Slices per network call [default: 1 on the CPU, 4 on a GPU].", show_default=False)] = None,
    engine: Annotated[str, typer.Option("--engine", metavar=choices(ENGINES), help="native: the CPU runs fp32 with amir's own kernels (LayerNorm, the GELU gate, the attention's Gram matrix, the routing's experts), compiled on first use with the system's C compiler and cached; fused: with oneDNN's fused operators (a convolution with the GELU, product or sum after it): faster with one thread, more memory; plain: PyTorch's operators only; auto: native where it builds, else fused with one torch thread, else plain. The report names what was used.")] = "auto",
    tile: Annotated[Optional[int], typer.Option("--tile", min=MIN_TILE, metavar="N", help="Restore large slices in overlapping N x N tiles (saves memory).", show_default=False)] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Average the network over the 8 flips and rotations of each slice (self-ensemble): a little better, 8x the time.")] = False,
    reference: Annotated[Optional[Path], typer.Option("--reference", metavar="HQ", help="High-quality image on the output grid: adds PSNR/SSIM/RMSE to the report.", show_default=False)] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Where to write the JSON report [default: <output>.json].", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output (never the input).")] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Restore an image, a DICOM series or a folder of scans with AMIR and write a JSON report."""
    from ..device import wait_passively_if_busy

    wait_passively_if_busy()  # before torch is imported
    _choice(task, TASK_CHOICES, "--task")
    _choice(precision, PRECISIONS, "--precision")
    _choice(engine, ENGINES, "--engine")
    from .. import restore as R
    from ..placement import is_batch_input
    from ..weights import is_path

    options = R.RestoreOptions(task=task, scale=scale, device=device, precision=precision, batch_size=batch_size, tile=tile,
                               tta=tta, kspace_factor=kspace_factor, data_consistency=data_consistency,
                               detect_zero_filling=detect_zero_filling, passes=passes, background_sd=pet_background_noise,
                               choose_background=fill_pet_background, overwrite=overwrite,
                               engine=engine)
    with usage_errors():
        options.check()
    _check_reference(reference)
    if not input.exists():
        raise AmirError(f"{input}: no such file or folder")
    batch = is_batch_input(input)
    if batch and (reference is not None or report is not None):
        raise typer.BadParameter("--reference and --report apply to one image, not to a folder of scans")
    files = None if batch else R.case_files(  # before the (slow) model load
        input, output, overwrite=overwrite, reference=reference, report=report,
        weights_file=weights if weights is not None and is_path(weights) else None,
    )
    loaded, options = _load(weights, options)
    if batch:
        _restore_folder(loaded, input, output, options, quiet, json_out)
        return
    with progress_bar(quiet or json_out) as bar:
        job = bar.add_task(f"restoring {input.name}", total=None)
        result = R.restore_case(loaded, files, options, progress=lambda done, total: bar.update(job, completed=done, total=total))
    if json_out:
        print_json(result)
    elif not quiet:
        _print_restore_summary(result)


def _check_reference(reference: Path | None) -> None:
    """--reference must be an image: a missing one is bad input (exit 1), a folder of scans a usage error."""
    from ..placement import is_batch_input

    if reference is not None and not reference.exists():
        raise AmirError(f"{reference}: no such file or folder (--reference)")
    if reference is not None and is_batch_input(reference):
        raise typer.BadParameter(f"{reference}: not an image file or a DICOM series folder", param_hint="--reference")


def _load(weights: str | None, options):
    """(the loaded weights, ``options`` on the device they run on): the device and precision this
    machine must provide are checked first."""
    from dataclasses import replace

    from ..device import keep_freed_memory, pick_device, precision_context
    from ..weights import load_weights

    dev = pick_device(options.device)
    keep_freed_memory()
    precision_context(dev, options.precision)  # fail early on an impossible precision
    return load_weights(weights, dev), replace(options, device=dev)


def _restore_folder(loaded, folder: Path, output: Path | None, options, quiet: bool, json_out: bool) -> None:
    """`amir restore` of a folder of scans: a line per case, the batch summary, exit 3 if a case failed."""
    from ..batch import restore_batch

    def on_case(case, result, error):
        if error is not None:  # the error names the case (or a file in it) unless it is about something else
            typer.echo(f"amir: error: {error if str(case) in error else f'{case}: {error}'}", err=True)
        elif not quiet and not json_out:
            typer.echo(f"{case} -> {result['output']} ({result['task']}, {result['seconds']:.1f} s)")
            for w in result.get("warnings", []):
                typer.echo(f"  warning: {w}", err=True)

    with progress_bar(quiet or json_out) as bar:
        def progress_for(case):
            job = bar.add_task(f"restoring {Path(case).name}", total=None)
            return lambda done, total: bar.update(job, completed=done, total=total)

        summary = restore_batch(loaded, folder, output, options, on_case=on_case, progress_for=progress_for)
    for w in summary["warnings"]:
        typer.echo(f"amir: warning: {w}", err=True)
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
    typer.echo(f"  {r['slices']} slice{'s' if r['slices'] != 1 else ''} in {r['seconds']:.1f} s ({r['slices_per_second']:.2f}/s) on {r['device']}, {r['precision']}, "
               f"{r['engine']} engine{ensemble}")
    dc = r.get("data_consistency")
    if dc:
        tapered = f", tapered by a filter: its central {dc['band_kept']:.0%} kept" if dc["band_kept"] < 1 else ""
        band = (f"1/{dc['kspace_factor']} of k-space" if dc["kspace_factor"] else
                " x ".join(str(kept) for kept, _ in dc["band"]) + " of " + " x ".join(str(n) for _, n in dc["band"]) + " k-space samples")
        typer.echo(f"  kept the central {band} ({dc['factor_from']}{tapered}), "
                   f"{dc['passes']} network pass{'es' if dc['passes'] > 1 else ''}")
    bg = r.get("background_noise")
    if bg and bg["sd"]:
        typer.echo(f"  background filled for a noise SD of {bg['sd']:.3g} SUV ({bg['from']}) in {bg['filled_slices']} of {r['slices']} slices")
    elif bg:
        typer.echo(f"  background left as it is ({bg['from']}: no fill chosen)")
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
        "amir degrade pet.nii.gz --task pet-synthesis --pet-noise osem -o low.nii.gz",
        note="The degradations are described in docs/protocol.md.",
    ),
)
def degrade_cmd(
    input: Annotated[Path, typer.Argument(metavar="INPUT", help="High-quality image (NIfTI, MetaImage/NRRD, DICOM file or series folder).", show_default=False)],
    task: Annotated[str, typer.Option("--task", metavar=choices(TASKS), help="Which degradation to simulate (docs/protocol.md).", show_default=False)],
    dose: Annotated[Optional[float], typer.Option("--dose", help="Dose fraction for ct-denoise / pet-synthesis [default: 0.25].", show_default=False)] = None,
    factor: Annotated[Optional[int], typer.Option("--factor", metavar=choices(MR_FACTORS), help="k-space truncation factor for mri-sr [default: 4].", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the simulated noise (same seed, same image).")] = 0,
    pet_noise: Annotated[str, typer.Option("--pet-noise", metavar="fbp|osem", help="pet-synthesis: the added noise spread over the whole field as filtered back-projection spreads it (fbp, docs/protocol.md), or following the activity with air almost noise-free as an iterative reconstruction makes it (osem: for a clinical OSEM PET).")] = "fbp",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output path [default: <input stem>_degraded.<same format>].", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output (never the input).")] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Simulate a low-quality input (low dose, low count, truncated k-space) from a high-quality image."""
    _choice(task, TASK_CHOICES[1:], "--task")
    from ..simulation import check_level, degrade_case, pet_noise_shape

    with usage_errors():
        level = check_level(task, dose, factor)
        pet_noise_shape(task, pet_noise)
    with progress_bar(quiet or json_out) as bar:
        job = bar.add_task(f"degrading {input.name}", total=None)
        summary = degrade_case(input, task, level, seed=seed, output=output, overwrite=overwrite, pet_noise=pet_noise,
                               progress=lambda done, total: bar.update(job, completed=done, total=total))
    if json_out:
        print_json(summary)
    elif not quiet:
        typer.echo(f"{input} -> {summary['output']} ({task}, {summary['level_name']} {level}, seed {seed})")
        for w in summary["warnings"]:
            typer.echo(f"  warning: {w}", err=True)
        if "note" in summary:
            typer.echo(f"  note: {summary['note']}")
