"""The user registry: entries are removed by name (never the shipped ones) and written with the
permissions of the umask, like every other file amir writes."""

import dataclasses
import os
import stat

import pytest
import torch

from amir_cli import weights
from amir_cli.network import AMIR, get_config
from conftest import amir


def _tiny_state():
    torch.manual_seed(0)
    return AMIR(get_config("amir-tiny")).state_dict()


def test_weights_remove_deletes_a_user_entry_and_never_a_shipped_one(amir_home):
    entry = weights.save_entry("my-amir", _tiny_state(), {"tasks": ["ct-denoise"]})
    code, _, err = amir("weights", "import", entry.path, "--name", "my-amir")
    assert code == 1 and "amir weights remove my-amir" in err
    code, out, err = amir("weights", "remove", "my-amir")
    assert code == 0 and out == f"removed my-amir ({entry.path})\n", err
    assert not entry.path.exists() and "my-amir" not in [e.name for e in weights.entries()]
    weights.save_entry("my-amir", _tiny_state(), {})  # the name is free again
    shipped = weights.default_name()
    code, _, err = amir("weights", "remove", shipped)
    assert code == 1 and err.count("\n") == 1 and "shipped with amir, which are never removed" in err
    assert weights.find(shipped).path.is_file()
    code, _, err = amir("weights", "remove", "no-such-entry")
    assert code == 1 and "no weights named 'no-such-entry'" in err


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_registry_files_follow_the_umask(amir_home, mask):
    old = os.umask(mask)
    try:
        entry = weights.save_entry("m", _tiny_state(), {})
    finally:
        os.umask(old)
    for path in (entry.path, entry.path.parent / weights.MANIFEST):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


def test_the_loader_builds_the_configuration_the_manifest_records(amir_home):
    """The experts mixed per pixel hold no tensor: only the manifest knows them, and loading builds them."""
    config = dataclasses.replace(get_config("amir-tiny"), top_k=1)
    weights.save_entry("one-expert", _tiny_state(), {}, config)
    loaded = weights.load_weights("one-expert", "cpu")
    assert loaded.model.config == config and loaded.config["top_k"] == 1
    assert loaded.model.spatial_routing_encoder_level3.moe.k == 1


def test_a_tampered_or_malformed_user_manifest_is_refused_and_deletes_nothing(amir_home, tmp_path):
    import json

    weights.save_entry("mine", _tiny_state(), {})
    manifest = amir_home / "weights" / weights.MANIFEST
    good = json.loads(manifest.read_text())
    precious = tmp_path / "precious.txt"
    precious.write_text("keep")
    outside = dict(good["entries"][0], name="evil", file=os.path.relpath(precious, manifest.parent))
    for broken, reason in (
        ({"entries": good["entries"] + [outside]}, "names a file outside its folder"),
        ({"entries": 5}, "no list of entries"),
        ({"entries": [{"name": "q"}]}, "names a file outside its folder"),
        ({"entries": good["entries"] * 2}, "invalid or repeated name 'mine'"),
        ({"entries": [dict(good["entries"][0], name=weights.default_name())]}, "takes the name of weights shipped with amir"),
    ):
        manifest.write_text(json.dumps(broken))
        for args in (("list",), ("remove", "evil")):
            code, _, err = amir("weights", *args)
            assert code == 1 and err.count("\n") == 1 and "is not a valid amir manifest" in err and reason in err, err
        assert precious.read_text() == "keep"
        assert weights.find(weights.default_name()).shipped  # the shipped weights still load


def test_names_read_as_paths_non_finite_weights_and_stray_files_are_refused(amir_home, tmp_path):
    with pytest.raises(weights.WeightsError, match="read as a file path"):
        weights.check_free_name("nope.pth")
    state = _tiny_state()
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    torch.save(state, tmp_path / "nan.pth")
    code, _, err = amir("weights", "import", tmp_path / "nan.pth", "--name", "bad")
    assert code == 1 and f"{tmp_path / 'nan.pth'}: tensor {key} holds NaN or infinite values" in err
    (amir_home / "weights").mkdir(parents=True, exist_ok=True)
    (amir_home / "weights" / "b.safetensors").write_text("mine")
    with pytest.raises(weights.WeightsError, match="no registry entry holds it"):
        weights.save_entry("b", _tiny_state(), {})
    assert (amir_home / "weights" / "b.safetensors").read_text() == "mine"


def test_weights_commands_name_what_is_wrong_with_a_path_or_entry(amir_home, tmp_path):
    code, _, err = amir("weights", "import", tmp_path, "--name", "x")
    assert code == 1 and err == f"amir: error: {tmp_path}: a folder, not a weights file\n"
    entry = weights.save_entry("gone", _tiny_state(), {})
    entry.path.unlink()
    code, out, err = amir("weights", "path", "gone")
    assert code == 1 and out == "" and "weights file for 'gone' is missing" in err


def test_a_failed_registry_write_leaves_no_file_without_its_record(amir_home, monkeypatch):
    def full(folder, manifest):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(weights, "_write_manifest", full)
        with pytest.raises(weights.WeightsError, match="cannot write weights to .*: No space left on device"):
            weights.save_entry("w1", _tiny_state(), {})
    assert not (amir_home / "weights" / "w1.safetensors").exists()
    assert weights.save_entry("w1", _tiny_state(), {}).path.parent == amir_home / "weights"  # the name is free
