"""Score candidate weights on the validation subjects at every level: the table that chooses weights.

Reads the ``validation/`` volumes of a training data folder (``scripts/build_training_data.py``
puts the validation subjects of ``benchmarks/splits.py`` there), degrades 16 of their slices per
task and level (CT and PET in 256x256 centre crops, MR whole; fixed seed) and prints each candidate's
PSNR gain over the input (docs/protocol.md), each slice restored as plain `amir restore` restores it
(as `amir train` validates). Never the test split.

MR is scored twice per factor: on the validation slices as they are, and ("native") on references
full to their k-space edge, as a scanner's native reconstruction is: the validation brains are
resampled to 1 mm and smooth, and a network that gains on those gains about half as much on sharp
scans. And ("slab") on references that average the slices of a 5 mm slab around each validation
slice, as a 2-D clinical series' thick slices do (volumes with slices at most 2.5 mm apart). PET is
scored also ("sd") against the standard-dose image of each validation slice (the simulated activity
plus the noise of its own full-dose counts), with the input degraded from that, as real PET pairs
are. The mean per task averages its rows. ``--mild`` adds CT and PET ("sd") rows at doses 3/4 and
9/10, above the doses that choose weights, where most of the input's noise is the reference's own:
they are shown with their own mean and left out of the mean that chooses. ``--soft`` adds, the same
way, CT rows at 1/2 and 1/4 from a softer reconstruction kernel (``SOFT_KERNEL``: reference and
noise through the Hann-apodised ramp of ``amir train --ct-soft-kernels``), as clinical kernels are.
``--em`` adds PET ("sd") rows at 1/2, 1/4 and 1/12 whose noise an iterative reconstruction shapes
(``degrade.OSEM_NOISE_EXPONENT``, as ``amir train --pet-em-noise``: variance following the activity, air almost
noise-free, as in clinical PET), the same way, and ("em-ref") rows at those doses whose standard-dose
reference is shaped so but whose added noise is SPEC §3's, spread evenly: the protocol's low dose of
a clinical scan, as `amir degrade` makes it. ``--taper`` adds, the same way, MR rows at x2 and x4
whose band a scanner's Fermi filter tapers (width ``TAPER_FERMI``, as ``amir train --mr-fermi``).

    python benchmarks/validation.py DATA amir-s runs/cpu_stage10/best.pt ...
    python benchmarks/validation.py DATA amir-s runs/mr_only/last.pt --tasks mri-sr
    python benchmarks/validation.py DATA amir-s --tasks mri-sr --passes 4
    python benchmarks/validation.py DATA amir-s runs/wide_doses/last.pt --mild --soft --em
    python benchmarks/validation.py DATA amir-s runs/tapered/last.pt --tasks mri-sr --taper
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np

from amir_cli.tasks import CT_DENOISE, MR_PASSES, MRI_SR, PET_SYNTHESIS, SCORED_LEVELS

LEVELS = {task: tuple(levels.values()) for task, levels in SCORED_LEVELS.items()}
NATIVE_CROP = 2  # native MR references: the central 1/2 of each validation reference's k-space
SLAB_MM = 5.0  # slab MR references: the mean of the slices this thick around each validation slice
MILD_DOSES = (0.75, 0.9)  # --mild: CT and PET doses above those that choose weights
SOFT_KERNEL, SOFT_DOSES = 0.75, (0.5, 0.25)  # --soft: the CT kernel cutoff (x Nyquist) and doses
EM_DOSES = (0.5, 0.25, 1 / 12)  # --em: the PET doses (noise exponent: degrade.OSEM_NOISE_EXPONENT)
TAPER_FERMI = 0.05  # --taper: the MR rows' Fermi filter width
EXTRA = ("mild", "soft", "em", "em-ref", "fermi")  # the level suffixes of the rows outside the choosing mean


def validation_sets(data, tasks=tuple(LEVELS), mild: bool = False, soft: bool = False, em: bool = False,
                    taper: bool = False) -> dict:
    """(task, level) -> validation slices of the validation subjects, for ``tasks`` (``mild``: with
    the rows of ``MILD_DOSES``; ``soft``: with those of ``SOFT_DOSES``; ``em``: of ``EM_DOSES``;
    ``taper``: MR with Fermi-tapered bands)."""
    from amir_cli.imaging.degrade import OSEM_NOISE_EXPONENT
    from amir_cli.training.levels import Levels
    from amir_cli.training.validation import validation_set
    from amir_cli.training.volumes import load_volumes

    _, val_volumes, _ = load_volumes(data, tasks)
    if not val_volumes:
        raise SystemExit(f"{data}: no validation/ volumes (build the folder with scripts/build_training_data.py)")
    sets = {}
    for task in tasks:
        for level in LEVELS[task]:
            lv = Levels(mr_factors=(level,)) if task == "mri-sr" else Levels(val_ct_dose=level, val_pet_dose=level)
            sets[(task, level)] = validation_set(val_volumes, (task,), 16, 256, 0, lv)
    for level in LEVELS[MRI_SR] if MRI_SR in tasks else ():
        sets[(MRI_SR, f"{level:g} native")] = native_slices(sets[(MRI_SR, level)], level)
    for level in LEVELS[MRI_SR] if MRI_SR in tasks else ():
        sets[(MRI_SR, f"{level:g} slab")] = slab_slices(sets[(MRI_SR, level)], val_volumes, level)
    for level in LEVELS[MRI_SR] if taper and MRI_SR in tasks else ():
        lv = Levels(mr_factors=(level,), val_mr_fermi=TAPER_FERMI)
        sets[(MRI_SR, f"{level:g} fermi")] = validation_set(val_volumes, (MRI_SR,), 16, 256, 0, lv)
    for level in LEVELS[PET_SYNTHESIS] if PET_SYNTHESIS in tasks else ():
        lv = Levels(val_pet_dose=level)
        sets[(PET_SYNTHESIS, f"{level:g} sd")] = validation_set(val_volumes, (PET_SYNTHESIS,), 16, 256, 0, lv, pet_standard_dose=True)
    for dose in MILD_DOSES if mild else ():
        lv = Levels(val_ct_dose=dose, val_pet_dose=dose)
        if CT_DENOISE in tasks:
            sets[(CT_DENOISE, f"{dose:g} mild")] = validation_set(val_volumes, (CT_DENOISE,), 16, 256, 0, lv)
        if PET_SYNTHESIS in tasks:
            sets[(PET_SYNTHESIS, f"{dose:g} sd mild")] = validation_set(val_volumes, (PET_SYNTHESIS,), 16, 256, 0, lv, pet_standard_dose=True)
    for dose in SOFT_DOSES if soft and CT_DENOISE in tasks else ():
        lv = Levels(val_ct_dose=dose, val_ct_kernel=SOFT_KERNEL)
        sets[(CT_DENOISE, f"{dose:g} soft")] = validation_set(val_volumes, (CT_DENOISE,), 16, 256, 0, lv)
    for kind, spec_low_dose in (("em", False), ("em-ref", True)) if em and PET_SYNTHESIS in tasks else ():
        for dose in EM_DOSES:
            lv = Levels(val_pet_dose=dose, val_pet_em=OSEM_NOISE_EXPONENT, val_pet_spec_low_dose=spec_low_dose)
            sets[(PET_SYNTHESIS, f"{dose:.3g} sd {kind}")] = validation_set(val_volumes, (PET_SYNTHESIS,), 16, 256, 0, lv, pet_standard_dose=True)
    return sets


def is_extra(level) -> bool:
    """Whether a row is one of ``--mild``, ``--soft``, ``--em`` or ``--taper``, outside the mean that chooses."""
    return isinstance(level, str) and level.endswith(EXTRA)


def native_slices(val_slices: list, factor: int) -> list:
    """The MR slices with references full to their k-space edge: each reference replaced by the image
    of its central 1/NATIVE_CROP band on the coarser grid (what a scanner reconstructs from the band
    it measured), then truncated by ``factor`` as the input."""
    from amir_cli.imaging.degrade import mri_truncate
    from amir_cli.imaging.kspace import kspace_downsample

    out = []
    for s in val_slices:
        h, w = (n - n % NATIVE_CROP for n in s.hq_phys.shape)
        hq = kspace_downsample(s.hq_phys[:h, :w], NATIVE_CROP)
        out.append(dataclasses.replace(s, hq_phys=hq, lq_phys=mri_truncate(hq, factor)))
    return out


def slab_slices(val_slices: list, volumes: list, factor: int, mm: float = SLAB_MM) -> list:
    """The MR slices of thin-slice volumes with references averaged over the ``mm`` slab centred on
    each (clipped at the volume's ends), then truncated by ``factor`` as the input."""
    from amir_cli.imaging.degrade import mri_truncate

    by_name = {v.name: v for v in volumes}
    out = []
    for s in val_slices:
        v = by_name[s.volume]
        if not 0 < v.slice_mm <= mm / 2:
            continue
        n = round(mm / v.slice_mm)
        lo = max(0, s.index - n // 2)
        a, b = v.val_rows
        hq = np.asarray(v.hq[lo : lo + n], np.float32).mean(0)[a:b]
        out.append(dataclasses.replace(s, hq_phys=hq, lq_phys=mri_truncate(hq, factor)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="training data folder with validation/ volumes")
    ap.add_argument("weights", nargs="+", help="registry names, .safetensors files or run checkpoints (best.pt, last.pt)")
    ap.add_argument("--tasks", default=",".join(LEVELS), help="comma-separated tasks to score (default: all three)")
    ap.add_argument("--passes", type=int, default=None, help="MR cascade passes (default: amir restore's, %s at x2 and %s at x4)" % (MR_PASSES[2], MR_PASSES[4]))
    ap.add_argument("--mild", action="store_true", help="also CT and PET (sd) at doses 3/4 and 9/10, outside the mean that chooses")
    ap.add_argument("--soft", action="store_true", help="also CT at 1/2 and 1/4 from a softer kernel, outside the mean that chooses")
    ap.add_argument("--em", action="store_true", help="also PET (sd) at 1/2, 1/4, 1/12 with noise shaped as iterative reconstruction shapes it (em) and with such a reference only (em-ref), outside the mean that chooses")
    ap.add_argument("--taper", action="store_true", help="also MR at x2 and x4 with bands tapered by a Fermi filter, outside the mean that chooses")
    args = ap.parse_args(argv)
    asked = set(args.tasks.split(","))
    if asked - set(LEVELS):
        ap.error(f"--tasks takes some of {', '.join(LEVELS)}")
    if args.passes is not None and args.passes < 1:
        ap.error("--passes must be at least 1")
    tasks = tuple(t for t in LEVELS if t in asked)

    import torch

    from amir_cli.training.validation import evaluate, input_scores
    from amir_cli.weights import load_weights

    from amir_cli.errors import AmirError

    try:
        sets = validation_sets(args.data, tasks, args.mild, args.soft, args.em, args.taper)
    except AmirError as exc:  # a missing or unreadable data folder: one line, no traceback
        print(f"validation.py: {exc}", file=sys.stderr)
        return 1
    inputs = {k: input_scores(v) for k, v in sets.items()}
    print("| task | level | input PSNR | " + " | ".join(args.weights) + " |")
    print("|---|---|---:|" + "---:|" * len(args.weights))
    gains = {}
    for w in args.weights:
        model = load_weights(w, torch.device("cpu")).model
        for key, vs in sets.items():
            gains[(w, key)] = evaluate(model, vs, torch.device("cpu"), args.passes)[key[0]]["psnr"] - inputs[key][key[0]]["psnr"]
    for task, level in sets:
        cells = " | ".join(f"{gains[(w, (task, level))]:+.2f}" for w in args.weights)
        print(f"| {task} | {level if isinstance(level, str) else f'{level:g}'} | {inputs[(task, level)][task]['psnr']:.2f} | {cells} |")
    for w in args.weights:
        per_task = {t: float(np.mean([g for (name, (task, level)), g in gains.items() if name == w and task == t and not is_extra(level)]))
                    for t in tasks}
        extra = {kind: [g for (name, (_, level)), g in gains.items() if name == w and is_extra(level) and level.endswith(kind)] for kind in EXTRA}
        print(f"{w}: mean gain per task " + ", ".join(f"{t} {g:+.2f}" for t, g in per_task.items())
              + f"; mean {np.mean(list(per_task.values())):+.2f} dB" + "".join(f"; {kind} rows {np.mean(g):+.2f} dB" for kind, g in extra.items() if g))
    return 0


if __name__ == "__main__":
    sys.exit(main())
