"""`amir restore` end to end on a CT volume: process seconds, restore seconds, network seconds, peak memory.

Builds the volume from ../shared/data/ct/cranium_ct.nii.gz (256x256x108 HU): --slices slices from its
middle (repeated when more are asked), --size pixels square (centre crop below 256, nearest-neighbour
enlargement above: 512 gives a 512x512 CT like a scanner's), uncompressed .nii. Uses the shipped
default weights (else random amir-s ones in a temp .safetensors), runs `python -m amir_cli restore`
in a subprocess once per precision and engine (--repeats times, the median kept) and prints a
table: total seconds (process start to exit), restore seconds, network-only seconds, total over
network, slices per second, and the process's peak resident memory beside the volume's float32 size.
Rows are appended as JSON lines, with the device named, to benchmarks/results/restore_speed.jsonl
(--out).

    python benchmarks/restore_speed.py                                     # CPU: 100 x 256 x 256, fp32 (about 1 minute)
    python benchmarks/restore_speed.py --size 1024 --slices 12 --engines plain fused   # memory of large slices
    python benchmarks/restore_speed.py --device cuda --size 512 --slices 300 --precisions fp32 bf16 --batch-size 16
    python benchmarks/restore_speed.py --quick                             # 8 x 64 x 64: checks the script
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from amir_cli.device import ENGINES

DATA = Path(os.environ.get("AMIR_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
if not (DATA / "ct").is_dir():
    DATA = Path("/work/shared/data")
RESULTS = Path(__file__).resolve().parent / "results"


def build_volume(path: Path, slices: int = 100, size: int = 256) -> None:
    img = nib.load(str(DATA / "ct" / "cranium_ct.nii.gz"))
    hu = np.asarray(img.dataobj, dtype=np.int16)
    zoom = max(1, -(-size // max(hu.shape[:2])))  # nearest-neighbour enlargement to reach the size
    if zoom > 1:
        hu = hu.repeat(zoom, 0).repeat(zoom, 1)
    i0, j0 = max(0, (hu.shape[0] - size) // 2), max(0, (hu.shape[1] - size) // 2)
    k0 = max(0, (hu.shape[2] - slices) // 2)
    src = hu[i0 : i0 + size, j0 : j0 + size, k0 : k0 + slices]
    reps = -(-slices // src.shape[2])
    src = np.concatenate([src] * reps, axis=2)[..., :slices]
    out = np.full((size, size, slices), -1024, dtype=np.int16)
    out[: src.shape[0], : src.shape[1]] = src
    affine = img.affine.copy()
    affine[:3, :2] /= zoom
    affine[:3, 3] = (img.affine @ [i0 / zoom, j0 / zoom, k0, 1])[:3]
    hdr = img.header.copy()
    hdr.set_data_dtype(np.int16)
    nib.save(nib.Nifti1Image(out, affine, header=hdr), str(path))


def weights_arg(tmp: Path) -> tuple[str, str]:
    """The shipped default weights, else random amir-s ones saved in tmp."""
    from amir_cli import weights

    name = weights.default_name()
    if name is not None:
        return name, f"shipped {name}"
    import torch
    from safetensors.torch import save_file

    from amir_cli.network import AMIR, get_config

    torch.manual_seed(0)
    path = tmp / "amir-s-random.safetensors"
    save_file(AMIR(get_config("amir-s")).state_dict(), str(path))
    return str(path), "random amir-s"


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.get_device_name()
    return f"CPU, {torch.get_num_threads()} threads"


def restore_once(src: Path, out: Path, weights: str, args, precision: str, engine: str) -> tuple[float, float, dict]:
    """(process seconds, peak resident GiB of that process alone, report) of one `amir restore`."""
    cmd = [sys.executable, "-m", "amir_cli", "restore", str(src), "-o", str(out), "--task", "ct-denoise",
           "--weights", weights, "--device", args.device, "--precision", precision, "--engine", engine, "--quiet",
           "--overwrite", *(["--batch-size", str(args.batch_size)] if args.batch_size else [])]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak memory
        total = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            sys.exit(f"amir restore failed ({proc.returncode}): {err.read().decode(errors='replace').strip()}")
    return total, usage.ru_maxrss / 2**20, json.loads(Path(str(out) + ".json").read_text())  # ru_maxrss: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, auto ...")
    ap.add_argument("--batch-size", type=int, default=None, help="default: amir restore's (1 on the CPU)")
    ap.add_argument("--engines", nargs="+", default=["auto"], choices=ENGINES)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each case; the median total is kept")
    ap.add_argument("--precisions", "--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--quick", action="store_true", help="8 slices of 64x64: checks the script")
    ap.add_argument("--out", default=str(RESULTS / "restore_speed.jsonl"), help="JSON lines appended here ('' for none)")
    args = ap.parse_args()
    if args.quick:
        args.slices, args.size, args.repeats = 8, 64, 1
    name = device_name(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        src = tmp / "ct.nii"
        build_volume(src, args.slices, args.size)
        weights, label = weights_arg(tmp)
        volume_gb = args.slices * args.size**2 * 4 / 2**30
        for precision in args.precisions:
            for engine in args.engines:
                runs = sorted((restore_once(src, tmp / "ct_amir.nii", weights, args, precision, engine)
                               for _ in range(args.repeats)), key=lambda r: r[0])
                total, peak, report = runs[len(runs) // 2]
                rows.append({"device": name, "volume": f"{args.slices}x{args.size}x{args.size} CT (cranium_ct, HU)",
                             "weights": label, "run_on": report["device"], "precision": report["precision"],
                             "engine": report["engine"], "batch": report["batch_size"], "total_s": round(total, 2),
                             "restore_s": round(report["seconds"], 2), "network_s": round(report["model_seconds"], 2),
                             "total_over_network": round(total / report["model_seconds"], 3),
                             "slices_per_s": round(args.slices / total, 2), "peak_gb": round(peak, 3),
                             "volume_float32_gb": round(volume_gb, 3), "repeats": args.repeats,
                             "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
                print(json.dumps(rows[-1]), flush=True)
    keys = ["precision", "engine", "batch", "total_s", "restore_s", "network_s", "total_over_network", "slices_per_s",
            "peak_gb", "volume_float32_gb"]
    print(f"{name}: {rows[0]['volume']}, weights {rows[0]['weights']}, run on {rows[0]['run_on']}")
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        print(f"rows appended to {args.out}")


if __name__ == "__main__":
    main()
