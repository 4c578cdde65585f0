"""Simulated FDG PET ground truth from tissue maps."""


import numpy as np
import pytest

from amir_cli.imaging import phantom as P

from conftest import DATA  # noqa: E402


def _maps():
    """Synthetic 3-D head: WM core, GM ribbon, CSF ventricle, uint8 0..255 like ICBM152."""
    z, y, x = np.mgrid[:40, :64, :64]
    r = np.sqrt(((z - 20) * 1.0) ** 2 + (y - 32.0) ** 2 + (x - 32.0) ** 2)
    gm = ((r > 16) & (r <= 24)).astype(np.uint8) * 255
    wm = ((r > 5) & (r <= 16)).astype(np.uint8) * 255
    return gm, wm


def test_gm_wm_ratio_and_lesions():
    gm, wm = _maps()
    sp = (2.0, 2.0, 2.0)
    sharp, lesions = P.fdg_activity_from_tissue(gm, wm, sp, np.random.default_rng(0), n_lesions=0, fwhm_mm=0, return_lesions=True)
    assert lesions == []
    assert sharp[gm > 0].mean() / sharp[wm > 0].mean() == pytest.approx(4.0, rel=1e-6)
    assert sharp[(gm == 0) & (wm == 0) & (np.indices(gm.shape)[1] == 32)].min() == 0  # CSF centre
    blurred, lesions = P.fdg_activity_from_tissue(gm, wm, sp, np.random.default_rng(0), return_lesions=True)
    assert blurred.dtype == np.float32 and blurred.shape == gm.shape
    assert blurred.min() >= 0
    core_gm = blurred[(gm > 0) & (np.abs(np.sqrt(((np.indices(gm.shape) - np.array([20, 32, 32])[:, None, None, None]) ** 2).sum(0)) - 20) < 1.5)]
    assert len(lesions) == 3
    assert 2.0 < np.median(core_gm) / np.median(blurred[wm > 0]) < 4.5
    for les in lesions:
        assert 10 <= les["suv"] <= 15
        assert blurred[les["center"]] > np.median(core_gm)


def test_deterministic_with_seed():
    gm, wm = _maps()
    a = P.fdg_activity_from_tissue(gm, wm, 2.0, np.random.default_rng(5))
    b = P.fdg_activity_from_tissue(gm, wm, 2.0, np.random.default_rng(5))
    c = P.fdg_activity_from_tissue(gm, wm, 2.0, np.random.default_rng(6))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_parameters():
    gm, wm = _maps()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        P.fdg_activity_from_tissue(gm, wm[:-1], 2.0, rng)
    with pytest.raises(ValueError):
        P.fdg_activity_from_tissue(gm, wm, (2.0, 0.0, 2.0), rng)
    with pytest.raises(ValueError):
        P.fdg_activity_from_tissue(gm, wm, 2.0, 0)
    with pytest.raises(ValueError):
        P.fdg_activity_from_tissue(gm, wm, 2.0, rng, n_lesions=-1)
    with pytest.raises(ValueError):
        P.load_icbm_pet("/nonexistent", rng)
    assert "simulated" in P.SIMULATED_NOTE


@pytest.mark.skipif(not (DATA / "mr" / P.ICBM_GM).exists(), reason="ICBM152 maps not available")
def test_load_icbm_pet():
    suv, affine = P.load_icbm_pet(DATA, np.random.default_rng(0), fwhm_mm=0, n_lesions=0, scalp_suv=0)
    assert suv.shape == (197, 233, 189) and affine.shape == (4, 4)
    assert suv.max() == pytest.approx(8.0, abs=0.05)
