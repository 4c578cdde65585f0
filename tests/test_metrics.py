"""Metrics follow SPEC §4 and agree with scikit-image to 1e-4."""

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from amir_cli import metrics as M
from amir_cli.tasks import EVAL_WINDOW

from conftest import DATA, needs_dev_data, real_crop  # noqa: E402


def _sk(pred, ref, window):
    lo, hi = window
    p, r = np.clip(pred.astype(float), lo, hi), np.clip(ref.astype(float), lo, hi)
    L = r.max() - r.min()
    s = structural_similarity(p, r, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=L)
    return peak_signal_noise_ratio(r, p, data_range=L), s, float(np.sqrt(np.mean((p - r) ** 2)))


def _check(pred, ref, task):
    got = M.slice_scores(pred, ref, task)
    ps, ss, rm = _sk(pred, ref, EVAL_WINDOW[task])
    assert got["psnr"] == pytest.approx(ps, abs=1e-4)
    assert got["ssim"] == pytest.approx(ss, abs=1e-4)
    assert got["rmse"] == pytest.approx(rm, abs=1e-4)


@pytest.mark.parametrize("task", list(EVAL_WINDOW))
def test_random_slices_match_skimage(task):
    rng = np.random.default_rng(3)
    lo, hi = EVAL_WINDOW[task]
    span = hi - lo
    ref = rng.uniform(lo - 0.2 * span, hi + 0.2 * span, (64, 80))
    pred = ref + rng.normal(0, 0.1 * span, ref.shape)
    _check(pred, ref, task)


def test_real_ct_slice_matches_skimage():
    ref = real_crop("ct/cranium_ct.nii.gz", (slice(80, 160), slice(90, 164), slice(54, 55)))[0][:, :, 0].astype(np.float64)
    rng = np.random.default_rng(0)
    pred = ref + rng.normal(0, 30, ref.shape)
    _check(pred, ref, "ct-denoise")


@needs_dev_data("mr/abdomen_mr_slice.nii.gz")
def test_real_mr_slice_matches_skimage():
    import nibabel as nib

    ref = np.asarray(nib.load(str(DATA / "mr/abdomen_mr_slice.nii.gz")).dataobj, dtype=np.float64)[..., 0] * 3.6
    pred = np.roll(ref, 1, axis=0) * 1.05
    _check(pred, ref, "mri-sr")


def _protocol_ssim(p, r, L):
    """docs/protocol.md's SSIM written out: Gaussian (sigma 1.5, 11 x 11) local statistics with
    population variances, reflected edges, the mean over the pixels at least 5 from the border."""
    from scipy import ndimage

    def f(a):
        return ndimage.gaussian_filter(a, sigma=1.5, truncate=3.5, mode="reflect")

    ux, uy = f(p), f(r)
    vx, vy, vxy = f(p * p) - ux * ux, f(r * r) - uy * uy, f(p * r) - ux * uy
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s[5:-5, 5:-5].mean())


@pytest.mark.parametrize("task", list(EVAL_WINDOW))
def test_ssim_is_the_protocol_formula(task):
    rng = np.random.default_rng(7)
    lo, hi = EVAL_WINDOW[task]
    for shape in ((11, 11), (37, 64), (90, 23)):
        ref = rng.uniform(lo, hi, shape)
        pred = np.clip(ref + rng.normal(0, 0.05 * (hi - lo), shape), lo, hi)
        L = float(ref.max() - ref.min())
        assert M.ssim(pred, ref, (lo, hi)) == pytest.approx(_protocol_ssim(pred, ref, L), abs=1e-12)


def test_identical_images():
    ref = np.random.default_rng(1).uniform(0, 20, (32, 32))
    s = M.slice_scores(ref, ref.copy(), "pet-synthesis")
    assert s["psnr"] == float("inf")
    assert s["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert s["rmse"] == 0.0


def test_hand_computed_psnr_rmse_and_clipping():
    ref = np.zeros((16, 16))
    ref[:, 8:] = 20.0  # L = 20 SUV
    pred = ref + 2.0  # error 2 everywhere, but clipped at 20 on the right half
    assert M.rmse(pred, ref, (0, 20)) == pytest.approx(math.sqrt(2.0))
    assert M.psnr(pred, ref, (0, 20)) == pytest.approx(10 * math.log10(400 / 2.0))
    # values outside the window do not count: -1000 HU vs -500 HU both clip to -160
    a = np.full((16, 16), -1000.0)
    b = np.full((16, 16), -500.0)
    a[0, 0] = b[0, 0] = 100.0
    assert M.rmse(a, b, "ct-denoise") == 0.0


def test_constant_reference_slices_are_skipped():
    rng = np.random.default_rng(2)
    ref = rng.uniform(0, 20, (24, 24, 4))
    ref[:, :, 1] = 0.0
    ref[:, :, 3] = 30.0  # constant after clipping to 20
    pred = ref + rng.normal(0, 0.5, ref.shape)
    out = M.volume_scores(pred, ref, "pet-synthesis")
    assert out["n_slices"] == 2 and out["n_skipped"] == 2 and out["skipped"] == [1, 3]
    want = [M.slice_scores(pred[:, :, i], ref[:, :, i], "pet-synthesis") for i in (0, 2)]
    for k in ("psnr", "ssim", "rmse"):
        assert out[k] == pytest.approx(np.mean([w[k] for w in want]))
    # slice axis is honoured
    out0 = M.volume_scores(np.moveaxis(pred, 2, 0), np.moveaxis(ref, 2, 0), "pet-synthesis", slice_axis=0)
    assert out0["psnr"] == pytest.approx(out["psnr"])
    assert math.isnan(M.psnr(ref[:, :, 1], ref[:, :, 1], "pet-synthesis"))


def test_bad_parameters():
    a = np.zeros((16, 16))
    with pytest.raises(ValueError):
        M.slice_scores(a, a, "xray")
    with pytest.raises(ValueError):
        M.psnr(a, np.zeros((16, 15)), (0, 1))
    with pytest.raises(ValueError):
        M.psnr(a, a, (1, 0))
    with pytest.raises(ValueError):
        M.volume_scores(a[..., None], a[..., None], "ct-denoise", slice_axis=5)
