"""How often `amir restore` recognises zero filling, and how often it claims it where there is none.

For the MR volumes of a training-data folder (``scripts/build_training_data.py DATA``: the training and
validation subjects, never the test split), up to 16 evenly spaced slices each are given as they are ("native") and
zero-filled: the central 1/f of each slice's k-space kept (f = 2, 4) after complex Gaussian noise was
added in k-space (measured with the band), as int16 (noise 1 % of the 99th percentile) or float (3 %),
and x2 and x4 bands tapered by a Fermi filter of width 0.05 or a Hamming window (``benchmarks/kspace_filter.py``'s
filters; float, 3 % noise). The detector
(:func:`amir_cli.imaging.kspace.zero_filled_factor`) sees each volume whole (the spectra of its slices
averaged, as `amir restore` does) and each of 6 of its slices alone (a single-slice input). Rows: how
many it calls not zero-filled, x2 and x4, how many of the rest show a band of other widths
(:func:`amir_cli.imaging.kspace.measured_band`, which `amir restore` keeps too), and in how many it recognises a taper
(:func:`amir_cli.imaging.kspace.band_taper`); the misses are listed below the table.

    python benchmarks/zero_filling.py DATA [--out benchmarks/results/zero_filling.txt]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from kspace_filter import k_filter
from quality import spaced

VARIANTS = ("native", "x2 int16", "x2 float", "x4 int16", "x4 float", "x2 fermi", "x4 fermi", "x2 hamming", "x4 hamming")
EXPECTED = {kind: int(kind[1]) if kind[0] == "x" else None for kind in VARIANTS}
FILTER = {"fermi": "fermi 0.05", "hamming": "hamming"}  # benchmarks/kspace_filter.py's filters


def variant(slices: np.ndarray, kind: str, rng) -> np.ndarray:
    """``slices`` (slices first, float64) as the variant ``kind``."""
    if kind == "native":
        return slices
    factor, form = int(kind[1]), kind.split()[1]
    level = np.percentile(slices[slices > 0], 99)
    sigma = (0.01 if form == "int16" else 0.03) * level
    out = []
    for s in slices:
        k = np.fft.fftshift(np.fft.fft2(s)) + sigma * np.sqrt(s.size) * (rng.standard_normal(s.shape) + 1j * rng.standard_normal(s.shape))
        k *= k_filter(s.shape, factor, FILTER.get(form, "none"))
        out.append(np.abs(np.fft.ifft2(np.fft.ifftshift(k))))
    out = np.stack(out)
    return np.round(out * 1000 / level).astype(np.int16) if form == "int16" else out.astype(np.float32)


def main(argv=None) -> int:
    from amir_cli.imaging.io import read_image
    from amir_cli.imaging.kspace import band_taper, measured_band, zero_filled_factor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "zero_filling.txt")
    args = parser.parse_args(argv)
    files = sorted(args.data.glob("MRI/*.nii.gz")) + sorted(args.data.glob("MRI/validation/*.nii.gz"))
    if not files:
        raise SystemExit(f"no MRI/*.nii.gz under {args.data}")
    rng = np.random.default_rng(0)
    counts, misses = {}, []
    for path in files:
        vol = read_image(path)
        slices = spaced(np.clip(np.moveaxis(vol.array, vol.slice_axis, 0), 0, None), 16).astype(np.float64)
        slices = slices[slices.max(axis=(1, 2)) > 0]
        if min(slices.shape[1:]) < 64 or not len(slices):
            continue
        for kind in VARIANTS:
            image = variant(slices, kind, rng)
            seen = [("volume", image)] + [(f"slice {i}", image[i : i + 1]) for i in spaced(np.arange(len(image)), 6)]
            for where, part in seen:
                factor = zero_filled_factor(part, 0)
                count = counts.setdefault((kind, "volume" if where == "volume" else "slice"), {None: 0, 2: 0, 4: 0, "band": 0, "tapered": 0})
                band = None if factor else measured_band(part, 0)
                count["band" if band else factor] += 1
                count["tapered"] += bool(factor) and band_taper(part, 0, factor) < 1
                if factor != EXPECTED[kind]:
                    misses.append(f"{path.name} {kind} {where}: {factor and f'x{factor}' or band and f'band {band}'}")
        print(f"{path.name}: done", file=sys.stderr, flush=True)
    lines = [f"Zero-filling recognition on the MR of {args.data.name} (training and validation subjects)", "",
             "| input | expected | seen as | not zero-filled | x2 | x4 | other band | taper recognised |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for (row, where), c in counts.items():
        expected = EXPECTED[row]
        lines.append(f"| MR {row} | {expected and f'x{expected}' or 'none'} | {where}s | {c[None]} | {c[2]} | {c[4]} | {c['band']} | {c['tapered']} |")
    text = "\n".join(lines + ["", "Misses:" if misses else "No misses."] + [f"- {m}" for m in misses]) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
