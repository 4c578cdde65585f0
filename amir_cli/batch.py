"""`amir restore` on a folder of cases: each case through :func:`amir_cli.restore.restore_case` with
one loaded model, a failing case recorded and skipped, and the batch summary (shared among torchrun
ranks when there are several). A folder holding several DICOM series gives a case per series."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ._version import __version__
from .device import torchrun
from .errors import BadInputError, DeviceError, WeightsError, one_line
from .files import write_json
from .imaging import dicom
from .imaging.io import image_suffix, list_cases, unsearched_warnings
from .placement import check_output, default_output, is_amir_output, report_path_for, same_or_inside, written_files
from .restore import Progress, RestoreOptions, case_files, restore_case
from .weights import LoadedWeights


def distributed_share(cases: list) -> tuple[list, int, int]:
    """This process's cases under torchrun (cases[rank::world_size]), its rank and the world size."""
    rank, _, world = torchrun()
    if world < 1 or not 0 <= rank < world:
        raise BadInputError(f"invalid torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return cases[rank::world], rank, world


def batch_output_for(case: Path, root: Path, out_root: Path) -> Path:
    """A case's output inside the batch output folder, under its path relative to the input; a DICOM
    folder named like an image or DICOM file (``scan.nii/``, ``series.dcm/``) under its default
    output's name (``scan.nii_amir/``), as its own would be written as a file of that format."""
    rel = case.relative_to(root)
    if case != root and case.is_dir() and (image_suffix(case) or case.suffix.lower() in dicom.DICOM_SUFFIXES):
        rel = default_output(case).relative_to(root)
    return out_root / rel


def batch_jobs(folder: Path, out_root: Path, unsearched: list[Path] | None = None) -> list[tuple[Path, str | None, Path]]:
    """(case, SeriesInstanceUID or None, output) of every case of ``folder``: a DICOM folder that
    holds several series, or other cases below it, gives one job per series, each written to a
    folder named after it. ``unsearched``: as for :func:`list_cases`."""
    jobs = []
    cases = list_cases(folder, unsearched=unsearched)
    for case in cases:
        target = batch_output_for(case, folder, out_root)
        try:
            series = dicom.folder_series(case) if case.is_dir() else []
        except BadInputError:
            series = []  # restore_case reports what is wrong with this folder
            if case == folder:  # beside the batch's other cases, not in their place
                target = out_root / folder.name
        if len(series) > 1 or (series and any(case in c.parents for c in cases)):
            jobs += [(case, uid, target / label) for uid, label in series]
        else:
            jobs.append((case, None, target))
    _check_apart(jobs)
    return jobs


def _check_apart(jobs) -> None:
    """Refuse a batch where two cases would write one output, or one inside another's (a series
    folder named like a subfolder of the input)."""
    owner = {}
    for case, series, target in jobs:
        shown = str(case) if series is None else f"{case} ({target.name})"
        if target in owner:
            raise BadInputError(f"{owner[target]} and {shown} would both be written to {target}; rename one of them")
        owner[target] = shown
    for target, shown in owner.items():
        outer = next((p for p in target.parents if p in owner), None)
        if outer is not None:
            raise BadInputError(f"{shown} would be written inside {outer}, the output of {owner[outer]}; rename one of them")


def stale_outputs(out_root: Path, jobs) -> list[Path]:
    """Files in an earlier batch's output folder that this batch would neither replace nor hold in a
    series folder it replaces whole."""
    kept, folders = set(), set()
    for _case, _series, target in jobs:
        kept.update(written_files(target))
        kept.add(report_path_for(target))
        folders.add(target)
    return sorted(f for f in out_root.rglob("*") if not f.is_dir() and f not in kept and not any(p in folders for p in f.parents)
                  and not any(part.startswith(".") for part in f.relative_to(out_root).parts))  # a killed run's temp names


def restore_batch(
    weights: LoadedWeights,
    folder: Path,
    out_root: Path | None,
    options: RestoreOptions,
    *,
    on_case: Callable[[str, dict | None, str | None], None] | None = None,
    progress_for: Callable[[str], Progress | None] | None = None,
) -> dict:
    """Restore every case of ``folder`` into ``out_root`` with one loaded model; a failing case is
    recorded and skipped. Returns the batch summary (also written as ``<out_root>.json``)."""
    folder = Path(folder)
    out_root = Path(out_root) if out_root is not None else default_output(folder)
    if same_or_inside(out_root, folder) or same_or_inside(folder, out_root):
        raise BadInputError(f"{out_root}: the batch output folder must lie outside the input folder {folder}")
    if not out_root.parent.is_dir():
        raise BadInputError(f"{out_root}: output folder {out_root.parent} does not exist")
    if out_root.exists() and not out_root.is_dir():
        raise BadInputError(f"{out_root}: exists and is not a folder")
    if out_root.is_dir() and dicom.folder_dicom_files(out_root) and is_amir_output(out_root):  # a batch's outputs would mix with that series' files
        raise BadInputError(f"{out_root}: holds one restored DICOM series of an earlier run; a batch writes a folder "
                            "of outputs: choose another -o")
    unsearched: list[Path] = []
    jobs = batch_jobs(folder, out_root, unsearched)
    stale = stale_outputs(out_root, jobs) if out_root.is_dir() else []
    if stale:  # an earlier batch of another layout: its outputs would be mixed with this one's
        raise BadInputError(f"{out_root}: holds {len(stale)} earlier output file{'s' if len(stale) > 1 else ''} that this "
                            f"batch would not replace ({stale[0].relative_to(out_root)}{', ...' if len(stale) > 1 else ''}); "
                            "choose another -o, or remove them")
    mine, rank, world = distributed_share(jobs)
    name = f"{out_root.name}.json" if world == 1 else f"{out_root.name}.rank{rank}.json"
    check_output(folder, out_root.parent / name, options.overwrite, what="batch report", inputs=(weights.path,))
    out_root.mkdir(exist_ok=True)
    done, failed = [], []
    started = time.perf_counter()
    for case, series, target in mine:
        shown = str(case) if series is None else f"{case} ({target.name})"  # a series of a folder: by its output name
        entry = {"input": str(case)} if series is None else {"input": str(case), "series_instance_uid": series}
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            files = case_files(case, target, overwrite=options.overwrite, series=series, weights_file=weights.path)
            report = restore_case(weights, files, options, progress=progress_for(shown) if progress_for else None)
            done.append({**entry, "output": report["output"], "report": report["report"], "task": report["task"],
                         "seconds": report["seconds"]})
            if on_case:
                on_case(shown, report, None)
        except (BadInputError, WeightsError, DeviceError, OSError, ValueError) as exc:
            message = one_line(exc, limit=None)
            failed.append({**entry, "error": message})
            if on_case:
                on_case(shown, None, message)
    summary = {
        "tool": "amir",
        "version": __version__,
        "input": str(folder),
        "output": str(out_root),
        "weights": weights.record(),
        "cases_total": len(jobs),
        "rank": rank,
        "world_size": world,
        "restored": done,
        "failed": failed,
        "warnings": unsearched_warnings(unsearched),
        "seconds": round(time.perf_counter() - started, 4),
    }
    summary["report"] = str(out_root.parent / name)
    try:
        write_json(out_root.parent / name, summary, overwrite=options.overwrite)
    except FileExistsError:
        raise BadInputError(f"{out_root.parent / name}: appeared while this command ran (another amir?); pass --overwrite to replace it") from None
    return summary
