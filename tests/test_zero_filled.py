"""A zero-filled MR image recognised by its spectrum, and the data consistency it then gets in
`amir restore` (the shipped MR example: a real T1 brain, Colin27, cut from a validation subject)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from amir_cli.imaging.degrade import mri_truncate
from amir_cli.imaging.io import Volume
from amir_cli.imaging.kspace import TAPER_KEEP, band_taper, kspace_mask, measured_band, zero_filled_factor
from amir_cli.restore import restore_volume
from amir_cli.tasks import MR_PASSES

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mr_brain_reference.nii.gz"


@pytest.fixture(scope="module")
def brain():
    return np.asarray(nib.load(str(EXAMPLE)).dataobj, np.float32)


def _zero_filled(volume, factor, kind, rng):
    """Each slice truncated to the central 1/factor of k-space (noise measured with it: in k-space,
    so band-limited too), as float32 or int16."""
    out = []
    for s in np.moveaxis(volume, 2, 0):
        noisy = np.hypot(s + rng.normal(0, 2.0, s.shape), rng.normal(0, 2.0, s.shape)) if kind != "clean" else s
        out.append(mri_truncate(noisy, factor) if factor > 1 else noisy)
    out = np.stack(out, axis=2)
    return np.round(out).astype(np.int16) if kind == "int16" else out.astype(np.float32)


@pytest.mark.parametrize("kind", ["clean", "noisy", "int16"])
@pytest.mark.parametrize("factor", [1, 2, 4])
def test_the_factor_of_a_zero_filled_image_is_found_and_a_full_image_is_left_alone(brain, factor, kind):
    image = _zero_filled(brain, factor, kind, np.random.default_rng(factor))
    assert zero_filled_factor(image, slice_axis=2) == (factor if factor > 1 else None)


def _band_limited(volume, widths, kind, rng):
    """Each slice's k-space kept in a centred rectangle of ``widths`` samples per axis (noise measured with it)."""
    out = []
    for s in np.moveaxis(volume, 2, 0):
        noisy = np.hypot(s + rng.normal(0, 2.0, s.shape), rng.normal(0, 2.0, s.shape)) if kind != "clean" else s
        k = np.fft.fftshift(np.fft.fft2(noisy)) * kspace_mask(s.shape, widths)
        out.append(np.abs(np.fft.ifft2(np.fft.ifftshift(k))))
    out = np.stack(out, axis=2)
    return np.round(out).astype(np.int16) if kind == "int16" else out.astype(np.float32)


@pytest.mark.parametrize("kind", ["clean", "noisy", "int16"])
def test_a_band_cut_along_one_axis_or_by_another_factor_is_measured(brain, kind):
    """Scanners interpolate an acquisition matrix of 192 to 256, or zero-fill along the phase axis only."""
    rng = np.random.default_rng(5)
    h, w = brain.shape[:2]
    assert measured_band(_zero_filled(brain, 1, kind, rng)) is None  # a full image: no band
    for widths in ((h // 2, w), (h, round(w * 0.75)), (round(h * 0.625), round(w * 0.625)), (h // 3, w // 3)):
        image = _band_limited(brain, widths, kind, rng)
        assert zero_filled_factor(image) is None
        found = measured_band(image)
        assert found is not None and all(abs(f - m) <= 1 for f, m in zip(found, widths)), (widths, found)


def test_white_noise_after_zero_filling_hides_the_cliff_and_nothing_is_claimed(brain):
    image = _zero_filled(brain, 2, "clean", np.random.default_rng(0))
    image = np.abs(image + np.random.default_rng(1).normal(0, 0.1 * image.max(), image.shape)).astype(np.float32)
    assert zero_filled_factor(image) is None


def test_a_spectrum_that_falls_steadily_is_no_band_edge_and_its_zero_filling_is():
    """A texture whose power falls by the same ratio every step, by 3 to 5 times (as a smooth
    template's falls fast), is not zero-filled; cut to half its band, it is."""
    rng, n = np.random.default_rng(3), 192
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(n) * n, np.fft.fftfreq(n) * n))
    for step in (0.3, 0.25, 0.22):  # the power's fall over n / 16 samples, a band edge's measuring step
        amplitude = np.exp(np.log(step) / (n // 16) * k / 2)
        textures = [np.fft.ifft2(amplitude * np.exp(2j * np.pi * rng.random((n, n)))).real for _ in range(3)]
        image = np.stack([t - t.min() for t in textures], axis=2)
        assert zero_filled_factor(image) is None, step
        assert zero_filled_factor(np.stack([mri_truncate(t - t.min(), 2) for t in textures], axis=2)) == 2, step


@pytest.mark.parametrize("taper", ["hamming", "fermi 0.1"])
@pytest.mark.parametrize("factor", [2, 4])
def test_a_band_that_a_kspace_filter_tapered_keeps_its_factor(brain, factor, taper):
    """Scanners taper the measured band (a Fermi or Hamming filter): its edge is still the factor's."""
    rng = np.random.default_rng(factor)
    image = _tapered(brain, factor, taper, rng)
    assert zero_filled_factor(image) == factor
    assert zero_filled_factor(np.round(image).astype(np.int16)) == factor


def _tapered_band(shape, factor, taper):
    """The central 1/factor of centred k-space times a radial Fermi filter of width 0.1 or a
    separable Hamming window (both over the band's half-width)."""
    from amir_cli.imaging.degrade import fermi_filter
    from amir_cli.imaging.kspace import band_frequencies

    if taper != "hamming":
        return fermi_filter(shape, factor, 0.1)
    ky, kx = band_frequencies(shape, factor)
    window = lambda k: 0.54 + 0.46 * np.cos(np.pi * np.minimum(k, 1.0))  # noqa: E731
    return kspace_mask(shape, factor) * window(ky)[:, None] * window(kx)[None, :]


def test_images_that_are_not_magnitudes_or_too_small_are_never_zero_filled(brain):
    image = _zero_filled(brain, 2, "clean", np.random.default_rng(0))
    assert zero_filled_factor(image - 10.0) is None  # negative values: not a magnitude image
    assert zero_filled_factor(image[:24, :24]) is None
    assert zero_filled_factor(np.zeros((64, 64, 2), np.float32)) is None


class Identity(torch.nn.Module):
    def forward(self, x, instruction=None):
        return x.clone()

    def instruction(self, x):
        return x.mean(dim=(1, 2, 3))[:, None].repeat(1, 256)


def _restore(array, **kw):
    vol = Volume(array=array, affine=np.eye(4))
    return restore_volume(Identity(), vol, "mri-sr", **kw)


def test_restore_applies_the_detected_factor_and_says_so(brain):
    zf = _zero_filled(brain[:, :, :2], 4, "int16", np.random.default_rng(3)).astype(np.float32)
    _, info = _restore(zf, detect_zero_filling=True)
    assert info["data_consistency"]["kspace_factor"] == 4 and info["data_consistency"]["factor_from"] == "detected"
    _, off = _restore(zf, detect_zero_filling=False)
    assert off["data_consistency"] is None
    _, forced = _restore(zf, detect_zero_filling=True, kspace_factor=2)
    assert forced["data_consistency"]["kspace_factor"] == 2 and forced["data_consistency"]["factor_from"] == "option"


def _tapered(brain, factor, taper, rng):
    slices = np.moveaxis(brain, 2, 0)
    spectra = np.fft.fftshift(np.fft.fft2(slices + rng.normal(0, 2.0, slices.shape)), axes=(1, 2))
    image = np.abs(np.fft.ifft2(np.fft.ifftshift(spectra * _tapered_band(brain.shape[:2], factor, taper), axes=(1, 2))))
    return np.moveaxis(image, 0, 2).astype(np.float32)


def test_restore_keeps_a_band_of_other_widths_and_says_so(brain):
    h, w = brain.shape[:2]
    widths = (h, round(w * 0.75))
    image = _band_limited(brain[:, :, :2], widths, "clean", np.random.default_rng(0))
    out, info = _restore(image, detect_zero_filling=True)
    dc = info["data_consistency"]
    assert dc["kspace_factor"] is None and dc["factor_from"] == "detected" and dc["passes"] == MR_PASSES[2]
    assert [n for _, n in dc["band"]] == [h, w] and abs(dc["band"][1][0] - widths[1]) <= 1 and dc["band"][0][0] == h
    kept = kspace_mask((h, w), tuple(m for m, _ in dc["band"]))
    for k in range(2):  # the measured band is the input's (the identity network adds nothing outside it)
        spectra = [np.abs(np.fft.fftshift(np.fft.fft2(a[:, :, k])))[kept] for a in (out.array, image)]
        assert np.abs(spectra[0] - spectra[1]).mean() < 0.02 * spectra[1].mean()
    _, off = _restore(image, detect_zero_filling=False)
    assert off["data_consistency"] is None


def test_a_band_that_a_filter_tapered_keeps_its_flat_centre_a_sharp_band_all_of_it(brain):
    rng = np.random.default_rng(5)
    for factor in (2, 4):
        for kind in ("clean", "noisy", "int16"):
            assert band_taper(_zero_filled(brain, factor, kind, rng), 2, factor) == 1.0, (factor, kind)
    for taper in ("fermi 0.1", "hamming"):
        assert band_taper(_tapered(brain, 2, taper, rng), 2, 2) == TAPER_KEEP, taper
    band, kept = kspace_mask((181, 217), 2), kspace_mask((181, 217), 2, keep=TAPER_KEEP)
    assert (kept <= band).all() and (band.sum(axis=0).max(), kept.sum(axis=0).max()) == (90, 71)  # |k| < 0.8 x 45
    # restore keeps that part of the band, and says so
    _, tapered = _restore(_tapered(brain[:, :, :2], 2, "fermi 0.1", rng), detect_zero_filling=True)
    assert tapered["data_consistency"]["kspace_factor"] == 2 and tapered["data_consistency"]["band_kept"] == TAPER_KEEP
    _, sharp = _restore(_zero_filled(brain[:, :, :2], 2, "int16", rng).astype(np.float32), detect_zero_filling=True)
    assert sharp["data_consistency"]["band_kept"] == 1.0


def test_an_image_that_is_not_zero_filled_is_restored_as_before(brain):
    full = brain[:, :, :2].copy()
    with_detection, info = _restore(full, detect_zero_filling=True)
    without, _ = _restore(full, detect_zero_filling=False)
    assert info["data_consistency"] is None
    np.testing.assert_array_equal(with_detection.array, without.array)


class Gamma(Identity):
    """A pointwise network (no border effects) whose second pass differs from its first."""

    def forward(self, x, instruction=None):
        return x.clamp(min=0) ** 0.8


class Tilted(Gamma):
    """Gamma times a ramp across the (padded) image: a network that flipping its input changes."""

    def forward(self, x, instruction=None):
        h, w = x.shape[-2:]
        ramp = torch.linspace(0, 1, h)[:, None] + torch.linspace(0, 1, w)
        return super().forward(x) * (0.9 + 0.1 * ramp)


def test_the_cascade_averages_each_later_pass_on_the_consistent_flipped_output_and_keeps_the_band(brain):
    from amir_cli.imaging import intensity
    from amir_cli.imaging.kspace import data_consistency
    from amir_cli.inference import BORDER

    zf = _zero_filled(brain[:, :, :2], 4, "noisy", np.random.default_rng(5))
    vol = Volume(array=zf, affine=np.eye(4))
    out, info = restore_volume(Tilted(), vol, "mri-sr", detect_zero_filling=True)
    one, one_info = restore_volume(Tilted(), vol, "mri-sr", detect_zero_filling=True, passes=1)
    assert info["data_consistency"]["passes"] == MR_PASSES[4] == 4 and one_info["data_consistency"]["passes"] == 1

    scale, measured = intensity.mr_scale_factor(zf), np.moveaxis(zf, 2, 0)
    (h, w), b = measured.shape[1:], BORDER
    rows, cols = (np.arange(h) + b) / (h + 2 * b - 1), (np.arange(w) + b) / (w + 2 * b - 1)
    # the ramp as the image sees it: pass 2 flips left-right, pass 3 up-down, pass 4 both (and back)
    ramps = [rows[:, None] + cols, rows[:, None] + 1 - cols, 1 - rows[:, None] + cols, 2 - rows[:, None] - cols]
    net = lambda x, k: np.clip(x, 0, None) ** 0.8 * (0.9 + 0.1 * ramps[k])  # noqa: E731
    consistent = lambda x: data_consistency(intensity.denormalise(x, "mri-sr", scale), measured, 4)  # noqa: E731
    expected = consistent(net(intensity.normalise(measured, "mri-sr", scale), 0))
    for k in range(1, MR_PASSES[4]):
        last = intensity.normalise(expected, "mri-sr", scale)
        expected = consistent(last + 0.5 * (net(last, k) - last))
    np.testing.assert_allclose(np.moveaxis(out.array, 2, 0), expected, rtol=1e-4, atol=1e-3 * zf.max())
    assert np.abs(out.array - one.array).max() > 1e-2 * zf.max()  # the second pass did something
    band = np.stack([mri_truncate(s, 4) for s in np.moveaxis(out.array, 2, 0)])
    assert np.abs(band - measured).max() < 0.02 * zf.max()  # and the measured band is kept


def test_on_the_cpu_the_data_consistency_never_runs_beside_the_network(brain, monkeypatch):
    """Two thread teams on the same cores run several times slower than one after the other: on the
    CPU every data consistency runs in the thread that runs the network."""
    import threading

    from amir_cli.imaging import kspace

    threads, project = set(), kspace.data_consistency

    def recorded(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return project(*args, **kwargs)

    monkeypatch.setattr(kspace, "data_consistency", recorded)
    zf = _zero_filled(brain[:, :, :3], 4, "noisy", np.random.default_rng(6))
    _, info = restore_volume(Gamma(), Volume(zf, np.eye(4)), "mri-sr", detect_zero_filling=True, batch_size=1)
    assert info["data_consistency"]["passes"] == MR_PASSES[4]
    assert threads == {threading.current_thread().name}


def test_no_cascade_where_the_band_is_unknown(brain):
    full = brain[:, :, :2].copy()
    cascaded, info = restore_volume(Gamma(), Volume(full, np.eye(4)), "mri-sr", detect_zero_filling=True)
    single, _ = restore_volume(Gamma(), Volume(full, np.eye(4)), "mri-sr", detect_zero_filling=True, passes=1)
    assert info["data_consistency"] is None
    np.testing.assert_array_equal(cascaded.array, single.array)


def test_cli_report_names_the_detected_factor(tmp_path, brain, amir_home):
    from typer.testing import CliRunner

    from amir_cli.cli import app

    src = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(_zero_filled(brain[:, :, :2], 2, "int16", np.random.default_rng(4)), np.eye(4)), str(src))
    out = tmp_path / "t1_amir.nii.gz"
    res = CliRunner().invoke(app, ["restore", str(src), "--task", "mri-sr", "-o", str(out), "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(Path(str(out) + ".json").read_text())
    assert report["data_consistency"]["kspace_factor"] == 2 and report["data_consistency"]["factor_from"] == "detected"
    assert report["data_consistency"]["passes"] == MR_PASSES[2]
    assert report["data_consistency"]["band"] == [[n // 2, n] for n in brain.shape[:2]]
    h, w = brain.shape[:2]
    nib.save(nib.Nifti1Image(_band_limited(brain[:, :, :2], (h // 2, w), "int16", np.random.default_rng(4)), np.eye(4)), str(src))
    res = CliRunner().invoke(app, ["restore", str(src), "--task", "mri-sr", "-o", str(out), "--device", "cpu", "--overwrite"])
    assert res.exit_code == 0, res.output
    found = re.search(r"kept the central (\d+) x (\d+) of (\d+) x (\d+) k-space samples \(detected\)", " ".join(res.output.split()))
    assert found and abs(int(found[1]) - h // 2) <= 1 and [int(g) for g in found.groups()[1:]] == [w, h, w], res.output


def test_the_report_warns_where_the_options_did_not_do_what_they_say(tmp_path, brain, tiny_weights):
    """A --kspace-factor the spectrum disagrees with, slices too small to look for zero filling,
    --passes where the band is unknown, a reference in other units: each a warning."""
    from conftest import amir

    def warnings_of(src, *args):
        out = tmp_path / "o.nii.gz"
        code, _, err = amir("restore", src, "--task", "mri-sr", "-o", out, "--overwrite", "-w", tiny_weights, *args)
        assert code == 0, err
        return json.loads(Path(str(out) + ".json").read_text())["warnings"]

    src = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(_zero_filled(brain[:, :, :2], 4, "clean", None), np.eye(4)), str(src))
    assert "--kspace-factor 2 was given, though the image looks zero-filled to the central 1/4 of k-space" in warnings_of(src, "--kspace-factor", "2")
    assert warnings_of(src, "--kspace-factor", "4") == []
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(_zero_filled(brain[:48, :48, :2], 4, "clean", None), np.eye(4)), str(small))
    (warning,) = warnings_of(small, "--passes", "2")[:1]
    assert warning.startswith("zero filling is not looked for on slices under 64 pixels a side")
    assert any(w.startswith("--passes applies where the k-space band is known") for w in warnings_of(small, "--passes", "2"))
    ref = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(brain[:, :, :2] * 100, np.eye(4)), str(ref))
    assert any("the reference's intensities are about" in w and "other units" in w for w in warnings_of(src, "--reference", ref))
    nib.save(nib.Nifti1Image(brain[:, :, :2], np.eye(4)), str(ref))
    assert not any("other units" in w for w in warnings_of(src, "--reference", ref))
