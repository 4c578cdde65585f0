"""`amir benchmark`: layouts, outputs, batch failures, baselines that really restore, figures."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from amir_cli import baselines
from amir_cli.scoring import BenchmarkRequest, CaseSpec, kspace_factor_of, parse_simulate, plan_cases, run_benchmark, select_slices
from amir_cli.errors import BadInputError
from amir_cli.imaging import degrade
from amir_cli.metrics import volume_scores

N = 32  # in-plane size of the synthetic volumes
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _phantom(task: str, n: int = N, slices: int = 2) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    body = ((yy - n / 2) ** 2 + (xx - n / 2) ** 2 < (0.42 * n) ** 2).astype(np.float32)
    spot = ((yy - 0.4 * n) ** 2 + (xx - 0.6 * n) ** 2 < (0.1 * n) ** 2).astype(np.float32)
    if task == "ct-denoise":
        img = -1000 + body * 1040 + spot * 60
    elif task == "mri-sr":
        img = body * 2000 + spot * 1500 + (xx > n / 2) * body * 400
    else:
        img = body * 2.0 + spot * 8.0
    return np.stack([img * (1 + 0.02 * k) if task != "ct-denoise" else img for k in range(slices)], -1).astype(np.float32)


def _save(array, path, spacing=(1.0, 1.0, 2.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, np.float32), np.diag([*spacing, 1.0])), str(path))
    return path


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _check_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    from matplotlib.image import imread

    img = imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 300
    assert img[..., :3].std() > 0.05  # not a blank canvas


def _invoke(args):
    from amir_cli.cli import app

    return CliRunner().invoke(app, ["benchmark", *map(str, args)])


def test_paired_layout_via_cli(tmp_path, tiny_weights):
    rng = np.random.default_rng(1)
    data = tmp_path / "data"
    ct = _phantom("ct-denoise")
    _save(ct, data / "CT/test/HQ/head.nii.gz")
    _save(ct + rng.normal(0, 25, ct.shape), data / "CT/test/LQ/head.nii.gz")
    mr = _phantom("mri-sr")
    _save(mr, data / "MRI/test/HQ/brain.nii.gz")
    _save(degrade.degrade_volume(mr, "mri-sr", 2), data / "MRI/test/LQ_x2/brain.nii.gz")
    _save(degrade.degrade_volume(mr, "mri-sr", 4), data / "MRI/test/LQ_x4/brain.nii.gz")
    out = tmp_path / "out"

    result = _invoke([data, "-o", out, "-w", tiny_weights, "--json", "--quiet"])

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "paired" and summary["n_failed"] == 0 and summary["n_cases"] == 3
    assert len(summary["weights"]["sha256"]) == 64
    rows = _read_csv(out / "cases.csv")
    assert list(rows[0]) == ["case", "task", "level", "method", "psnr", "ssim", "rmse", "n_slices", "seconds_per_slice"]
    got = {(r["case"], r["level"], r["method"]) for r in rows}
    assert got == {
        ("head", "", "input"), ("head", "", "nlm"), ("head", "", "bm3d"), ("head", "", "amir"),
        ("brain", "x2", "input"), ("brain", "x2", "pocs"), ("brain", "x2", "amir"), ("brain", "x2", "amir-net"),
        ("brain", "x4", "input"), ("brain", "x4", "pocs"), ("brain", "x4", "amir"), ("brain", "x4", "amir-net"),
    }
    assert all(int(r["n_slices"]) == 2 for r in rows)
    assert all(float(r["seconds_per_slice"]) > 0 for r in rows if r["method"] != "input"), [(r["method"], r["seconds_per_slice"]) for r in rows]
    # the input row is the §4 score of the LQ image itself
    head_in = next(r for r in rows if r["case"] == "head" and r["method"] == "input")
    lq = nib.load(str(data / "CT/test/LQ/head.nii.gz")).get_fdata()
    assert float(head_in["psnr"]) == pytest.approx(volume_scores(lq, ct, "ct-denoise")["psnr"], abs=1e-3)
    md = (out / "summary.md").read_text()
    assert "| task | level | method |" in md and "**amir**" in md and "non-local means" in md
    levels = [r["level"] for r in summary["results"] if r["task"] == "mri-sr"]
    assert levels == ["x2"] * 4 + ["x4"] * 4
    assert "## Per case" in md and "| mri-sr | x2 | brain |" in md
    # the level's k-space factor goes to pocs; amir runs as plain `amir restore`, which cannot tell
    # zero filling on 32-pixel slices, so it is the network alone here
    amir_x2 = next(r for r in rows if r["level"] == "x2" and r["method"] == "amir")
    pocs_x2 = next(r for r in rows if r["level"] == "x2" and r["method"] == "pocs")
    net_x2 = next(r for r in rows if r["level"] == "x2" and r["method"] == "amir-net")
    assert float(pocs_x2["psnr"]) > float(next(r for r in rows if r["level"] == "x2" and r["method"] == "input")["psnr"])
    assert float(pocs_x2["psnr"]) != float(amir_x2["psnr"]) and amir_x2["psnr"] == net_x2["psnr"]
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["ct-denoise_paired.png", "mri-sr_x2.png", "mri-sr_x4.png"]
    for png in (out / "figures").iterdir():
        _check_png(png)


def test_simulate_flat_folder_and_max_slices(tmp_path, tiny_weights):
    data = tmp_path / "hq"
    _save(_phantom("ct-denoise", slices=5), data / "a.nii.gz")
    _save(_phantom("ct-denoise", slices=5)[:, ::-1], data / "b.nii.gz")
    _save(_phantom("pet-synthesis", slices=5), data / "pet_c.nii.gz")
    out = tmp_path / "out"

    result = _invoke([data, "-o", out, "-w", tiny_weights, "--simulate", "ct-denoise:1/4", "--simulate", "pet-synthesis:0.5",
                      "--max-slices", "2", "--no-baselines", "--quiet"])

    assert result.exit_code == 0, result.output
    rows = _read_csv(out / "cases.csv")
    assert len(rows) == (2 + 1) * 2  # (CT cases + PET case) x (input, amir)
    assert {r["case"] for r in rows if r["task"] == "pet-synthesis"} == {"pet_c"}
    assert {r["level"] for r in rows if r["task"] == "ct-denoise"} == {"1/4"}
    assert {r["level"] for r in rows if r["task"] == "pet-synthesis"} == {"0.5"}
    assert all(int(r["n_slices"]) == 2 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "simulated" and summary["max_slices"] == 2
    assert any("--max-slices 2" in n for n in summary["notes"])
    # the inputs carry the quarter dose's noise: the RMSE of an independent simulation of that dose
    hq = _phantom("ct-denoise", slices=5)
    quarter = volume_scores(degrade.degrade_volume(hq, "ct-denoise", 0.25, seed=99), hq, "ct-denoise")["rmse"]
    ct_inputs = [float(r["rmse"]) for r in rows if r["method"] == "input" and r["task"] == "ct-denoise"]
    assert len(ct_inputs) == 2 and all(rmse == pytest.approx(quarter, rel=0.25) for rmse in ct_inputs), (ct_inputs, quarter)


def test_simulation_is_seeded_and_independent_of_max_slices(tmp_path, tiny_weights):
    data = tmp_path / "hq"
    _save(_phantom("pet-synthesis", slices=2), data / "PET" / "p.nii.gz")
    full = run_benchmark(BenchmarkRequest(data, tmp_path / "o1", weights=tiny_weights, simulate=["pet-synthesis"], with_baselines=False, figures=False))
    again = run_benchmark(BenchmarkRequest(data, tmp_path / "o2", weights=tiny_weights, simulate=["pet-synthesis"], with_baselines=False, figures=False))
    assert full.rows[0]["psnr"] == again.rows[0]["psnr"]
    other = run_benchmark(BenchmarkRequest(data, tmp_path / "o3", weights=tiny_weights, simulate=["pet-synthesis"], with_baselines=False,
                                           figures=False, seed=5))
    assert other.rows[0]["psnr"] != full.rows[0]["psnr"]


def test_tta_adds_the_self_ensemble_row(tmp_path, tiny_weights):
    data = tmp_path / "hq"
    _save(_phantom("mri-sr", slices=2), data / "MRI" / "m.nii.gz")
    result = run_benchmark(BenchmarkRequest(data, tmp_path / "o", weights=tiny_weights, simulate=["mri-sr:2"], with_baselines=False, tta=True))
    by = {r["method"]: r for r in result.rows}
    assert set(by) == {"input", "amir", "amir-net", "amir-tta"} and by["amir-tta"]["psnr"] != by["amir"]["psnr"]
    assert [r["method"] for r in result.summary["results"]] == ["input", "amir", "amir-net", "amir-tta"]
    assert any("amir-tta" in n for n in result.summary["notes"])


def test_failing_case_is_reported_and_others_complete(tmp_path, tiny_weights):
    data = tmp_path / "data"
    ct = _phantom("ct-denoise")
    _save(ct, data / "CT/test/HQ/good.nii.gz")
    _save(ct + 20, data / "CT/test/LQ/good.nii.gz")
    _save(ct, data / "CT/test/HQ/shape.nii.gz")
    _save(ct[:30], data / "CT/test/LQ/shape.nii.gz")  # LQ/HQ shape mismatch
    _save(ct, data / "CT/test/HQ/corrupt.nii.gz")
    (data / "CT/test/LQ/corrupt.nii.gz").write_bytes(b"not a nifti file")
    out = tmp_path / "out"

    result = _invoke([data, "-o", out, "-w", tiny_weights, "--quiet"])

    assert result.exit_code == 3, result.output
    assert "shape" in result.output and "corrupt" in result.output
    rows = _read_csv(out / "cases.csv")
    assert {r["case"] for r in rows} == {"good"}
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(f["case"] for f in summary["failed"]) == ["corrupt", "shape"]
    assert "FAILED" in (out / "summary.md").read_text()


def test_folders_below_the_depth_searched_are_named_in_a_warning(tmp_path, tiny_weights):
    """Cases are looked for five folders deep in HQ/ and LQ/; the folders below are named in one warning."""
    ct = _phantom("ct-denoise")
    deep = "a/b/c/d/e"
    for split, image in (("HQ", ct), ("LQ", ct + 20)):
        _save(image, tmp_path / f"d/CT/test/{split}/{deep}/head.nii.gz")
        _save(image, tmp_path / f"d/CT/test/{split}/{deep}/f/head.nii.gz")
    res = run_benchmark(BenchmarkRequest(tmp_path / "d", tmp_path / "o", weights=tiny_weights, figures=False,
                                         with_baselines=False, max_slices=1))
    assert {r["case"] for r in res.rows} == {f"{deep}/head"}
    hq_f = tmp_path / f"d/CT/test/HQ/{deep}/f"
    assert res.summary["warnings"] == [f"2 folders holding files more than 5 folders deep were not searched for images: {hq_f}, ..."]


def test_coarser_lq_grid_gets_zero_filled_input_and_bicubic(tmp_path, tiny_weights):
    data = tmp_path / "data"
    mr = _phantom("mri-sr", n=48)
    _save(mr, data / "MRI/test/HQ/m.nii.gz")
    _save(mr[::2, ::2], data / "MRI/test/LQ/m.nii.gz", spacing=(2.0, 2.0, 2.0))
    res = run_benchmark(BenchmarkRequest(data, tmp_path / "out", weights=tiny_weights, figures=False))
    assert res.exit_code == 0, res.failures
    assert [r["method"] for r in res.rows] == ["input", "bicubic", "amir"]
    assert all(r["n_slices"] == 2 for r in res.rows)


@pytest.mark.parametrize(
    "text, task, level, label",
    [
        ("ct-denoise", "ct-denoise", 0.25, "0.25"),
        ("ct-denoise:0.1", "ct-denoise", 0.1, "0.1"),
        ("pet-synthesis:1/12", "pet-synthesis", 1 / 12, "1/12"),
        ("mri-sr:2", "mri-sr", 2, "x2"),
        ("mri-sr:x4", "mri-sr", 4, "x4"),
        ("mri-sr", "mri-sr", 4, "x4"),
    ],
)
def test_parse_simulate(text, task, level, label):
    sim = parse_simulate(text)
    assert (sim.task, sim.label) == (task, label)
    assert sim.level == pytest.approx(level)


def test_kspace_factor_for_the_unlabelled_lq_folder(tmp_path, tiny_weights):
    """The paper's layout has one LQ folder and no level: --kspace-factor names its factor."""
    data = tmp_path / "data"
    mr = _phantom("mri-sr", slices=2)
    _save(mr, data / "MRI/test/HQ/brain.nii.gz")
    _save(degrade.degrade_volume(mr, "mri-sr", 2), data / "MRI/test/LQ/brain.nii.gz")
    plain = run_benchmark(BenchmarkRequest(data, tmp_path / "o1", weights=tiny_weights, figures=False))
    dc = run_benchmark(BenchmarkRequest(data, tmp_path / "o2", weights=tiny_weights, figures=False, kspace_factor=2))
    assert {r["method"] for r in plain.rows} == {"input", "amir"}
    assert {r["method"] for r in dc.rows} == {"input", "pocs", "amir", "amir-net"}
    amir = {res.summary["kspace_factor"]: next(r["psnr"] for r in res.rows if r["method"] == "amir") for res in (plain, dc)}
    assert amir[2] != amir[None]
    result = _invoke([data, "-o", tmp_path / "o3", "-w", tiny_weights, "--kspace-factor", "3"])
    assert result.exit_code == 2


@pytest.mark.parametrize(
    "task, level, simulate, scale, factor",
    [
        ("mri-sr", "x2", None, 1, 2), ("mri-sr", "X4", None, 1, 4), ("mri-sr", "", None, 1, None),
        ("mri-sr", "x3", None, 1, None), ("mri-sr", "x2", None, 2, None), ("mri-sr", "x4", "mri-sr:4", 1, 4),
        ("ct-denoise", "x2", None, 1, None),
    ],
)
def test_kspace_factor_of(task, level, simulate, scale, factor, tmp_path):
    spec = CaseSpec("c", task, level, tmp_path, simulation=parse_simulate(simulate) if simulate else None)
    assert kspace_factor_of(spec, scale) == factor


@pytest.mark.parametrize("text", ["ct", "mri-sr:3", "ct-denoise:0", "pet-synthesis:2", "ct-denoise:abc", "pet-synthesis:1/0"])
def test_parse_simulate_rejects(text):
    with pytest.raises(BadInputError):
        parse_simulate(text)


def test_no_cases_is_an_error(tmp_path, tiny_weights):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="--simulate"):
        plan_cases(tmp_path / "empty")
    result = _invoke([tmp_path / "missing", "-o", tmp_path / "o", "-w", tiny_weights, "--quiet"])
    assert result.exit_code != 0


def test_select_slices_even_and_skips_constant_slices():
    ref = np.zeros((10, 20, 20), np.float32)
    ref[2:9, 5:15, 5:15] = 100.0  # slices 0, 1, 9 are constant (cannot be scored)
    assert list(select_slices(ref, "ct-denoise", None)) == list(range(10))
    picked = select_slices(ref, "ct-denoise", 3)
    assert list(picked) == [2, 5, 8]
    assert len(select_slices(ref, "ct-denoise", 50)) == 7


def test_nlm_improves_noisy_ct():
    ct = _phantom("ct-denoise", n=96, slices=1)
    _, xx = np.mgrid[:96, :96]
    ct[..., 0] += 30 * np.sin(xx / 6.0) * (ct[..., 0] > -500)  # some texture to keep
    hq = np.moveaxis(ct, -1, 0)
    lq = np.stack([degrade.ct_low_dose(s, 0.25, np.random.default_rng(3), pixel_mm=0.8, i0=3e4) for s in hq])
    before = volume_scores(lq, hq, "ct-denoise", slice_axis=0)
    after = volume_scores(baselines.nlm_ct(lq), hq, "ct-denoise", slice_axis=0)
    assert after["psnr"] > before["psnr"] + 2.0
    assert after["ssim"] > before["ssim"]


def test_gaussian_filter_improves_noisy_pet():
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:80, :80]
    smooth = 6.0 * np.exp(-((yy - 40) ** 2 + (xx - 35) ** 2) / (2 * 15.0**2))
    hq = smooth[None].astype(np.float32)
    lq = np.clip(hq + rng.normal(0, 1.0, hq.shape), 0, None).astype(np.float32)
    before = volume_scores(lq, hq, "pet-synthesis", slice_axis=0)
    after = volume_scores(baselines.gaussian_pet(lq, (2.0, 2.0)), hq, "pet-synthesis", slice_axis=0)
    assert after["psnr"] > before["psnr"] + 3.0


def test_bm3d_improves_noisy_ct():
    ct = _phantom("ct-denoise", n=96, slices=1)
    hq = np.moveaxis(ct, -1, 0)
    lq = np.stack([degrade.ct_low_dose(s, 0.25, np.random.default_rng(3), pixel_mm=0.8, i0=3e4) for s in hq])
    before = volume_scores(lq, hq, "ct-denoise", slice_axis=0)
    after = volume_scores(baselines.bm3d_ct(lq), hq, "ct-denoise", slice_axis=0)
    assert after["psnr"] > before["psnr"] + 2.0


def test_gaussian_oracle_picks_the_best_width():
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:80, :80]
    hq = (6.0 * np.exp(-((yy - 40) ** 2 + (xx - 35) ** 2) / (2 * 15.0**2)))[None].astype(np.float32)
    lq = np.clip(hq + rng.normal(0, 1.0, hq.shape), 0, None).astype(np.float32)
    fwhm, best = baselines.gaussian_oracle_pet(lq, hq, (2.0, 2.0))
    score = volume_scores(best, hq, "pet-synthesis", slice_axis=0)["psnr"]
    assert fwhm in baselines.ORACLE_FWHM_MM
    for other in (fwhm - 2.0, fwhm + 2.0, baselines.PET_FWHM_MM):
        if other > 0:
            assert score >= volume_scores(baselines.gaussian_pet(lq, (2.0, 2.0), other), hq, "pet-synthesis", slice_axis=0)["psnr"]


def test_noise_sigma_matches_gaussian_noise():
    rng = np.random.default_rng(0)
    flat = np.full((128, 128), 5.0) + rng.normal(0, 0.3, (128, 128))
    assert baselines.noise_sigma(flat) == pytest.approx(0.3, rel=0.1)



def test_residual_sigma_is_the_normal_scaled_mad_of_the_residual():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    x = np.full((96, 80), 40.0) + rng.normal(0, 3.0, (96, 80))
    r = x - ndimage.gaussian_filter(x, 2.0)
    assert baselines.residual_sigma(x) == 1.4826 * np.median(np.abs(r - np.median(r)))  # bit for bit
    assert baselines.residual_sigma(x) == pytest.approx(3.0, rel=0.15)

def test_malformed_simulate_is_a_usage_error(tmp_path, tiny_weights):
    (tmp_path / "hq").mkdir()
    result = _invoke([tmp_path / "hq", "-w", tiny_weights, "--simulate", "mri-sr:3"])
    assert result.exit_code == 2


def test_flat_mixed_folder_simulates_each_volume_by_its_own_task(tmp_path, tiny_weights):
    """The README's example on a flat folder of a CT and an MR volume: each --simulate takes only the
    volumes of its task (decided as `amir restore --task auto` does); a PET volume is skipped and said."""
    data = tmp_path / "hq"
    _save(_phantom("ct-denoise"), data / "head.nii.gz")  # CT by its intensities (HU with air)
    _save(_phantom("mri-sr"), data / "brain_t1.nii.gz")  # MR by its name
    _save(_phantom("pet-synthesis"), data / "pet_whole_body.nii.gz")
    out = tmp_path / "out"

    result = _invoke([data, "-o", out, "-w", tiny_weights, "--simulate", "ct-denoise:0.25", "--simulate", "mri-sr:4",
                      "--no-baselines"])

    assert result.exit_code == 0, result.output
    rows = _read_csv(out / "cases.csv")
    assert {(r["case"], r["task"], r["level"]) for r in rows} == {("head", "ct-denoise", "0.25"), ("brain_t1", "mri-sr", "x4")}
    summary = json.loads((out / "summary.json").read_text())
    assert [(v["volume"], v["task"]) for v in summary["skipped"]] == [("pet_whole_body", "pet-synthesis")]
    assert "skipped pet_whole_body" in result.stderr
    assert "Skipped pet_whole_body" in (out / "summary.md").read_text()


def test_flat_folder_volume_without_a_task_is_an_error(tmp_path, tiny_weights):
    data = tmp_path / "hq"
    _save(_phantom("ct-denoise"), data / "head.nii.gz")
    _save(np.full((N, N, 2), 7.0, np.float32), data / "x.nii.gz")  # no header, no name, no telling intensities
    result = _invoke([data, "-o", tmp_path / "out", "-w", tiny_weights, "--simulate", "ct-denoise"])
    assert result.exit_code == 1
    assert "x.nii.gz: cannot tell its task" in str(result.exception)
    assert not (tmp_path / "out" / "cases.csv").exists()


# ------------------------------------------------------------------------------------ figures a reader wants
def _show(task, ref, rng):
    noisy = ref + rng.normal(0, 0.05 * float(np.ptp(ref)), ref.shape)
    return {"task": task, "reference": ref, "case": "c", "slice": 0, "level": "",
            "panels": [("input", noisy, {"psnr": 20.0, "ssim": 0.5}), ("amir", (noisy + ref) / 2, {"psnr": 25.0, "ssim": 0.8})]}


@pytest.mark.parametrize("task", ["pet-synthesis", "ct-denoise", "mri-sr"])
def test_figure_shows_each_modality_as_read_with_the_same_zoomed_square_in_every_panel(task):
    from amir_cli.figures import comparison, zoom_region

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :80]
    body = (yy - 48) ** 2 + (xx - 40) ** 2 < 36 ** 2
    detail = (np.abs(yy - 30) < 10) & (np.abs(xx - 55) < 10) & (((yy + xx) // 2) % 2 == 0)  # fine stripes: the place to zoom
    base = {"pet-synthesis": (0.0, 2.0, 7.0), "ct-denoise": (-1000.0, 40.0, 90.0), "mri-sr": (0.0, 150.0, 250.0)}[task]
    ref = np.where(body, base[1], base[0]) + detail * (base[2] - base[1])
    fig = comparison(_show(task, ref, rng))
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.images and ax.child_axes]
    assert len(panels) == 4  # input, AMIR, reference, error map: each with its inset
    image = panels[0].images[0]
    expected = {"pet-synthesis": ("gray_r", (0.0, 7.0)), "ct-denoise": ("gray", (-160.0, 240.0)),
                "mri-sr": ("gray", (0.0, float(np.percentile(ref, 99.5))))}[task]
    assert (image.get_cmap().name, image.get_clim()) == (expected[0], pytest.approx(expected[1]))
    insets = [np.asarray(ax.child_axes[0].images[0].get_array()) for ax in panels]
    assert {a.shape for a in insets} == {(20, 20)}  # the same square everywhere: a quarter of the smaller side
    i, j, n = zoom_region(ref, *image.get_clim(), task)
    assert 20 <= i + n / 2 <= 40 and 45 <= j + n / 2 <= 65  # on the fine stripes, not on an edge of the body
    np.testing.assert_array_equal(insets[2], ref[i:i + n, j:j + n].T)
    title = fig._suptitle.get_text()
    assert "window [0, 20]" not in title and "12-bit" not in title and "—" not in title


def test_levels_sort_by_kind_then_severity():
    """Table order: unlabelled, plain levels from mild to severe, then each suffixed kind the same way."""
    from amir_cli.scoring.report import level_sort_key

    pet = ["dose1-12-spec", "dose1-20", "weird", "dose1-2-spec", "dose1-2", "", "dose0.1", "dose1-4"]
    assert sorted(pet, key=lambda lv: level_sort_key("pet-synthesis", lv)) == [
        "", "dose1-2", "dose1-4", "dose0.1", "dose1-20", "dose1-2-spec", "dose1-12-spec", "weird"]
    assert sorted(["x4", "x2-soft", "x2"], key=lambda lv: level_sort_key("mri-sr", lv)) == ["x2", "x4", "x2-soft"]


def test_pet_fill_is_chosen_on_the_whole_low_quality_volume(tmp_path, tiny_weights, monkeypatch):
    """An OSEM-shaped PET file is scored as `amir restore` restores it: the background fill chosen
    from all its slices, though only some are scored."""
    import amir_cli.restore as R

    hq = _phantom("pet-synthesis", n=64, slices=7)
    lq = np.stack([degrade.degrade_slice(hq[..., k], "pet-synthesis", 0.25, degrade.slice_rng(0, k), pixel_mm=3.0,
                                         em_exponent=degrade.OSEM_NOISE_EXPONENT) for k in range(7)], -1)
    data = tmp_path / "data"
    _save(hq, data / "PET/test/HQ/p.nii.gz", spacing=(3.0, 3.0, 3.0))
    _save(lq, data / "PET/test/LQ/p.nii.gz", spacing=(3.0, 3.0, 3.0))
    seen, choose = [], R.chosen_background_sd
    monkeypatch.setattr(R, "chosen_background_sd", lambda model, slices, *a, **kw: seen.append(len(slices)) or choose(model, slices, *a, **kw))
    res = run_benchmark(BenchmarkRequest(data, tmp_path / "out", weights=tiny_weights, figures=False, with_baselines=False, max_slices=2))
    assert res.exit_code == 0, res.failures
    assert seen == [7] and all(r["n_slices"] == 2 for r in res.rows)


def test_results_are_placed_whole_and_never_clobber(tmp_path, tiny_weights):
    """OUTDIR is written whole and put in place: an existing one is refused without --overwrite, which
    replaces it whole (no figure of the earlier run stays); OUTDIR may not lie in the data; a case whose
    reference has no contrast is a failed case, not a hole in its task's means."""
    rng = np.random.default_rng(2)
    data = tmp_path / "data"
    ct = _phantom("ct-denoise")
    _save(ct, data / "CT/test/HQ/head.nii.gz")
    _save(ct + rng.normal(0, 25, ct.shape), data / "CT/test/LQ/head.nii.gz")
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is taken
    first = _invoke([data, "-o", out, "-w", tiny_weights, "--no-baselines", "--max-slices", "1", "-q"])
    assert first.exit_code == 0, first.output
    (out / "figures" / "stale.png").write_bytes(b"x")
    again = _invoke([data, "-o", out, "-w", tiny_weights, "--no-baselines", "--max-slices", "1", "-q"])
    assert again.exit_code == 1 and "exists; pass --overwrite" in str(again.exception)
    assert (out / "figures" / "stale.png").exists()
    _save(np.zeros_like(ct), data / "CT/test/HQ/flat.nii.gz")
    _save(ct, data / "CT/test/LQ/flat.nii.gz")
    replaced = _invoke([data, "-o", out, "-w", tiny_weights, "--no-baselines", "--max-slices", "1", "-q", "--overwrite"])
    assert replaced.exit_code == 3, replaced.output
    assert not (out / "figures" / "stale.png").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert [f["case"] for f in summary["failed"]] == ["flat"] and "constant" in summary["failed"][0]["error"]
    assert all(r["psnr"] is not None for r in summary["results"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    inside = _invoke([data, "-o", data / "CT" / "results", "-w", tiny_weights, "-q"])
    assert inside.exit_code == 1 and "must lie outside the data folder" in str(inside.exception)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    theirs = _invoke([data, "-o", tmp_path / "mine", "-w", tiny_weights, "-q", "--overwrite"])
    assert theirs.exit_code == 1 and "did not write" in str(theirs.exception)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_case_names_are_unique_and_an_unreadable_volume_is_one_case_that_says_why(tmp_path):
    ct = _phantom("ct-denoise")
    for split in ("HQ", "LQ"):
        _save(ct, tmp_path / "d" / f"CT/test/{split}/c1.nii.gz")
        _save(ct, tmp_path / "d" / f"CT/test/{split}/sub/c1.nii.gz")  # a case of its own, "sub/c1"
    assert sorted(c.name for c in plan_cases(tmp_path / "d")[0]) == ["c1", "sub/c1"]
    _save(ct, tmp_path / "d" / "CT/test/HQ/c1.nii")
    with pytest.raises(BadInputError, match="two images of one case 'c1'"):
        plan_cases(tmp_path / "d")
    _save(ct, tmp_path / "d" / "CT/site/hq1.nii.gz")  # --simulate takes CT/'s volumes, not its test split
    assert [c.name for c in plan_cases(tmp_path / "d", ["ct-denoise"])[0]] == ["site/hq1"]
    flat = tmp_path / "flat"
    _save(ct, flat / "ct_good.nii.gz")
    (flat / "ct_bad.nii.gz").write_bytes((flat / "ct_good.nii.gz").read_bytes()[:200])
    # an unreadable volume: one case, of the first --simulate (its task cannot be told), which fails when scored
    assert [(c.name, c.task) for c in plan_cases(flat, ["ct-denoise", "ct-denoise:1/10"])[0]] == [
        ("ct_bad", "ct-denoise"), ("ct_good", "ct-denoise"), ("ct_good", "ct-denoise")]
    # a task without readable volumes is an error, which names what could not be read
    with pytest.raises(BadInputError, match=r"no volumes of task pet-synthesis for --simulate pet-synthesis; .*ct_bad.nii.gz"):
        plan_cases(flat, ["ct-denoise", "pet-synthesis"])


def test_flat_folder_with_an_unreadable_volume_fails_that_case_and_scores_the_others(tmp_path, tiny_weights):
    data = tmp_path / "hq"
    _save(_phantom("ct-denoise"), data / "head.nii.gz")
    (data / "cut.nii.gz").write_bytes((data / "head.nii.gz").read_bytes()[:200])
    out = tmp_path / "out"

    result = _invoke([data, "-o", out, "-w", tiny_weights, "--simulate", "ct-denoise", "--no-baselines", "--quiet"])

    assert result.exit_code == 3, result.output
    assert "cut.nii.gz" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 2 and [(f["case"], f["task"]) for f in summary["failed"]] == [("cut", "ct-denoise")]
    assert "cut.nii.gz" in summary["failed"][0]["error"]
    assert {r["case"] for r in _read_csv(out / "cases.csv")} == {"head"}


def test_warnings_name_a_wrong_folder_and_an_input_equal_to_its_reference(tmp_path, tiny_weights):
    ct = _phantom("ct-denoise")
    _save(ct, tmp_path / "d" / "MRI/test/HQ/ct_head.nii.gz")
    _save(ct, tmp_path / "d" / "MRI/test/LQ_x2/ct_head.nii.gz")
    res = run_benchmark(BenchmarkRequest(tmp_path / "d", tmp_path / "o", weights=tiny_weights, figures=False,
                                         with_baselines=False, max_slices=1))
    assert res.summary["warnings"] == [
        "mri-sr x2 ct_head: its folder names mri-sr, though --task auto would choose ct-denoise (file name 'ct_head' names ct-denoise)",
        "mri-sr x2 ct_head: its LQ image equals its HQ image on the scored slices: nothing to restore",
    ]
