"""Where the network reads PET noise from: the background around the body.

The cases and low doses of ``benchmarks/pet_em_noise.py`` whose noise an OSEM reconstruction shapes
(levels ``doseD``: noise following the activity, background almost noise-free), restored as they
are and with `amir restore --pet-background-noise SD` (the background filled with noise as
filtered back-projection spreads it, ``background.FILL_FRACTION`` of SD, then given back), against the Gaussian
post-filter chosen with the reference (gauss-oracle). SD is the low dose's whole noise in the body:
its RMS difference from the reference over sqrt(1 - dose) (a user measures it in a uniform region).
PSNR gain over the input on 8 slices of each case (docs/protocol.md).

    python benchmarks/pet_background.py [--weights amir-s]

``--validation DATA`` instead prints the table that chose ``background.FILL_FRACTION`` (the filled
noise's level over the SD given): the validation subjects' OSEM-shaped PET rows of
``benchmarks/validation.py --em``, each slice restored with SD from its own reference, the noise
filled at each fraction tried.
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="amir-s", help="registry name or .safetensors (default: amir-s)")
    ap.add_argument("--validation", metavar="DATA", help="training data folder: the table that chose the fill fraction")
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

    def amir(slices: np.ndarray, pixel_mm, sd=None) -> np.ndarray:
        vol = Volume(np.moveaxis(slices, 0, -1).astype(np.float32), np.diag([*pixel_mm, 1.0, 1.0]))
        return np.moveaxis(restore_volume(model, vol, PET_SYNTHESIS, background_sd=sd)[0].array, -1, 0)

    def gain(out, lq, hq) -> float:
        return float(np.mean([slice_scores(o, h, PET_SYNTHESIS)["psnr"] - slice_scores(x, h, PET_SYNTHESIS)["psnr"]
                              for o, x, h in zip(out, lq, hq)]))

    print(f"PET with OSEM-shaped noise (simulated), {args.weights}: PSNR gain over the input, dB")
    print("| case | dose | input PSNR | noise SD in the body (SUV) | AMIR | AMIR, --pet-background-noise SD | gauss-oracle |")
    print("|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="amir-pet-background-") as tmp:
        base = build(Path(tmp)) / "PET" / "test"
        for hq_file in sorted((base / "HQ").glob("*.nii.gz")):
            hq_vol = read_image(hq_file)
            hq = spaced(hq_vol.slices_first().astype(np.float64))
            pix = tuple(hq_vol.inplane_spacing_mm)
            for label, dose in SCORED_LEVELS[PET_SYNTHESIS].items():
                lq = spaced(read_image(base / f"LQ_{label}" / hq_file.name).slices_first().astype(np.float64))
                sd = body_noise_sd(lq, hq, dose)
                oracle = gaussian_oracle_pet(lq, hq, pix)[1]
                psnr_in = float(np.mean([slice_scores(x, h, PET_SYNTHESIS)["psnr"] for x, h in zip(lq, hq)]))
                print(f"| {hq_file.name.removesuffix('.nii.gz')} | {label} | {psnr_in:.2f} | {sd:.3f} | {gain(amir(lq, pix), lq, hq):+.2f} "
                      f"| {gain(amir(lq, pix, sd), lq, hq):+.2f} | {gain(oracle, lq, hq):+.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
