"""Simulated FDG PET ground truth from tissue maps."""


import numpy as np
import pytest

from amir_cli.imaging import phantom as P

from conftest import DATA, needs_dev_data  # noqa: E402


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


@needs_dev_data("mr/" + P.ICBM_GM)
def test_load_icbm_pet():
    suv, affine = P.load_icbm_pet(DATA, np.random.default_rng(0), fwhm_mm=0, n_lesions=0, scalp_suv=0)
    assert suv.shape == (197, 233, 189) and affine.shape == (4, 4)
    assert suv.max() == pytest.approx(8.0, abs=0.05)


def _t1_head(n=96, slices=4, mm=1.0):
    """A T1-like head: scalp (bright) and skull (dark) around a brain of white matter (brightest)
    in a grey matter shell, with a CSF ventricle (dark) in the middle; (x, y, z) and its labels."""
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - n / 2, xx - n / 2) * mm
    labels = np.select([r < 6, r < 20, r < 30, r < 33, r < 38, r < 42], ["csf", "wm", "gm", "csf", "skull", "scalp"], "air")
    value = {"csf": 150.0, "wm": 800.0, "gm": 500.0, "skull": 60.0, "scalp": 900.0, "air": 0.0}
    t1 = np.vectorize(value.get)(labels).astype(np.float32)
    return np.repeat(t1[:, :, None], slices, axis=2), labels


def test_tissue_from_t1_finds_grey_and_white_matter_and_strips_the_scalp():
    t1, labels = _t1_head()
    gm, wm = P.tissue_from_t1(t1, (1.0, 1.0, 1.0), slice_axis=2, strip_mm=12.0)
    assert gm.shape == wm.shape == t1.shape
    g, w = gm[:, :, 1], wm[:, :, 1]
    assert np.all(w[labels == "wm"] > 0.9) and np.all(g[labels == "wm"] < 0.1)
    assert np.median(g[labels == "gm"]) > 0.9 and np.median(w[labels == "gm"]) < 0.1
    for outside in ("csf", "skull", "scalp", "air"):  # the ventricle, and everything the strip removes
        assert g[labels == outside].max() < 0.1 and w[labels == outside].max() < 0.1, outside


def test_load_t1_pet_averages_fine_voxels_and_keeps_the_world_position(tmp_path):
    import nibabel as nib

    t1, labels = _t1_head(n=192, slices=4, mm=0.5)  # 0.5 mm in-plane, 3 mm slices: in-plane 2x2 blocks
    affine = np.diag([0.5, 0.5, 3.0, 1.0])
    affine[:3, 3] = (-40.0, 10.0, 3.0)
    nib.save(nib.Nifti1Image(t1, affine), str(tmp_path / "t1.nii.gz"))
    suv, out_affine = P.load_t1_pet(tmp_path / "t1.nii.gz", np.random.default_rng(0), n_lesions=0)
    assert suv.shape == (96, 96, 4) and suv.dtype == np.float32
    np.testing.assert_allclose(np.diag(out_affine)[:3], (1.0, 1.0, 3.0))
    np.testing.assert_allclose(out_affine[:3, 3], affine[:3, 3] + (0.25, 0.25, 0.0))  # the first block's centre
    coarse = labels[::2, ::2]
    s = suv[:, :, 2]
    gm_suv, wm_suv, csf_suv = (np.median(s[coarse == t]) for t in ("gm", "wm", "csf"))
    assert gm_suv > 2 * wm_suv > 0 and csf_suv < wm_suv  # FDG-like: grey matter hottest, CSF coldest


def _body_phantom():
    """An axial body slice stack in HU: air outside, fat ring, soft tissue, two lungs, a spine."""
    yy, xx = np.mgrid[:96, :128]
    hu = np.full((96, 128), -1000.0)
    body = ((yy - 48) / 44) ** 2 + ((xx - 64) / 60) ** 2 <= 1
    hu[body] = -100.0  # fat
    hu[((yy - 48) / 38) ** 2 + ((xx - 64) / 52) ** 2 <= 1] = 40.0  # soft tissue
    for cx in (40, 88):
        hu[((yy - 44) / 20) ** 2 + ((xx - cx) / 14) ** 2 <= 1] = -800.0  # lungs
    hu[(yy - 80) ** 2 + (xx - 64) ** 2 <= 36] = 700.0  # spine
    return np.repeat(hu[:, :, None], 6, axis=2)


def test_body_pet_from_ct_follows_the_tissue_classes():
    from amir_cli.imaging.phantom import BODY_SUV, fdg_activity_from_ct

    hu = _body_phantom()
    suv = fdg_activity_from_ct(hu, (2.0, 2.0, 3.0), np.random.default_rng(0), n_lesions=0, fwhm_mm=0)
    assert suv.shape == hu.shape and suv.dtype == np.float32
    assert np.all(suv[hu == -1000.0] == 0)  # air outside the body
    lung, fat, soft = suv[hu == -800.0], suv[hu == -100.0], suv[hu == 40.0]
    assert BODY_SUV["lung"][0] <= lung.mean() <= BODY_SUV["lung"][1]
    assert BODY_SUV["fat"][0] <= fat.mean() <= BODY_SUV["fat"][1]
    assert soft.mean() > lung.mean() and soft.mean() > fat.mean()
    assert soft.std() > 0  # organs differ: a smooth field varies soft tissue uptake


def test_body_pet_lesions_are_hot_and_seeded():
    from amir_cli.imaging.phantom import fdg_activity_from_ct

    hu = _body_phantom()
    a = fdg_activity_from_ct(hu, (2.0, 2.0, 3.0), np.random.default_rng(5), n_lesions=2, lesion_suv=(12.0, 12.0), fwhm_mm=0)
    b = fdg_activity_from_ct(hu, (2.0, 2.0, 3.0), np.random.default_rng(5), n_lesions=2, lesion_suv=(12.0, 12.0), fwhm_mm=0)
    np.testing.assert_array_equal(a, b)
    assert a.max() == pytest.approx(12.0) and (a == np.float32(12.0)).sum() > 10
    blurred = fdg_activity_from_ct(hu, (2.0, 2.0, 3.0), np.random.default_rng(5), n_lesions=2, lesion_suv=(12.0, 12.0))
    assert blurred.max() < 12.0  # the scanner's resolution spreads a small lesion


def test_load_ct_pet_averages_to_pet_pixels(tmp_path):
    import nibabel as nib

    from amir_cli.imaging.phantom import load_ct_pet

    path = tmp_path / "body_ct.nii.gz"
    nib.save(nib.Nifti1Image(_body_phantom().astype(np.int16), np.diag([0.8, 0.8, 3.0, 1.0])), str(path))
    suv, affine = load_ct_pet(path, np.random.default_rng(0))
    assert suv.shape == (48, 64, 6)  # 0.8 mm pixels averaged in 2x2 blocks: 1.6 mm
    np.testing.assert_allclose(np.diag(affine)[:3], [1.6, 1.6, 3.0])
    np.testing.assert_allclose(affine[:3, 3], [0.4, 0.4, 0.0])  # the first block's centre
