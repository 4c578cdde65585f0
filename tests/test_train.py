"""`amir train`: data, sampling, validation split, resumption after kill -9, faults, DDP, export."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from amir_cli.training import (
    PatchSampler,
    RunFolderError,
    SamplerOptions,
    TrainingDivergedError,
    TrainOptions,
    export_run,
    load_volumes,
    train,
    validation_set,
)
from amir_cli.training import checkpoint as ckpt
from amir_cli.errors import BadInputError
from amir_cli.tasks import TASKS
from amir_cli.training.options import task_cycle
from amir_cli.training.trainer import adam
from amir_cli.training.validation import input_scores
from amir_cli.training.volumes import split_rows, split_slices

ROOT = Path(__file__).resolve().parents[1]
SEAMS = ROOT / "tests" / "train_seams.py"  # `amir train` with a test seam, in a child process
TINY = dict(config="amir-tiny", batch_size=2, patch_size=32, workers=0, threads=1, val_slices=2, val_size=0, log_every=1, quiet=True)


def _phantom(kind: str, n: int = 48, slices: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - n / 2, xx - n / 2)
    out = np.zeros((n, n, slices), np.float32)
    for k in range(slices):
        if kind == "CT":  # water disc with a bone ring in air, HU
            img = np.where(r < n * 0.4, 40.0 + rng.normal(0, 5, (n, n)), -1000.0)
            img[(r < n * 0.4) & (r > n * 0.35)] = 900.0
        elif kind == "MRI":  # stripes of varying frequency, 8-bit-like units
            img = np.where(r < n * 0.4, 120 + 60 * np.sin(xx * (0.5 + 0.05 * k)), 0.0)
        else:  # PET: hot and warm bands, SUV
            img = np.where(r < n * 0.4, 2.0 + 6.0 * (np.sin(yy / 3 + k) > 0), 0.0)
        out[..., k] = img
    return out


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


@pytest.fixture(scope="module")
def hq_data(tmp_path_factory):
    """DATA/{CT,MRI,PET}/: one 12-slice volume each and a single-slice CT image."""
    root = tmp_path_factory.mktemp("hq_data")
    for kind in ("CT", "MRI", "PET"):
        _save(root / kind / f"{kind.lower()}_vol.nii.gz", _phantom(kind))
    _save(root / "CT" / "ct_single.nii.gz", _phantom("CT", n=64, slices=1, seed=3))
    return root


def _last_model(run_dir: Path) -> dict:
    return ckpt.load_torch(run_dir / ckpt.LAST)["model"]


# ------------------------------------------------------------------------------------ data
def test_on_the_fly_pairs_are_degraded(hq_data):
    vols, val_vols, layout = load_volumes(hq_data)
    assert val_vols is None and "on the fly" in layout
    sampler = PatchSampler(vols, TASKS, SamplerOptions(batch_size=6, patch_size=32), seed=1)
    b = sampler.batch(0)
    assert b["lq"].shape == b["hq"].shape == (6, 1, 32, 32) and b["lq"].dtype == np.float32
    assert sorted(b["task"].tolist()) == [0, 0, 1, 1, 2, 2]
    assert 0.0 <= b["hq"].min() and b["hq"].max() <= 1.0
    for lq, hq, t in zip(b["lq"], b["hq"], b["task"]):
        assert not np.allclose(lq, hq), TASKS[t]
        assert np.abs(lq - hq).mean() < 0.2  # degraded, not unrelated
    # MR: k-space truncation removes high frequencies
    mr = b["task"] == TASKS.index("mri-sr")
    hf = lambda a: (np.diff(a, 2, axis=-1) ** 2).mean() + (np.diff(a, 2, axis=-2) ** 2).mean()  # noqa: E731
    assert hf(b["lq"][mr]) < 0.7 * hf(b["hq"][mr])
    # a batch is a pure function of (seed, rank, iteration)
    again = PatchSampler(vols, TASKS, SamplerOptions(batch_size=6, patch_size=32), seed=1).batch(0)
    assert all(np.array_equal(b[k], again[k]) for k in b)
    other_rank = PatchSampler(vols, TASKS, SamplerOptions(batch_size=6, patch_size=32), seed=1, rank=1).batch(0)
    assert not np.array_equal(b["hq"], other_rank["hq"])


def test_tasks_sampled_evenly_and_single_task(hq_data):
    vols, _, _ = load_volumes(hq_data)
    sampler = PatchSampler(vols, TASKS, SamplerOptions(batch_size=8, patch_size=16), seed=0)
    counts = np.zeros(3, int)
    for it in range(30):  # task order only (no pixels): the schedule of groups
        for g in range(sampler.groups()):
            counts[TASKS.index(sampler.task_of(it, g))] += 1
    assert counts.max() - counts.min() <= 1 and counts.sum() == 240
    ct_only = PatchSampler(vols, ("ct-denoise",), SamplerOptions(batch_size=4, patch_size=32), seed=0)
    assert set(ct_only.batch(3)["task"].tolist()) == {TASKS.index("ct-denoise")}


def test_task_mix_sets_the_share_of_each_task(hq_data):
    vols, _, _ = load_volumes(hq_data)
    mix = {"ct-denoise": 3, "mri-sr": 2, "pet-synthesis": 1}
    sampler = PatchSampler(vols, TASKS, SamplerOptions(batch_size=8, patch_size=16, task_mix=mix), seed=0)
    counts = dict.fromkeys(TASKS, 0)
    for it in range(30):
        for g in range(sampler.groups()):
            counts[sampler.task_of(it, g)] += 1
    assert counts == {"ct-denoise": 120, "mri-sr": 80, "pet-synthesis": 40}
    assert task_cycle(list(TASKS), mix) == ["ct-denoise", "mri-sr", "ct-denoise", "pet-synthesis", "mri-sr", "ct-denoise"]
    assert task_cycle(list(TASKS)) == list(TASKS)  # the default is the even cycle
    with pytest.raises(BadInputError):
        task_cycle(list(TASKS), {"ct-denoise": 0, "mri-sr": 0, "pet-synthesis": 0})
    with pytest.raises(BadInputError, match="task-mix"):
        TrainOptions(data=str(hq_data), task_mix={"pet-synthesis": 1}, tasks=("ct-denoise",)).check()


def test_volume_weight_draws_matching_volumes_more_often(hq_data, tmp_path):
    from typer.testing import CliRunner

    from amir_cli.cli import app
    from amir_cli.training.volumes import TrainingDataError

    vols, _, _ = load_volumes(hq_data)
    even = PatchSampler(vols, TASKS, SamplerOptions(batch_size=4, patch_size=16), seed=0)
    weighted = PatchSampler(vols, TASKS, SamplerOptions(batch_size=4, patch_size=16, volume_weights={"ct_s*": 3, "mri_vol": 5}), seed=0)
    chances = lambda s, t: dict(zip((v.name for v in s.by_task[t][0]), s.by_task[t][1].tolist()))  # noqa: E731
    assert chances(even, "ct-denoise") == {"ct_single": 0.5, "ct_vol": 0.5}
    assert chances(weighted, "ct-denoise") == {"ct_single": 0.75, "ct_vol": 0.25}
    assert chances(weighted, "mri-sr") == {"mri_vol": 1.0}  # a task's only volume is drawn always
    with pytest.raises(TrainingDataError, match="matches no training volume"):
        PatchSampler(vols, TASKS, SamplerOptions(batch_size=4, patch_size=16, volume_weights={"ct_sngle": 3}), seed=0)
    with pytest.raises(BadInputError, match="must be positive"):
        TrainOptions(data=str(hq_data), volume_weights={"ct_*": 0.0}).check()
    bad = CliRunner().invoke(app, ["train", str(hq_data), "--volume-weight", "ct_*=many", "--out", str(tmp_path / "r")])
    assert bad.exit_code == 2 and "KEY=N" in bad.output and not (tmp_path / "r").exists()


def test_task_patch_size_sets_each_tasks_patches(hq_data):
    vols, _, _ = load_volumes(hq_data)
    sizes = {"ct-denoise": 48, "pet-synthesis": 48}
    sampler = PatchSampler(vols, TASKS, SamplerOptions(batch_size=2, crops_per_slice=2, patch_size=16, task_patch_size=sizes), seed=0)
    seen = {}
    for it in range(6):
        b = sampler.batch(it)
        seen[TASKS[int(b["task"][0])]] = b["lq"].shape
        assert b["hq"].shape == b["lq"].shape and len(set(b["task"].tolist())) == 1
    assert seen == {"mri-sr": (2, 1, 16, 16), "ct-denoise": (2, 1, 48, 48), "pet-synthesis": (2, 1, 48, 48)}
    with pytest.raises(BadInputError, match="one slice per batch"):
        TrainOptions(data=str(hq_data), batch_size=4, crops_per_slice=2, task_patch_size=sizes).check()
    with pytest.raises(BadInputError, match="not trained"):
        TrainOptions(data=str(hq_data), tasks=("mri-sr",), crops_per_slice=8, task_patch_size=sizes).check()
    with pytest.raises(BadInputError, match="multiple of 8"):
        TrainOptions(data=str(hq_data), crops_per_slice=8, task_patch_size={"ct-denoise": 60}).check()


def test_mr_noise_puts_a_rician_floor_in_reference_and_input(hq_data):
    vols, _, _ = load_volumes(hq_data, ("mri-sr",))
    background = lambda b: b["hq"][b["hq"] < 0.005]  # noqa: E731  (the phantom's zero background)
    clean = PatchSampler(vols, ("mri-sr",), SamplerOptions(batch_size=8, patch_size=32), seed=4).batch(0)
    noisy_opts = SamplerOptions(batch_size=8, patch_size=32, mr_noise=0.05)
    noisy = PatchSampler(vols, ("mri-sr",), noisy_opts, seed=4).batch(0)
    assert np.abs(clean["hq"][clean["hq"] < 1e-6]).max() == 0.0  # no noise without the option
    assert (noisy["hq"] > 0).mean() > 0.99  # magnitude noise: positive everywhere
    assert 0 < background(noisy).mean() < 0.05
    again = PatchSampler(vols, ("mri-sr",), noisy_opts, seed=4).batch(0)
    assert np.array_equal(noisy["hq"], again["hq"]) and np.array_equal(noisy["lq"], again["lq"])


def test_zoom_jitter_resamples_slices_and_degrades_them_at_their_new_pixel_size(hq_data, monkeypatch):
    from amir_cli.imaging import degrade
    from amir_cli.training.sampling import _zoom

    rng = np.random.default_rng(0)
    sides = []
    for _ in range(40):
        out, f = _zoom(np.ones((200, 150), np.float32), 2.0, rng)
        side = max(out.shape)
        assert side % 64 == 0 and side == round(200 * f) and 0.5 / 1.2 < f < 2 * 1.2
        sides.append(side)
    assert len(set(sides)) >= 4

    seen = []
    real = degrade.degrade_slice
    monkeypatch.setattr(degrade, "degrade_slice", lambda img, task, level, rng, pixel_mm, **kw: seen.append((img.shape[0], pixel_mm)) or real(img, task, level, rng, pixel_mm=pixel_mm, **kw))
    vols, _, _ = load_volumes(hq_data, ("ct-denoise",))
    opts = SamplerOptions(batch_size=8, patch_size=32, zoom_jitter=2.0)
    batch = PatchSampler(vols, ("ct-denoise",), opts, seed=3).batch(0)
    assert batch["lq"].shape == (8, 1, 32, 32)
    # the phantoms are 48 and 64 pixels of 1 mm; resampled to a multiple of 64, pixels shrink alike
    assert any(p != 1 for _, p in seen)
    assert all(p == pytest.approx(48 / n) or p == pytest.approx(64 / n) for n, p in seen)


def test_zoom_tasks_limits_the_pixel_size_augmentation_to_the_named_tasks(hq_data, monkeypatch):
    from amir_cli.imaging import degrade

    seen = []
    real = degrade.degrade_slice
    monkeypatch.setattr(degrade, "degrade_slice", lambda img, task, level, rng, pixel_mm, **kw: seen.append((task, img.shape, pixel_mm)) or real(img, task, level, rng, pixel_mm=pixel_mm, **kw))
    tasks = ("mri-sr", "ct-denoise")
    vols, _, _ = load_volumes(hq_data, tasks)
    native = {(v.task, v.hq.shape[1:], v.pixel_mm) for v in vols}
    opts = SamplerOptions(batch_size=8, patch_size=32, zoom_jitter=2.0, zoom_tasks=("ct-denoise",))
    sampler = PatchSampler(vols, tasks, opts, seed=5)
    for it in range(4):
        sampler.batch(it)
    mr = [s for s in seen if s[0] == "mri-sr"]
    ct = [s for s in seen if s[0] == "ct-denoise"]
    assert mr and ct
    assert all(s in native for s in mr)  # MR slices keep their own grid and pixel size
    assert any(s not in native for s in ct)
    with pytest.raises(BadInputError, match="--zoom-tasks"):
        TrainOptions(data="x", tasks=("ct-denoise",), zoom_tasks=("mri-sr",)).check()


def test_validation_split_disjoint_from_training(hq_data):
    for n in (1, 2, 5, 12, 108, 181):
        train_idx, val_idx = split_slices(n)
        if n > 1:
            assert len(val_idx) >= 1 and not set(train_idx) & set(val_idx)
            assert len(train_idx) >= 1
    rows, (a, b) = split_rows(64)
    assert rows <= a < b == 64
    vols, _, _ = load_volumes(hq_data)
    val = validation_set(vols, TASKS, per_task=3, size=None, seed=0)
    assert {s.task for s in val} == set(TASKS)
    for s in val:
        v = next(v for v in vols if v.name == s.volume)
        if v.n_slices > 1:
            assert s.index in v.val_slices and s.index not in v.train_slices
        else:  # single slice: validation rows below the training rows
            assert v.val_rows[0] >= v.train_rows and s.hq_phys.shape[0] == v.val_rows[1] - v.val_rows[0]
    # deterministic
    again = validation_set(vols, TASKS, per_task=3, size=None, seed=0)
    assert all(np.array_equal(x.lq_phys, y.lq_phys) for x, y in zip(val, again))


def test_paired_layout_loads(tmp_path):
    root = tmp_path / "paired"
    for split, n in (("train", 2), ("validation", 1)):
        for i in range(n):
            hq = _phantom("CT", slices=4, seed=i)
            lq = hq + np.random.default_rng(i).normal(0, 30, hq.shape).astype(np.float32)
            _save(root / "CT" / split / "HQ" / f"case{i}.nii.gz", hq)
            _save(root / "CT" / split / "LQ" / f"case{i}.nii.gz", lq)
    _save(root / "CT" / "train" / "HQ" / "unpaired.nii.gz", _phantom("CT", slices=4))  # ignored: no LQ
    vols, val_vols, layout = load_volumes(root, ("ct-denoise",))
    assert layout == "paired" and len(vols) == 2 and len(val_vols) == 1
    assert all(v.lq is not None and len(v.train_slices) == 4 for v in vols)
    b = PatchSampler(vols, ("ct-denoise",), SamplerOptions(batch_size=2, patch_size=32), seed=0).batch(0)
    assert b["lq"].shape == (2, 1, 32, 32) and not np.allclose(b["lq"], b["hq"])
    val = validation_set(val_vols, ("ct-denoise",), per_task=2, size=None)
    assert len(val) == 2 and all(s.level == "paired" and s.volume == "case0" for s in val)
    with pytest.raises(Exception, match="mri-sr"):
        load_volumes(root, ("mri-sr",))


# ------------------------------------------------------------------------------------ faults
def test_resume_after_kill_equals_uninterrupted_run(hq_data, tmp_path):
    common = dict(TINY, data=str(hq_data), iterations=6, checkpoint_every=3, val_every=3, seed=5, ema=0.5)
    train(TrainOptions(**common, out=str(tmp_path / "straight")))

    killed = tmp_path / "killed"
    cmd = [sys.executable, str(SEAMS), "kill", "4", "--", "train", str(hq_data), "--out", str(killed), "--config", "amir-tiny",
           "--iterations", "6", "--checkpoint-every", "3", "--val-every", "3", "--batch-size", "2", "--patch-size", "32",
           "--workers", "0", "--threads", "1", "--val-slices", "2", "--val-size", "0", "--log-every", "1", "--seed", "5", "--ema", "0.5", "--quiet"]
    # SIGKILL right after iteration 4 (checkpoint at 3)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert ckpt.load_torch(killed / ckpt.LAST)["iteration"] == 3

    train(TrainOptions(quiet=True), resume=killed)
    for which in ("model", "ema"):  # the moving average resumes with its warm-up where it was
        a, b = (ckpt.load_torch(run / ckpt.LAST)[which] for run in (tmp_path / "straight", killed))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"resumed {which} weights differ from the uninterrupted run"
    # the log holds every iteration exactly once, and the curves were drawn
    its = [r["iteration"] for r in map(json.loads, (killed / ckpt.METRICS).read_text().splitlines()) if r["kind"] == "train"]
    assert its == [1, 2, 3, 4, 5, 6]
    assert (killed / ckpt.CURVES).stat().st_size > 1000 and (killed / ckpt.BEST).exists()
    run = json.loads((killed / ckpt.RUN_JSON).read_text())
    assert len(run["invocations"]) == 2 and run["seed"] == 5 and "--seed 5" in run["command"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(hq_data, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_abs = torch.Tensor.abs

    def poisoned_abs(self):  # the L1 term turns NaN at the third iteration (one abs per step: no MR consistency term)
        calls["n"] += 1
        out = real_abs(self)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(torch.Tensor, "abs", poisoned_abs)
    run = tmp_path / "nan"
    with pytest.raises(TrainingDivergedError, match="iteration 3.*last good checkpoint"):
        train(TrainOptions(**TINY, data=str(hq_data), out=str(run), iterations=10, checkpoint_every=1, val_every=100,
                           mr_consistency_loss=False))
    state = ckpt.load_torch(run / ckpt.LAST)
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_huge_learning_rate_diverges_cleanly(hq_data, tmp_path):
    with pytest.raises(TrainingDivergedError, match="loss became"):
        train(TrainOptions(**TINY, data=str(hq_data), out=str(tmp_path / "lr"), iterations=6, lr=1e30, checkpoint_every=1, val_every=100))


def test_unwritable_run_folder_is_a_clear_error(hq_data, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunFolderError, match="cannot create run folder"):
        train(TrainOptions(**TINY, data=str(hq_data), out=str(blocker / "run"), iterations=2))

    run = tmp_path / "full"
    real_replace = os.replace
    writes = {"n": 0}

    def full_disk(src, dst):
        if str(dst).endswith(ckpt.LAST):
            writes["n"] += 1
            if writes["n"] == 2:
                raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(RunFolderError, match="No space left on device.*the previous one is intact"):
        train(TrainOptions(**TINY, data=str(hq_data), out=str(run), iterations=4, checkpoint_every=1, val_every=100))
    assert ckpt.load_torch(run / ckpt.LAST)["iteration"] == 1
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_run_folder_with_a_run_needs_resume(hq_data, tmp_path):
    run = tmp_path / "r"
    train(TrainOptions(**TINY, data=str(hq_data), out=str(run), iterations=1, val_every=100))
    with pytest.raises(RunFolderError, match="--resume"):
        train(TrainOptions(**TINY, data=str(hq_data), out=str(run), iterations=1))


# ------------------------------------------------------------------------------------ scale-out
def test_ddp_two_ranks_end_with_identical_weights(hq_data, tmp_path):
    hashes = tmp_path / "hashes"
    hashes.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SEAMS), "hash", str(hashes), "--", "train",
           str(hq_data), "--out", str(tmp_path / "ddp"), "--config", "amir-tiny", "--iterations", "2", "--batch-size", "2",
           "--patch-size", "32", "--workers", "0", "--threads", "1", "--val-every", "2", "--val-slices", "1",
           "--val-size", "0", "--device", "cpu", "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    h0, h1 = (hashes / "rank0.txt").read_text(), (hashes / "rank1.txt").read_text()
    assert h0 == h1
    run = json.loads((tmp_path / "ddp" / ckpt.RUN_JSON).read_text())
    assert run["world_size"] == 2 and run["global_batch"] == 4
    state = ckpt.load_torch(tmp_path / "ddp" / ckpt.LAST)
    assert state["iteration"] == 2 and not any(k.startswith("module.") for k in state["model"])


# ------------------------------------------------------------------------------------ export / CLI
def test_cli_train_export_makes_a_loadable_registry_entry(hq_data, tmp_path, amir_home):
    from typer.testing import CliRunner

    from amir_cli import weights
    from amir_cli.cli import app

    run = tmp_path / "cli_run"
    args = ["train", str(hq_data), "--out", str(run), "--config", "amir-tiny", "--iterations", "2", "--batch-size", "2",
            "--patch-size", "32", "--workers", "0", "--threads", "1", "--val-every", "2", "--val-slices", "1",
            "--val-size", "0", "--ema", "0.5", "--tasks", "ct-denoise,mri-sr", "--export", "tiny-run", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["iterations"] == 2 and summary["exported"]["name"] == "tiny-run"
    entry = weights.find("tiny-run")
    weights.verify(entry)
    model = weights.load_model("tiny-run")
    assert sum(p.numel() for p in model.parameters()) == entry.info["parameters"]
    for key in ("config_name", "tasks", "training_data", "recipe", "command", "seed", "iterations", "parameters", "scores"):
        assert entry.info.get(key) is not None, key
    assert entry.info["tasks"] == ["mri-sr", "ct-denoise"] and entry.info["config_name"] == "amir-tiny"
    assert "EMA" in entry.info["source"]
    best = ckpt.load_torch(run / ckpt.BEST)
    assert all(torch.equal(best["model"][k], v) for k, v in weights.read_state_dict(entry.path).items())
    # library export of the same run under another name, and the CLI's weights add
    last = export_run(run, "tiny-run-2", which="last")  # iteration 2 was validated: its scores come along
    assert last.name == "tiny-run-2" and last.info["scores"]["iteration"] == 2
    assert last.info["scores"]["model"].keys() == best["scores"]["model"].keys()
    assert last.info["scores"]["mean_gain_db"] == pytest.approx(best["scores"]["mean_gain_db"])
    added = CliRunner().invoke(app, ["weights", "add", str(run), "--name", "tiny-run-3", "--json"])
    assert added.exit_code == 0, added.output
    dup = CliRunner().invoke(app, ["weights", "add", str(run), "--name", "tiny-run-3"])
    assert dup.exit_code != 0


def test_cli_train_errors_exit_1(tmp_path):
    from amir_cli.cli import main

    proc = subprocess.run([sys.executable, "-m", "amir_cli", "train", str(tmp_path / "missing"), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert callable(main)


@pytest.mark.parametrize("weighting, mr_loss", [("uniform", "l1"), ("relative", "l1"), ("relative", "rmse"), ("psnr", "l1")])
def test_fresh_network_is_the_identity_and_relative_loss_weighs_tasks_equally(hq_data, tmp_path, weighting, mr_loss):
    """A new network starts as the identity, so each sample's relative L1 (or MR's relative RMSE) is
    exactly 1 and its PSNR deficit to its input exactly 0 dB (without the MR consistency term, which
    changes the output)."""
    run = tmp_path / weighting
    train(TrainOptions(**{**TINY, "log_every": 1}, data=str(hq_data), out=str(run), iterations=1, val_every=100,
                       task_weighting=weighting, mr_consistency_loss=False, mr_loss=mr_loss))
    rec = next(r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train")
    main = rec["loss"] - 0.001 * rec["load_loss"]
    assert rec["l1"] > 0
    if weighting == "psnr":
        assert main == pytest.approx(0.0, abs=1e-4)
    else:
        assert main == pytest.approx(1.0 if weighting == "relative" else rec["l1"], rel=1e-4)


@pytest.mark.parametrize("passes", [2, 3])
def test_cascade_errors_score_restores_cascade_with_gradients_through_every_pass(passes):
    from amir_cli.imaging.degrade import mri_truncate
    from amir_cli.imaging.kspace import data_consistency
    from amir_cli.training.trainer import _consistent, cascade_errors

    rng = np.random.default_rng(0)
    hq = torch.from_numpy(np.abs(rng.normal(0.5, 0.2, (3, 1, 32, 32))).astype(np.float32))
    lq = torch.stack([torch.from_numpy(mri_truncate(h[0].numpy(), 4))[None] for h in hq])
    factors = torch.tensor([4, 0, 4])
    pred = (lq * 1.1).requires_grad_()
    forward = lambda x: (x.clamp(min=0) ** 0.8, torch.tensor(0.25))  # noqa: E731
    idx, errors, load = cascade_errors(forward, _consistent(pred, lq, factors), lq, hq, factors, passes=passes)
    assert idx.tolist() == [0, 2] and errors.shape == (passes - 1, 2) and load.item() == pytest.approx(0.25 * (passes - 1))
    for row, i in enumerate(idx.tolist()):  # the five-projection consistency of training, in numpy
        dc = lambda y: data_consistency(y, lq[i, 0].numpy(), 4, iterations=5)  # noqa: E731
        last = dc(pred[i, 0].detach().numpy())
        for k in range(passes - 1):
            last = dc(last + 0.5 * (np.clip(last, 0, None) ** 0.8 - last))
            assert errors[k, row].item() == pytest.approx(np.abs(last - hq[i, 0].numpy()).mean(), rel=1e-3)
    errors[-1].sum().backward()
    assert pred.grad[1].abs().sum() == 0 and pred.grad[[0, 2]].abs().sum() > 0


def test_training_with_the_cascade_loss_runs_and_logs_finite_losses(hq_data, tmp_path):
    run = tmp_path / "cascade"
    train(TrainOptions(**TINY, data=str(hq_data), out=str(run), iterations=3, val_every=100, mr_cascade_loss=True,
                       mr_cascade_passes=3, tasks=("mri-sr",)))
    recs = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert len(recs) == 3 and all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in recs)
    with pytest.raises(BadInputError, match="--mr-cascade-passes must be at least 2"):
        TrainOptions(data=str(hq_data), mr_cascade_passes=1).check()


def test_sample_errors_are_rmse_in_the_rows_asked_and_l1_elsewhere():
    from amir_cli.training.trainer import sample_errors

    hq = torch.zeros(2, 1, 2, 2)
    pred = torch.tensor([3.0, -4.0, 0.0, 0.0]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    assert sample_errors(pred, hq).tolist() == [1.75, 1.75]
    assert sample_errors(pred, hq, torch.tensor([True, False])).tolist() == pytest.approx([2.5, 1.75])
    with pytest.raises(BadInputError, match="mr-loss"):
        TrainOptions(mr_loss="l2").check()
    with pytest.raises(BadInputError, match="ct-loss"):
        TrainOptions(ct_loss="l2").check()
    with pytest.raises(BadInputError, match="ct-soft-kernels"):
        TrainOptions(ct_soft_kernels=1.5).check()
    with pytest.raises(BadInputError, match="pet-em-noise"):
        TrainOptions(pet_em_noise=-0.1).check()


@pytest.mark.parametrize("mr_loss, ct_loss, rows", [("l1", "l1", None), ("rmse", "l1", [False, True, False]),
                                                    ("l1", "rmse", [True, False, False]), ("rmse", "rmse", [True, True, False])])
def test_rmse_rows_are_the_samples_of_the_tasks_asked(mr_loss, ct_loss, rows):
    from amir_cli.training.trainer import rmse_samples

    tid = torch.tensor([TASKS.index(t) for t in ("ct-denoise", "mri-sr", "pet-synthesis")])
    got = rmse_samples(tid, TrainOptions(mr_loss=mr_loss, ct_loss=ct_loss))
    assert (got if got is None else got.tolist()) == rows


def test_psnr_deficit_is_the_psnr_gain_with_its_sign_flipped():
    """The loss of a sample is minus its SPEC §4 PSNR gain over the input (data range 1)."""
    from amir_cli.metrics import psnr
    from amir_cli.training.trainer import psnr_deficit

    rng = np.random.default_rng(3)
    hq = rng.uniform(0, 1, (2, 1, 32, 32))
    hq[:, :, 0, 0], hq[:, :, 0, 1] = 0.0, 1.0  # data range exactly 1
    lq = hq + rng.normal(0, 0.05, hq.shape)
    pred = hq + rng.normal(0, 0.02, hq.shape)
    got = psnr_deficit(*(torch.from_numpy(a) for a in (pred, hq, lq))).numpy()
    want = [psnr(lq[i, 0], hq[i, 0], (-10, 10)) - psnr(pred[i, 0], hq[i, 0], (-10, 10)) for i in range(2)]
    assert got == pytest.approx(want, abs=1e-3)
    assert (got < -7).all()  # 0.05 -> 0.02 noise: about 8 dB better


def test_resume_takes_the_options_given_again_even_at_their_default(tmp_path, monkeypatch):
    """An option given again on --resume replaces the run's recorded value, also when it is the default."""
    from typer.testing import CliRunner

    import amir_cli.training as T
    from amir_cli.cli import app
    from amir_cli.training.options import resumed_options

    recorded = TrainOptions(data="D", val_every=2, iterations=6, workers=0, seed=5).to_dict()
    o = resumed_options(recorded, TrainOptions(iterations=10), changed={"val_every", "iterations"})
    assert (o.val_every, o.iterations, o.workers, o.seed, o.data) == (TrainOptions().val_every, 10, 0, 5, "D")
    assert resumed_options(recorded, TrainOptions(seed=5, data="D"), changed={"seed", "data"}).seed == 5  # the same again
    with pytest.raises(BadInputError, match=r"^--seed differs from the resumed run's \(5\): a resumed run keeps its options; "
                                            r"only --iterations, .*--export may change$"):
        resumed_options(recorded, TrainOptions(seed=9), changed={"seed"})  # not resumable
    with pytest.raises(BadInputError, match="^DATA differs"):
        resumed_options(recorded, TrainOptions(data="E"), changed={"data"})
    assert resumed_options(recorded, TrainOptions(), changed=set()).val_every == 2

    seen = {}
    monkeypatch.setattr(T, "train", lambda options, resume=None, command=None, changed=None: seen.update(changed=changed) or {"run_dir": str(resume), "iterations": 10})
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path), "--val-every", str(TrainOptions().val_every), "--iterations", "10", "--json"])
    assert result.exit_code == 0, result.output
    assert seen["changed"] == {"val_every", "iterations", "quiet"}
    bad = CliRunner().invoke(app, ["train", str(tmp_path), "--task-weighting", "loudest"])
    assert bad.exit_code == 2 and "uniform" in bad.output


def test_the_first_command_line_again_with_resume_continues_and_other_values_are_refused(hq_data, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from amir_cli.cli import app

    monkeypatch.chdir(tmp_path)
    line = ["train", str(hq_data), "--out", "r", "--config", "amir-tiny", "--batch-size", "2", "--patch-size", "32",
            "--workers", "0", "--threads", "1", "--val-every", "100", "--val-slices", "1", "--val-size", "0",
            "--task-mix", "ct-denoise=2,mri-sr=1,pet-synthesis=1", "--ct-dose", "1/10:1/2", "--mr-factors", "4,4,2",
            "--tasks", "pet-synthesis,ct-denoise,mri-sr", "--zoom-tasks", "pet-synthesis,ct-denoise", "--volume-weight",
            "ct_*=2", "-q"]
    first = CliRunner().invoke(app, [*line, "--iterations", "1"])
    assert first.exit_code == 0, first.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # DATA and the run folder by other paths
    again = CliRunner().invoke(app, [*line[:3], str(tmp_path / "r"), *line[4:], "--resume", str(tmp_path / "r"), "--iterations", "2"])
    assert again.exit_code == 0, (again.output, again.exception)
    assert ckpt.load_torch(tmp_path / "r" / ckpt.LAST)["iteration"] == 2
    changed = CliRunner().invoke(app, [*line[:3], str(tmp_path / "r"), *line[4:], "--resume", str(tmp_path / "r"), "--iterations", "3",
                                      "--ct-dose", "0.2:0.5"])
    assert changed.exit_code == 1 and "--ct-dose differs from the resumed run's (0.1,0.5)" in str(changed.exception)


def test_a_taken_export_name_is_refused_before_any_training(hq_data, tmp_path, amir_home):
    from amir_cli.errors import WeightsError

    with pytest.raises(WeightsError, match="names weights shipped with amir"):
        train(TrainOptions(**TINY, data=str(hq_data), out=str(tmp_path / "r"), iterations=1, export="amir-s"))
    assert not (tmp_path / "r").exists()


def test_option_checks_before_any_work():
    with pytest.raises(BadInputError, match="--val-size must be 0 .whole slices. or at least 11"):
        TrainOptions(val_size=10).check()
    with pytest.raises(BadInputError, match="--pet-dose range must satisfy 0.001 <= low"):
        TrainOptions(pet_dose=(1e-5, 0.5)).check()
    TrainOptions(val_size=0).check()


def test_validation_scores_mr_after_the_protocol_scale(tmp_path):
    """Validation scores MR as the protocol does (the volume's scale into the 12-bit window first):
    the same image in units 100 times larger scores the same, not clipped at 4095."""
    scores = []
    for k in (1, 100):
        _save(tmp_path / f"d{k}" / "MRI" / "mr.nii.gz", _phantom("MRI") * k)
        volumes, _val, _layout = load_volumes(tmp_path / f"d{k}", ("mri-sr",))
        val = validation_set(volumes, ("mri-sr",), per_task=2, size=None)
        scores.append(input_scores(val)["mri-sr"])
    assert scores[0]["psnr"] == pytest.approx(scores[1]["psnr"], abs=1e-4)
    assert scores[0]["rmse"] == pytest.approx(scores[1]["rmse"], rel=1e-4)


def test_training_data_messages_name_the_file_once(tmp_path, hq_data):
    (tmp_path / "C" / "MRI").mkdir(parents=True)
    (tmp_path / "C" / "MRI" / "bad.nii.gz").write_text("x")
    with pytest.raises(BadInputError) as err:
        load_volumes(tmp_path / "C", ("mri-sr",))
    assert str(err.value).count("bad.nii.gz") == 1
    _save(tmp_path / "Z" / "MRI" / "zero.nii.gz", np.zeros((32, 32, 4), np.float32))
    with pytest.raises(BadInputError, match=r"zero.nii.gz: MR image has no positive voxels"):
        load_volumes(tmp_path / "Z", ("mri-sr",))
    with pytest.raises(BadInputError, match="training data folder is not a folder"):
        load_volumes(tmp_path / "Z" / "MRI" / "zero.nii.gz")


def test_a_paired_layout_with_volumes_beside_it_is_refused(tmp_path):
    for split in ("HQ", "LQ"):
        _save(tmp_path / "M" / "MRI" / "train" / split / "a.nii.gz", _phantom("MRI"))
    _save(tmp_path / "M" / "CT" / "ct.nii.gz", _phantom("CT"))
    with pytest.raises(BadInputError, match="the two layouts cannot be mixed"):
        load_volumes(tmp_path / "M", ("mri-sr", "ct-denoise"))


def test_volumes_below_a_data_folder_train_but_not_those_of_its_validation_or_test_folders(tmp_path):
    _save(tmp_path / "D" / "CT" / "site1" / "a.nii.gz", _phantom("CT"))
    _save(tmp_path / "D" / "CT" / "validation" / "v.nii.gz", _phantom("CT", seed=2))
    _save(tmp_path / "D" / "CT" / "test" / "HQ" / "t.nii.gz", _phantom("CT", seed=3))
    train_volumes, val_volumes, _layout = load_volumes(tmp_path / "D", ("ct-denoise",))
    assert [v.name for v in train_volumes] == ["a"] and [v.name for v in val_volumes] == ["v"]


def test_training_folders_below_the_depth_searched_are_named_in_a_warning(tmp_path):
    _save(tmp_path / "D" / "CT" / "a.nii.gz", _phantom("CT"))
    _save(tmp_path / "D" / "CT" / "1" / "2" / "3" / "4" / "5" / "6" / "deep.nii.gz", _phantom("CT", seed=2))
    with pytest.warns(UserWarning, match=r"1 folder holding files more than 5 folders deep was not searched for images: .*CT/1/2/3/4/5/6"):
        train_volumes, _val, _layout = load_volumes(tmp_path / "D", ("ct-denoise",))
    assert [v.name for v in train_volumes] == ["a"]


def test_a_dicom_training_folder_named_like_an_image_file_keeps_its_whole_name(tmp_path):
    from amir_cli.training.volumes import _make_volume
    from amir_cli.imaging.io import Volume

    folder = tmp_path / "scan.nii"
    folder.mkdir()
    volume = _make_volume(Volume(_phantom("CT"), np.eye(4)), None, "ct-denoise", folder, holdout=False)
    assert volume.name == "scan.nii"


def test_paired_training_cases_pair_by_their_path_below_hq_and_lq(tmp_path):
    for split, sub in (("HQ", "a"), ("HQ", "c"), ("LQ", "b"), ("LQ", "c")):
        _save(tmp_path / "P" / "MRI" / "train" / split / sub / "x.nii.gz", _phantom("MRI", seed=ord(sub)))
    _save(tmp_path / "P" / "MRI" / "test" / "HQ" / "t.nii.gz", _phantom("MRI"))  # the paper's test split beside: fine
    volumes, _val, layout = load_volumes(tmp_path / "P", ("mri-sr",))
    assert layout == "paired" and [v.path for v in volumes] == [str(tmp_path / "P/MRI/train/HQ/c/x.nii.gz")]
    np.testing.assert_array_equal(volumes[0].lq, volumes[0].hq)  # c/x with c/x


# ------------------------------------------------------------------------------------ keeping the work
def test_checkpoint_schedule_by_iterations_time_and_signal():
    now = [0.0]
    schedule = ckpt.CheckpointSchedule(every=100, minutes=5, total=1000, clock=lambda: now[0])
    assert not schedule.due(1) and schedule.due(100) and schedule.due(1000)
    now[0] = 299.0
    assert not schedule.due(7)
    now[0] = 300.0
    assert schedule.due(7)
    schedule.saved()
    assert not schedule.due(8)
    assert not ckpt.CheckpointSchedule(every=100, minutes=0, total=1000, clock=lambda: 1e9).due(7)  # 0: never by time
    before = signal.getsignal(signal.SIGTERM)
    with schedule:
        os.kill(os.getpid(), signal.SIGTERM)
        assert schedule.stop == signal.SIGTERM and schedule.due(9)
        assert signal.getsignal(signal.SIGTERM) == before  # a second signal acts as before
    assert signal.getsignal(signal.SIGTERM) == before


def _crash_at(target):
    def after_step(it):
        if it == target:
            raise RuntimeError("crash")
    return after_step


def test_checkpoint_by_wall_time_resumes_exactly(hq_data, tmp_path):
    """With checkpoints by time alone, a run that dies keeps its last step and resumes exactly."""
    from amir_cli.training import Hooks

    common = dict(TINY, data=str(hq_data), iterations=5, checkpoint_every=1000, val_every=1000, seed=2)
    train(TrainOptions(**common, out=str(tmp_path / "straight")))
    run = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="crash"):
        train(TrainOptions(**common, checkpoint_minutes=1e-9, out=str(run)), hooks=Hooks(after_step=_crash_at(3)))
    assert ckpt.load_torch(run / ckpt.LAST)["iteration"] == 3
    train(TrainOptions(quiet=True), resume=run)
    a, b = _last_model(tmp_path / "straight"), _last_model(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_saves_last_and_stops_then_resumes_exactly(hq_data, tmp_path):
    from amir_cli.training import Hooks
    from amir_cli.training.checkpoint import TrainingStopped

    common = dict(TINY, data=str(hq_data), iterations=4, checkpoint_every=1000, checkpoint_minutes=0, val_every=1000, seed=3)
    train(TrainOptions(**common, out=str(tmp_path / "straight")))
    run = tmp_path / "stopped"
    term = Hooks(after_step=lambda it: it == 1 and os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(TrainingStopped, match=f"SIGTERM at iteration 2.*--resume {run}") as stopped:
        train(TrainOptions(**common, out=str(run)), hooks=term)
    assert stopped.value.signum == signal.SIGTERM and ckpt.load_torch(run / ckpt.LAST)["iteration"] == 2
    train(TrainOptions(quiet=True), resume=run)
    a, b = _last_model(tmp_path / "straight"), _last_model(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_stopped_run_exits_128_plus_the_signal_with_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import amir_cli.training as T
    from amir_cli.cli import app
    from amir_cli.training.checkpoint import TrainingStopped

    def stopped(*args, **kwargs):
        raise TrainingStopped(signal.SIGINT, 370, tmp_path / "r1")

    monkeypatch.setattr(T, "train", stopped)
    result = CliRunner().invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "r1")])
    assert result.exit_code == 130
    said = " ".join(result.stderr.split())
    assert said.startswith("amir: training stopped by SIGINT at iteration 370; last.pt holds it: continue with amir train --resume")
    assert str(tmp_path / "r1") in result.stderr.splitlines()[-1]  # a path is never broken


def test_first_command_again_over_a_run_without_checkpoint_refuses_and_keeps_its_log(hq_data, tmp_path):
    run = tmp_path / "r1"
    run.mkdir()
    (run / ckpt.METRICS).write_text('{"kind": "train", "iteration": 50, "loss": 0.1}\n')
    (run / ckpt.RUN_JSON).write_text("{}")
    with pytest.raises(RunFolderError, match="before its first checkpoint.*choose another --out"):
        train(TrainOptions(**TINY, data=str(hq_data), out=str(run), iterations=1))
    with pytest.raises(RunFolderError, match="before its first checkpoint .run.json, no last.pt.: nothing to resume"):
        train(TrainOptions(**TINY, iterations=1), resume=run)
    assert (run / ckpt.METRICS).read_text() == '{"kind": "train", "iteration": 50, "loss": 0.1}\n'


def test_a_slow_run_logs_at_least_every_minute_and_says_it_started(hq_data, tmp_path, monkeypatch, capsys):
    from amir_cli.training import trainer

    monkeypatch.setattr(trainer, "LOG_SECONDS", 0.0)  # every step is "a minute later"
    run = tmp_path / "slow"
    train(TrainOptions(**{**TINY, "quiet": False, "log_every": 1000}, data=str(hq_data), out=str(run), iterations=3, val_every=1000))
    its = [r["iteration"] for r in map(json.loads, (run / ckpt.METRICS).read_text().splitlines()) if r["kind"] == "train"]
    assert its == [1, 2, 3]
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("amir train: amir-tiny on cpu, iterations 0 to 3") and "iteration 1/3: loss" in "\n".join(err)
    assert all(len(line) <= 80 for line in err if str(tmp_path) not in line)  # a path is never broken


def test_device_and_init_defaults():
    from amir_cli.training.options import FINE_TUNE_LR, PAPER_LR, started_options

    cpu, cuda = started_options(TrainOptions(), "cpu"), started_options(TrainOptions(), "cuda")
    assert (cpu.config, cpu.patch_size, cpu.lr) == ("amir-s", 64, PAPER_LR) and PAPER_LR == 2e-4
    assert (cuda.config, cuda.patch_size) == ("amir", 128)
    assert started_options(TrainOptions(init="amir-s"), "cpu").lr == FINE_TUNE_LR == 5e-5
    assert started_options(TrainOptions(init="amir-s", lr=1e-3, config="amir"), "cpu").lr == 1e-3


def test_plot_curves_leaves_the_matplotlib_backend_alone(tmp_path):
    import matplotlib

    records = [{"kind": "train", "iteration": i, "l1": 1.0 / i, "load_loss": 0.1} for i in (1, 2)]
    records += [{"kind": "val", "iteration": 2, "psnr": {"ct-denoise": 30.0}, "input_psnr": {"ct-denoise": 28.0}}]
    backend = matplotlib.get_backend()
    matplotlib.use("svg", force=True)  # a backend of the host program's choice
    try:
        ckpt.plot_curves(records, tmp_path / "curves.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(backend, force=True)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_weight_average_gives_the_numbers_of_the_hand_written_ema():
    """torch's AveragedModel with the warm-up decay min(ema, (1 + it) / (10 + it)) equals the EMA
    amir computed by hand before (lerp per parameter, buffers copied) over 300 steps, warm-up and after."""
    import copy

    from amir_cli.network import AMIR, get_config
    from amir_cli.training.trainer import weight_average

    torch.manual_seed(0)
    model = AMIR(get_config("amir-tiny"))
    by_hand, average = copy.deepcopy(model), weight_average(model, 0.95)  # the warm-up ends at step 161
    for it in range(300):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=1e-2)
            decay = min(0.95, (1.0 + it) / (10.0 + it))
            for pe, pm in zip(by_hand.parameters(), model.parameters()):
                pe.lerp_(pm, 1.0 - decay)
        average.update_parameters(model)
    a, b = by_hand.state_dict(), average.module.state_dict()
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-7


def test_the_fused_adam_of_training_follows_the_per_tensor_adam():
    """amir train's optimiser (one fused kernel) takes the steps torch's per-tensor Adam takes."""
    from amir_cli.network import AMIR, get_config

    torch.manual_seed(0)
    fused, loop = AMIR(get_config("amir-tiny")).train(), AMIR(get_config("amir-tiny")).train()
    loop.load_state_dict(fused.state_dict())
    optimisers = [adam(fused.parameters(), 1e-3), torch.optim.Adam(loop.parameters(), lr=1e-3)]
    assert optimisers[0].defaults["fused"]
    for step in range(30):
        x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(step))
        for model, opt in zip((fused, loop), optimisers):
            torch.manual_seed(step)  # the same routing noise for both
            pred, load = model(x)
            opt.zero_grad(set_to_none=True)
            (pred.abs().mean() + 0.001 * load).backward()
            opt.step()
    worst = max((a - b).abs().max().item() for a, b in zip(fused.parameters(), loop.parameters()))
    assert worst < 1e-5



def test_a_checkpoint_that_cannot_be_written_says_so_in_one_line(tmp_path, monkeypatch):
    """torch.save reports a full disk as a RuntimeError; the first checkpoint has no previous one."""
    def full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(RunFolderError, match=r"cannot write last.pt in run folder .* \(disk full\?\); nothing was written under its name"):
        ckpt.save_torch({}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_weights_add_says_when_a_run_has_no_best_weights(hq_data, tmp_path, amir_home):
    from conftest import amir

    run = tmp_path / "r"
    train(TrainOptions(**TINY, data=str(hq_data), out=str(run), iterations=1, val_every=100))
    (run / ckpt.BEST).unlink(missing_ok=True)
    code, _out, err = amir("weights", "add", run, "--name", "nb")
    assert code == 0 and f"amir: note: {run} has no best.pt (no validation has run): its latest weights were added" in err
