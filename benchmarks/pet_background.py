"""Where the network reads PET noise from: the background around the body.

The cases and low doses of ``benchmarks/pet_em_noise.py`` whose noise an OSEM reconstruction shapes
(levels ``doseD``: noise following the activity, background almost noise-free), restored three ways:
as they are; with their background (smoothed activity below 1% of its peak) filled with noise as
SPEC §3 spreads it (Gaussian-correlated, the correlation and level of the case's own noise in the
body, clipped at 0, measured against the reference, which no user has) and given back after the
network; and by the Gaussian post-filter chosen with the reference (gauss-oracle). PSNR gain over
the input on 8 slices of each case (docs/protocol.md).

    python benchmarks/pet_background.py [--weights amir-s]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from pet_em_noise import build
from quality import spaced

BODY, BACKGROUND = 0.1, 0.01  # fractions of the peak of each slice smoothed over 2 pixels
CORRELATIONS = np.geomspace(0.4, 5.0, 25)  # Gaussian correlation widths (pixels) to choose from


def correlated_noise(shape, sigma: float, rng) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return n / n.std()


def lag_one(noise: np.ndarray, mask: np.ndarray) -> float:
    """The correlation of horizontally neighbouring noise values inside ``mask``."""
    inside = mask[:, :-1] & mask[:, 1:]
    return float(np.corrcoef(noise[:, :-1][inside], noise[:, 1:][inside])[0, 1])


@functools.lru_cache(maxsize=1)
def neighbour_table() -> np.ndarray:
    """The neighbour correlation of Gaussian-correlated noise of each width in CORRELATIONS."""
    rng = np.random.default_rng(0)
    return np.array([lag_one(correlated_noise((256, 256), s, rng), np.ones((256, 256), bool)) for s in CORRELATIONS])


def filled(lq: np.ndarray, hq: np.ndarray, dose: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """(``lq`` with its background filled with noise like its body's, that background): the level is
    the low dose's whole noise in the body (the added noise over sqrt(1 - dose)), the correlation
    width the one whose neighbour correlation matches the added noise's."""
    smooth = ndimage.gaussian_filter(lq, 2.0, mode="nearest")
    body, background = smooth > BODY * smooth.max(), smooth < BACKGROUND * smooth.max()
    added = lq - hq
    level = float(added[body].std()) / np.sqrt(1.0 - dose)
    sigma = CORRELATIONS[np.argmin(np.abs(neighbour_table() - lag_one(added, body)))]
    noise = level * correlated_noise(lq.shape, sigma, rng)
    return np.where(background, np.clip(lq + noise, 0.0, None), lq), background


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="amir-s", help="registry name or .safetensors (default: amir-s)")
    args = ap.parse_args()

    import torch

    from amir_cli.baselines import gaussian_oracle_pet
    from amir_cli.imaging.io import Volume, read_image
    from amir_cli.metrics import slice_scores
    from amir_cli.restore import restore_volume
    from amir_cli.tasks import PET_SYNTHESIS, SCORED_LEVELS
    from amir_cli.weights import load_weights

    model = load_weights(args.weights, torch.device("cpu")).model

    def amir(slices: np.ndarray) -> np.ndarray:
        vol = Volume(np.moveaxis(slices, 0, -1).astype(np.float32), np.eye(4))
        return np.moveaxis(restore_volume(model, vol, PET_SYNTHESIS)[0].array, -1, 0)

    def gain(out, lq, hq) -> float:
        return float(np.mean([slice_scores(o, h, PET_SYNTHESIS)["psnr"] - slice_scores(x, h, PET_SYNTHESIS)["psnr"]
                              for o, x, h in zip(out, lq, hq)]))

    print(f"PET with OSEM-shaped noise (simulated), {args.weights}: PSNR gain over the input, dB")
    print("| case | dose | input PSNR | AMIR | AMIR, background filled | gauss-oracle |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="amir-pet-background-") as tmp:
        base = build(Path(tmp)) / "PET" / "test"
        for hq_file in sorted((base / "HQ").glob("*.nii.gz")):
            hq_vol = read_image(hq_file)
            hq = spaced(hq_vol.slices_first().astype(np.float64))
            pix = tuple(hq_vol.inplane_spacing_mm)
            for label, dose in SCORED_LEVELS[PET_SYNTHESIS].items():
                lq = spaced(read_image(base / f"LQ_{label}" / hq_file.name).slices_first().astype(np.float64))
                rng = np.random.default_rng(0)
                pairs = [filled(x, h, dose, rng) for x, h in zip(lq, hq)]
                inside = amir(np.stack([p[0] for p in pairs]))
                cued = np.where(np.stack([p[1] for p in pairs]), lq, inside)
                oracle = gaussian_oracle_pet(lq, hq, pix)[1]
                psnr_in = float(np.mean([slice_scores(x, h, PET_SYNTHESIS)["psnr"] for x, h in zip(lq, hq)]))
                print(f"| {hq_file.name.removesuffix('.nii.gz')} | {label} | {psnr_in:.2f} | {gain(amir(lq), lq, hq):+.2f} "
                      f"| {gain(cued, lq, hq):+.2f} | {gain(oracle, lq, hq):+.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
