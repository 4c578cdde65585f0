"""Physics of the §3 degradations: k-space truncation, CT and PET extra noise, reproducibility."""

import numpy as np
import pytest

from amir_cli.imaging import degrade as D
from amir_cli.imaging.kspace import kspace_mask

N = 128
YY, XX = np.mgrid[:N, :N] - (N - 1) / 2
R = np.hypot(XX, YY)
ROI = R < 20  # uniform centre of the cylinders


def _water_cylinder():
    return np.where(R < 50, 0.0, -1000.0)  # 10 cm water in air at 1 mm


def _pet_cylinder():
    return np.where(R < 40, 5.0, 0.0)


def test_mri_keeps_central_kspace_and_zeroes_the_rest():
    img = np.random.default_rng(0).normal(size=(64, 48))
    for factor in (2, 4):
        mask = kspace_mask(img.shape, factor)
        assert mask.sum() == (64 // factor) * (48 // factor)
        k_in = np.fft.fftshift(np.fft.fft2(img))
        k_out = np.fft.fftshift(np.fft.fft2(D.mri_truncate_complex(img, factor)))
        np.testing.assert_allclose(k_out[mask], k_in[mask], atol=1e-9)
        assert np.abs(k_out[~mask]).max() < 1e-9
        out = D.mri_truncate(img, factor)
        assert out.shape == img.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, np.abs(D.mri_truncate_complex(img, factor)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(D.mri_truncate(img, 1), img, rtol=1e-6)
    # a real, even-symmetric image whose spectrum lies inside the kept band is returned unchanged
    x = np.arange(64)
    smooth = 10 + np.cos(2 * np.pi * 3 * x / 64)[:, None] * np.cos(2 * np.pi * 2 * x / 64)[None, :]
    np.testing.assert_allclose(D.mri_truncate(smooth, 4), smooth, atol=1e-4)


def test_projector_and_fbp_reconstruct_a_disc():
    disc = ((XX - 10) ** 2 + (YY + 15) ** 2 < 25**2).astype(float) * 0.02
    p = D.project(disc, pixel_mm=0.5, n_angles=N)
    assert p.max() == pytest.approx(50 * 0.5 * 0.02, rel=0.03)  # chord length x mu
    rec = D.fbp(p, N, pixel_mm=0.5)
    inner = (XX - 10) ** 2 + (YY + 15) ** 2 < 20**2
    assert rec[inner].mean() == pytest.approx(0.02, rel=0.03)
    assert abs(rec[R > 58].mean()) < 0.001  # background ~ 0


def test_soft_kernel_reconstructs_smoother_weaker_ct_noise():
    """A Hann-apodised ramp (a scanner's soft kernel) keeps the mean of a reconstruction and makes
    the same counts' noise weaker and more correlated, the more so the lower its cutoff."""
    from amir_cli.imaging.projector import hann_window

    w = hann_window(64, 0.5)
    assert w[0] == 1.0 and w[16:49].max() == 0.0 and np.all(np.diff(w[:17]) <= 0)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="cutoff"):
            hann_window(64, bad)
    disc = ((XX - 10) ** 2 + (YY + 15) ** 2 < 25**2).astype(float) * 0.02
    inner = (XX - 10) ** 2 + (YY + 15) ** 2 < 15**2
    assert D.fbp(D.project(disc, pixel_mm=0.5, n_angles=N), N, pixel_mm=0.5, kernel_cutoff=0.6)[inner].mean() == pytest.approx(0.02, rel=0.03)
    hu = _water_cylinder()
    noise = {c: D.ct_low_dose(hu, 0.25, np.random.default_rng(4), kernel_cutoff=c) - hu for c in (None, 1.0, 0.5)}
    sd = {c: n[ROI].std() for c, n in noise.items()}
    lag1 = {c: np.corrcoef(n[ROI][:-1], n[ROI][1:])[0, 1] for c, n in noise.items()}
    assert sd[None] > 1.5 * sd[1.0] > 1.5 * sd[0.5]
    assert lag1[None] < lag1[1.0] < lag1[0.5]


def test_soft_kernel_reference_matches_the_apodised_reconstruction():
    """ct_soft_kernel shows a slice as the apodised ramp reconstructs it (central-slice theorem), so a
    training reference and its low-dose input share one kernel."""
    disc = ((XX - 10) ** 2 + (YY + 15) ** 2 < 25**2).astype(float) * 0.02
    p = D.project(disc, pixel_mm=1.0, n_angles=N)
    inside = R < 55
    for c in (1.0, 0.6):
        direct = D.fbp(p, N, 1.0, kernel_cutoff=c)
        after = D.ct_soft_kernel(D.fbp(p, N, 1.0), c)
        assert np.abs(direct - after)[inside].max() < 0.03 * 0.02
    edge = D.ct_soft_kernel(disc * 1000, 0.5)
    assert edge[R < 5].mean() == pytest.approx(20.0, rel=0.01) and edge.dtype == np.float32
    assert 0 < edge[int(N / 2 - 15), int(N / 2 + 10 + 25)] < 20  # the disc's edge is blurred


def test_soft_kernels_are_drawn_only_when_asked():
    """--ct-soft-kernels 0 draws no kernel (earlier runs replay their levels exactly); 1 gives every
    CT input a kernel cutoff within the range."""
    from amir_cli.training.levels import Levels

    plain, rng_a, rng_b = Levels(), np.random.default_rng(5), np.random.default_rng(5)
    draws = [plain.draw("ct-denoise", rng_a) for _ in range(20)]
    assert all("kernel_cutoff" not in kw for _, kw in draws)
    assert [d for d, _ in draws] == [Levels(ct_soft_kernels=0.0).draw("ct-denoise", rng_b)[0] for _ in range(20)]
    soft = [Levels(ct_soft_kernels=1.0).draw("ct-denoise", rng_a)[1]["kernel_cutoff"] for _ in range(20)]
    assert all(0.5 <= c <= 1.0 for c in soft) and len(set(soft)) == 20


def test_em_noise_follows_the_activity_and_spares_air():
    """Noise shaped as an iterative reconstruction shapes it: none in air (where filtered
    back-projection spreads some), more in a hot region than in the warm background, the same mean
    variance over the activity's support, and standard-dose images shaped the same way."""
    act = np.where(R < 40, 2.0, 0.0)
    act[(np.abs(XX - 12) < 6) & (np.abs(YY) < 6)] = 8.0
    hot, warm, air = (np.abs(XX - 12) < 4) & (np.abs(YY) < 4), (R < 30) & (np.abs(XX - 12) > 12), R > 50

    def noise(exponent, seed):
        return D.pet_low_count(act, 0.25, np.random.default_rng(seed), pixel_mm=3.0, em_exponent=exponent, total_counts=2e6) - act

    even = D.pet_low_count(act, 0.25, np.random.default_rng(1), pixel_mm=3.0, total_counts=2e6) - act
    assert even[air].std() > 0.05
    for exponent in (0.5, 1.0):
        w = D.em_noise_weight(act, exponent, 5.0 / 3.0)
        support = w > 0
        assert np.mean(w[R < 40] ** 2) == pytest.approx(1.0, rel=0.15) and w[air].max() < 1e-3
        assert np.all(np.isfinite(w)) and support.any()
    sd = D.pet_standard_dose(act, np.random.default_rng(2), pixel_mm=3.0, em_exponent=0.75)
    assert np.all(sd[air] == 0) and np.abs(sd - act)[R < 30].std() > 0.01
    half, one = noise(0.5, 3), noise(1.0, 3)
    ratio = {e: n[hot].std() / n[warm].std() for e, n in ((0.5, half), (1.0, one))}  # about sqrt(4) and 4
    assert 1.4 < ratio[0.5] < 2.6 and ratio[1.0] > 1.5 * ratio[0.5]
    assert np.all(D.em_noise_weight(np.zeros((8, 8)), 0.5, 1.0) == 0)
    with pytest.raises(ValueError):
        D.em_noise_weight(act, 0.0, 1.0)


def test_em_noise_is_drawn_only_when_asked():
    """--pet-em-noise 0 draws no exponent (earlier runs replay their levels exactly); 1 gives every
    PET input one within the range."""
    from amir_cli.training.levels import Levels

    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    draws = [Levels().draw("pet-synthesis", rng_a) for _ in range(20)]
    assert all("em_exponent" not in kw for _, kw in draws)
    assert draws == [Levels(pet_em_noise=0.0).draw("pet-synthesis", rng_b) for _ in range(20)]
    shaped = [Levels(pet_em_noise=1.0).draw("pet-synthesis", rng_a)[1]["em_exponent"] for _ in range(20)]
    assert all(0.5 <= e <= 1.0 for e in shaped) and len(set(shaped)) == 20


def test_em_ref_share_keeps_the_reference_shaped_and_the_low_dose_spec():
    """--pet-em-ref: its share of PET pairs gets an OSEM-shaped reference with SPEC §3's low dose
    (``spec_low_dose``), beside --pet-em-noise's share; off, none does; together the shares may not
    exceed 1."""
    from amir_cli.errors import BadInputError
    from amir_cli.training.levels import Levels
    from amir_cli.training.options import TrainOptions

    kinds = {"fbp": 0, "em": 0, "em-ref": 0}
    rng = np.random.default_rng(3)
    for _ in range(600):
        kw = Levels(pet_em_noise=0.35, pet_em_ref=0.15).draw("pet-synthesis", rng)[1]
        kinds["em-ref" if kw.get("spec_low_dose") else "em" if "em_exponent" in kw else "fbp"] += 1
    assert abs(kinds["em"] / 600 - 0.35) < 0.06 and abs(kinds["em-ref"] / 600 - 0.15) < 0.05
    assert not any(Levels(pet_em_noise=0.35).draw("pet-synthesis", rng)[1].get("spec_low_dose") for _ in range(100))
    with pytest.raises(BadInputError, match="together at most 1"):
        TrainOptions(pet_em_noise=0.7, pet_em_ref=0.4).check()


def _added_variance(fn, img, dose, seeds=(1, 2)):
    return np.mean([np.var((fn(img, dose, np.random.default_rng(s)) - img)[ROI]) for s in seeds])


def test_ct_extra_noise_variance_scales_as_inverse_dose_minus_one():
    hu = _water_cylinder()
    fn = lambda a, d, rng: D.ct_low_dose(a, d, rng, pixel_mm=1.0)
    norm = {d: _added_variance(fn, hu, d) / (1 / d - 1) for d in (0.5, 0.25, 0.125)}
    assert max(norm.values()) / min(norm.values()) < 1.15, norm
    # std therefore grows roughly like 1/sqrt(dose); quarter dose adds a realistic 5-60 HU at 1 mm
    sd = np.sqrt(norm[0.25] * 3)
    assert 5 < sd < 60
    # noise is zero-mean
    out = D.ct_low_dose(hu, 0.25, np.random.default_rng(3))
    assert abs((out - hu)[ROI].mean()) < 3 * sd / np.sqrt(ROI.sum() / 4)


def test_ct_dose_one_and_reproducibility():
    hu = _water_cylinder()
    np.testing.assert_array_equal(D.ct_low_dose(hu, 1.0, np.random.default_rng(0)), hu.astype(np.float32))
    a = D.ct_low_dose(hu, 0.25, np.random.default_rng(7))
    b = D.ct_low_dose(hu, 0.25, np.random.default_rng(7))
    c = D.ct_low_dose(hu, 0.25, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == hu.shape and a.dtype == np.float32
    # more photons, less noise
    lo = np.std((D.ct_low_dose(hu, 0.25, np.random.default_rng(1), i0=3e6) - hu)[ROI])
    hi = np.std((a - hu)[ROI])
    assert lo < hi / 2
    # non-square slices keep their shape
    assert D.ct_low_dose(hu[:, :100], 0.5, np.random.default_rng(0)).shape == (N, 100)


def test_ct_pixel_padding_outside_the_field_of_view_gets_no_noise():
    """Padding far below air outside a circular field of view (-3024 HU) keeps its value exactly."""
    hu = np.where(R < 60, _water_cylinder(), -3024.0)
    hu[(R < 60) & (hu < -900)] = -1030.0  # air a little below -1024 HU, as reconstructions leave it
    out = D.ct_low_dose(hu, 0.25, np.random.default_rng(0))
    np.testing.assert_array_equal(out[R >= 60], -3024.0)
    assert np.std((out - hu)[R < 60]) > 5  # air and water inside the field of view are noisy
    assert np.std((out - hu)[(R < 60) & (hu == -1030.0)]) > 5


def test_pet_extra_noise_scales_with_counts():
    suv = _pet_cylinder()
    fn = lambda a, d, rng: D.pet_low_count(a, d, rng, pixel_mm=2.0)
    norm = {d: _added_variance(fn, suv, d) / (1 / d - 1) for d in (0.5, 0.25, 0.125)}
    assert max(norm.values()) / min(norm.values()) < 1.15, norm
    # 10x the counts: 10x less variance
    v_hi = _added_variance(lambda a, d, rng: D.pet_low_count(a, d, rng, total_counts=2e6), suv, 0.25)
    v_lo = _added_variance(lambda a, d, rng: D.pet_low_count(a, d, rng, total_counts=2e7), suv, 0.25)
    assert v_hi / v_lo == pytest.approx(10, rel=0.15)
    out = D.pet_low_count(suv, 0.25, np.random.default_rng(0))
    assert out.min() >= 0 and out.dtype == np.float32
    np.testing.assert_array_equal(D.pet_low_count(suv, 1.0, np.random.default_rng(0)), suv.astype(np.float32))
    # quarter dose is visibly noisy but usable: 5-50 % coefficient of variation in the uniform region
    cov = out[ROI].std() / out[ROI].mean()
    assert 0.05 < cov < 0.5


def test_degrade_volume_reproducible_and_independent_of_batching():
    vol = np.stack([_water_cylinder()[:64, :64] + i for i in range(3)], axis=2)
    a = D.degrade_volume(vol, "ct-denoise", 0.25, slice_axis=2, spacing_mm=(0.8, 0.8, 2.0), seed=4)
    b = D.degrade_volume(vol, "ct-denoise", 0.25, slice_axis=2, spacing_mm=(0.8, 0.8, 2.0), seed=4)
    c = D.degrade_volume(vol, "ct-denoise", 0.25, slice_axis=2, spacing_mm=(0.8, 0.8, 2.0), seed=5)
    assert a.shape == vol.shape and np.array_equal(a, b) and not np.array_equal(a, c)
    one = D.degrade_slice(vol[:, :, 1], "ct-denoise", 0.25, D.slice_rng(4, 1), pixel_mm=0.8)
    np.testing.assert_array_equal(a[:, :, 1], one)
    assert not np.array_equal(a[:, :, 0] - vol[:, :, 0], a[:, :, 1] - vol[:, :, 1])
    moved = D.degrade_volume(np.moveaxis(vol, 2, 0), "ct-denoise", 0.25, slice_axis=0, spacing_mm=(2.0, 0.8, 0.8), seed=4)
    np.testing.assert_array_equal(np.moveaxis(moved, 0, 2), a)
    mr = D.degrade_volume(vol + 1000, "mri-sr", None, seed=0)
    np.testing.assert_allclose(mr[:, :, 2], D.mri_truncate(vol[:, :, 2] + 1000, D.DEFAULT_LEVEL["mri-sr"]))
    pet = D.degrade_volume(np.clip(vol[:, :, :1] + 1000, 0, None) / 100, "pet-synthesis")
    assert pet.shape == (64, 64, 1) and pet.min() >= 0


@pytest.mark.parametrize(
    "call",
    [
        lambda: D.mri_truncate(np.zeros((8, 8)), 0),
        lambda: D.mri_truncate(np.zeros((8, 8)), 2.5),
        lambda: D.mri_truncate(np.zeros(8), 2),
        lambda: D.ct_low_dose(np.zeros((8, 8)), 0, np.random.default_rng(0)),
        lambda: D.ct_low_dose(np.zeros((8, 8)), 1.5, np.random.default_rng(0)),
        lambda: D.ct_low_dose(np.zeros((8, 8)), 0.5, 42),
        lambda: D.ct_low_dose(np.zeros((8, 8)), 0.5, np.random.default_rng(0), pixel_mm=-1),
        lambda: D.pet_low_count(np.zeros((8, 8)), 0.5, np.random.default_rng(0), total_counts=0),
        lambda: D.degrade_volume(np.zeros((8, 8, 2)), "xray", 0.5),
        lambda: D.degrade_volume(np.zeros((8, 8, 2)), "ct-denoise", 0.5, slice_axis=3),
        lambda: D.degrade_volume(np.zeros((8, 8, 2)), "ct-denoise", 0.5, seed=-1),
    ],
)
def test_bad_parameters(call):
    with pytest.raises(ValueError):
        call()


def test_training_pairs_of_a_soft_kernel_blur_the_reference_too():
    """With --ct-soft-kernels 1 every CT reference goes through the drawn kernel, as its input does;
    without it the reference is the slice as read."""
    from amir_cli.training.levels import Levels
    from amir_cli.training.sampling import PatchSampler, SamplerOptions
    from amir_cli.training.volumes import TrainVolume

    sharp = np.where(R < 50, np.where((XX.astype(int) // 4) % 2 == 0, 100.0, -100.0), -1000.0)  # stripes in water
    vol = TrainVolume("stripes", "ct-denoise", np.stack([sharp] * 4).astype(np.float32), None, 1.0, None, np.arange(3), np.array([3]), N, (0, N))

    def stripe_contrast(share: float) -> float:
        opts = SamplerOptions(batch_size=2, patch_size=64, crops_per_slice=2, flips=False, zoom_jitter=1.0,
                              levels=Levels(ct_soft_kernels=share))
        hq = np.asarray(PatchSampler([vol], ("ct-denoise",), opts, seed=3).batch(0)["hq"])[:, 0]
        return float(np.abs(np.diff(hq, axis=-1)).max())

    assert stripe_contrast(1.0) < 0.5 * stripe_contrast(0.0)


def test_pet_regions_split_the_error_between_body_and_air():
    """benchmarks/pet_regions.py: a restoration that clears the air's noise and keeps the body's is
    1 in the body and 0 in the air, with the air's share of the input's error."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from pet_regions import region_errors

    ref = np.where(R < 30, 5.0, 0.0)[None]
    noise = np.random.default_rng(0).normal(0.0, 0.5, ref.shape)
    low = ref + noise
    out = np.where(R < 45, low, ref)  # the body (and its blurred rim) kept, the far air cleaned
    body, air, share = region_errors(out, low, ref)
    assert body == pytest.approx(1.0) and 0 < air < 1 and 0 < share < 1
    assert region_errors(ref, low, ref)[:2] == (0.0, 0.0) and region_errors(low, low, ref)[:2] == (1.0, 1.0)


def test_pet_em_noise_builds_both_low_doses_of_one_clinical_reference(tmp_path, monkeypatch):
    """benchmarks/pet_em_noise.py: the phantom's OSEM-shaped standard dose is shared by both kinds of
    low dose; the OSEM-shaped ones leave the air at 0, SPEC §3's put noise there."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import pet_em_noise

    from amir_cli.imaging.io import read_image

    monkeypatch.setattr(pet_em_noise, "sources", lambda split, task: [])  # the phantom alone
    base = pet_em_noise.build(tmp_path) / "PET" / "test"
    name = "nema-iq-body-phantom-simulated-em0.75.nii.gz"
    ref = read_image(base / "HQ" / name).array
    corner = np.s_[:12, :12]  # air, centimetres from the body
    assert np.all(ref[corner] == 0) and ref.max() > 2.0
    osem, spec = (read_image(base / f"LQ_dose1-4{kind}" / name).array for kind in ("", "-spec"))
    assert np.all(osem[corner] == 0) and np.std(spec[corner]) > 0.01
    body = ref > 0.5
    assert 0.05 < np.std((osem - ref)[body]) and 0.05 < np.std((spec - ref)[body])
    assert {p.name for p in base.iterdir()} >= {"HQ", "LQ_dose1-2", "LQ_dose1-20-spec"}

