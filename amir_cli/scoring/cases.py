"""The cases of an `amir benchmark` folder: paired LQ/HQ folders, or high-quality volumes with
``--simulate`` (in modality folders, or flat with each volume's task decided as `--task auto` does)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from amir_cli.errors import BadInputError
from amir_cli.imaging.io import named_cases, paired_names, read_image
from amir_cli.tasks import DEFAULT_LEVEL, FOLDER_TASK, MIN_DOSE, MR_FACTORS, MRI_SR, TASK_FOLDER, TASKS, one_of


@dataclass(frozen=True)
class Simulation:
    """One ``--simulate TASK[:LEVEL]``: the task, its level (factor or dose fraction) and a label."""

    task: str
    level: float
    label: str


@dataclass
class CaseSpec:
    name: str
    task: str
    level: str  # label shown in the tables ("" = unknown, paired `LQ`)
    hq_path: Path
    lq_path: Path | None = None  # paired
    simulation: Simulation | None = None  # simulated




def parse_simulate(text: str) -> Simulation:
    """``TASK[:LEVEL]`` -> Simulation.  LEVEL: MR factor 2 or 4 (``x4`` accepted), dose fraction as a
    number or a fraction (``0.25``, ``1/12``); default :data:`amir_cli.tasks.DEFAULT_LEVEL`."""
    task, _, level = str(text).strip().partition(":")
    task = task.strip()
    if task not in TASKS:
        raise BadInputError(f"--simulate {text!r}: unknown task {task!r}; choose one of {', '.join(TASKS)}")
    level = level.strip()
    if not level:
        value = DEFAULT_LEVEL[task]
        level = str(value)
    try:
        if task == MRI_SR:
            value = int(level.lstrip("xX"))
            if value not in MR_FACTORS:
                raise ValueError
            return Simulation(task, value, f"x{value}")
        frac = Fraction(level)
        value = float(frac)
        if not MIN_DOSE <= value <= 1:
            raise ValueError
    except (ValueError, ZeroDivisionError):
        what = f"a factor {one_of(MR_FACTORS)}" if task == MRI_SR else f"a dose fraction in [{MIN_DOSE:g}, 1], e.g. 0.25 or 1/12"
        raise BadInputError(f"--simulate {text!r}: level must be {what}") from None
    label = level if "/" in level else f"{value:g}"
    return Simulation(task, value, label)


def _task_folders(root: Path) -> list[tuple[str, Path]]:
    return [(FOLDER_TASK[p.name.lower()], p) for p in sorted(root.iterdir()) if p.is_dir() and p.name.lower() in FOLDER_TASK]


def place_volumes(paths) -> list[tuple[Path, str | None, str]]:
    """(path, task, reason) of each volume of a flat folder, decided as `amir restore --task auto`
    decides (:func:`amir_cli.taskdetect.detect_task`); an unreadable volume has no task (the reason
    says why), and a volume it cannot place is an error."""
    from amir_cli.taskdetect import detect_task

    placed = []
    for p in paths:
        try:
            volume = read_image(p)
        except BadInputError as exc:
            placed.append((p, None, str(exc)))
            continue
        try:
            task, reason = detect_task(volume)
        except BadInputError:
            raise BadInputError(
                f"{p}: cannot tell its task from the header, the file name or the intensities; "
                "put the volumes in CT/, MRI/ and PET/ folders (or name the file, e.g. ct_..., mr_..., pet_...)"
            ) from None
        placed.append((p, task, reason))
    return placed


def plan_cases(data, simulate=(), unsearched: list[Path] | None = None) -> tuple[list[CaseSpec], list[dict]]:
    """The cases of a benchmark folder and the volumes skipped (a flat folder's volumes whose task no
    ``--simulate`` names: ``{"volume", "task", "reason"}``); ``unsearched``: as for :func:`amir_cli.imaging.io.list_cases`."""
    root = Path(data)
    if not root.is_dir():
        raise BadInputError(f"{root}: benchmark data folder {'is not a folder' if root.exists() else 'not found'}")
    sims = [s if isinstance(s, Simulation) else parse_simulate(s) for s in simulate]
    folders = _task_folders(root)
    if not sims:
        return _paired_cases(root, folders, unsearched), []
    by_task: dict[str, dict[str, Path]] = {t: {} for t in TASKS}
    skipped: list[dict] = []
    unreadable: dict[str, tuple[Path, str]] = {}
    if folders:  # their high-quality volumes, not a paired test/ layout or validation subjects
        for task, folder in folders:
            by_task[task] = named_cases(folder, skip=("test", "validation"), unsearched=unsearched)
    else:
        wanted = {s.task for s in sims}
        named = named_cases(root, unsearched=unsearched)
        name_of = {p: name for name, p in named.items()}
        for p, task, reason in place_volumes(named.values()):
            if task is None:  # unreadable: a case of the first --simulate, failed when scored, as a paired one is
                unreadable[name_of[p]] = (p, reason)
            elif task in wanted:
                by_task[task][name_of[p]] = p
            else:
                skipped.append({"volume": name_of[p], "task": task, "reason": reason})
    cases: list[CaseSpec] = []
    for i, sim in enumerate(sims):
        paths = by_task[sim.task]
        if not paths:
            where = f"{TASK_FOLDER[sim.task]}/ volumes" if folders else f"volumes of task {sim.task}"
            why = "".join(f"; {reason}" for _p, reason in list(unreadable.values())[:1])  # what may have been meant
            raise BadInputError(f"{root}: no {where} for --simulate {sim.task}{why}")
        if i == 0:
            paths = dict(sorted({**paths, **{name: p for name, (p, _reason) in unreadable.items()}}.items()))
        for name, p in paths.items():
            cases.append(CaseSpec(name, sim.task, sim.label, p, None, sim))
    return cases, skipped


def _paired_cases(root: Path, folders, unsearched: list[Path] | None) -> list[CaseSpec]:
    cases: list[CaseSpec] = []
    for task, folder in folders:
        test = folder / "test"
        if not (test / "HQ").is_dir():
            continue
        hq = paired_names(test / "HQ", unsearched)
        lq_dirs = sorted(d for d in test.iterdir() if d.is_dir() and re.fullmatch(r"LQ(_.+)?", d.name))
        if not lq_dirs:
            raise BadInputError(f"{test}: no LQ folder beside HQ")
        for lq_dir in lq_dirs:
            level = lq_dir.name[3:]
            lq = paired_names(lq_dir, unsearched)
            for name in sorted(set(hq) | set(lq)):
                cases.append(CaseSpec(name, task, level, hq.get(name), lq.get(name)))  # type: ignore[arg-type]
    if not cases:
        raise BadInputError(
            f"{root}: no paired test data (expected {{MRI,CT,PET}}/test/{{LQ,HQ}}/); "
            "for a folder of high-quality volumes pass --simulate TASK[:LEVEL]"
        )
    return cases
