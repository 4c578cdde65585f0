"""A wider configuration started from a narrower one's weights computes the same function (twice
the width) or close to it (other widths), and its copied channels can part in training."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from amir_cli.errors import BadInputError
from amir_cli.network import AMIR, get_config
from amir_cli.network.widening import widen_state, widens_into
from test_growth import TINY, _trained_looking


def _widened(small: AMIR, dim: int, **kw) -> AMIR:
    large = AMIR(replace(small.config, dim=dim))
    large.load_state_dict(widen_state(small.state_dict(), small.config, large.config, **kw))  # strict
    return large.eval()


def test_twice_the_width_computes_what_the_narrower_network_did():
    small = _trained_looking(TINY).eval()
    x = torch.rand(2, 1, 40, 48)
    with torch.no_grad():
        expected = small(x)
        assert (expected - x).abs().max() > 1e-3  # the function compared is not the identity
        torch.testing.assert_close(_widened(small, 16)(x), expected, rtol=0, atol=1e-5)
        # the published computation of the wider network agrees too
        torch.testing.assert_close(_widened(small, 16).set_computation(reference=True)(x), expected, rtol=0, atol=1e-5)


def test_other_widths_start_close_and_jitter_parts_the_copies():
    small = _trained_looking(TINY).eval()
    x = torch.rand(2, 1, 40, 48)
    with torch.no_grad():
        change = small(x) - x
        wider = _widened(small, 12)(x) - x
    assert torch.corrcoef(torch.stack([change.flatten(), wider.flatten()]))[0, 1] > 0.8
    exact = widen_state(small.state_dict(), TINY, replace(TINY, dim=16))["encoder_level1.0.ffn.project_in.weight"]
    jittered = widen_state(small.state_dict(), TINY, replace(TINY, dim=16), jitter=0.01,
                           generator=torch.Generator().manual_seed(0))["encoder_level1.0.ffn.project_in.weight"]
    assert torch.equal(exact[0], exact[21]) and not torch.equal(jittered[0], jittered[21])  # hidden unit 0 and its copy
    assert 0 < (jittered - exact).abs().max() < 0.05 * exact.abs().max()


def test_widening_changes_the_width_alone():
    assert widens_into(TINY, replace(TINY, dim=16)) and widens_into(get_config("amir-s"), get_config("amir-w"))
    assert widens_into(TINY, replace(TINY, dim=12, num_blocks=(1, 2, 1, 1)))
    assert not widens_into(TINY, TINY) and not widens_into(replace(TINY, dim=16), TINY)
    assert not widens_into(TINY, replace(TINY, dim=16, num_experts=6))
    with pytest.raises(ValueError, match="only the width"):
        widen_state(AMIR(TINY).state_dict(), TINY, replace(TINY, dim=16, heads=(1, 1, 1, 1)))
    with pytest.raises(ValueError, match="through the downsampling"):  # level 2: heads of 21 channels from 8
        widen_state(AMIR(TINY).state_dict(), TINY, replace(TINY, dim=21))


def test_train_starts_a_wider_and_deeper_configuration_from_narrower_weights(tmp_path):
    from test_train import TINY as TRAIN_TINY, _phantom, _save
    from amir_cli.training import TrainOptions, train

    data = tmp_path / "data"
    for kind in ("CT", "MRI", "PET"):
        _save(data / kind / f"{kind.lower()}.nii.gz", _phantom(kind, slices=4))
    save_file(_trained_looking(TINY).state_dict(), str(tmp_path / "small.safetensors"))
    run = tmp_path / "run"
    options = dict(TRAIN_TINY, config="amir-w", data=str(data), iterations=1, val_every=100, lr=1e-12)
    train(TrainOptions(**options, out=str(run), init=str(tmp_path / "small.safetensors")))
    init = json.loads((run / "run.json").read_text())["init"]
    assert init["widened_from"] == 8 and init["grown_from"] == [1, 1, 1, 1, 1]
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["model"]
    assert state["patch_embed.proj.weight"].shape[0] == 12
    assert state["encoder_level2.1.ffn.project_out.weight"].abs().max() < 1e-6  # an added block, still the identity
    with pytest.raises(BadInputError, match="cannot be widened to --config amir"):  # width 42: heads of 42 from 8
        train(TrainOptions(**dict(options, config="amir"), out=str(tmp_path / "run2"), init=str(tmp_path / "small.safetensors")))
    assert not (tmp_path / "run2" / "last.pt").exists()
