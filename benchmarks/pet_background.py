"""Where the network reads PET noise from: the background around the body.

The cases and low doses of ``benchmarks/pet_em_noise.py`` whose noise an OSEM reconstruction shapes
(levels ``doseD``: noise following the activity, background almost noise-free), restored as they
are and with `amir restore --pet-background-noise SD` (the background filled with noise as
filtered back-projection spreads it, ``background.FILL_FRACTION`` of SD, then given back), against the Gaussian
post-filter chosen with the reference (gauss-oracle). SD is the low dose's whole noise in the body:
its RMS difference from the reference over sqrt(1 - dose) (a user measures it in a uniform region).
PSNR gain over the input on 8 slices of each case (docs/protocol.md).

    python benchmarks/pet_background.py [--weights amir-s]

Plain `amir restore` chooses SD itself from a 3-D image's neighbouring slices
(``background.choose_sd``); the table has it beside the network on the image as it is
(`--no-fill-pet-background`).

``--validation DATA`` instead prints the table that chose ``background.FILL_FRACTION`` (the filled
noise's level over the SD given): the validation subjects' OSEM-shaped PET rows of
``benchmarks/validation.py --em``, each slice restored with SD from its own reference, the noise
filled at each fraction tried.

``--choice`` prints the table that chose ``background.CHOSEN_SHARE`` and ``NOISY_LEVEL``,
``NOISY_SHARE`` (the shares of the level that restores the noise-free activity best by the
neighbouring slices; "level" its ratio to the body's median): 3-D PET simulated on the
validation subject's brain and three training subjects' CT anatomy on clinical grids (2 to 3.9 mm
pixels, 2 to 4 mm slices), OSEM-shaped at doses 1/2 to 1/20, the added noise independent between
slices or correlated with the neighbouring slices' (about 0.5, as a 3-D post-filter correlates it),
scored on the probe slices (needs the development data); then the same on slices 6 mm apart, the
table that set ``background.MAX_SLICE_MM``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from pet_em_noise import build
from quality import spaced

def body_noise_sd(lq: np.ndarray, hq: np.ndarray, dose: float) -> float:
    """The low dose's whole noise in the body (SUV): the RMS of its difference from the reference
    there (``background.body_mask``), over sqrt(1 - dose) (the reference's own noise is the rest)."""
    from amir_cli.imaging.background import body_mask

    diffs = np.concatenate([(x - h)[body_mask(x)] for x, h in zip(lq, hq)])
    return float(np.sqrt(np.mean(diffs**2) / (1.0 - dose)))


def fractions_table(model, data) -> int:
    """The validation table that chose ``background.FILL_FRACTION``."""
    import validation

    from amir_cli.imaging import background
    from amir_cli.imaging.volume import Volume
    from amir_cli.metrics import slice_scores
    from amir_cli.restore import restore_volume
    from amir_cli.tasks import PET_SYNTHESIS

    fractions, chosen = (0.0, 0.5, 0.7, 0.85, 1.0), background.FILL_FRACTION
    print("| validation row | " + " | ".join(f"fraction {f:g}" for f in fractions) + " |")
    print("|---|" + "---:|" * len(fractions))
    for (task, level), slices in validation.validation_sets(data, (PET_SYNTHESIS,), em=True).items():
        if not (isinstance(level, str) and level.endswith(" em")):
            continue
        dose, gains = float(level.split()[0]), []
        sds = [body_noise_sd(s.lq_phys[None], s.hq_phys[None], dose) for s in slices]
        inputs = [slice_scores(s.lq_phys, s.hq_phys, task)["psnr"] for s in slices]
        for fraction in fractions:
            background.FILL_FRACTION = fraction
            row = []
            for s, sd, psnr_in in zip(slices, sds, inputs):
                out = restore_volume(model, Volume(s.lq_phys[..., None].astype(np.float32), np.eye(4)), task,
                                     background_sd=sd if fraction else None)[0]
                row.append(slice_scores(out.array[..., 0], s.hq_phys, task)["psnr"] - psnr_in)
            gains.append(float(np.mean(row)))
        background.FILL_FRACTION = chosen
        print(f"| PET {level} | " + " | ".join(f"{g:+.2f}" for g in gains) + " |", flush=True)
    return 0


SHARES = (0.25, 1 / 3, 0.5, 0.75, 1.0)
# (subject's file, its split, block averaging per axis): clinical PET grids from the anatomy's.
CHOICE_CASES = (("mr/colin27_t1_0.5mm_brain.nii.gz", "validation", (2, 2, 3)),
                ("mr/colin27_t1_0.5mm_brain.nii.gz", "validation", (3, 3, 4)),
                ("ct/siemens_body_ct_20sl.nii.gz", "train", (1, 1, 1)),
                ("ct/siemens_body_ct_20sl.nii.gz", "train", (1, 1, 2)),
                ("ct/vtk_head_ct.nii.gz", "train", (2, 2, 2)),
                ("ct/cranium_ct.nii.gz", "train", (2, 2, 2)))
AXIAL_MIX = 0.3  # the noise of each slice mixed with its neighbours' at this weight: correlation about 0.5
# Slices 6 mm apart, beyond background.MAX_SLICE_MM (the table that set it; independent noise only).
COARSE_CASES = (("mr/colin27_t1_0.5mm_brain.nii.gz", "validation", (1, 1, 6)),
                ("ct/vtk_head_ct.nii.gz", "train", (1, 1, 4)),
                ("ct/siemens_body_ct_20sl.nii.gz", "train", (1, 1, 3)),
                ("ct/cranium_ct.nii.gz", "train", (1, 1, 4)))


def choice_activity(file: str, blocks: tuple[int, int, int]):
    """(slices-first SUV activity on a clinical grid, its pixel size in mm, its slice spacing in mm)."""
    from amir_cli.imaging import phantom
    from quality import DEV_DATA, PET_SEED

    rng = np.random.default_rng(PET_SEED)
    if file.startswith("mr/"):
        suv, affine = phantom.load_t1_pet(DEV_DATA / file, rng, skull_stripped=True)
    else:
        suv, affine = phantom.load_ct_pet(DEV_DATA / file, rng)
    suv, _, zooms = phantom.average_blocks(suv, affine, np.linalg.norm(affine[:3, :3], axis=0), blocks)
    return np.moveaxis(suv, -1, 0).astype(np.float64), float(zooms[0]), float(zooms[2])


def choice_table(model, cases=CHOICE_CASES, mixes=(0.0, AXIAL_MIX)) -> None:
    """The table that chose ``background.CHOSEN_SHARE``, ``NOISY_LEVEL`` and ``NOISY_SHARE`` ("amir
    restore": the share they give; with ``COARSE_CASES`` and independent noise only: the table that
    set ``background.MAX_SLICE_MM``)."""
    from amir_cli.imaging import background, degrade
    from amir_cli.imaging.volume import Volume
    from amir_cli.metrics import slice_scores
    from amir_cli.restore import restore_volume
    from amir_cli.tasks import PET_SYNTHESIS, SCORED_LEVELS

    em = degrade.OSEM_NOISE_EXPONENT
    print("| anatomy (split), pixel / slice mm | slice noise | dose | SD | level | plain | with SD | "
          + " | ".join(f"chosen x {share:.2g}" for share in SHARES) + " | amir restore |")
    print("|---|---|---|---:|---:|---:|---:|" + "---:|" * (len(SHARES) + 1))
    totals = {key: [] for key in ("plain", "sd", *SHARES, "rule")}
    for file, split, blocks in cases:
        activity, pix, spacing = choice_activity(file, blocks)
        hq = np.stack([degrade.pet_standard_dose(a, degrade.slice_rng(1, i), pixel_mm=pix, em_exponent=em)
                       for i, a in enumerate(activity)])

        def restored(slices, sd):
            vol = Volume(np.moveaxis(slices, 0, -1).astype(np.float32), np.diag([pix, pix, 1.0, 1.0]))
            return restore_volume(model, vol, PET_SYNTHESIS, background_sd=sd or None)[0].slices_first()

        for mix in mixes:
            for label, dose in SCORED_LEVELS[PET_SYNTHESIS].items():
                lq = np.stack([degrade.pet_low_count(h, dose, degrade.slice_rng(2, i), pixel_mm=pix, em_exponent=em)
                               for i, h in enumerate(hq)])
                if mix:
                    noise = lq - hq
                    mixed = noise.copy()
                    mixed[1:] += mix * noise[:-1]
                    mixed[:-1] += mix * noise[1:]
                    lq = np.clip(hq + mixed / np.sqrt(1 + 2 * mix**2), 0.0, None)
                picked = background.probe_slices(lq, spacing)
                sd = body_noise_sd(lq[picked], hq[picked], dose)
                level, median = background.chosen_level(lq, spacing, restored)
                best = level * median

                def gain(fill_sd):
                    out = restored(lq[picked], fill_sd)
                    return float(np.mean([slice_scores(o, hq[i], PET_SYNTHESIS)["psnr"] - slice_scores(lq[i], hq[i], PET_SYNTHESIS)["psnr"]
                                          for o, i in zip(out, picked)]))

                row = {"plain": gain(0.0), "sd": gain(sd), **{share: gain(share * best) for share in SHARES}}
                row["rule"] = row[background.level_share(level)]
                for key, value in row.items():
                    totals[key].append(value)
                print(f"| {Path(file).name.split('.')[0]} ({split}), {pix:.1f} / {spacing:.0f} | {'correlated' if mix else 'independent'} "
                      f"| {label} | {sd:.3f} | {level:.3f} | " + " | ".join(f"{v:+.2f}" for v in row.values()) + " |", flush=True)
    print("| mean | | | | | " + " | ".join(f"{np.mean(v):+.2f}" for v in totals.values()) + " |")
    print("| lowest against plain | | | | | | " + " | ".join(f"{min(np.subtract(v, totals['plain'])):+.2f}" for k, v in totals.items() if k != "plain") + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="amir-s", help="registry name or .safetensors (default: amir-s)")
    ap.add_argument("--validation", metavar="DATA", help="training data folder: the table that chose the fill fraction")
    ap.add_argument("--choice", action="store_true", help="the table that chose the share of the level chosen by neighbouring slices")
    args = ap.parse_args()

    import torch

    from amir_cli.baselines import gaussian_oracle_pet
    from amir_cli.imaging.io import Volume, read_image
    from amir_cli.metrics import slice_scores
    from amir_cli.restore import restore_volume
    from amir_cli.tasks import PET_SYNTHESIS, SCORED_LEVELS
    from amir_cli.weights import load_weights

    model = load_weights(args.weights, torch.device("cpu")).model
    if args.validation:
        return fractions_table(model, args.validation)
    if args.choice:
        from amir_cli.imaging import background

        choice_table(model)
        print("\nSlices 6 mm apart (the choice made as if background.MAX_SLICE_MM allowed it)")
        limit, background.MAX_SLICE_MM = background.MAX_SLICE_MM, 6.5
        choice_table(model, COARSE_CASES, (0.0,))
        background.MAX_SLICE_MM = limit
        return 0

    def amir(slices: np.ndarray, pixel_mm, slice_mm, sd=None, choose=False) -> np.ndarray:
        vol = Volume(np.moveaxis(slices, 0, -1).astype(np.float32), np.diag([*pixel_mm, slice_mm, 1.0]))
        return restore_volume(model, vol, PET_SYNTHESIS, background_sd=sd, choose_background=choose)[0].slices_first()

    def gain(out, lq, hq) -> float:
        return float(np.mean([slice_scores(o, h, PET_SYNTHESIS)["psnr"] - slice_scores(x, h, PET_SYNTHESIS)["psnr"]
                              for o, x, h in zip(out, lq, hq)]))

    print(f"PET with OSEM-shaped noise (simulated), {args.weights}: PSNR gain over the input, dB")
    print("| case | dose | input PSNR | noise SD in the body (SUV) | AMIR, --no-fill-pet-background | AMIR (amir restore) "
          "| AMIR, --pet-background-noise SD | gauss-oracle |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="amir-pet-background-") as tmp:
        base = build(Path(tmp)) / "PET" / "test"
        for hq_file in sorted((base / "HQ").glob("*.nii.gz")):
            hq_vol = read_image(hq_file)
            hq = spaced(hq_vol.slices_first().astype(np.float64))
            pix, slice_mm = tuple(hq_vol.inplane_spacing_mm), hq_vol.spacing_mm[hq_vol.slice_axis]
            for label, dose in SCORED_LEVELS[PET_SYNTHESIS].items():
                lq_all = read_image(base / f"LQ_{label}" / hq_file.name).slices_first().astype(np.float64)
                lq = spaced(lq_all)
                sd = body_noise_sd(lq, hq, dose)
                oracle = gaussian_oracle_pet(lq, hq, pix)[1]
                chosen = spaced(amir(lq_all, pix, slice_mm, choose=True))  # the whole volume: the choice reads neighbouring slices
                psnr_in = float(np.mean([slice_scores(x, h, PET_SYNTHESIS)["psnr"] for x, h in zip(lq, hq)]))
                print(f"| {hq_file.name.removesuffix('.nii.gz')} | {label} | {psnr_in:.2f} | {sd:.3f} | {gain(amir(lq, pix, slice_mm), lq, hq):+.2f} "
                      f"| {gain(chosen, lq, hq):+.2f} | {gain(amir(lq, pix, slice_mm, sd), lq, hq):+.2f} | {gain(oracle, lq, hq):+.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
