"""Standard-dose PET references: the simulated activity plus the noise of its own full-dose counts,
the input degraded from that (as real PET pairs are), in the degradation, training and validation."""

from __future__ import annotations

import numpy as np
import pytest

from amir_cli.imaging import degrade as D
from amir_cli.training.sampling import PatchSampler, SamplerOptions
from amir_cli.training.validation import validation_set
from amir_cli.training.volumes import TrainVolume

N = 128
YY, XX = np.mgrid[:N, :N] - (N - 1) / 2
R = np.hypot(XX, YY)
ROI = R < 20
SUV = np.where(R < 40, 5.0, 0.0)


def _noise_var(img, seeds=(1, 2, 3)) -> float:
    return float(np.mean([np.var(img(np.random.default_rng(s))[ROI] - SUV[ROI]) for s in seeds]))


def test_the_standard_dose_image_holds_the_noise_of_the_full_dose_counts():
    full = _noise_var(lambda rng: D.pet_standard_dose(SUV, rng, pixel_mm=2.0))
    # pet_low_count at dose 1/2 adds (1/d - 1) lam = lam: the same variance as the full counts' own noise
    half = _noise_var(lambda rng: D.pet_low_count(SUV, 0.5, rng, pixel_mm=2.0))
    assert full == pytest.approx(half, rel=0.15)
    # a quarter-dose input degraded from it holds lam / d of noise against the activity: 4x
    quarter = _noise_var(lambda rng: D.pet_low_count(D.pet_standard_dose(SUV, rng, pixel_mm=2.0), 0.25, rng, pixel_mm=2.0))
    assert quarter / full == pytest.approx(4.0, rel=0.2)
    # more counts, less noise; seeded; SUV float32 >= 0; no activity, no noise
    fewer = _noise_var(lambda rng: D.pet_standard_dose(SUV, rng, pixel_mm=2.0, total_counts=1e6))
    more = _noise_var(lambda rng: D.pet_standard_dose(SUV, rng, pixel_mm=2.0, total_counts=1e7))
    assert fewer / more == pytest.approx(10, rel=0.2)
    a, b = (D.pet_standard_dose(SUV, np.random.default_rng(7)) for _ in range(2))
    assert np.array_equal(a, b) and a.dtype == np.float32 and a.min() >= 0
    assert not np.array_equal(a, D.pet_standard_dose(SUV, np.random.default_rng(8)))
    np.testing.assert_array_equal(D.pet_standard_dose(np.zeros((32, 32)), np.random.default_rng(0)), 0)
    with pytest.raises(ValueError, match="pixel_mm"):
        D.pet_standard_dose(SUV, np.random.default_rng(0), pixel_mm=0)


def _pet_volume() -> TrainVolume:
    hq = np.stack([SUV] * 4).astype(np.float32)
    return TrainVolume("cyl", "pet-synthesis", hq, None, 2.0, None, np.arange(3), np.array([3]), N, (0, N))


def test_training_and_validation_references_are_standard_dose_only_when_asked():
    vol = _pet_volume()

    def reference_noise(standard_dose: bool) -> float:
        opts = SamplerOptions(batch_size=2, patch_size=32, crops_per_slice=2, flips=False, pet_standard_dose=standard_dose)
        hq = PatchSampler([vol], ("pet-synthesis",), opts, seed=3).batch(0)["hq"][:, 0]
        inside = hq[:, 4:-4, 4:-4]
        return float(inside[inside > 0.5 * inside.max()].std())

    assert reference_noise(False) == 0  # the noise-free activity: uniform in the cylinder
    assert reference_noise(True) > 0
    plain, sd = (validation_set([vol], ("pet-synthesis",), 1, None, 0, pet_standard_dose=s)[0] for s in (False, True))
    np.testing.assert_array_equal(plain.hq_phys, SUV.astype(np.float32))
    assert np.std(sd.hq_phys[ROI]) > 0 and np.std(sd.lq_phys[ROI]) > np.std(sd.hq_phys[ROI])
