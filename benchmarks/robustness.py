"""Robustness of the shipped weights to conditions outside their training, through `amir benchmark`.

The project's rule for real scans from other scanners is that the network never makes an image
worse than its input and beats the classical baseline on CT. This script scores cases built to lie
outside what training saw, and prints each case's gain over the input (and over the baseline):

* MR: ``colin27_t1_0.5mm_brain``, a file never used in training: 0.5 mm pixels, skull-stripped,
  8-bit values (0..130, left unscaled so that the per-volume scaling of `amir restore` is tested);
  12 axial slices across the brain; k-space truncation x2 and x4.
* CT (HU): the held-out head CT slices as they are, and resampled to 0.64 mm and 1.44 mm pixels
  (a smaller and a larger field of view: other noise texture and anatomy scale); quarter dose and
  1/20 dose (training stopped at 1/10).
* PET (SUV, simulated): a new FDG-like activity (seed 4242) at 1/20 dose (training stopped at 1/12)
  and half dose.

    python benchmarks/robustness.py --weights amir-s [--out benchmarks/results/robustness-amir-s]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from quality import SHARED_DATA, add_case, as_float, every_slice, held_out

ROOT = Path(__file__).resolve().parents[1]
SEED = 777  # degradation noise; distinct from quality.py's
PET_SEED = 4242
LEVELS = {"ct-denoise": {"dose1-4": 0.25, "dose1-20": 0.05}, "mri-sr": {"x2": 2, "x4": 4}, "pet-synthesis": {"dose1-20": 0.05, "dose1-2": 0.5}}
CT_ZOOMS = {"cranium_ct": 1.0, "cranium_ct_0.64mm": 1.5, "cranium_ct_1.44mm": 2 / 3}


def build(root: Path, data_dir: Path = SHARED_DATA) -> Path:
    from amir_cli.imaging import phantom
    from amir_cli.imaging.io import Volume, read_image

    def part(vol, index, zoom=1.0):  # the slices `index` of vol, resampled in-plane by `zoom`
        ax = vol.slice_axis
        stack = np.stack([ndimage.zoom(s, zoom, order=3, mode="nearest") if zoom != 1 else s for s in np.moveaxis(vol.array, ax, 0)[index]])
        affine = vol.affine.copy()
        affine[:3, [a for a in range(3) if a != ax]] /= zoom
        return as_float(vol.with_array(np.moveaxis(stack, 0, ax), affine))

    def write_case(task, name, hq):
        add_case(root, task, name, hq, SEED, LEVELS[task], select=every_slice)

    mr = read_image(data_dir / "mr" / "colin27_t1_0.5mm_brain.nii.gz")
    n = mr.shape[mr.slice_axis]
    write_case("mri-sr", "colin27_t1_0.5mm_brain", part(mr, (np.linspace(0.25, 0.75, 12) * (n - 1)).round().astype(int)))

    ct = read_image(data_dir / "ct" / "cranium_ct.nii.gz")
    idx, _ = held_out(np.moveaxis(ct.array, ct.slice_axis, 0))
    for name, zoom in CT_ZOOMS.items():
        write_case("ct-denoise", name, part(ct, idx, zoom))

    suv, affine = phantom.load_icbm_pet(data_dir, np.random.default_rng(PET_SEED))
    pet = Volume(suv, affine, modality="PT", unit="SUV")
    idx, _ = held_out(np.moveaxis(pet.array, pet.slice_axis, 0))
    write_case("pet-synthesis", "icbm152_fdg_seed4242", part(pet, idx))
    return root


def gains(case_rows) -> list[dict]:
    """Per case and level: PSNR of the input, the baseline and AMIR, from the benchmark's case rows."""
    table: dict[tuple, dict] = {}
    for r in case_rows:
        table.setdefault((r["task"], r["case"], r["level"]), {})[r["method"]] = float(r["psnr"])
    rows = []
    for (task, case, level), by in table.items():
        base = next((v for m, v in by.items() if m != "input" and not m.startswith("amir")), None)  # not amir-tta either
        rows.append({"task": task, "case": case, "level": level, "input": by["input"], "amir": by["amir"],
                     "gain": by["amir"] - by["input"], "over_baseline": None if base is None else by["amir"] - base})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="registry name or .safetensors path")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/robustness-<weights>)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    from amir_cli.benchmark import run_benchmark

    out = args.out or ROOT / "benchmarks" / "results" / f"robustness-{Path(args.weights).stem}"
    with tempfile.TemporaryDirectory(prefix="amir-robust-") as tmp:
        data = build(Path(tmp) / "data")
        result = run_benchmark(data, out, weights=args.weights, device=args.device, batch_size=2, max_slices=12,
                               data_label="conditions outside training (benchmarks/robustness.py)")
    rows = gains(result.rows)
    print("| task | case | level | input PSNR | AMIR PSNR | gain over input | gain over baseline |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        ob = "" if r["over_baseline"] is None else f"{r['over_baseline']:+.2f}"
        print(f"| {r['task']} | {r['case']} | {r['level']} | {r['input']:.2f} | {r['amir']:.2f} | {r['gain']:+.2f} | {ob} |")
    worse = [f"{r['case']} {r['level']}" for r in rows if r["gain"] < 0]
    print("\nworse than the input: " + (", ".join(worse) if worse else "none"))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
