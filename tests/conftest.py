import hashlib
import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE = FIXTURES / "official_amir_tiny.safetensors"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"  # the shipped examples (examples/README.md)
# The full development data (not in the repository; CI has it): tests that need more than the crops
# in tests/fixtures/data skip without it, with DEV_DATA_REASON.
SHARED = Path(os.environ.get("AMIR_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DATA = SHARED / "data"
DEV_DATA_REASON = f"needs the full development data ({DATA}; set AMIR_SHARED to its parent folder)"

# Committed crops of development-data files (tests/fixtures/README.md): file -> first voxel of the crop
CROPS = {
    "ct/cranium_ct.nii.gz": (80, 90, 40),
    "mr/colin27_t1_1mm.nii.gz": (50, 70, 60),
    "ct/pancreas_ct_slice.nii.gz": (192, 192, 0),
}


def pytest_configure(config):
    """The native kernels build once per test session, in a folder of the session's own."""
    import tempfile

    os.environ.setdefault("AMIR_CACHE", tempfile.mkdtemp(prefix="amir-test-cache-"))


@pytest.fixture(autouse=True)
def _torch_threads_kept():
    """A test that changes torch's thread count (`amir train --threads` run in process) gives it
    back: the default engine depends on it (`auto_engine`)."""
    import sys

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch else None
    yield
    if before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


def auto_engine() -> str:
    """What the default engine runs on the CPU in fp32 here (`amir_cli.restore.engine`)."""
    import torch

    from amir_cli.network import native, onednn

    used = [name for name, on in (("native", native.available()),
                                  ("fused", torch.get_num_threads() == 1 and onednn.available())) if on]
    return "+".join(used) or "plain"


def needs_dev_data(*files: str):
    """Skip unless the full development data (these files of it, or the folder) are present."""
    present = all((DATA / f).exists() for f in files) if files else DATA.is_dir()
    return pytest.mark.skipif(not present, reason=DEV_DATA_REASON)


def real_crop(name: str, sl: tuple):
    """Voxels ``sl`` (slices in the full file's indices) of development-data file ``name``, read from
    its committed crop: (array, affine of the first voxel, NIfTI header)."""
    import nibabel as nib
    import numpy as np

    img = nib.load(str(FIXTURES / "data" / name))
    origin = CROPS[name]
    local = tuple(slice(s.start - o, s.stop - o) for s, o in zip(sl, origin))
    if any(s.start < 0 or s.stop > n for s, n in zip(local, img.shape)):
        raise ValueError(f"{sl} is outside the committed crop of {name}")
    affine = img.affine.copy()
    affine[:3, 3] = (img.affine @ np.array([s.start for s in local] + [1.0]))[:3]
    return np.asarray(img.dataobj[local]), affine, img.header.copy()


@pytest.fixture(scope="session")
def official_fixture():
    # The published computation is the oracle of the network tests: its absence is a failure, not a skip.
    assert FIXTURE.exists(), f"fixture {FIXTURE} is missing: the published-code oracle must ship with the tests"
    from safetensors.torch import load_file

    return load_file(str(FIXTURE))


def official_state(tensors: dict) -> dict:
    """The network's tensors of the published fixture (stored under ``model.`` beside its input and output)."""
    return {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}


@pytest.fixture()
def amir_home(tmp_path, monkeypatch):
    """An empty user weights registry."""
    monkeypatch.setenv("AMIR_HOME", str(tmp_path / "amir_home"))
    return tmp_path / "amir_home"


def amir(*args: str) -> tuple[int, str, str]:
    """Run `amir` in process through main() (the real error edge): exit code, stdout, stderr."""
    import contextlib
    import io

    from amir_cli.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def sha(path: Path) -> str:
    """sha256 of a file, or of a folder's files in name order."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """amir-tiny with seeded random weights (what the CLI runs in tests)."""
    import torch
    from safetensors.torch import save_file

    from amir_cli.network import AMIR, get_config

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_file(AMIR(get_config("amir-tiny")).state_dict(), str(path))
    return path


def crop_nifti(name: str, sl, dest: Path, dtype=None) -> Path:
    """A NIfTI file of voxels ``sl`` of a committed crop (:func:`real_crop`)."""
    import nibabel as nib

    data, affine, hdr = real_crop(name, sl)
    if dtype is not None:
        data = data.astype(dtype)
        hdr.set_data_dtype(dtype)
    nib.save(nib.Nifti1Image(data, affine, header=hdr), str(dest))
    return dest
