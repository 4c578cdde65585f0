"""PET backgrounds: noise-free (an OSEM reconstruction's) recognised, filled for the network with
`--pet-background-noise`, given back after."""

import numpy as np
import pytest

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
    assert info["background_noise"] == {"sd": 0.4, "filled_slices": 2}
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
