"""PET backgrounds: noise-free (an OSEM reconstruction's) recognised, filled for the network with
`--pet-background-noise` or a level chosen from neighbouring slices, given back after."""

import numpy as np
import pytest
from scipy import ndimage

from amir_cli.errors import BadInputError
from amir_cli.imaging import background as B
from amir_cli.imaging import degrade
from amir_cli.imaging.io import Volume
from amir_cli.restore import restore_volume

N = 96
YY, XX = np.mgrid[:N, :N] - (N - 1) / 2
ACTIVITY = np.where(np.hypot(YY, XX) < 30, 2.0, 0.0) + np.where(np.hypot(YY - 8, XX + 6) < 6, 6.0, 0.0)


def low_dose(exponent=None, seed=0):
    kw = {"em_exponent": exponent} if exponent else {}
    return degrade.degrade_slice(ACTIVITY, "pet-synthesis", 0.25, np.random.default_rng(seed), pixel_mm=3.0, **kw).astype(np.float32)


def test_background_noise_tells_osem_from_filtered_back_projection():
    osem, fbp = low_dose(0.75), low_dose()
    assert B.background_noise(osem) < B.QUIET
    fbp_noise = B.background_noise(fbp)  # None: its noise keeps the smoothed background above 1% of the peak
    assert fbp_noise is None or fbp_noise > B.QUIET
    assert B.noise_free_background(np.stack([osem, osem])) and not B.noise_free_background(np.stack([fbp, fbp]))
    assert B.background_noise(np.zeros((N, N))) is None  # nothing to judge
    assert B.background_noise(np.full((N, N), 3.0)) is None  # no background


def test_fill_background_fills_only_a_noise_free_background():
    osem = low_dose(0.75)
    filled, mask = B.fill_background(osem, 0.4, 3.0, np.random.default_rng(1))
    assert mask is not None and mask.any() and not mask[np.hypot(YY, XX) < 30].any()
    assert np.array_equal(filled[~mask], osem[~mask]) and filled.min() >= 0 and filled.dtype == osem.dtype
    rms = np.sqrt(2 * np.mean(filled[mask].astype(np.float64) ** 2))  # about half is clipped at 0
    assert rms == pytest.approx(B.FILL_FRACTION * 0.4, rel=0.25)
    fbp = low_dose()
    same, none = B.fill_background(fbp, 0.4, 3.0, np.random.default_rng(1))
    assert none is None and same is fbp


def test_restore_gives_the_filled_background_back_and_reports_it():
    """The background that was filled comes back as the input had it (a random network changes
    everything else); the slices filled are reported; the input array is not touched."""
    vol = Volume(np.stack([low_dose(0.75, 0), low_dose(0.75, 1), low_dose(None, 2)], -1), np.diag([3.0, 3.0, 3.0, 1.0]))
    before = vol.array.copy()

    out, info = restore_volume(_identity_like(), vol, "pet-synthesis", background_sd=0.4)
    assert info["background_noise"] == {"sd": 0.4, "from": "option", "filled_slices": 2}
    for k in range(2):
        _, mask = B.fill_background(before[..., k], 0.4, 3.0, np.random.default_rng(k))
        assert np.array_equal(out.array[..., k][mask], before[..., k][mask])
    assert np.array_equal(vol.array, before)
    assert restore_volume(_identity_like(), vol, "pet-synthesis")[1]["background_noise"] is None
    from amir_cli.restore import restore_array

    one = restore_array(before[..., 0], "pet-synthesis", model=_identity_like(), spacing_mm=(3.0, 3.0), background_sd=0.4)
    assert np.array_equal(one, out.array[..., 0])  # the library shortcut takes the option too


def _identity_like():
    from amir_cli.network import AMIR, get_config
    import torch

    torch.manual_seed(0)
    return AMIR(get_config("amir-tiny")).eval()


@pytest.mark.parametrize("task, sd, message", [("pet-synthesis", -1.0, "positive"), ("pet-synthesis", float("nan"), "positive"),
                                               ("ct-denoise", 0.3, "pet-synthesis only")])
def test_bad_background_noise_is_refused(task, sd, message):
    vol = Volume(np.stack([low_dose(0.75)] * 2, -1), np.diag([3.0, 3.0, 3.0, 1.0]))
    with pytest.raises(BadInputError, match=message):
        restore_volume(_identity_like(), vol, task, background_sd=sd)


def test_neighbour_prediction_is_exact_along_a_cubic():
    z = np.arange(9.0)[:, None, None]
    slices = (1.0 + 0.5 * z - 0.2 * z**2 + 0.03 * z**3) * ACTIVITY
    for i in (2, 3, 4):
        assert np.allclose(B.neighbour_prediction(slices, i), slices[i])
    assert np.allclose(B.neighbour_prediction(slices, 4, lag=2), slices[4])


@pytest.mark.parametrize("n, slice_mm, lag", [(8, 4.0, 1), (47, 3.0, 1), (20, 2.0, 2), (94, 1.5, 2), (5, 2.0, 1),
                                              (9, 1.0, 2), (4, 2.0, 0), (25, 6.5, 0), (25, 0.0, 0)])
def test_neighbour_lag_reaches_as_far_as_the_slices_allow(n, slice_mm, lag):
    assert B.neighbour_lag(n, slice_mm) == lag


def _smoother(probes, sd):
    """A stand-in network: Gaussian smoothing as wide in pixels as the SD is in SUV."""
    return np.stack([ndimage.gaussian_filter(p, sd) if sd else p for p in probes])


def test_choose_sd_takes_the_level_nearest_the_noise_free_slices():
    """With noise independent between slices, the level whose outputs lie nearest the neighbours'
    prediction is (nearly) the one nearest the noise-free slices; a noise-free image gets none."""
    z = np.arange(10.0)[:, None, None]
    clean = ACTIVITY * (1.0 + 0.04 * z)
    noisy = clean + np.where(ACTIVITY > 0, np.random.default_rng(3).normal(0.0, 0.6, clean.shape), 0.0)
    picked = B.probe_slices(noisy, 3.0)
    assert list(picked) == [2, 3, 4, 5, 6, 7]
    median = np.median(np.concatenate([p[B.body_mask(p)] for p in noisy[picked]]))
    error = {r: np.mean((_smoother(noisy[picked], r * median) - clean[picked]) ** 2) for r in B.CHOICES}
    level, probes_median = B.chosen_level(noisy, 3.0, _smoother)
    assert probes_median == pytest.approx(median)
    assert level > 0 and error[level] == pytest.approx(min(error.values()), rel=0.05)
    assert B.choose_sd(noisy, 3.0, _smoother) == pytest.approx(B.CHOSEN_SHARE * level * median)
    assert B.choose_sd(clean, 3.0, _smoother) == 0.0
    assert B.choose_sd(noisy[:4], 3.0, _smoother) is None  # too few slices
    assert B.choose_sd(noisy, B.MAX_SLICE_MM + 1, _smoother) is None  # too far apart
    assert B.choose_sd(np.zeros_like(noisy), 3.0, _smoother) is None  # no body


@pytest.mark.parametrize("noise, share", [(1.5, B.CHOSEN_SHARE), (3.0, B.NOISY_SHARE)])
def test_the_noisiest_images_get_the_larger_share_of_their_level(noise, share):
    """Where the chosen level is at least NOISY_LEVEL times the body's median, NOISY_SHARE of it is
    filled, below it CHOSEN_SHARE."""
    z = np.arange(10.0)[:, None, None]
    clean = ACTIVITY * (1.0 + 0.04 * z)
    noisy = clean + np.where(ACTIVITY > 0, np.random.default_rng(3).normal(0.0, noise, clean.shape), 0.0)
    picked = B.probe_slices(noisy, 3.0)
    median = np.median(np.concatenate([p[B.body_mask(p)] for p in noisy[picked]]))
    level, _ = B.chosen_level(noisy, 3.0, _smoother)
    assert (level >= B.NOISY_LEVEL) == (share == B.NOISY_SHARE) and B.level_share(level) == share
    assert B.choose_sd(noisy, 3.0, _smoother) == pytest.approx(share * level * median)


def test_restore_chooses_the_fill_only_where_it_can():
    """`amir restore`'s default: a 3-D OSEM-shaped PET gets a level chosen from its neighbouring
    slices (reported, the input untouched); one with noise in its background, one with too few
    slices, slices too far apart, or the choice turned off gets none."""
    osem = Volume(np.stack([low_dose(0.75, k) for k in range(6)], -1), np.diag([3.0, 3.0, 3.0, 1.0]))
    before = osem.array.copy()
    _, info = restore_volume(_identity_like(), osem, "pet-synthesis", choose_background=True)
    assert info["background_noise"]["from"] == "neighbour slices" and info["background_noise"]["sd"] >= 0
    assert np.array_equal(osem.array, before)
    assert restore_volume(_identity_like(), osem, "pet-synthesis")[1]["background_noise"] is None  # off by default here
    fbp = Volume(np.stack([low_dose(None, k) for k in range(6)], -1), osem.affine)
    thin = Volume(before[..., :4], osem.affine)
    apart = Volume(before, np.diag([3.0, 3.0, 6.0, 1.0]))
    for vol in (fbp, thin, apart):
        assert restore_volume(_identity_like(), vol, "pet-synthesis", choose_background=True)[1]["background_noise"] is None
