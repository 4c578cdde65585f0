"""The development data split by subject: train, validation and a frozen test split.

The table lives in benchmarks/splits.py; these tests hold its promises: no file and no subject in
two splits, the test split holds real scanner images of every modality (PET simulated on a test
patient's anatomy), the examples come from training or validation subjects only, and building the
training data needs no test file."""

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import DATA, DEV_DATA_REASON

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import splits  # noqa: E402
from benchmarks.splits import TEST, TRAIN, VALIDATION  # noqa: E402


def test_every_file_and_subject_sits_in_one_split():
    by_file: dict[str, set] = {}
    for s in splits.SOURCES:
        by_file.setdefault(s.file, set()).add(s.split)
    assert all(len(v) == 1 for v in by_file.values()), {f: v for f, v in by_file.items() if len(v) > 1}
    subject = splits.subject_split()
    assert set(subject.values()) == {TRAIN, VALIDATION, TEST}
    colin = [s for s in splits.SOURCES if "colin27" in s.file]
    assert len(colin) == 2 and {s.subject for s in colin} == {"colin27"}  # 1 mm and 0.5 mm: one subject


def test_a_subject_in_two_splits_is_refused(monkeypatch):
    clash = splits.Source("ct/x.nii.gz", "colin27", "ct-denoise", "real", TEST)
    monkeypatch.setattr(splits, "SOURCES", splits.SOURCES + (clash,))
    with pytest.raises(ValueError, match="colin27"):
        splits.subject_split()


def test_the_test_split_holds_real_scanner_images_of_every_task():
    test = splits.sources(TEST)
    assert {s.task for s in test if s.kind == "real"} == {"ct-denoise", "mri-sr"}
    assert all(s.kind == "real" for s in test if s.task != "pet-synthesis")
    pet = splits.sources(TEST, "pet-synthesis")
    real_subjects = {s.subject for s in test if s.kind == "real"}
    assert pet and all(s.subject in real_subjects for s in pet)


def test_weights_are_chosen_and_trained_on_real_brain_mr_and_pet_on_body_anatomy():
    brain = lambda s: s.kind == "real" and s.note.startswith("brain")  # noqa: E731
    assert any(brain(s) for s in splits.sources(VALIDATION, "mri-sr"))
    assert sum(brain(s) for s in splits.sources(TRAIN, "mri-sr")) >= 4
    assert any(s.file.startswith("ct/") for s in splits.sources(TRAIN, "pet-synthesis"))
    assert any(s.file.startswith("ct/") for s in splits.sources(VALIDATION, "pet-synthesis"))


def test_templates_are_a_minority_of_the_mr_training_volumes():
    mr = splits.sources(TRAIN, "mri-sr")
    assert sum(s.kind == "template" for s in mr) * 2 < len(mr)


def test_examples_come_from_training_or_validation_subjects():
    subject_of = {s.file: s.subject for s in splits.SOURCES}
    split = splits.subject_split()
    examples = {p.name for p in (ROOT / "examples").glob("*_reference.nii.gz")}
    assert examples == {e for e, _ in splits.EXAMPLE_SOURCES}
    for _, source in splits.EXAMPLE_SOURCES:
        assert split[subject_of[source]] in (TRAIN, VALIDATION), source


@pytest.mark.parametrize("example", ["ct_head_reference.nii.gz", "mr_brain_reference.nii.gz"])
def test_examples_are_cut_from_their_declared_source(example):
    """The provenance above is a fact: the example's slices are found in its source volume."""
    source = dict(splits.EXAMPLE_SOURCES)[example]
    if not (DATA / source).exists():
        pytest.skip(DEV_DATA_REASON)
    ex = np.asarray(nib.load(str(ROOT / "examples" / example)).dataobj, np.float32)
    src = np.asarray(nib.load(str(DATA / source)).dataobj, np.float32)
    first = ex[:, :, 0]
    matches = [k for k in range(src.shape[2]) if src[:, :, k].shape == first.shape and np.array_equal(src[:, :, k], first)]
    assert matches, f"{example} is not cut from {source}"


def test_training_data_builds_without_any_test_file(tmp_path):
    """scripts/build_training_data.py given the development data less the test files: it succeeds."""
    if not DATA.is_dir():
        pytest.skip(DEV_DATA_REASON)
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_training_data

    test_files = {s.file for s in splits.sources(TEST)}
    dev = tmp_path / "dev"
    for s in splits.SOURCES:
        if s.file not in test_files and not s.package:
            (dev / s.file).parent.mkdir(parents=True, exist_ok=True)
            if not (dev / s.file).exists():
                (dev / s.file).symlink_to(DATA / s.file)
    made = build_training_data.build(tmp_path / "DATA", dev, pet_volumes=1)
    used = {f for files in made.values() for f in files}
    assert used and not used & test_files
    assert (tmp_path / "DATA" / "MRI" / "validation").is_dir() and (tmp_path / "DATA" / "PET" / "validation").is_dir()
    assert not list(tmp_path.glob(".DATA.*"))  # the temporary build folder is gone


def test_registry_sources_are_built_as_nifti_or_skipped_with_a_line(tmp_path, monkeypatch, capsys):
    """Scans shipped by registry packages become NIfTI training volumes; a missing package is named."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_training_data

    registry = [s for s in splits.sources(TRAIN) if s.package]
    assert registry and all(s.kind == "real" for s in registry)
    ct = next(s for s in registry if s.package == "pydicom")  # pydicom is a dependency: always there
    monkeypatch.setattr(build_training_data, "sources", lambda split: [ct] if split == TRAIN else [])
    made = build_training_data.build(tmp_path / "DATA", tmp_path / "no-dev-data", pet_volumes=1)
    assert made == {"CT": [ct.file]}
    img = nib.load(str(tmp_path / "DATA" / "CT" / f"{ct.subject}.nii.gz"))
    assert img.shape[:2] == (128, 128) and np.asarray(img.dataobj).min() < -500  # HU, not stored values

    missing = splits.Source("x/scan.dcm", "nobody", "ct-denoise", "real", TRAIN, package="no-such-distribution")
    assert splits.locate(missing, tmp_path) is None
    monkeypatch.setattr(build_training_data, "sources", lambda split: [ct, missing] if split == TRAIN else [])
    made = build_training_data.build(tmp_path / "D2", tmp_path / "no-dev-data", pet_volumes=1)
    assert made == {"CT": [ct.file]}
    assert "skipped x/scan.dcm: no-such-distribution is not installed" in capsys.readouterr().err


def test_quality_benchmark_without_the_development_data_says_so_in_one_line(tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    from benchmarks import quality

    assert quality.main(["--weights", "amir-s", "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"the development data are not in {tmp_path}" in err and "--data" in err


def test_archive_sources_are_downloaded_once_unpacked_whole_or_skipped_with_a_line(tmp_path, monkeypatch, capsys):
    """Scans in registry archives (a source distribution, an npm package): fetched into the cache once."""
    import subprocess
    import tarfile

    sys.path.insert(0, str(ROOT / "scripts"))
    import build_training_data

    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(64 * 64 * 3, dtype=np.int16).reshape(64, 64, 3), np.eye(4)), str(scan))
    calls = []

    def fake_run(cmd, cwd, **kw):  # the registry: an npm tarball for "good", nothing for the others
        calls.append(cmd)
        if "good@1.0.0" in cmd:
            with tarfile.open(Path(cwd) / "good-1.0.0.tgz", "w:gz") as tar:
                tar.add(scan, arcname="package/data/scan.nii.gz")
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return subprocess.CompletedProcess(cmd, 1, "", "npm error 404 Not Found")

    monkeypatch.setattr(subprocess, "run", fake_run)
    good = splits.Source("package/data/scan.nii.gz", "somebody", "mri-sr", "real", TRAIN, archive="npm:good@1.0.0")
    gone = splits.Source("package/x.nii.gz", "nobody", "mri-sr", "real", TRAIN, archive="npm:gone@2.0.0")
    monkeypatch.setattr(build_training_data, "sources", lambda split: [good, gone] if split == TRAIN else [])
    cache = tmp_path / "cache"
    made = build_training_data.build(tmp_path / "DATA", tmp_path / "no-dev-data", pet_volumes=1, cache=cache)
    assert made == {"MRI": [good.file]} and calls[0] == ["npm", "pack", "good@1.0.0"]
    assert nib.load(str(tmp_path / "DATA" / "MRI" / "somebody.nii.gz")).shape == (64, 64, 3)
    assert "skipped package/x.nii.gz: npm:gone@2.0.0: download failed (npm error 404 Not Found)" in capsys.readouterr().err
    assert sorted(p.name for p in cache.iterdir()) == ["npm-good-1.0.0"]  # the failed one leaves nothing

    calls.clear()  # a second build reads the cache: no download of what is there
    build_training_data.build(tmp_path / "D2", tmp_path / "no-dev-data", pet_volumes=1, cache=cache)
    assert calls == [["npm", "pack", "gone@2.0.0"]]
    assert splits.locate(good, None, cache) == cache / "npm-good-1.0.0" / good.file
    with pytest.raises(ValueError, match="unknown archive registry"):
        splits.fetch_archive("conda:x==1", cache)


def test_pypi_archives_come_from_the_simple_index_checked_against_its_sha256(tmp_path, monkeypatch):
    """A source distribution is found on its project's simple-index page (names normalised, links
    relative or not) and kept only if its sha256 is the one the page gives."""
    import hashlib
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"scan"
        info = tarfile.TarInfo("Good_Pkg-1.0/data/scan.nrrd")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    archive = buf.getvalue()
    digest = hashlib.sha256(archive).hexdigest()
    served = {}

    def fake_get(url):
        if url not in served:
            raise OSError(f"HTTP Error 404: {url}")
        return served[url]

    monkeypatch.setattr(splits, "_get", fake_get)
    page = f"{splits.PYPI_INDEX}/good-pkg/"
    served[page] = f'<a href="../../files/Good_Pkg-1.0.tar.gz#sha256={digest}">Good_Pkg-1.0.tar.gz</a>'.encode()
    served[f"{splits.PYPI_INDEX.rsplit('/', 1)[0]}/files/Good_Pkg-1.0.tar.gz"] = archive
    folder = splits.fetch_archive("pypi:good.pkg==1.0", tmp_path / "cache")
    assert (folder / "Good_Pkg-1.0" / "data" / "scan.nrrd").read_bytes() == b"scan"
    served[page] = served[page].replace(digest.encode(), b"0" * 64)
    with pytest.raises(OSError, match="sha256 differs"):
        splits.fetch_archive("pypi:good-pkg==1.0", tmp_path / "other")
    with pytest.raises(OSError, match="no source distribution good-pkg-2.0.tar.gz"):
        splits.fetch_archive("pypi:good-pkg==2.0", tmp_path / "other")
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())
