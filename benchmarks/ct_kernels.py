"""CT on the frozen test split from softer reconstruction kernels, as clinical scans are made.

The ramp-filtered noise of SPEC §3 is sharper than any clinical kernel. Here each test CT slice and
its added noise both go through a softer kernel, the ramp apodised by a Hann window ending at
``KERNELS`` x the Nyquist frequency (``degrade.ct_soft_kernel`` for the reference,
``degrade.ct_low_dose(kernel_cutoff=...)`` for the noise), at doses 1/2 and 1/4, and `amir benchmark`
scores AMIR against the input, NLM and BM3D on 8 evenly spaced slices of each volume.

    python benchmarks/ct_kernels.py [--weights amir-s] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from quality import DEGRADE_SEED, DEV_DATA, as_float, case_name, cases_main, pixel_mm, spaced
from splits import TEST, sources

KERNELS = (1.0, 0.75, 0.5)
DOSES = {"dose1-2": 0.5, "dose1-4": 0.25}


def build(root: Path) -> Path:
    """8 slices of each test CT volume through each kernel (HQ) and their low-dose inputs (LQ_doseX), under root/CT/test."""
    from amir_cli.imaging import degrade
    from amir_cli.imaging.io import read_image, write_image
    from amir_cli.scoring import case_seed

    base = root / "CT" / "test"
    for src in sources(TEST, "ct-denoise"):
        vol = as_float(read_image(DEV_DATA / src.file))
        pix, ax = pixel_mm(vol), vol.slice_axis
        slices = spaced(np.moveaxis(vol.array, ax, 0))
        for cutoff in KERNELS:
            name = f"{case_name(src)}-kernel{cutoff:g}"
            hq = np.stack([degrade.ct_soft_kernel(s, cutoff) for s in slices])
            (base / "HQ").mkdir(parents=True, exist_ok=True)
            write_image(vol.with_array(np.moveaxis(hq, 0, ax)), base / "HQ" / f"{name}.nii.gz")
            cs = case_seed(DEGRADE_SEED, name, "ct-denoise")
            for label, dose in DOSES.items():
                lq = np.stack([degrade.ct_low_dose(s, dose, degrade.slice_rng(cs, i), pixel_mm=pix, kernel_cutoff=cutoff)
                               for i, s in enumerate(hq)])
                (base / f"LQ_{label}").mkdir(parents=True, exist_ok=True)
                write_image(vol.with_array(np.moveaxis(lq, 0, ax)), base / f"LQ_{label}" / f"{name}.nii.gz")
    return root


def main() -> int:
    return cases_main(__doc__, "ct_kernels", build, "the test split's CT through softer reconstruction kernels")


if __name__ == "__main__":
    sys.exit(main())
