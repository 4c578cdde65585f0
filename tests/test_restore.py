"""restore.py: devices, k-space upsampling, tiling, exact intensity round trips, task detection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from amir_cli.errors import BadInputError, DeviceError
from amir_cli.imaging.io import Volume, read_image
from amir_cli.imaging.kspace import kspace_upsample
from amir_cli.network import AMIR, get_config
from amir_cli.device import pick_device, precision_context
from amir_cli.inference import BORDER, self_ensemble, tiled_predict
from amir_cli.batch import distributed_share
from amir_cli.restore import restore_volume, routing_summary, scaled_affine
from amir_cli.taskdetect import detect_task
from amir_cli.weights import load_weights
from conftest import EXAMPLES, auto_engine


class Identity(torch.nn.Module):
    """A stand-in network that returns its input and records the batches it saw."""

    def __init__(self):
        super().__init__()
        self.shapes, self.given, self.computed = [], [], []

    def forward(self, x, instruction=None):
        self.shapes.append(tuple(x.shape))
        self.given.append(instruction)
        return x.clone()

    def instruction(self, x):
        self.computed.append(tuple(x.shape))
        return x.mean(dim=(1, 2, 3))[:, None].repeat(1, 256)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return AMIR(get_config("amir-tiny")).eval()


def _volume(array, *, spacing=(1.0, 1.0, 2.0), slice_axis=2, **kw):
    return Volume(array=np.asarray(array, np.float32), affine=np.diag([*spacing, 1.0]), slice_axis=slice_axis, **kw)


# ---- device and precision -----------------------------------------------------------------------


def test_pick_device_cpu_and_auto():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in ("cpu", "cuda", "mps")


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "gpu0"])
def test_pick_device_invalid(spec):
    with pytest.raises(DeviceError, match="invalid device"):
        pick_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_pick_device_unavailable_cuda(spec):
    with pytest.raises(DeviceError, match="not available"):
        pick_device(spec)


def test_fp16_on_cpu_is_refused_bf16_allowed():
    cpu = torch.device("cpu")
    with pytest.raises(DeviceError, match="fp16"):
        precision_context(cpu, "fp16")
    with precision_context(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


# ---- k-space upsampling and geometry ------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("shape", [(32, 24), (17, 20)])
def test_kspace_upsample_interpolates_at_the_new_voxel_centres(scale, shape):
    """A band-limited image is reproduced exactly at the fine voxel centres that scaled_affine names."""
    n, m = shape
    f = lambda x, y: 3 + np.cos(2 * np.pi * 2 * x / n) + 0.5 * np.sin(2 * np.pi * 3 * y / m)  # noqa: E731
    image = f(np.arange(n)[:, None], np.arange(m)[None, :])
    up = kspace_upsample(image, scale)
    assert up.shape == (n * scale, m * scale)
    # fine voxel centres in old voxel units, read from the affine itself
    fine = scaled_affine(np.eye(4), scale, slice_axis=2)
    x = fine[0, 0] * np.arange(n * scale) + fine[0, 3]
    y = fine[1, 1] * np.arange(m * scale) + fine[1, 3]
    np.testing.assert_allclose(up, f(x[:, None], y[None, :]), atol=1e-4)


def test_kspace_upsample_keeps_intensity():
    rng = np.random.default_rng(0)
    image = rng.uniform(100, 200, (40, 40))
    up = kspace_upsample(image, 2)
    assert abs(up.mean() - image.mean()) < 0.5
    np.testing.assert_allclose(kspace_upsample(np.full((16, 16), 7.5), 4), 7.5, atol=1e-5)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_scaled_affine_keeps_field_of_view(slice_axis):
    rng = np.random.default_rng(slice_axis)
    affine = np.eye(4)
    affine[:3, :3] = rng.normal(size=(3, 3)) + 3 * np.eye(3)
    affine[:3, 3] = rng.normal(size=3) * 50
    shape = np.array([20, 30, 10])
    fine = scaled_affine(affine, 2, slice_axis)
    fine_shape = np.where(np.arange(3) == slice_axis, shape, shape * 2)
    for corner in np.ndindex(2, 2, 2):
        c = np.array(corner, float)
        edge = np.where(np.arange(3) == slice_axis, c * (shape - 1), c * shape - 0.5)  # outer voxel edges
        fine_edge = np.where(np.arange(3) == slice_axis, c * (fine_shape - 1), c * fine_shape - 0.5)
        np.testing.assert_allclose((fine @ [*fine_edge, 1])[:3], (affine @ [*edge, 1])[:3], atol=1e-9)
    in_plane = [a for a in range(3) if a != slice_axis]
    np.testing.assert_allclose(np.linalg.norm(fine[:3, in_plane], axis=0), np.linalg.norm(affine[:3, in_plane], axis=0) / 2)


# ---- tiling ---------------------------------------------------------------------------------


def test_tiled_predict_is_exact_for_pointwise_predictors():
    x = torch.rand(2, 1, 70, 45)
    calls = []

    def predictor(t):
        calls.append(tuple(t.shape[-2:]))
        return t * 2 + 1

    y = tiled_predict(predictor, x, tile=32, overlap=0.25)
    torch.testing.assert_close(y, x * 2 + 1)
    assert len(calls) > 4 and all(h <= 32 and w <= 32 for h, w in calls)
    calls.clear()
    tiled_predict(predictor, x, tile=128)
    assert calls == [(70, 45)]  # fits in one tile


def test_tiled_restore_differs_from_the_whole_slice_far_less_than_the_noise():
    """Tiles see less context (borders; each tile's channel attention sees only its pixels), so the
    tiled image is not the whole one; but on real quarter-dose CT with the shipped weights it
    differs by under a tenth of the noise sigma that the network removes (measured: 0.05 sigma), and
    lies as close to the full-dose reference (within a fiftieth of sigma)."""
    crop = (slice(64, 160), slice(64, 160), slice(0, 1))
    lq = read_image(EXAMPLES / "ct_head_quarter_dose.nii.gz")
    lq = lq.with_array(lq.array[crop])
    ref = read_image(EXAMPLES / "ct_head_reference.nii.gz").array[crop]
    sigma = np.std(lq.array - ref)  # the quarter-dose noise, about 20 HU
    model = load_weights(None, "cpu").model
    whole, _ = restore_volume(model, lq, "ct-denoise")
    tiled, info = restore_volume(model, lq, "ct-denoise", tile=64)  # 2 x 2 tiles of 64, 16 overlapping
    assert info["tile"] == 64 and 15 < sigma < 30
    assert np.abs(whole.array - tiled.array).mean() < 0.1 * sigma
    error = [np.abs(out.array - ref).mean() for out in (whole, tiled)]
    assert abs(error[1] - error[0]) < 0.02 * sigma and max(error) < 0.5 * sigma, (error, sigma)


def test_routing_instruction_computed_once_per_batch_and_shared_by_tiles():
    vol = _volume(np.random.default_rng(2).uniform(-200, 200, (70, 60, 3)))
    model = Identity()
    restore_volume(model, vol, "ct-denoise", batch_size=2, tile=32)
    assert model.computed == [(2, 1, 70, 60), (1, 1, 70, 60)]  # whole slices, once per batch
    assert len(model.shapes) > 2 * len(model.computed)  # many tiles per batch
    assert all(i is not None and i.shape == (s[0], 256) for i, s in zip(model.given, model.shapes))
    first_batch = [i for i, s in zip(model.given, model.shapes) if s[0] == 2]
    assert all(torch.equal(i, first_batch[0]) for i in first_batch)


# ---- self-ensemble -------------------------------------------------------------------------


def test_self_ensemble_averages_over_flips_and_rotations():
    x = torch.rand(2, 1, 9, 7)
    torch.testing.assert_close(self_ensemble(lambda t: t * 3 - 1, x), x * 3 - 1)  # equivariant: unchanged
    # a one-pixel shift along W is seen, in the original frame, as a shift in each of the 4 directions twice
    shifted = self_ensemble(lambda t: torch.roll(t, 1, -1), x)
    expected = sum(torch.roll(x, s, d) for s in (1, -1) for d in (-1, -2)) / 4
    torch.testing.assert_close(shifted, expected)
    identity = torch.full_like(x, 8.0)  # a given untransformed output is used as the first of the 8
    torch.testing.assert_close(self_ensemble(lambda t: t, x, identity=identity), (x * 7 + 8) / 8)


def test_tta_restore_runs_the_whole_network_on_each_transform():
    vol = _volume(np.random.default_rng(3).uniform(-200, 200, (40, 30, 3)))
    model = Identity()
    plain, _ = restore_volume(model, vol, "ct-denoise", batch_size=2)
    model = Identity()
    ensembled, info = restore_volume(model, vol, "ct-denoise", batch_size=2, tta=True)
    assert info["tta"] is True
    np.testing.assert_allclose(plain.array, ensembled.array, atol=1e-3)  # the identity network is equivariant
    assert len(model.computed) == 2 * 8 and (2, 1, 30, 40) in model.computed  # own instruction per transform
    assert len(model.shapes) == 2 * 8


def test_tta_makes_a_real_network_exactly_rotation_equivariant(tiny):
    a = np.random.default_rng(4).uniform(-200, 200, (32, 24, 1))
    plain, _ = restore_volume(tiny, _volume(a), "ct-denoise")
    rotated_plain, _ = restore_volume(tiny, _volume(np.rot90(a, 1, (0, 1))), "ct-denoise")
    assert np.abs(np.rot90(plain.array, 1, (0, 1)) - rotated_plain.array).max() > 1  # the network alone is not
    ensembled, _ = restore_volume(tiny, _volume(a), "ct-denoise", tta=True)
    rotated, _ = restore_volume(tiny, _volume(np.rot90(a, 1, (0, 1))), "ct-denoise", tta=True)
    np.testing.assert_allclose(np.rot90(ensembled.array, 1, (0, 1)), rotated.array, atol=0.05)


# ---- intensity round trips -----------------------------------------------------------------


@pytest.mark.parametrize(
    "task, values",
    [
        ("ct-denoise", np.array([-3024, -2048, -1024, -1000, 0, 40, 1500, 3071, 4000])),
        ("pet-synthesis", np.array([0.0, 0.01, 1.5, 7.25, 19.9, 20.0, 35.0])),
        ("mri-sr", np.array([0.0, 3.0, 17.0, 250.0, 254.0, 255.0])),
    ],
)
def test_identity_network_gives_back_the_input(task, values):
    """Normalise -> network -> denormalise is exact; voxels outside the range pass through unchanged."""
    rng = np.random.default_rng(0)
    array = rng.choice(values, size=(24, 20, 5)).astype(np.float32)
    array[..., 0] = values.max()  # MR scale needs some foreground
    vol = _volume(array, spacing=(0.8, 0.8, 3.0))
    out, info = restore_volume(Identity(), vol, task, batch_size=2)
    np.testing.assert_allclose(out.array, array, rtol=1e-5, atol=1e-3 * max(1.0, float(np.abs(values).max())) * 1e-2)
    np.testing.assert_array_equal(out.affine, vol.affine)
    assert info["slices"] == 5 and info["routing"]["dimension"] == 256


def test_output_clipped_into_the_normalisation_range():
    class Overshoot(Identity):
        def forward(self, x, instruction=None):
            return x * 0 + 1.7  # far above 1 in normalised units

    vol = _volume(np.zeros((20, 20, 2), np.float32))
    out, _ = restore_volume(Overshoot(), vol, "ct-denoise")
    assert out.array.max() == pytest.approx(3071.0)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_slices_taken_along_the_acquisition_axis_and_batched(slice_axis):
    shape = [30, 26, 22]
    vol = _volume(np.ones(shape) * 50, slice_axis=slice_axis)
    model = Identity()
    out, info = restore_volume(model, vol, "ct-denoise", batch_size=4)
    n = shape[slice_axis]
    in_plane = tuple(s for a, s in enumerate(shape) if a != slice_axis)
    assert [s[0] for s in model.shapes] == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    # the network sees each slice inside its replicated border; the instruction sees the slice alone
    assert all(s[1:] == (1, *(d + 2 * BORDER for d in in_plane)) for s in model.shapes)
    assert all(s[1:] == (1, *in_plane) for s in model.computed)
    assert out.shape == vol.shape and info["slice_axis"] == slice_axis


def test_scale_2_grid_and_geometry():
    vol = _volume(np.random.default_rng(0).uniform(0, 1000, (24, 32, 3)), spacing=(0.9, 0.9, 4.0))
    out, info = restore_volume(Identity(), vol, "mri-sr", scale=2)
    assert out.shape == (48, 64, 3)
    np.testing.assert_allclose(out.spacing_mm, (0.45, 0.45, 4.0))
    np.testing.assert_allclose(out.affine, scaled_affine(vol.affine, 2, 2))


@pytest.mark.parametrize("task, scale", [("ct-denoise", 2), ("mri-sr", 3), ("pet-synthesis", 4)])
def test_bad_scale(task, scale):
    vol = _volume(np.ones((20, 20, 1)))
    with pytest.raises(BadInputError, match="--scale"):
        restore_volume(Identity(), vol, task, scale=scale)


def test_an_unknown_engine_or_no_pass_is_refused_with_the_other_options():
    from amir_cli.restore import RestoreOptions

    with pytest.raises(BadInputError, match=r"^--engine must be auto, native, fused or plain, got turbo$"):
        RestoreOptions(engine="turbo").check()
    RestoreOptions(engine="fused").check()
    with pytest.raises(BadInputError, match="--passes"):
        RestoreOptions(passes=0).check()


def test_batch_size_does_not_change_the_result(tiny):
    rng = np.random.default_rng(3)
    vol = _volume(rng.uniform(-1000, 1000, (24, 24, 3)))
    a, ia = restore_volume(tiny, vol, "ct-denoise", batch_size=1)
    b, ib = restore_volume(tiny, vol, "ct-denoise", batch_size=3)
    np.testing.assert_allclose(a.array, b.array, atol=0.05)
    assert ia["routing"]["top_indices"] == ib["routing"]["top_indices"]


def test_batches_overlap_with_the_network_and_come_back_in_order(monkeypatch):
    """A worker thread prepares and finishes batches while the network runs: every slice lands in
    its place, progress is reported in order up to the end, and a failure in the worker surfaces."""
    import threading

    import amir_cli.restore as R

    vol = _volume(np.arange(7 * 20 * 20, dtype=np.float32).reshape(20, 20, 7) % 900 - 400)
    threads, done = set(), []
    finish = R._SliceJob.finish

    def finish_noting_the_thread(self, batch, y):
        threads.add(threading.current_thread().name)
        finish(self, batch, y)

    monkeypatch.setattr(R._SliceJob, "finish", finish_noting_the_thread)
    out, info = restore_volume(Identity(), vol, "ct-denoise", batch_size=3, progress=lambda d, n: done.append((d, n)))
    np.testing.assert_allclose(out.array, vol.array, atol=0.01)  # the identity network: every slice in its place
    assert done == [(3, 7), (6, 7), (7, 7)] and info["batch_size"] == 3
    assert threads and threading.current_thread().name not in threads
    monkeypatch.setattr(R._SliceJob, "finish", lambda self, batch, y: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        restore_volume(Identity(), vol, "ct-denoise", batch_size=3)


def test_batch_size_default_is_one_slice_on_the_cpu(tiny):
    from amir_cli.restore import batch_size_for

    _, info = restore_volume(tiny, _volume(np.zeros((16, 16, 3))), "ct-denoise")
    assert info["batch_size"] == 1 and info["engine"] == auto_engine()
    assert batch_size_for(torch.device("cuda"), None) == 4 and batch_size_for(torch.device("cpu"), 2) == 2


def test_bf16_on_cpu_runs(tiny):
    vol = _volume(np.random.default_rng(4).uniform(0, 10, (16, 16, 1)))
    out, info = restore_volume(tiny, vol, "pet-synthesis", precision="bf16")
    ref, _ = restore_volume(tiny, vol, "pet-synthesis")
    assert info["precision"] == "bf16" and np.abs(out.array - ref.array).mean() < 0.5


def test_routing_summary():
    v = np.zeros(256)
    v[[3, 7, 200]] = [0.5, 2.0, 1.0]
    s = routing_summary(v)
    assert s["top_indices"][:3] == [7, 200, 3]
    assert s["mean_instruction_norm"] == pytest.approx(np.sqrt(0.25 + 4 + 1))


# ---- task detection -------------------------------------------------------------------------

_rng = np.random.default_rng(0)
_ct = np.full((40, 40, 3), -1000.0)
_ct[8:32, 8:32] = _rng.integers(-100, 1500, (24, 24, 3))
_pet = np.zeros((40, 40, 3))
_pet[10:30, 10:30] = _rng.gamma(2.0, 1.2, (20, 20, 3))
_mr = np.zeros((40, 40, 3))
_mr[5:35, 5:35] = _rng.integers(100, 900, (30, 30, 3))
_raw_ct = np.zeros((40, 40, 3))
_raw_ct[5:35, 5:35] = _rng.integers(1000, 1100, (30, 30, 3))
_zscore = _rng.normal(0, 1, (40, 40, 3))


@pytest.mark.parametrize(
    "array, extra, task, rule",
    [
        (_zscore, {"modality": "CT", "source_format": "dicom", "meta": {"dicom_modality": "CT"}}, "ct-denoise", "DICOM Modality is CT"),
        (_zscore, {"modality": "MR", "source_format": "dicom", "meta": {"dicom_modality": "MR"}}, "mri-sr", "DICOM Modality is MR"),
        (_zscore, {"modality": "PT", "source_format": "dicom", "meta": {"dicom_modality": "PT"}}, "pet-synthesis", "DICOM Modality is PT"),
        (_zscore, {"modality": "CT", "source_format": "itk"}, "ct-denoise", "MetaImage/NRRD Modality"),
        (_zscore, {"meta": {"description": "T1 MPRAGE sag"}}, "mri-sr", "header description"),
        (_zscore, {"meta": {"source_path": "/data/sub-01_FDG_pet.nii.gz"}}, "pet-synthesis", "file name"),
        (_zscore, {"meta": {"source_path": "/data/case7_ct.nii.gz"}}, "ct-denoise", "file name"),
        (_ct, {"meta": {"source_path": "/data/pet_ct_fused.nii.gz"}}, "ct-denoise", "air"),  # conflicting words: intensities
        (_ct, {"meta": {"source_path": "/data/scan.nii.gz", "description": "contrast study"}}, "ct-denoise", "intensities"),
        (_pet, {}, "pet-synthesis", "intensities"),
        (_mr, {}, "mri-sr", "intensities"),
    ],
)
def test_detect_task(array, extra, task, rule):
    vol = _volume(array, **extra)
    found, reason = detect_task(vol)
    assert found == task
    assert rule in reason


@pytest.mark.parametrize(
    "array",
    [_zscore, _raw_ct, np.zeros((40, 40, 3)), _mr / 1000.0, np.full((40, 40, 3), -500.0)],
    ids=["z-score", "ct-without-intercept", "all-zero", "mr-normalised-0-1", "negative-constant"],
)
def test_detect_task_ambiguous_asks_for_task(array):
    with pytest.raises(BadInputError, match="--task"):
        detect_task(_volume(array, meta={"source_path": "/data/scan_0001.nii.gz"}))


@pytest.mark.parametrize("modality", ["CR", "US"])
def test_detect_task_refuses_other_dicom_modalities(modality):
    vol = _volume(_mr, modality=modality, source_format="dicom", meta={"dicom_modality": modality})
    with pytest.raises(BadInputError, match=f"Modality is {modality}, not CT, MR or PT.*--task"):
        detect_task(vol)
    other = _volume(_mr, modality="OT", source_format="dicom", meta={"dicom_modality": "OT"})
    assert detect_task(other)[0] == "mri-sr"  # "other" says nothing: the intensities decide


def test_distributed_share(monkeypatch):
    cases = list(range(7))
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    assert distributed_share(cases) == ([1, 4], 1, 3)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert distributed_share(cases) == (cases, 0, 1)


def test_restore_array_2d_and_3d(tiny):
    from amir_cli.restore import restore_array

    rng = np.random.default_rng(5)
    two = rng.uniform(0, 800, (32, 40)).astype(np.float32)
    out = restore_array(two, "mri-sr", model=tiny, device="cpu", scale=2)
    assert out.shape == (64, 80) and out.dtype == np.float32
    three = rng.uniform(-1000, 500, (3, 32, 32)).astype(np.float32)
    assert restore_array(three, "ct-denoise", model=tiny, device="cpu", slice_axis=0).shape == three.shape


@pytest.mark.parametrize("runnable, preset, expected", [
    ("3", None, "True PASSIVE"),  # another program runs: threads sleep while they wait
    ("1", None, "False None"),  # only this process: they spin, the default
    ("3", "ACTIVE", "False ACTIVE"),  # the user's policy is kept
    ("OSError", None, "False None"),  # no /proc/loadavg (not Linux): the default
])
def test_openmp_threads_wait_passively_only_beside_other_programs(runnable, preset, expected):
    """In a fresh process (OpenMP reads the policy when torch is imported), with the kernel's count of
    runnable tasks replaced."""
    count = "raise OSError('no /proc')" if runnable == "OSError" else f"return {runnable}"
    code = (
        "import os, sys, amir_cli.device as d\n"
        f"def runnable():\n    {count}\n"
        "d._runnable_tasks = runnable\n"
        "print(d.wait_passively_if_busy(), os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update({"PYTHONPATH": str(Path(__file__).resolve().parents[1]), **({"OMP_WAIT_POLICY": preset} if preset else {})})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == [*expected.split(), "False"]


def test_openmp_wait_policy_is_left_alone_once_torch_is_loaded(monkeypatch):
    """Too late to matter, so not set (a library user's process keeps its environment)."""
    import torch  # noqa: F401

    from amir_cli import device

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(device, "_runnable_tasks", lambda: 5)
    assert not device.wait_passively_if_busy() and "OMP_WAIT_POLICY" not in os.environ


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_feature_maps_are_reused_without_fresh_page_faults():
    """Blocks of a few MB whose size changes from one to the next (as the experts' buffers do
    from slice to slice) are each mapped anew by default, at a page fault per 4 KB; the commands'
    heap keeps the freed memory for the next block."""
    code = (
        "import resource, sys, numpy as np\n"
        "from amir_cli.device import keep_freed_memory\n"
        "if sys.argv[1] == 'keep': assert keep_freed_memory()\n"
        "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for i in range(20):\n"
        "    a = np.ones((1 << 20) + 4096 * i, dtype=np.float32); del a\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
    )
    faults = {mode: int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True,
                                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}).stdout)
              for mode in ("default", "keep")}
    assert faults["keep"] * 5 < faults["default"], faults
