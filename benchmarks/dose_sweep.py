"""CT and PET on the frozen test split at doses from 1/20 to near full: where AMIR helps.

Training draws CT doses from 1/20 to 1/2 and PET doses from 1/20 to 0.8 (stage 26). The test
split's CT and PET cases of ``benchmarks/quality.py`` are degraded here at 1/20, 1/4, 1/2, 3/4 and
9/10 and scored as `amir benchmark` scores them (no baselines, 8 slices per volume); the per-case
table is the PSNR gain over the input (dB). Near full dose most of the input's noise is the
reference's own, which a network that sees only the input cannot tell from the added noise.

    python benchmarks/dose_sweep.py [--weights amir-s] [--out DIR]
"""

from __future__ import annotations

import sys
from functools import partial

from quality import DEV_DATA, build_test_data, cases_main

DOSES = {"dose1-20": 0.05, "dose1-4": 0.25, "dose1-2": 0.5, "dose3-4": 0.75, "dose9-10": 0.9}


def main() -> int:
    build = partial(build_test_data, data_dir=DEV_DATA, levels={"ct-denoise": DOSES, "pet-synthesis": DOSES})
    return cases_main(__doc__, "dose_sweep", build, "the test split's CT and PET at doses 1/20 to 9/10", with_baselines=False)


if __name__ == "__main__":
    sys.exit(main())
