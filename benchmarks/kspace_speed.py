"""Cost of the MR data consistency of `amir restore --kspace-factor` against the network's, per slice.

Times, in one run, for each slice size: the amir-s network on a batch of zero-filled MR slices
(random amir-s weights: the cost does not depend on their values) and
``kspace.data_consistency`` on the same batch (``DC_ITERATIONS`` iterations); medians of
``--repeats`` runs, seconds per slice.

    python benchmarks/kspace_speed.py [--device cpu] [--batch-size 4] [--repeats 5]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from network_speed import median_seconds

from amir_cli.device import pick_device
from amir_cli.imaging.degrade import mri_truncate
from amir_cli.imaging.kspace import DC_ITERATIONS, data_consistency
from amir_cli.network import AMIR, get_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    model = AMIR(get_config("amir-s")).eval().to(device)
    rng = np.random.default_rng(0)
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, {DC_ITERATIONS} iterations")
    print("| slice | network s/slice | data consistency s/slice | ratio |")
    print("|---|---:|---:|---:|")
    for size in (256, 512):
        hq = rng.uniform(0, 3000, (args.batch_size, size, size)).astype(np.float32)
        lq = np.stack([mri_truncate(s, 2) for s in hq])
        x = torch.from_numpy(lq[:, None] / 4095).to(device)

        def network():
            with torch.inference_mode():
                model(x)

        net = median_seconds(network, args.repeats) / args.batch_size
        dc = median_seconds(lambda: data_consistency(lq, lq, 2, device=device), args.repeats) / args.batch_size
        print(f"| {size}x{size} | {net:.3f} | {dc:.3f} | {dc / net:.2f} |")


if __name__ == "__main__":
    main()
