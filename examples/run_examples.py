"""Restore the three shipped examples with `amir restore` and draw the README's before/after figures.

    python examples/run_examples.py [--weights NAME|PATH] [--out DIR] [--figures DIR]

Outputs, reports and figures go to examples/restored/ (not tracked). The README's figures in
examples/figures/ change only when asked: `--figures examples/figures`. (The network's float
arithmetic may differ in the last bits between machines and thread counts, which moves a few pixels
of a figure across a colour step, so a tracked figure is not redrawn on every run.)

Each example goes through the command line exactly as a user would run it (with `--reference`, so
the JSON report holds the scores); the figure shows the middle slice: input | AMIR | reference |
error map, each modality as a reader views it (PET in inverted grey to its SUV maximum, CT in the
soft-tissue window, MR scaled to the image), with the same zoomed square in every panel.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from amir_cli.figures import comparison_figure
from amir_cli.metrics import slice_scores

HERE = Path(__file__).resolve().parent
EXAMPLES = [  # (task, low-quality input, reference, extra options)
    ("ct-denoise", "ct_head_quarter_dose.nii.gz", "ct_head_reference.nii.gz", []),
    ("mri-sr", "mr_brain_x4.nii.gz", "mr_brain_reference.nii.gz", ["--kspace-factor", "4"]),  # a zero-filled image
    ("pet-synthesis", "pet_brain_quarter_dose.nii.gz", "pet_brain_reference.nii.gz", []),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--out", type=Path, default=HERE / "restored")
    ap.add_argument("--figures", type=Path, default=None, help="figure folder (default: OUT/figures)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    figures = args.figures or args.out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for task, lq_name, ref_name, extra in EXAMPLES:
        out = args.out / lq_name.replace(".nii.gz", "_amir.nii.gz")
        cmd = [sys.executable, "-m", "amir_cli", "restore", str(HERE / lq_name), "--task", task, "-o", str(out),
               "--reference", str(HERE / ref_name), "--overwrite", "--quiet", *extra]
        if args.weights:
            cmd += ["--weights", args.weights]
        subprocess.run(cmd, check=True)
        report = json.loads(Path(str(out) + ".json").read_text())
        lq, amir, ref = (np.asarray(nib.load(p).dataobj, dtype=np.float32) for p in (HERE / lq_name, out, HERE / ref_name))
        k = lq.shape[2] // 2
        panels = [(name, img[:, :, k], slice_scores(img[:, :, k], ref[:, :, k], task)) for name, img in (("input", lq), ("amir", amir))]
        show = {"task": task, "reference": ref[:, :, k], "panels": panels, "case": lq_name, "slice": k,
                "level": "", "pixel_mm": nib.load(HERE / lq_name).header.get_zooms()[:2]}
        comparison_figure(show, figures / f"{task}.png")
        print(f"{task:14s} {lq_name:32s} report: {json.dumps(report.get('metrics', {}))}")


if __name__ == "__main__":
    main()
