"""Where AMIR's PET gain comes from: the body or the air around it, on the frozen test split.

A PSNR over the whole slice counts the air around the body. Filtered back-projection (SPEC §3)
spreads noise over it, which is easy to remove; an OSEM reconstruction leaves it almost noise-free.
For the test split's two PET cases of ``benchmarks/quality.py`` (8 evenly spaced slices, standard-dose
reference) at each dose, with the noise shaped both ways (``fbp``; ``osem``: as `amir degrade
--pet-noise osem`), and with the OSEM-shaped reference lowered in dose by SPEC §3 (``osem ref, fbp
low dose``: the protocol's low dose of a clinical scan, as `amir degrade` makes it), the table gives
AMIR's squared error over the input's (below 1: better than the input) inside the body (the
reference, smoothed by 3 pixels, above 5% of its peak) and in the air, and the air's share of the
input's squared error. Errors as the protocol scores them (SUV clipped to the evaluation window).

    python benchmarks/pet_regions.py [--weights NAME|PATH]
"""

from __future__ import annotations

import sys

import numpy as np

from quality import DEGRADE_SEED, DEV_DATA, case_name, cpu_weights, pet_activity, pixel_mm, spaced, standard_dose
from splits import TEST, sources

def region_errors(out, low, ref) -> tuple[float, float, float]:
    """(body error / input's, air error / input's, air share of the input's error), squared errors summed over slices."""
    from scipy import ndimage

    from amir_cli.tasks import EVAL_WINDOW, PET_SYNTHESIS

    err, inp = {"body": 0.0, "air": 0.0}, {"body": 0.0, "air": 0.0}
    for o, lq, r in zip(out, low, ref):
        o, lq, r = (np.clip(a, *EVAL_WINDOW[PET_SYNTHESIS]) for a in (o, lq, r))
        body = ndimage.gaussian_filter(r, 3.0) > 0.05 * r.max()
        for name, mask in (("body", body), ("air", ~body)):
            err[name] += float(((o - r)[mask] ** 2).sum())
            inp[name] += float(((lq - r)[mask] ** 2).sum())
    return err["body"] / inp["body"], err["air"] / max(inp["air"], 1e-12), inp["air"] / (inp["air"] + inp["body"])


def main() -> int:
    import torch

    from amir_cli.imaging import degrade
    from amir_cli.imaging.volume import Volume
    from amir_cli.restore import restore_volume
    from amir_cli.scoring import case_seed
    from amir_cli.tasks import PET_SYNTHESIS, SCORED_LEVELS

    loaded = cpu_weights(__doc__, "squared error over the input's, in the body and in the air")
    print("| case | dose | noise | body | air | air share of the input's error |")
    print("|---|---|---|---:|---:|---:|")
    em = {"em_exponent": degrade.OSEM_NOISE_EXPONENT}
    for src in sources(TEST, "pet-synthesis"):
        activity = pet_activity(DEV_DATA / src.file)
        references = {}  # one standard-dose image per reference shape, shared by its low doses
        for shape, ref_kw, kw in (("fbp", {}, {}), ("osem", em, em), ("osem ref, fbp low dose", em, {})):
            name = f"{case_name(src)}-{'osem' if ref_kw else 'fbp'}"
            if name not in references:
                references[name] = standard_dose(activity, name, DEGRADE_SEED, **ref_kw)
            sd = references[name]
            ref = spaced(np.moveaxis(sd.array, sd.slice_axis, 0))
            cs, pix = case_seed(DEGRADE_SEED, name, "pet-synthesis"), pixel_mm(sd)
            for dose in SCORED_LEVELS[PET_SYNTHESIS].values():
                low = np.stack([degrade.pet_low_count(r, dose, degrade.slice_rng(cs, i), pixel_mm=pix, **kw) for i, r in enumerate(ref)])
                restored, _ = restore_volume(loaded.model, Volume(np.moveaxis(low, 0, -1), sd.affine), "pet-synthesis",
                                             device=torch.device("cpu"))
                body, air, share = region_errors(np.moveaxis(restored.array, -1, 0), low, ref)
                print(f"| {case_name(src)} | 1/{round(1 / dose)} | {shape} | {body:.3f} | {air:.3f} | {share:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
