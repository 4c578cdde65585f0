"""MR restore time on the CPU with the data consistency in the network's thread (the default) or
beside it in the worker thread, as `amir restore` ran it before.

Restores --slices zero-filled (x4) slices of the shipped MR example (181x217, repeated) with the
shipped weights and the default cascade (recognised zero filling, the passes of x4), at each
--batch-sizes, the two placements timed in turns (--repeats rounds; medians), and prints seconds
per slice and their ratio.

    python benchmarks/mr_restore_speed.py [--slices 8] [--batch-sizes 1 4] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from amir_cli.imaging.degrade import mri_truncate
from amir_cli.imaging.volume import Volume
from amir_cli.restore import _SliceJob, restore_volume
from amir_cli.tasks import MR_PASSES
from amir_cli.weights import load_weights

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mr_brain_reference.nii.gz"


def zero_filled_volume(slices: int) -> Volume:
    img = nib.load(str(EXAMPLE))
    ref = np.asarray(img.dataobj, np.float32)
    out = np.stack([mri_truncate(ref[:, :, k % ref.shape[2]], 4) for k in range(slices)], axis=2)
    return Volume(out, img.affine)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_weights("amir-s", torch.device("cpu")).model
    volume = zero_filled_volume(args.slices)
    inline = _SliceJob.finish_overlaps

    def seconds(batch_size: int, beside: bool) -> float:
        _SliceJob.finish_overlaps = property(lambda job: True) if beside else inline
        try:
            t = time.perf_counter()
            _, info = restore_volume(model, volume, "mri-sr", detect_zero_filling=True, batch_size=batch_size)
            assert info["data_consistency"]["factor_from"] == "detected"
            return (time.perf_counter() - t) / args.slices
        finally:
            _SliceJob.finish_overlaps = inline

    print(f"CPU, {args.threads} threads; {args.slices} zero-filled x4 MR slices of {volume.array.shape[0]}x"
          f"{volume.array.shape[1]}, {MR_PASSES[4]} passes; medians of {args.repeats}")
    print("| batch | data consistency in the network's thread, s/slice | beside it, s/slice | speed-up |")
    print("|---:|---:|---:|---:|")
    for b in args.batch_sizes:
        seconds(b, False)  # warm-up: kernels, FFT plans
        times = {False: [], True: []}
        for _ in range(args.repeats):
            for beside in (False, True):
                times[beside].append(seconds(b, beside))
        own, beside = (float(np.median(times[k])) for k in (False, True))
        print(f"| {b} | {own:.3f} | {beside:.3f} | {beside / own:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
