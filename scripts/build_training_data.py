#!/usr/bin/env python
"""Build the `amir train` data folder of the shipped weights from ../shared/data (issue 6).

    python scripts/build_training_data.py OUT_DIR [--data ../shared/data] [--pet-volumes 3]

OUT_DIR/CT/   cranium_ct (head, 108 slices) and pancreas_ct_slice (abdomen, 1 slice), HU
OUT_DIR/MRI/  colin27_t1_1mm, icbm152_2009a_t1 (brain volumes), shoulder_mr_slice and
              abdomen_mr_slice (single slices); add --colin-05 for the 0.5 mm Colin27 brain
OUT_DIR/PET/  fdg_sim_<seed>: SIMULATED FDG-like activity (SUV, float32) from the ICBM152 tissue
              maps, lesions differing per seed (amir_cli.imaging.phantom.load_icbm_pet); README.txt

All volumes are high quality: `amir train OUT_DIR` degrades them on the fly and keeps a block of
slices of every volume (rows of a single-slice image) out of training for validation.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CT = ["ct/cranium_ct.nii.gz", "ct/pancreas_ct_slice.nii.gz"]
MRI = ["mr/colin27_t1_1mm.nii.gz", "mr/icbm152_2009a_t1.nii.gz", "mr/shoulder_mr_slice.nii.gz", "mr/abdomen_mr_slice.nii.gz"]
MRI_EXTRA = ["mr/colin27_t1_0.5mm_brain.nii.gz"]
PET_SEEDS = (11, 22, 33, 44, 55)


def build(out: Path, data: Path, pet_volumes: int = 3, colin05: bool = False, overwrite: bool = False) -> dict:
    import nibabel as nib

    from amir_cli.imaging.phantom import SIMULATED_NOTE, load_icbm_pet

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SystemExit(f"{out} is not empty (use --overwrite)")
    made = {"CT": [], "MRI": [], "PET": []}
    for folder, files in (("CT", CT), ("MRI", MRI + (MRI_EXTRA if colin05 else []))):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for rel in files:
            src = Path(data) / rel
            if not src.is_file():
                raise SystemExit(f"missing {src}")
            shutil.copyfile(src, out / folder / src.name)
            made[folder].append(src.name)
    (out / "PET").mkdir(parents=True, exist_ok=True)
    for seed in PET_SEEDS[:pet_volumes]:
        suv, affine = load_icbm_pet(data, np.random.default_rng(seed))
        img = nib.Nifti1Image(suv.astype(np.float32), affine)
        img.header.set_xyzt_units("mm")
        img.header["descrip"] = b"simulated FDG-like PET, SUV"
        name = f"fdg_sim_{seed}.nii.gz"
        nib.save(img, str(out / "PET" / name))
        made["PET"].append(name)
    (out / "PET" / "README.txt").write_text(
        f"SIMULATED DATA. {SIMULATED_NOTE}.\n"
        "Each file is FDG-like activity in SUV (float32): grey matter 8, white matter 2, scalp 0.6,\n"
        "three hot lesions (SUV 10-15, radius 4-7 mm) placed by the seed in the file name, blurred\n"
        "to 4.5 mm FWHM (amir_cli.imaging.phantom.load_icbm_pet). Not a patient scan.\n"
    )
    (out / "README.txt").write_text(
        "High-quality volumes for `amir train` (made by scripts/build_training_data.py from ../shared/data,\n"
        "see its README.md for sources and licences). CT in HU, MRI in scanner units, PET simulated (SUV).\n"
        + "".join(f"{k}/: {', '.join(v)}\n" for k, v in made.items())
    )
    return made


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder (holding ct/ and mr/)")
    ap.add_argument("--pet-volumes", type=int, default=3, choices=range(1, len(PET_SEEDS) + 1))
    ap.add_argument("--colin-05", action="store_true", help="also the 0.5 mm Colin27 brain (large)")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    t = time.time()
    made = build(a.out, a.data, a.pet_volumes, a.colin_05, a.overwrite)
    print(f"built {a.out} in {time.time() - t:.1f} s: " + "; ".join(f"{k} {len(v)}" for k, v in made.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
