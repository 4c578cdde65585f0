import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("AMIR_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FIXTURE = SHARED / "fixtures" / "official_amir_tiny.safetensors"
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def official_fixture():
    # The published computation is the oracle of the network tests: its absence is a failure, not a skip.
    assert FIXTURE.exists(), f"fixture {FIXTURE} is missing: the published-code oracle must ship with the tests"
    from safetensors.torch import load_file

    return load_file(str(FIXTURE))


@pytest.fixture()
def amir_home(tmp_path, monkeypatch):
    """An empty user weights registry."""
    monkeypatch.setenv("AMIR_HOME", str(tmp_path / "amir_home"))
    return tmp_path / "amir_home"
