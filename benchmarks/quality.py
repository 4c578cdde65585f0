"""Quality benchmark on the frozen test split: unseen subjects, every level, classical baselines.

Builds the test cases from the test subjects of ``benchmarks/splits.py`` (whole volumes and images
that no training, validation, recipe choice or example reads) and runs `amir benchmark` on them:

* CT (HU): the chest CT of one patient (512x512, 5 mm slices) and a contrast chest CT slice of
  another (GE); doses 1/2, 1/4 and 1/20 at the default photon count.
* MR: the contrast T1 brain MR of one patient and a FLAIR head slice of another (GE), each scaled
  into the 12-bit training range (x ``mr_scale_factor`` of the whole volume, so that the evaluation
  window [0, 4095] means what it means for the paper's data); k-space truncation x2 and x4. AMIR is
  scored as plain `amir restore` runs (``amir``: the zero filling recognised and its band kept) and
  as the network alone (``amir-net``).
* PET (SUV): SIMULATED FDG-like activity on the anatomy of the T1 brain patient
  (``phantom.load_t1_pet``) and of the chest CT patient (``phantom.load_ct_pet``), seed 7919; doses 1/2, 1/4, 1/12 and 1/20 with the scanner-like
  noise of ``degrade.pet_low_count`` (default counts, 3 mm grid, 5 mm post-filter), added to the
  reference: the activity's standard-dose image (``degrade.pet_standard_dose``: the activity plus
  the noise of its own full-dose counts), as a real PET pair's reference holds that noise.

Low-quality images are made by the degradations of whole slices (CT and PET noise comes from the
projection of the full cross-section).

    python benchmarks/quality.py --weights amir-s --out benchmarks/results/amir-s
    python benchmarks/quality.py --weights /tmp/random_tiny.safetensors --out /tmp/bench --max-slices 2

Prints the Markdown table; `summary.md` holds it with the per-case table. Development data:
``--data``, else ``$AMIR_DATA``, else ``../shared/data`` beside the repository.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amir_cli.tasks import SCORED_LEVELS  # noqa: E402
from benchmarks.splits import TEST, sources  # noqa: E402

DEV_DATA = Path(os.environ.get("AMIR_DATA", ROOT.parent / "shared" / "data"))
PET_SEED = 7919  # the PET ground truth's lesions; distinct from any training seed
DEGRADE_SEED = 20240  # degradation noise of the test inputs
STANDARD_DOSE_STREAM = 1_000_000  # slice streams of the standard-dose PET noise, apart from the inputs'
FOLDER = {"ct-denoise": "CT", "mri-sr": "MRI", "pet-synthesis": "PET"}


def as_float(vol):
    """The volume, to be written as float32: LQ noise unrounded, scaled MR not clipped to uint8."""
    vol.source_dtype = np.dtype(np.float32)
    vol.meta["output_dtype"] = np.dtype(np.float32)
    return vol


def pixel_mm(vol) -> float:
    """The volume's in-plane pixel size (mean of the two in-plane spacings, mm)."""
    return float(np.mean(vol.inplane_spacing_mm))


def add_case(root: Path, task: str, name: str, hq_vol, seed: int, levels: dict, **scanner) -> int:
    """Write ``hq_vol`` and its degraded versions at ``levels`` (label -> level; ``scanner``: keywords
    of the degradation); returns slices written."""
    from amir_cli.scoring import case_seed
    from amir_cli.imaging import degrade
    from amir_cli.imaging.io import write_image

    ax = hq_vol.slice_axis
    slices = np.moveaxis(hq_vol.array, ax, 0)
    pix = pixel_mm(hq_vol)
    base = root / FOLDER[task] / "test"
    (base / "HQ").mkdir(parents=True, exist_ok=True)
    write_image(hq_vol, base / "HQ" / f"{name}.nii.gz")
    cs = case_seed(seed, name, task)
    for label, level in levels.items():
        lq = np.stack([degrade.degrade_slice(s, task, level, degrade.slice_rng(cs, i), pixel_mm=pix, **scanner)
                       for i, s in enumerate(slices)])
        (base / f"LQ_{label}").mkdir(parents=True, exist_ok=True)
        write_image(hq_vol.with_array(np.moveaxis(lq, 0, ax)), base / f"LQ_{label}" / f"{name}.nii.gz")
    return len(slices)


def case_name(src) -> str:
    return src.subject + ("-fdg-simulated" if src.kind == "simulated" else "")


def cpu_weights(doc: str, scores: str):
    """The weights of a benchmark script's ``--weights`` (default: the shipped default), loaded on the
    CPU, after a header line naming them and what the table ``scores``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--weights", default=None, help="registry name or .safetensors (default: the shipped default)")
    args = ap.parse_args()

    from amir_cli.device import pick_device
    from amir_cli.weights import load_weights

    loaded = load_weights(args.weights, pick_device("cpu"))
    print(f"weights {loaded.name} (sha256 {loaded.sha256[:16]}...), cpu, {scores}\n")
    return loaded


def cases_main(doc: str, out_name: str, build, data_label: str, with_baselines: bool = True) -> int:
    """The command of a benchmark script that scores cases of its own: ``--weights``, ``--out``
    (default ``benchmarks/results/<out_name>``); ``build(folder)`` lays the cases out in a temporary
    folder, `amir benchmark` scores them (8 slices per volume) and the summary is printed."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--weights", default="amir-s", help="registry name or .safetensors (default: amir-s)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / out_name, help="results folder")
    args = ap.parse_args()

    from amir_cli.scoring import BenchmarkRequest, run_benchmark

    with tempfile.TemporaryDirectory(prefix=f"amir-{out_name}-") as tmp:
        request = BenchmarkRequest(build(Path(tmp)), args.out, weights=args.weights, with_baselines=with_baselines,
                                   max_slices=8, figures=False, data_label=data_label, overwrite=True)
        result = run_benchmark(request)
    print((args.out / "summary.md").read_text())
    return result.exit_code


def spaced(slices: np.ndarray, count: int = 8) -> np.ndarray:
    """Up to ``count`` evenly spaced slices of a slices-first array."""
    return slices[np.linspace(0, len(slices) - 1, min(count, len(slices))).round().astype(int)]


def mr_test_slices(max_slices: int = 8):
    """(case name, float64 slices) of each MR test subject: up to ``max_slices`` evenly spaced slices,
    scaled into the 12-bit range (x ``mr_scale_factor`` of the whole volume)."""
    from amir_cli.imaging import intensity
    from amir_cli.imaging.io import read_image

    for src in sources(TEST, "mri-sr"):
        vol = read_image(DEV_DATA / src.file)
        slices = np.moveaxis(vol.array * intensity.mr_scale_factor(vol.array), vol.slice_axis, 0)
        yield case_name(src), spaced(slices, max_slices).astype(np.float64)


def build_test_data(root: Path, data_dir: Path = DEV_DATA, seed: int = DEGRADE_SEED, levels: dict | None = None) -> Path:
    """The test split's cases under ``root``, degraded at ``levels`` (task -> label -> level; default
    ``SCORED_LEVELS``; a task left out of it is not built)."""
    from amir_cli.imaging import intensity
    from amir_cli.imaging.io import read_image

    levels = SCORED_LEVELS if levels is None else levels
    for src in (s for s in sources(TEST) if s.task in levels):
        path = Path(data_dir) / src.file
        if src.task == "pet-synthesis":
            vol = standard_dose(pet_activity(path), case_name(src), seed)
        else:
            vol = as_float(read_image(path))
            if src.task == "mri-sr":
                vol = vol.with_array(vol.array * intensity.mr_scale_factor(vol.array))
        add_case(root, src.task, case_name(src), vol, seed, levels[src.task])
    return root


def pet_activity(path: Path):
    """The simulated PET activity (SUV volume) of a test subject's anatomy (CT or T1 MR at ``path``)."""
    from amir_cli.imaging import phantom
    from amir_cli.imaging.io import Volume

    load = phantom.load_ct_pet if path.parent.name == "ct" else phantom.load_t1_pet
    suv, affine = load(path, np.random.default_rng(PET_SEED))
    return Volume(suv, affine, modality="PT", unit="SUV")


def standard_dose(vol, name: str, seed: int, **scanner):
    """The PET volume's standard-dose image, slice by slice (seeded by ``name``; SUV; ``scanner``:
    keywords of ``degrade.pet_standard_dose``)."""
    from amir_cli.imaging import degrade
    from amir_cli.scoring import case_seed

    ax = vol.slice_axis
    cs = case_seed(seed, name, "pet-synthesis")
    pix = pixel_mm(vol)
    sd = [degrade.pet_standard_dose(s, degrade.slice_rng(cs, STANDARD_DOSE_STREAM + i), pixel_mm=pix, **scanner)
          for i, s in enumerate(np.moveaxis(vol.array, ax, 0))]
    return vol.with_array(np.moveaxis(np.stack(sd), 0, ax))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="registry name or .safetensors path")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/<weights name>)")
    ap.add_argument("--data", type=Path, default=DEV_DATA, help="the development data folder (holding ct/ and mr/)")
    ap.add_argument("--cases", type=Path, default=None, help="where to build the test cases (default: a temporary folder)")
    ap.add_argument("--max-slices", type=int, default=8, help="slices scored per case (0: all)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--tta", action="store_true", help="also score the x8 self-ensemble (amir-tta)")
    args = ap.parse_args(argv)

    from amir_cli.scoring import BenchmarkRequest, run_benchmark
    from amir_cli.imaging.phantom import SIMULATED_NOTE

    missing = [s.file for s in sources(TEST) if not (args.data / s.file).exists()]
    if missing:  # a user without the development data: one line, no traceback
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        print(f"quality.py: the development data are not in {args.data} ({missing[0]}{more} missing); "
              "give their folder with --data or $AMIR_DATA", file=sys.stderr)
        return 1
    out = args.out or ROOT / "benchmarks" / "results" / Path(args.weights).stem
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="amir-quality-") as tmp:
        cases = args.cases or Path(tmp) / "test_data"
        build_test_data(cases, args.data)
        print(f"test cases built in {time.perf_counter() - t0:.0f} s: {cases}", file=sys.stderr)

        def progress(done, total, label):
            print(f"[{done}/{total}] {label}", file=sys.stderr)

        request = BenchmarkRequest(
            cases, out, weights=args.weights, device=args.device, batch_size=args.batch_size,
            max_slices=args.max_slices or None, tta=args.tta, overwrite=True,
            data_label="the frozen test split: subjects that no training, validation, tuning or example reads",
            notes=(
                "test split: " + "; ".join(f"{case_name(s)} ({s.task}, {s.kind}: {s.note})" for s in sources(TEST)),
                f"{SIMULATED_NOTE}: the test PET is FDG-like activity on the T1 brain and chest CT patients' anatomy (seed {PET_SEED}); the PET reference is its standard-dose image (the activity plus the noise of its own full-dose counts), as a real PET pair's is",
                "MR volumes scaled into the 12-bit range by their robust scale factor (P99.5 of the foreground -> 3000)",
            ),
        )
        result = run_benchmark(request, progress=progress)
    print((out / "summary.md").read_text())
    print(f"total {time.perf_counter() - t0:.0f} s; results in {out}", file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
