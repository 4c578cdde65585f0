"""imaging/kspace.py: data consistency of a restored MR slice with its zero-filled input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from amir_cli.imaging.degrade import mri_truncate, mri_truncate_complex
from amir_cli.imaging.kspace import data_consistency, kspace_downsample, kspace_mask, kspace_upsample


def _head(n=64, seed=0):
    """A head-like MR slice: a bright ring, darker tissue with a few blobs, zero background."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:n, :n] / n - 0.5
    r = np.hypot(x / 0.42, y / 0.36)
    img = np.where(r < 1, 600.0, 0.0) + np.where(r < 0.85, 300.0, 0.0)
    for _ in range(6):
        cy, cx = rng.uniform(-0.2, 0.2, 2)
        img += np.where(np.hypot(x - cx, y - cy) < rng.uniform(0.03, 0.08), rng.uniform(-250, 250), 0.0)
    return np.clip(ndimage.gaussian_filter(img, 0.7), 0, None)


def _band_error(y, x, factor):
    """Relative energy of y - x inside the measured band."""
    k = np.fft.fftshift(np.fft.fft2(y - x))
    return np.sum(np.abs(k[kspace_mask(x.shape, factor)]) ** 2) / np.sum(np.abs(np.fft.fft2(x)) ** 2)


@pytest.mark.parametrize("factor", [2, 4])
def test_the_true_image_is_left_alone(factor):
    x = _head()
    np.testing.assert_allclose(data_consistency(x, mri_truncate(x, factor), factor), x, atol=1e-2 * x.max() / 100)


@pytest.mark.parametrize("factor", [2, 4])
def test_a_blurred_estimate_moves_towards_the_truth(factor):
    """An estimate with the wrong low frequencies (a blur) gets them back from the measured band,
    and its own zero-filled image then matches the input it was given."""
    x = _head(seed=factor)
    z = mri_truncate(x, factor)
    estimate = ndimage.gaussian_filter(x, 1.5)
    restored = data_consistency(estimate, z, factor)
    assert np.linalg.norm(restored - x) < 0.75 * np.linalg.norm(estimate - x)
    assert _band_error(restored, x, factor) < 0.1 * _band_error(estimate, x, factor)
    np.testing.assert_allclose(np.abs(mri_truncate_complex(restored, factor)), z, atol=0.02 * z.max())
    assert restored.dtype == np.float32 and restored.min() >= 0


def test_the_frequencies_outside_the_band_come_from_the_estimate():
    """The input's own band (the zero-filled image) has nothing outside it: what the network put
    there survives, so the result is not the zero-filled input."""
    x = _head(seed=3)
    z = mri_truncate(x, 2)
    restored = data_consistency(x, z, 2, iterations=1)
    outside = ~kspace_mask(x.shape, 2)
    k_out = np.fft.fftshift(np.fft.fft2(restored))[outside]
    k_x = np.fft.fftshift(np.fft.fft2(x))[outside]
    assert np.linalg.norm(k_out - k_x) < 0.01 * np.linalg.norm(k_x)
    assert np.linalg.norm(restored - x) < 0.2 * np.linalg.norm(z - x)


def test_batches_and_shapes():
    x = np.stack([_head(48, seed=s) for s in range(3)])
    z = np.stack([mri_truncate(s, 4) for s in x])
    one = data_consistency(z[1], z[1], 4)
    batch = data_consistency(z, z, 4)
    assert batch.shape == x.shape
    np.testing.assert_allclose(batch[1], one, atol=1e-3)
    with pytest.raises(ValueError, match="coarser"):
        data_consistency(z, z[:, :20], 4)


# ---- a coarser measured grid (amir restore --scale) ---------------------------------------------


@pytest.mark.parametrize("scale", [2, 4])
def test_downsample_then_upsample_keeps_a_band_limited_image(scale):
    y, x = np.mgrid[:64, :48]
    image = 5 + np.cos(2 * np.pi * 3 * y / 64) + np.sin(2 * np.pi * 2 * x / 48)
    np.testing.assert_allclose(kspace_upsample(kspace_downsample(image, scale), scale), image, atol=1e-4)
    with pytest.raises(ValueError, match="multiple"):
        kspace_downsample(image[:63], scale)


@pytest.mark.parametrize("scale", [2, 4])
def test_coarse_grid_consistency(scale):
    """The true image is a fixed point; the upsampled coarse image moves towards the truth and then
    reproduces the coarse input it was given."""
    x = _head(64, seed=scale)
    coarse = kspace_downsample(x, scale)
    np.testing.assert_allclose(data_consistency(x, coarse, scale), x, atol=1e-2)
    start = ndimage.gaussian_filter(kspace_upsample(coarse, scale), 1.0)
    restored = data_consistency(start, coarse, scale)
    assert restored.shape == x.shape and restored.min() >= 0
    assert np.linalg.norm(restored - x) < 0.95 * np.linalg.norm(start - x)
    assert _band_error(restored, x, scale) < 0.7 * _band_error(start, x, scale)  # magnitude only: the phase stays open
    np.testing.assert_allclose(kspace_downsample(restored, scale), coarse, atol=0.02 * coarse.max())
