"""Plain `amir restore` on zero-filled MR whose band the scanner tapered with a k-space filter.

For the MR test subjects of ``benchmarks/splits.py`` (up to 8 evenly spaced slices each, MR scaled
into the 12-bit range), the input keeps the central 1/f of each slice's k-space (f = 2, 4) on the
same grid, multiplied by a filter before the magnitude is taken: none (the paper's sharp band), a
radial Fermi filter 1 / (1 + exp((r - (1 - 2w)) / w)) of width w (r: the radius in k-space over the
band's half-width), or a separable Hamming window. Scores (SPEC §4, against the original slice): the
gain over the input of `amir restore --task mri-sr` (zero filling recognised, its band kept) and of
the network alone (``--no-detect-zero-filling``). Where the taper is recognised, the consistency
keeps only the band's central 80 % (``kspace.band_taper``); elsewhere the band as measured, taper
included.

    python benchmarks/kspace_filter.py [--weights amir-s]
"""

from __future__ import annotations

import sys

import numpy as np

from quality import cpu_weights, mr_test_slices

FILTERS = ("none", "fermi 0.02", "fermi 0.05", "fermi 0.1", "hamming")


def k_filter(shape, factor: int, kind: str) -> np.ndarray:
    """The band of ``kspace_mask`` times filter ``kind`` (centred k-space)."""
    from amir_cli.imaging.degrade import fermi_filter
    from amir_cli.imaging.kspace import band_frequencies, kspace_mask

    band = kspace_mask(shape, factor).astype(np.float64)
    if kind.startswith("fermi"):
        return fermi_filter(shape, factor, float(kind.split()[1]))
    if kind == "hamming":
        ky, kx = band_frequencies(shape, factor)
        hamming = lambda k: 0.54 + 0.46 * np.cos(np.pi * np.minimum(k, 1.0))  # noqa: E731
        return band * hamming(ky)[:, None] * hamming(kx)[None, :]
    return band


def filtered_zero_fill(image: np.ndarray, factor: int, kind: str) -> np.ndarray:
    spectrum = np.fft.fftshift(np.fft.fft2(image)) * k_filter(image.shape, factor, kind)
    return np.abs(np.fft.ifft2(np.fft.ifftshift(spectrum))).astype(np.float32)


def main() -> None:
    from amir_cli.imaging.io import Volume
    from amir_cli.metrics import volume_scores
    from amir_cli.restore import restore_volume

    loaded = cpu_weights(__doc__, "PSNR gain over the input (dB)")
    print("| factor | filter | case | input PSNR | `amir restore` | network alone | band recognised |")
    print("|---|---|---|---:|---:|---:|---|")
    for factor in (2, 4):
        for kind in FILTERS:
            for name, hq in mr_test_slices():
                lq = np.stack([filtered_zero_fill(s, factor, kind) for s in hq])
                lq_vol = Volume(np.moveaxis(lq, 0, 2), np.eye(4))
                restored, info = restore_volume(loaded.model, lq_vol, "mri-sr", detect_zero_filling=True)
                network, _ = restore_volume(loaded.model, lq_vol, "mri-sr", detect_zero_filling=False)
                psnr = {k: volume_scores(v, hq, "mri-sr", slice_axis=0)["psnr"]
                        for k, v in (("input", lq), ("restore", restored.slices_first()), ("network", network.slices_first()))}
                dc = info["data_consistency"] or {}
                found = f"x{dc['kspace_factor']}" if dc else "no"
                if dc and dc["band_kept"] < 1:
                    found += f", tapered: {dc['band_kept']:.0%} kept"
                print(f"| x{factor} | {kind} | {name} | {psnr['input']:.2f} | {psnr['restore'] - psnr['input']:+.2f} | "
                      f"{psnr['network'] - psnr['input']:+.2f} | {found} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
