"""The shipped default weights on the examples and a validation subject: better than the input, also at the image edge."""

import numpy as np
import pytest
from conftest import DATA, EXAMPLES, needs_dev_data

from amir_cli.imaging import intensity
from amir_cli.imaging.degrade import mri_truncate
from amir_cli.imaging.io import read_image
from amir_cli.metrics import slice_scores, volume_scores
from amir_cli.device import pick_device
from amir_cli.restore import restore_volume
from amir_cli.weights import load_weights
from amir_cli.training.volumes import split_rows

# (task, low-quality file, reference file, k-space factor ("auto": recognised, as plain restore), least gain in dB)
CASES = [
    ("ct-denoise", "ct_head_quarter_dose.nii.gz", "ct_head_reference.nii.gz", None, 4.0),
    ("mri-sr", "mr_brain_x4.nii.gz", "mr_brain_reference.nii.gz", None, 0.3),
    ("mri-sr", "mr_brain_x4.nii.gz", "mr_brain_reference.nii.gz", "auto", 0.6),
    ("mri-sr", "mr_brain_x4.nii.gz", "mr_brain_reference.nii.gz", 4, 0.6),
    ("pet-synthesis", "pet_brain_quarter_dose.nii.gz", "pet_brain_reference.nii.gz", None, 2.0),
]


@pytest.fixture(scope="module")
def model():
    return load_weights(None, pick_device("cpu")).model


@pytest.mark.parametrize("task, lq_name, ref_name, kspace_factor, least_gain", CASES)
def test_examples_come_out_better_than_their_inputs(model, task, lq_name, ref_name, kspace_factor, least_gain):
    lq, ref = read_image(EXAMPLES / lq_name), read_image(EXAMPLES / ref_name)
    auto = kspace_factor == "auto"
    out, _ = restore_volume(model, lq, task, kspace_factor=None if auto else kspace_factor, detect_zero_filling=auto)

    def psnr(image):
        return volume_scores(image, ref.array, task, lq.slice_axis)["psnr"]

    assert psnr(out.array) - psnr(lq.array) > least_gain


@needs_dev_data("mr/abdomen_mr_slice.nii.gz")
def test_anatomy_cut_by_the_image_edge_is_not_made_worse(model):
    """The held-out bottom rows of the abdomen MR slice at x2: the body runs into the last row."""
    vol = read_image(DATA / "mr" / "abdomen_mr_slice.nii.gz")
    hq = np.squeeze(vol.array).astype(np.float32)
    hq = hq * intensity.mr_scale_factor(hq)
    _, (a, b) = split_rows(hq.shape[0])
    lq = mri_truncate(hq, 2)[a:b]
    ref = hq[a:b]
    assert ref[-1].mean() > 0.05 * ref.max()  # anatomy, not background, at the edge
    out, _ = restore_volume(model, vol.with_array(lq[:, :, None]), "mri-sr")
    gain = slice_scores(out.array[:, :, 0], ref, "mri-sr")["psnr"] - slice_scores(lq, ref, "mri-sr")["psnr"]
    # stage 21's network alone gains 0.07 dB on these cropped rows; stages 15 to 17 lost up to 0.041 (weights/README.md)
    assert gain > -0.05


def test_pet_background_noise_lets_the_network_denoise_an_osem_image(model):
    """The PET example's activity at dose 1/4 with noise shaped as OSEM shapes it (background
    noise-free): plain restore leaves it nearly as it is; with --pet-background-noise (the noise's SD
    in the body, from the reference) the network removes it."""
    from amir_cli.imaging.degrade import OSEM_NOISE_EXPONENT, degrade_slice, slice_rng

    ref = read_image(EXAMPLES / "pet_brain_reference.nii.gz")
    pix = float(np.mean(ref.inplane_spacing_mm))
    act = ref.slices_first()
    low = np.stack([degrade_slice(s, "pet-synthesis", 0.25, slice_rng(7, i), pixel_mm=pix, em_exponent=OSEM_NOISE_EXPONENT)
                    for i, s in enumerate(act)]).astype(np.float32)
    lq = ref.with_array(np.moveaxis(low, 0, ref.slice_axis))
    body = act > 0.1 * act.max()
    sd = float(np.sqrt(np.mean((low - act)[body] ** 2)))

    def gain(out):
        return volume_scores(out.array, ref.array, "pet-synthesis", ref.slice_axis)["psnr"] - \
            volume_scores(lq.array, ref.array, "pet-synthesis", ref.slice_axis)["psnr"]

    plain = gain(restore_volume(model, lq, "pet-synthesis")[0])
    filled, info = restore_volume(model, lq, "pet-synthesis", background_sd=sd)
    assert info["background_noise"]["filled_slices"] == len(act)
    assert plain < 0.3 and gain(filled) > plain + 0.5  # about +0.05 and +0.8 with stage 27


def test_plain_restore_chooses_a_fill_for_a_3d_osem_image(model):
    """The simulated body phantom of `benchmarks/pet_em_noise.py` (8 slices 4 mm apart, 2 mm pixels,
    hot spheres that change from slice to slice), its standard dose and dose 1/4 both OSEM-shaped:
    `amir restore` chooses a fill from the neighbouring slices and gains much more than the network
    on the image as it is."""
    import sys

    from amir_cli.imaging.degrade import OSEM_NOISE_EXPONENT as EM, pet_low_count, pet_standard_dose, slice_rng

    sys.path.insert(0, str(EXAMPLES.parent / "benchmarks"))
    from pet_em_noise import PHANTOM_MM, nema_iq_activity

    phantom = nema_iq_activity()
    hq = np.stack([pet_standard_dose(a, slice_rng(1, i), pixel_mm=PHANTOM_MM, em_exponent=EM)
                   for i, a in enumerate(phantom.slices_first())])
    lq = np.stack([pet_low_count(h, 0.25, slice_rng(2, i), pixel_mm=PHANTOM_MM, em_exponent=EM) for i, h in enumerate(hq)])
    vol = phantom.with_array(np.moveaxis(lq, 0, -1))

    def gain(out):
        return volume_scores(out.slices_first(), hq, "pet-synthesis", 0)["psnr"] - volume_scores(lq, hq, "pet-synthesis", 0)["psnr"]

    plain = gain(restore_volume(model, vol, "pet-synthesis")[0])
    chosen, info = restore_volume(model, vol, "pet-synthesis", choose_background=True)
    assert info["background_noise"]["from"] == "neighbour slices" and info["background_noise"]["sd"] > 0
    assert plain < 0.5 and gain(chosen) > plain + 1.0  # about +0.20 and +3.22 with stage 27
