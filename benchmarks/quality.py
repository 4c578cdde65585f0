"""Quality benchmark on held-out real data: builds the test set from ../shared/data and runs `amir benchmark`.

Test set (paired layout ``DATA/{CT,MRI,PET}/test/{HQ,LQ_<level>}/``), taken only from the parts of
each volume that `amir train` holds out (``amir_cli.training.data.split_slices``: a block of 10% of
the slices at 55% of the slice axis; a single-slice image keeps its bottom 20% of rows out,
``split_rows``):

* CT (HU): ``cranium_ct`` (head) and ``pancreas_ct_slice`` (abdomen); quarter dose (0.25).
* MR: ``colin27_t1_1mm``, ``icbm152_2009a_t1``, ``shoulder_mr_slice``, ``abdomen_mr_slice``, each
  scaled into the 12-bit training range (x ``mr_scale_factor`` of the whole volume, so that the
  §4 window [0, 4095] means what it means for the paper's data); k-space truncation x2 and x4.
* PET (SUV): simulated FDG-like activity from the ICBM152 tissue maps (``phantom.load_icbm_pet``,
  seed 7919, not the training seed); 1/4 and 1/12 dose.

CT and PET low-quality images are made by the SPEC §3 degradations of whole slices (so their noise
comes from the projection of the full cross-section) and then cropped like the references. MR
held-out rows are truncated in their own k-space: a zero-filled image is one whose k-space band
holds all of it, which rows cut from a larger zero-filled slice are not (and the truncation of the
whole slice would blur rows used in training into the test input). The level label ``x2``/``x4``
tells `amir benchmark` the k-space factor (``amir restore --kspace-factor``).

    python benchmarks/quality.py --weights amir-s --tta --out benchmarks/results/amir-s
    python benchmarks/quality.py --weights /tmp/random_tiny.safetensors --out /tmp/bench --max-slices 2

Prints the Markdown table; the default run (``--max-slices 8``) takes about 3 minutes on 2 CPU cores with
``amir-s``, also with ``--tta`` (which adds the x8 self-ensemble as method ``amir-tta``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AMIR_SHARED", ROOT.parent / "shared")) / "data"
PET_SEED = 7919  # the PET ground truth's lesions; distinct from any training seed
DEGRADE_SEED = 20240  # degradation noise of the test inputs

CT_CASES = {"cranium_ct": "ct/cranium_ct.nii.gz", "pancreas_ct": "ct/pancreas_ct_slice.nii.gz"}
MR_CASES = {
    "colin27_t1": "mr/colin27_t1_1mm.nii.gz",
    "icbm152_t1": "mr/icbm152_2009a_t1.nii.gz",
    "shoulder_mr": "mr/shoulder_mr_slice.nii.gz",
    "abdomen_mr": "mr/abdomen_mr_slice.nii.gz",
}
LEVELS = {"ct-denoise": {"dose1-4": 0.25}, "mri-sr": {"x2": 2, "x4": 4}, "pet-synthesis": {"dose1-4": 0.25, "dose1-12": 1 / 12}}
FOLDER = {"ct-denoise": "CT", "mri-sr": "MRI", "pet-synthesis": "PET"}


def held_out(vol_slices: np.ndarray):
    """(slice indices, row range) of the held-out part, exactly as `amir train` holds it out."""
    from amir_cli.training.data import split_rows, split_slices

    s, h, _ = vol_slices.shape
    if s == 1:
        _, (a, b) = split_rows(h)
        return np.arange(1), (a, b)
    _, val = split_slices(s)
    return val, (0, h)


def every_slice(vol_slices: np.ndarray):
    """All slices and rows: for test volumes that are wholly outside training."""
    return np.arange(len(vol_slices)), (0, vol_slices.shape[1])


def as_float(vol):
    """The volume, to be written as float32: LQ noise unrounded, scaled MR not clipped to uint8."""
    vol.source_dtype = np.dtype(np.float32)
    vol.meta["output_dtype"] = np.dtype(np.float32)
    return vol


def add_case(root: Path, task: str, name: str, hq_vol, seed: int, levels: dict | None = None, select=held_out) -> int:
    """Write the part of ``hq_vol`` that ``select`` picks (default: the held-out part) and its
    degraded versions at ``levels`` (label -> level; default: :data:`LEVELS`); returns slices written."""
    from amir_cli.benchmark import case_seed
    from amir_cli.imaging import degrade
    from amir_cli.imaging.io import write_image

    ax = hq_vol.slice_axis
    slices = np.moveaxis(hq_vol.array, ax, 0)
    idx, (a, b) = select(slices)
    pix = float(np.mean([s for i, s in enumerate(hq_vol.spacing_mm) if i != ax]))

    def to_volume(stack):  # held-out slices (and rows) back into the file's axis order
        return hq_vol.with_array(np.moveaxis(stack, 0, ax))

    def low_quality(i, level):
        rng = degrade.slice_rng(cs, int(i))
        if task == "mri-sr":  # zero filling belongs to the image as reconstructed: the held-out rows' own k-space
            return degrade.degrade_slice(slices[i][a:b], task, level, rng, pixel_mm=pix)
        return degrade.degrade_slice(slices[i], task, level, rng, pixel_mm=pix)[a:b]

    base = root / FOLDER[task] / "test"
    (base / "HQ").mkdir(parents=True, exist_ok=True)
    write_image(to_volume(slices[idx][:, a:b]), base / "HQ" / f"{name}.nii.gz")
    cs = case_seed(seed, name, task)
    for label, level in (levels or LEVELS[task]).items():
        lq = np.stack([low_quality(i, level) for i in idx])
        (base / f"LQ_{label}").mkdir(parents=True, exist_ok=True)
        write_image(to_volume(lq), base / f"LQ_{label}" / f"{name}.nii.gz")
    return len(idx)


def build_test_data(root: Path, data_dir: Path = SHARED_DATA, seed: int = DEGRADE_SEED) -> Path:
    from amir_cli.imaging import intensity, phantom
    from amir_cli.imaging.io import Volume, read_image

    for name, rel in CT_CASES.items():
        add_case(root, "ct-denoise", name, as_float(read_image(data_dir / rel)), seed)
    for name, rel in MR_CASES.items():
        vol = read_image(data_dir / rel)
        add_case(root, "mri-sr", name, as_float(vol.with_array(vol.array * intensity.mr_scale_factor(vol.array))), seed)
    suv, affine = phantom.load_icbm_pet(data_dir, np.random.default_rng(PET_SEED))
    add_case(root, "pet-synthesis", "icbm152_fdg_simulated", Volume(suv, affine, modality="PT", unit="SUV"), seed)
    return root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="registry name or .safetensors path")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/<weights name>)")
    ap.add_argument("--data", type=Path, default=None, help="where to build the test data (default: a temporary folder)")
    ap.add_argument("--max-slices", type=int, default=8, help="slices scored per case (0: all held-out slices)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--tta", action="store_true", help="also score the x8 self-ensemble (amir-tta)")
    ap.add_argument("--no-data-consistency", action="store_true", help="MR: score the network alone (no --kspace-factor)")
    args = ap.parse_args(argv)

    from amir_cli.benchmark import run_benchmark
    from amir_cli.imaging.phantom import SIMULATED_NOTE

    out = args.out or ROOT / "benchmarks" / "results" / Path(args.weights).stem
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="amir-quality-") as tmp:
        data = args.data or Path(tmp) / "test_data"
        build_test_data(data)
        t1 = time.perf_counter()
        print(f"test data built in {t1 - t0:.0f} s: {data}", file=sys.stderr)

        def progress(done, total, label):
            print(f"[{done}/{total}] {label}", file=sys.stderr)

        result = run_benchmark(
            data, out, weights=args.weights, device=args.device, batch_size=args.batch_size,
            max_slices=args.max_slices or None, tta=args.tta, progress=progress,
            data_consistency=not args.no_data_consistency,
            data_label="shared/data held-out slices (benchmarks/quality.py)",
            notes=[
                f"{SIMULATED_NOTE} (seed {PET_SEED}), blurred to 4.5 mm FWHM, in SUV",
                (
                    "test data: the slices (single-slice images: the bottom 20% of rows) that `amir train` holds "
                    "out of each volume in shared/data, built by benchmarks/quality.py"
                ),
                "MR volumes scaled into the 12-bit range by their robust scale factor (P99.5 of the foreground -> 3000)",
            ],
        )
    print((out / "summary.md").read_text())
    print(f"total {time.perf_counter() - t0:.0f} s; results in {out}", file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
