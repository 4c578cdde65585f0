"""`amir restore --scale` on the MR test split, with and without its k-space data consistency.

For the MR test subjects of ``benchmarks/splits.py`` (up to 8 evenly spaced slices each, MR scaled
into the 12-bit range, each slice cropped to a multiple of the scale), the coarse input is the
central 1/s of each slice's k-space on an s-times
coarser grid (``kspace.kspace_downsample``: what a scanner reconstructs from that band). Scores
(SPEC §4, on the fine grid, against the original slice): the k-space zero-filled upsampling of the
input (``input``), bicubic interpolation, the network alone (``--no-data-consistency``) and
`amir restore --scale` (the network, then data consistency with the coarse input).

    python benchmarks/scale_consistency.py [--weights amir-s]
"""

from __future__ import annotations

import sys

import numpy as np

from quality import cpu_weights, mr_test_slices


def main() -> None:
    from amir_cli.baselines import bicubic_upsample
    from amir_cli.imaging.io import Volume
    from amir_cli.imaging.kspace import kspace_downsample, kspace_upsample
    from amir_cli.metrics import volume_scores
    from amir_cli.restore import restore_volume

    loaded = cpu_weights(__doc__, "PSNR gain over the zero-filled input (dB)")
    print("| scale | case | input PSNR | bicubic | network alone | `--scale` (data consistency) |")
    print("|---|---|---:|---:|---:|---:|")
    for scale in (2, 4):
        gains = []
        for name, slices in mr_test_slices():
            h, w = slices.shape[1] // scale * scale, slices.shape[2] // scale * scale
            hq = slices[:, :h, :w].astype(np.float32)
            lq = np.stack([kspace_downsample(s, scale) for s in hq])
            lq_vol = Volume(np.moveaxis(lq, 0, 2), np.eye(4))
            methods = {
                "input": np.stack([kspace_upsample(s, scale) for s in lq]),
                "bicubic": bicubic_upsample(lq, scale),
            }
            for label, dc in (("network", False), ("dc", True)):
                out, _ = restore_volume(loaded.model, lq_vol, "mri-sr", scale=scale, data_consistency=dc)
                methods[label] = np.moveaxis(out.array, 2, 0)
            psnr = {k: volume_scores(v, hq, "mri-sr", slice_axis=0)["psnr"] for k, v in methods.items()}
            gain = {k: psnr[k] - psnr["input"] for k in ("bicubic", "network", "dc")}
            gains.append(gain)
            print(f"| x{scale} | {name} | {psnr['input']:.2f} | {gain['bicubic']:+.2f} | {gain['network']:+.2f} | {gain['dc']:+.2f} |")
        mean = {k: np.mean([g[k] for g in gains]) for k in gains[0]}
        print(f"| x{scale} | mean | | {mean['bicubic']:+.2f} | {mean['network']:+.2f} | {mean['dc']:+.2f} |")


if __name__ == "__main__":
    sys.exit(main())
