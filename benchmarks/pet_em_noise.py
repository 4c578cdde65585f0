"""PET whose noise an iterative reconstruction shapes, as clinical PET is made: the test split and a body phantom.

SPEC §3 reconstructs the PET noise by filtered back-projection, which spreads it evenly over the
whole field, air included. Clinical PET is reconstructed iteratively (OSEM), whose noise follows the
local activity and leaves air almost noise-free. Here each case's standard-dose image is shaped that
way (``degrade.em_noise_weight``, noise ~ activity^0.75), as a clinical scan is, and its low doses
1/2 to 1/20 are made two ways: levels ``doseD`` add noise shaped the same way (a low-dose OSEM scan;
`amir degrade --pet-noise osem`), levels ``doseD-spec`` add SPEC §3's noise (the protocol's simulated
low dose of a clinical scan; `amir degrade`). The cases are the test split's two PET cases of
``benchmarks/quality.py`` and a body phantom of the NEMA NU 2 image-quality kind
(``nema_iq_activity``: a warm body, six hot spheres of 10 to 37 mm at 4:1, a cold lung insert;
simulated, not a scan), and `amir benchmark` scores AMIR against the input and the Gaussian
post-filters on 8 slices of each.

    python benchmarks/pet_em_noise.py [--weights amir-s] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from quality import DEGRADE_SEED, DEV_DATA, add_case, case_name, cases_main, pet_activity, standard_dose
from splits import TEST, sources

PHANTOM_MM = 2.0  # the phantom's pixel and slice spacing


def nema_iq_activity(pixel_mm: float = PHANTOM_MM):
    """SUV volume of an image-quality body phantom: a 300 x 230 mm body (half an ellipse over half a
    rounded box) at SUV 1, a 51 mm cold lung insert, and spheres of 10, 13, 17, 22, 28 and 37 mm at
    SUV 4 on a 57.2 mm circle, in 8 slices 4 mm apart across the spheres' plane, blurred by a 5 mm
    scanner resolution."""
    from scipy import ndimage

    from amir_cli.imaging.degrade import FWHM_PER_SIGMA
    from amir_cli.imaging.io import Volume

    n = round(320 / pixel_mm)
    y, x = (np.mgrid[0:n, 0:n] - (n - 1) / 2) * pixel_mm
    lower = (y >= -77) & (y <= 0) & (np.hypot(np.maximum(np.abs(x) - 73, 0), -y) <= 77)
    upper = (y > 0) & ((x / 150) ** 2 + (y / 153) ** 2 <= 1)
    slices = []
    for z in np.arange(-14.0, 15.0, 4.0):
        act = (lower | upper).astype(np.float64)
        act[np.hypot(x, y - 35) <= 25.5] = 0.0
        for k, diameter in enumerate((10, 13, 17, 22, 28, 37)):
            cx, cy = 57.2 * np.cos(k * np.pi / 3), 35 + 57.2 * np.sin(k * np.pi / 3)
            act[np.hypot(x - cx, y - cy) <= np.sqrt(max((diameter / 2) ** 2 - z**2, 0.0))] = 4.0
        slices.append(ndimage.gaussian_filter(act, 5.0 / FWHM_PER_SIGMA / pixel_mm))
    affine = np.diag([pixel_mm, pixel_mm, 4.0, 1.0])
    return Volume(np.stack(slices, -1).astype(np.float32), affine, modality="PT", unit="SUV")


def build(root: Path) -> Path:
    """Each PET case's standard-dose image, its noise shaped as OSEM shapes it, and its low-dose
    inputs (levels ``doseD``: that noise added; ``doseD-spec``: SPEC §3's), under root/PET/test."""
    from amir_cli.imaging.degrade import OSEM_NOISE_EXPONENT as EXPONENT
    from amir_cli.tasks import PET_SYNTHESIS, SCORED_LEVELS

    cases = [(case_name(src), pet_activity(DEV_DATA / src.file)) for src in sources(TEST, "pet-synthesis")]
    for name, activity in cases + [("nema-iq-body-phantom-simulated", nema_iq_activity())]:
        name = f"{name}-em{EXPONENT:g}"
        reference = standard_dose(activity, name, DEGRADE_SEED, em_exponent=EXPONENT)
        levels = SCORED_LEVELS[PET_SYNTHESIS]
        add_case(root, PET_SYNTHESIS, name, reference, DEGRADE_SEED, levels, em_exponent=EXPONENT)
        add_case(root, PET_SYNTHESIS, name, reference, DEGRADE_SEED, {f"{label}-spec": d for label, d in levels.items()})
    return root


def main() -> int:
    return cases_main(__doc__, "pet_em_noise", build, "PET whose standard dose an iterative reconstruction shapes (simulated), low doses shaped alike or by SPEC §3")


if __name__ == "__main__":
    sys.exit(main())
