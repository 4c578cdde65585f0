"""`amir restore` end to end on a 100-slice 256x256 CT volume with the amir-s configuration.

Builds the volume from ../shared/data/ct/cranium_ct.nii.gz (256x256x108 HU; slices 4..103), uses the
shipped default weights when they are amir-s, else random amir-s weights in a temp .safetensors,
runs `python -m amir_cli restore` in a subprocess and prints a table: total seconds (process start
to exit), restore seconds, model-only seconds and share, slices per second. Target: < 40 s on CPU.

    python benchmarks/restore_speed.py [--device cpu] [--batch-size 4] [--precision fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

DATA = Path(os.environ.get("AMIR_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
if not (DATA / "ct").is_dir():
    DATA = Path("/work/shared/data")


def build_volume(path: Path, slices: int = 100, size: int = 256) -> None:
    img = nib.load(str(DATA / "ct" / "cranium_ct.nii.gz"))
    hu = np.asarray(img.dataobj, dtype=np.int16)
    out = np.full((size, size, slices), -1024, dtype=np.int16)
    k0 = max(0, (hu.shape[2] - slices) // 2)
    src = hu[:size, :size, k0 : k0 + slices]
    out[: src.shape[0], : src.shape[1], : src.shape[2]] = src
    affine = img.affine.copy()
    affine[:3, 3] = (img.affine @ [0, 0, k0, 1])[:3]
    hdr = img.header.copy()
    hdr.set_data_dtype(np.int16)
    nib.save(nib.Nifti1Image(out, affine, header=hdr), str(path))


def weights_arg(tmp: Path) -> tuple[str, str]:
    from amir_cli import weights

    name = weights.default_name()
    if name is not None:
        entry = weights.find(name)
        from amir_cli.network import AmirConfig, get_config

        if entry.info.get("config") and AmirConfig.from_dict(entry.info["config"]) == get_config("amir-s"):
            return name, f"shipped {name}"
    import torch
    from safetensors.torch import save_file

    from amir_cli.network import AMIR, get_config

    torch.manual_seed(0)
    path = tmp / "amir-s-random.safetensors"
    save_file(AMIR(get_config("amir-s")).state_dict(), str(path))
    return str(path), "random amir-s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--slices", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        src = tmp / "ct100.nii.gz"
        build_volume(src, args.slices)
        weights, label = weights_arg(tmp)
        out = tmp / "ct100_amir.nii.gz"
        cmd = [sys.executable, "-m", "amir_cli", "restore", str(src), "-o", str(out), "--task", "ct-denoise",
               "--weights", weights, "--device", args.device, "--batch-size", str(args.batch_size),
               "--precision", args.precision, "--quiet"]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        total = time.perf_counter() - t0
        if res.returncode != 0:
            sys.exit(f"amir restore failed ({res.returncode}): {res.stderr.strip()}")
        report = json.loads(Path(str(out) + ".json").read_text())
    import torch

    rows = [
        ("volume", f"{args.slices} x 256 x 256 CT (cranium_ct, HU)"),
        ("weights", label),
        ("device / precision / batch", f"{report['device']} / {report['precision']} / {args.batch_size}"),
        ("cpu threads", str(torch.get_num_threads())),
        ("total seconds (process)", f"{total:.1f}"),
        ("restore seconds (in process)", f"{report['seconds']:.1f}"),
        ("model-only seconds", f"{report['model_seconds']:.1f}"),
        ("model-only share of total", f"{100 * report['model_seconds'] / total:.0f}%"),
        ("slices per second (total)", f"{args.slices / total:.2f}"),
        ("target", "< 40 s total: " + ("met" if total < 40 else "NOT met")),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
