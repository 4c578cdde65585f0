"""Task intensity conventions (SPEC §2): ranges, exact inverses, robust MR scaling."""

from __future__ import annotations


import nibabel as nib
import numpy as np
import pytest

from amir_cli.errors import BadInputError
from amir_cli.imaging.intensity import MR_TARGET, denormalise, mr_scale_factor, normalise
from amir_cli.tasks import EVAL_WINDOW, MR_FACTORS, NORM_RANGE, TASKS, Window, check_choice

from conftest import real_crop  # noqa: E402


def test_tables_match_spec():
    assert TASKS == ("mri-sr", "ct-denoise", "pet-synthesis")
    assert NORM_RANGE == {"ct-denoise": (-1024, 3071), "pet-synthesis": (0, 20), "mri-sr": (0, 4095)}
    assert EVAL_WINDOW == {"ct-denoise": (-160, 240), "pet-synthesis": (0, 20), "mri-sr": (0, 4095)}
    w = NORM_RANGE["ct-denoise"]
    assert isinstance(w, Window) and (w.low, w.high, w.width) == (-1024, 3071, 4095)


@pytest.mark.parametrize("task", TASKS)
def test_normalise_denormalise_inverse_inside_range(task):
    low, high = NORM_RANGE[task]
    x = np.random.default_rng(1).uniform(low, high, size=(64, 64, 3)).astype(np.float32)
    x[0, 0, 0], x[1, 0, 0] = low, high
    y = normalise(x, task)
    assert y.dtype == np.float32 and y.min() == 0.0 and y.max() == 1.0
    back = denormalise(y, task)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, x, rtol=1e-6, atol=(high - low) * 1e-7)


@pytest.mark.parametrize("task", TASKS)
def test_normalise_clips_outside_range(task):
    low, high = NORM_RANGE[task]
    y = normalise(np.array([low - 500.0, high + 500.0]), task)
    np.testing.assert_array_equal(y, [0.0, 1.0])


def test_ct_known_values():
    np.testing.assert_allclose(
        normalise(np.array([-1024.0, 0.0, 3071.0]), "ct-denoise"), [0, 1024 / 4095, 1], rtol=1e-6
    )


def test_mr_scale_round_trip():
    mr = real_crop("mr/colin27_t1_1mm.nii.gz", (slice(50, 124), slice(70, 144), slice(80, 84)))[0].astype(np.float32)
    s = mr_scale_factor(mr)
    y = normalise(mr, "mri-sr", mr_scale=s)
    assert 0 <= y.min() and y.max() <= 1
    np.testing.assert_allclose(denormalise(y, "mri-sr", mr_scale=s), mr, rtol=1e-5, atol=1e-4)


def test_mr_scale_equivariant_and_robust():
    mr = real_crop("mr/colin27_t1_1mm.nii.gz", (slice(50, 124), slice(70, 144), slice(60, 86)))[0].astype(np.float64)
    s = mr_scale_factor(mr)
    assert s > 0
    assert mr_scale_factor(mr * 7) == pytest.approx(s / 7, rel=1e-9)
    assert mr_scale_factor(mr * 0.01) == pytest.approx(s * 100, rel=1e-9)
    assert mr_scale_factor(mr * 7) == mr_scale_factor(mr * 7)  # deterministic
    # the 99.5th percentile of the foreground lands on MR_TARGET
    fg = mr * s
    assert np.percentile(fg[fg > 0.02 * np.percentile(fg[fg > 0], 99.9)], 99.5) == pytest.approx(MR_TARGET, rel=1e-9)
    # a few extreme outliers (0.05% of voxels at 100x the maximum) barely move the factor
    spiky = mr.copy().ravel()
    idx = np.random.default_rng(0).choice(spiky.size, size=spiky.size // 2000, replace=False)
    spiky[idx] = mr.max() * 100
    assert mr_scale_factor(spiky.reshape(mr.shape)) == pytest.approx(s, rel=0.05)
    # background/field of view does not matter much: pad with zeros
    padded = np.pad(mr, 40)
    assert mr_scale_factor(padded) == pytest.approx(s, rel=1e-9)


@pytest.mark.parametrize("bad", [np.zeros((16, 16, 2)), -np.ones((16, 16, 2)), np.full((16, 16, 1), np.nan)])
def test_mr_scale_rejects_unusable_images(bad):
    with pytest.raises(BadInputError):
        mr_scale_factor(bad)


def test_unknown_task_and_bad_scale():
    with pytest.raises(BadInputError, match="unknown task"):
        normalise(np.zeros(3), "denoise")
    with pytest.raises(BadInputError):
        normalise(np.zeros(3), "mri-sr", mr_scale=0.0)
    # mr_scale is ignored for CT/PET: their units are absolute
    np.testing.assert_array_equal(
        normalise(np.array([0.0]), "ct-denoise", mr_scale=3.0), normalise(np.array([0.0]), "ct-denoise")
    )


def test_check_choice_names_the_option_and_passes_none():
    check_choice("--kspace-factor", None, MR_FACTORS)
    check_choice("--kspace-factor", 4, MR_FACTORS)
    with pytest.raises(BadInputError, match=r"^--kspace-factor must be 2 or 4, got 3$"):
        check_choice("--kspace-factor", 3, MR_FACTORS)
