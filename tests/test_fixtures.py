"""The suite's own data: the published-model oracle and real crops ship in tests/fixtures (a fresh
clone runs the tests with nothing beside it), and the crops are what their README says they are."""

import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import CROPS, DATA, DEV_DATA_REASON, FIXTURE, FIXTURES, real_crop

ROOT = Path(__file__).resolve().parents[1]


def test_fixtures_are_in_the_repository():
    wanted = [FIXTURE, *(FIXTURES / "data" / name for name in CROPS), FIXTURES / "README.md"]
    assert all(p.is_file() and p.is_relative_to(ROOT) for p in wanted)
    if (ROOT / ".git").exists():
        tracked = subprocess.run(["git", "ls-files", "tests/fixtures"], cwd=ROOT, capture_output=True, text=True).stdout.split()
        assert {str(p.relative_to(ROOT)) for p in wanted} <= set(tracked)
    readme = (FIXTURES / "README.md").read_text()
    assert all(f"data/{name}" in readme for name in CROPS)


@pytest.mark.parametrize("name", sorted(CROPS))
def test_crops_are_cut_from_the_development_data(name):
    if not (DATA / name).exists():
        pytest.skip(DEV_DATA_REASON)
    full = nib.load(str(DATA / name))
    crop = nib.load(str(FIXTURES / "data" / name))
    sl = tuple(slice(o, o + n) for o, n in zip(CROPS[name], crop.shape))
    data, affine, _ = real_crop(name, sl)
    np.testing.assert_array_equal(data, np.asarray(full.dataobj[sl]))
    start = np.array([*CROPS[name], 1.0])
    np.testing.assert_allclose(affine[:3, 3], (full.affine @ start)[:3], atol=1e-4)
    np.testing.assert_allclose(affine[:3, :3], full.affine[:3, :3], atol=1e-6)
