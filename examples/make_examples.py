"""Build the shipped examples from the project's development data (../shared/data by default).

Each example is a few slices of a real scan (PET: simulated activity, no real PET is available)
with a simulated low-quality version beside its high-quality reference. The slices lie inside the
blocks that training holds out for validation (`amir_cli.training.volumes.split_slices`):

    ct_head_quarter_dose.nii.gz   + ct_head_reference.nii.gz      (int16 HU)
    mr_brain_x4.nii.gz            + mr_brain_reference.nii.gz     (float32, scanner units)
    pet_brain_quarter_dose.nii.gz + pet_brain_reference.nii.gz    (float32 SUV, simulated)

    python examples/make_examples.py [DATA_DIR]
"""
from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from amir_cli.imaging.degrade import degrade_volume
from amir_cli.imaging.phantom import load_icbm_pet

HERE = Path(__file__).resolve().parent
SEED = 2024


def save(array, affine, name, dtype):
    img = nib.Nifti1Image(np.asarray(array).astype(dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, HERE / name)


def slab(img, axis, start, count):
    """`count` slices from `start` along `axis`, moved to the last axis, and the matching affine."""
    data = np.moveaxis(np.asarray(img.dataobj, dtype=np.float32), axis, 2)[:, :, start : start + count]
    affine = img.affine.copy()
    order = [a for a in range(3) if a != axis] + [axis]
    affine[:3, :3] = affine[:3, order]
    affine[:3, 3] += img.affine[:3, axis] * start
    return data, affine


def main(data: Path) -> None:
    ct = nib.load(data / "ct" / "cranium_ct.nii.gz")
    hq, affine = slab(ct, 2, 56, 4)
    spacing = tuple(np.linalg.norm(affine[:3, :3], axis=0))
    lq = degrade_volume(hq, "ct-denoise", 0.25, slice_axis=2, spacing_mm=spacing, seed=SEED)
    save(hq, affine, "ct_head_reference.nii.gz", np.int16)
    save(np.round(lq), affine, "ct_head_quarter_dose.nii.gz", np.int16)

    mr = nib.load(data / "mr" / "colin27_t1_1mm.nii.gz")
    hq, affine = slab(mr, 2, 95, 4)
    lq = degrade_volume(hq, "mri-sr", 4, slice_axis=2, seed=SEED)
    save(hq, affine, "mr_brain_reference.nii.gz", np.float32)
    save(lq, affine, "mr_brain_x4.nii.gz", np.float32)

    suv, pet_affine = load_icbm_pet(data, np.random.default_rng(SEED))
    pet = nib.Nifti1Image(suv, pet_affine)
    hq, affine = slab(pet, 2, 98, 4)
    spacing = tuple(np.linalg.norm(affine[:3, :3], axis=0))
    lq = degrade_volume(hq, "pet-synthesis", 0.25, slice_axis=2, spacing_mm=spacing, seed=SEED)
    save(hq, affine, "pet_brain_reference.nii.gz", np.float32)
    save(lq, affine, "pet_brain_quarter_dose.nii.gz", np.float32)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent.parent / "shared" / "data")
