"""The MR physics of training: pixel sizes made in k-space, and the loss scored after the data
consistency that `amir restore` applies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amir_cli.errors import BadInputError
from amir_cli.imaging.degrade import mri_truncate
from amir_cli.imaging import kspace
from amir_cli.imaging.kspace import TAPER_KEEP, kspace_mask
from amir_cli.training.levels import Levels
from amir_cli.training.options import TrainOptions
from amir_cli.training.sampling import PatchSampler, SamplerOptions, _fourier_zoom, _slab
from amir_cli.training.volumes import TrainVolume
from amir_cli.training.trainer import _consistent


def _phantom(n=96):
    yy, xx = np.mgrid[:n, :n]
    img = 100.0 * (((yy - n / 2) / (0.4 * n)) ** 2 + ((xx - n / 2) / (0.35 * n)) ** 2 <= 1)
    img += 50.0 * (((yy - n / 2) / 10) ** 2 + ((xx - n / 3) / 6) ** 2 <= 1)
    return img.astype(np.float32)


class FixedRng:
    """A generator whose uniform draw is fixed: the zoom factor is exp(u)."""

    def __init__(self, u):
        self.u = u

    def uniform(self, lo, hi):
        return self.u


def test_a_finer_grid_has_an_empty_outer_kspace_and_keeps_intensities():
    img = _phantom()
    fine, f = _fourier_zoom(img, 2.0, FixedRng(np.log(2.0)))
    assert fine.shape == (192, 192) and f == 2.0
    k = np.abs(np.fft.fftshift(np.fft.fft2(fine)))
    outer = ~kspace_mask(fine.shape, 2)
    assert (k[outer] ** 2).sum() < 5e-3 * (k**2).sum()  # a scanner's zero-filling interpolation (the magnitude leaks a little)
    assert abs(np.median(fine[80:112, 120:150]) - 100.0) < 2.0  # tissue keeps its value (the magnitude rings at edges)


def test_a_coarser_grid_keeps_the_central_band():
    img = _phantom()
    coarse, f = _fourier_zoom(img, 2.0, FixedRng(-np.log(2.0)))
    assert coarse.shape == (48, 48) and f == 0.5
    assert abs(np.median(coarse[20:28, 30:37]) - 100.0) < 3.0


def test_a_finest_grid_bounds_the_drawn_factor():
    img = _phantom()
    rng = np.random.default_rng(0)
    fs = [_fourier_zoom(img, 2.0, rng, finest=1.0)[1] for _ in range(40)]
    assert all(0.5 <= f <= 1.0 for f in fs) and min(fs) < 0.7  # coarser grids only, spread over the range
    for bad in (0.9, 2.5):  # below 1, or beyond --zoom-jitter
        with pytest.raises(BadInputError, match="--mr-zoom-max"):
            TrainOptions(data="x", zoom_jitter=2.0, mr_zoom_max=bad).check()


def test_the_loss_output_keeps_the_measured_band_and_other_tasks_are_untouched():
    hq = torch.from_numpy(_phantom(64))[None, None]
    lq = torch.from_numpy(mri_truncate(_phantom(64), 4))[None, None]
    pred = torch.rand(2, 1, 64, 64, requires_grad=True)
    out = _consistent(pred, torch.cat([lq, lq]), torch.tensor([4, 0]))
    assert torch.equal(out[1], pred[1])  # factor 0: not MR, left alone
    band = torch.from_numpy(np.fft.ifftshift(kspace_mask((64, 64), 4)))
    own = torch.fft.ifft2(torch.fft.fft2(out[0, 0].detach()) * band).abs()
    before = torch.fft.ifft2(torch.fft.fft2(pred[0, 0].detach()) * band).abs()
    # the output's own zero-filled image moved most of the way to the measured one
    assert (own - lq[0, 0]).abs().mean() < 0.2 * (before - lq[0, 0]).abs().mean()
    (out - torch.cat([hq, hq])).abs().mean().backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_a_tapered_sample_is_made_consistent_with_the_central_part_of_its_band_only():
    """A Fermi-tapered input's band edge is the filter's, not the image's: the loss keeps the
    central TAPER_KEEP of the band there (as `amir restore` does), the whole band elsewhere."""
    hq = _phantom(64)
    lq = torch.from_numpy(mri_truncate(hq, 2, fermi=0.05))[None, None]
    pred = torch.from_numpy(hq)[None, None].repeat(2, 1, 1, 1)
    out = _consistent(pred, torch.cat([lq, lq]), torch.tensor([2, 2]), torch.tensor([TAPER_KEEP, 1.0]))
    edge = torch.from_numpy(np.fft.ifftshift(kspace_mask((64, 64), 2) & ~kspace_mask((64, 64), 2, TAPER_KEEP)))
    k_out, k_true = torch.fft.fft2(out[:, 0]), torch.fft.fft2(pred[:, 0])
    kept_edge = lambda i: float((k_out[i] - k_true[i]).abs()[edge].mean() / k_true[i].abs()[edge].mean())  # noqa: E731
    # tapered: the band edge stays near the true image's; sharp: the taper is copied in
    assert 4 * kept_edge(0) < kept_edge(1) and kept_edge(0) < 0.15


def test_fermi_tapered_training_pairs(monkeypatch):
    """--mr-fermi: that share of MR pairs is tapered, and marked so for the loss; validation can taper too."""
    hq = np.stack([_phantom(64)] * 6) * 1000
    vol = TrainVolume("v", "mri-sr", hq, None, 1.0, 1000.0, np.arange(6), np.arange(0), 64, (0, 64))
    levels = Levels(mr_fermi=0.5)
    draws = [levels.draw("mri-sr", np.random.default_rng(i))[1] for i in range(40)]
    assert 10 < sum("fermi" in kw for kw in draws) < 30
    assert all(0.02 <= kw["fermi"] <= 0.1 for kw in draws if kw)
    assert Levels().draw("mri-sr", np.random.default_rng(0))[1] == {}
    assert Levels(val_mr_fermi=0.05).validation("mri-sr", 0)[1] == {"fermi": 0.05}
    seen = []  # the kept fraction is what `amir restore` would see in the whole degraded slice
    monkeypatch.setattr(kspace, "band_taper", lambda a, axis, factor: seen.append(a.shape) or TAPER_KEEP)
    for share, keep in ((1.0, TAPER_KEEP), (0.0, 1.0)):
        opts = SamplerOptions(batch_size=2, patch_size=32, crops_per_slice=2, levels=Levels(mr_fermi=share))
        batch = PatchSampler([vol], ("mri-sr",), opts, seed=0).batch(0)
        assert np.array_equal(batch["kspace_keep"], np.full(2, keep)) and (batch["kspace_factor"] > 0).all()
    assert seen == [(1, 64, 64)]  # one slice of two patches, tapered; the sharp one is not looked at
    with pytest.raises(BadInputError, match="--mr-fermi"):
        TrainOptions(data="x", mr_fermi=1.5).check()
    sharp, tapered = mri_truncate(_phantom(64), 2), mri_truncate(_phantom(64), 2, fermi=0.05)
    assert tapered.max() <= sharp.max() + 1e-6 and np.abs(tapered - sharp).mean() > 1e-3


def test_consistency_keeps_the_true_image_of_a_whole_slice_not_of_a_patch():
    """On a whole zero-filled slice the true image is already consistent and stays; a patch of the
    slice is not itself zero-filled, so the per-patch loss term is an approximation (its help says so)."""
    hq = _phantom(96)
    lq = mri_truncate(hq, 4).astype(np.float32)

    def moved(h, l):  # MSE of the consistent true image over the input's MSE
        H, L = torch.from_numpy(h)[None, None], torch.from_numpy(l)[None, None]
        out = _consistent(H, L, torch.tensor([4]))
        return float(((out - H) ** 2).mean() / ((L - H) ** 2).mean())

    assert moved(hq, lq) < 1e-3
    assert moved(hq[16:80, 24:88].copy(), lq[16:80, 24:88].copy()) > 0.02


def _layers(n, slice_mm, train, value=None):
    """A volume whose slice k holds the value k everywhere, or (``value="one-hot"``) 1 at column k."""
    if value == "one-hot":
        hq = np.broadcast_to(np.eye(n, dtype=np.float32)[:, None, :], (n, 4, n)).copy()
    else:
        hq = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 8, 8)).copy()
    return TrainVolume("v", "mri-sr", hq, None, 1.0, 1.0, np.asarray(train, int), np.arange(0), hq.shape[1],
                       (0, hq.shape[1]), slice_mm=slice_mm)


def test_a_slab_reference_averages_neighbouring_training_slices_only():
    """--mr-slab: the reference is the mean of n consecutive training slices that hold the drawn one,
    n = round(U(0, MM) / slice spacing); never a held-out slice, never past the volume's ends."""
    train = [k for k in range(40) if not 18 <= k < 24]  # slices 18..23 held out
    vol = _layers(40, 1.0, train, "one-hot")
    rng = np.random.default_rng(0)
    sizes = set()
    for z in (0, 1, 10, 16, 17, 24, 30, 39):
        for _ in range(40):
            a = _slab(vol, z, 7.0, rng)
            ids = np.flatnonzero(a[0])  # the slices averaged
            assert z in ids and np.all(np.diff(ids) == 1) and set(ids) <= set(train) and len(ids) <= 7
            np.testing.assert_allclose(a[0, ids], 1 / len(ids), rtol=1e-6)
            sizes.add(len(ids))
    assert {1, 2, 6} <= sizes  # thin and thick slabs both drawn
    thick = _layers(10, 7.0, range(10))  # slices 7 mm apart: already thick, kept as they are
    assert all(_slab(thick, 4, 7.0, rng)[0, 0] == 4 for _ in range(20))
    assert _slab(_layers(1, 0.0, [0]), 0, 7.0, rng)[0, 0] == 0
    for bad in (-1.0, 11.0):
        with pytest.raises(BadInputError, match="--mr-slab"):
            TrainOptions(data="x", mr_slab=bad).check()


def test_slab_validation_references_average_a_5mm_slab():
    """benchmarks/validation.py also scores MR on references averaged over a 5 mm slab (thin-slice
    volumes only), truncated as before."""
    import sys
    from pathlib import Path

    from amir_cli.training.validation import ValSlice

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.validation import slab_slices

    thin, thick = _layers(20, 1.0, []), _layers(20, 6.0, [])
    thick.name = "w"
    val = [ValSlice("mri-sr", v, z, 4, np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32)) for v, z in (("v", 10), ("v", 0), ("w", 10))]
    slabs = slab_slices(val, [thin, thick], 4)
    assert [s.hq_phys[0, 0] for s in slabs] == [10.0, 2.0]  # slices 8..12; 0..4 at the volume's start; the thick volume skipped
    np.testing.assert_array_equal(slabs[0].lq_phys, mri_truncate(slabs[0].hq_phys, 4))


def test_native_validation_references_are_full_to_their_kspace_edge():
    """benchmarks/validation.py also scores MR on sharp references, the k-space band of each smooth
    validation reference on a coarser grid, truncated as before."""
    import sys
    from pathlib import Path

    from scipy import ndimage

    from amir_cli.training.validation import ValSlice

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.validation import native_slices

    def outer_share(a):  # the power outside the central half band
        k = np.abs(np.fft.fft2(a - a.mean())) ** 2
        return k[~np.fft.ifftshift(kspace_mask(a.shape, 2))].sum() / k.sum()

    smooth = ndimage.gaussian_filter(_phantom(97), 2.0).astype(np.float32)  # an odd side is cropped to even
    (native,) = native_slices([ValSlice("mri-sr", "v", 0, 4, mri_truncate(smooth, 4), smooth)], 4)
    assert native.hq_phys.shape == (48, 48)
    assert outer_share(native.hq_phys) > 4 * outer_share(smooth)
    np.testing.assert_array_equal(native.lq_phys, mri_truncate(native.hq_phys, 4))


def test_validation_scores_only_the_tasks_asked(tmp_path):
    """benchmarks/validation.py --tasks mri-sr builds and scores MR alone (a single-task trial);
    a task it does not know is a usage error."""
    import sys
    from pathlib import Path

    import nibabel as nib
    import pytest

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.validation import main, validation_sets

    for kind, scale in (("MRI", 3000.0), ("CT", 1000.0)):
        for split in ("", "validation"):
            vol = np.stack([_phantom(64) * scale] * 3, -1).astype(np.float32)
            (tmp_path / kind / split).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / kind / split / f"{kind.lower()}.nii.gz"))
    sets = validation_sets(tmp_path, ("mri-sr",))
    rows = [("mri-sr", 2), ("mri-sr", 4), ("mri-sr", "2 native"), ("mri-sr", "4 native"), ("mri-sr", "2 slab"), ("mri-sr", "4 slab")]
    assert sorted(map(str, sets)) == sorted(map(str, rows))
    assert all(s.task == "mri-sr" for v in sets.values() for s in v)
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "amir-s", "--tasks", "mri-sr,ct"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "amir-s", "--tasks", "mri-sr", "--passes", "0"])
    assert e.value.code == 2
    assert main([str(tmp_path / "missing"), "amir-s"]) == 1  # a missing data folder: one line, exit 1


def test_validation_extra_rows_are_marked_apart_from_the_choosing_rows(tmp_path):
    """benchmarks/validation.py --mild adds CT rows at doses 3/4 and 9/10, --soft CT rows from a
    softer kernel (reference and noise) and --em PET rows whose noise iterative reconstruction shapes
    (none in air), marked apart from the rows whose mean chooses weights."""
    import sys
    from pathlib import Path

    import nibabel as nib

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from amir_cli.training.validation import input_scores
    from benchmarks.validation import is_extra, validation_sets

    for split in ("", "validation"):
        vol = np.stack([_phantom(64) * 1000.0 - 500.0] * 3, -1).astype(np.float32)
        (tmp_path / "CT" / split).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "CT" / split / "ct.nii.gz"))
    assert sorted(map(str, validation_sets(tmp_path, ("ct-denoise",)))) == sorted(map(str, [("ct-denoise", d) for d in (0.5, 0.25, 0.05)]))
    sets = validation_sets(tmp_path, ("ct-denoise",), mild=True, soft=True)
    extra = [level for _, level in sets if is_extra(level)]
    assert extra == ["0.75 mild", "0.9 mild", "0.5 soft", "0.25 soft"] and not any(is_extra(level) for level in (0.5, "4 native", "0.5 sd"))
    psnr = {level: input_scores(v)["ct-denoise"]["psnr"] for (_, level), v in sets.items()}
    assert psnr[0.5] < psnr["0.75 mild"] < psnr["0.9 mild"]
    assert psnr[0.25] < psnr["0.25 soft"] and psnr[0.5] < psnr["0.5 soft"]  # a soft kernel: weaker noise
    sharp, soft = sets[("ct-denoise", 0.5)][0], sets[("ct-denoise", "0.5 soft")][0]
    assert np.abs(np.diff(soft.hq_phys)).max() < np.abs(np.diff(sharp.hq_phys)).max()  # the reference through it too
    for split in ("", "validation"):
        vol = np.stack([_phantom(64) * 0.05] * 3, -1).astype(np.float32)
        (tmp_path / "PET" / split).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(vol, np.diag([3.0, 3.0, 3.0, 1.0])), str(tmp_path / "PET" / split / "pet.nii.gz"))
    sets = validation_sets(tmp_path, ("pet-synthesis",), em=True)
    assert [level for _, level in sets if is_extra(level)] == [f"{d} sd {kind}" for kind in ("em", "em-ref") for d in ("0.5", "0.25", "0.0833")]
    even, em, ref = (sets[("pet-synthesis", f"0.25 sd{kind}")][0] for kind in ("", " em", " em-ref"))
    air = even.hq_phys == 0  # no activity: air
    assert np.abs(em.lq_phys - em.hq_phys)[air].max() < np.abs(even.lq_phys - even.hq_phys)[air].max()
    assert np.array_equal(ref.hq_phys, em.hq_phys)  # one shaped reference, its low dose by SPEC §3
    assert np.abs(ref.lq_phys - ref.hq_phys)[air].max() > np.abs(em.lq_phys - em.hq_phys)[air].max()
