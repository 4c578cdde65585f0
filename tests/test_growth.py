"""A deeper configuration started from a shallower one's weights computes the same function."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from amir_cli.errors import BadInputError
from amir_cli.network import AMIR, AmirConfig, get_config
from amir_cli.network.growth import grows_into, load_grown

TINY = get_config("amir-tiny")
DEEPER = replace(TINY, num_blocks=(2, 1, 3, 2), num_refinement_blocks=2)


def _trained_looking(config: AmirConfig, seed: int = 0) -> AMIR:
    """A network with no zero tensor (a fresh one has a zero output convolution in training only)."""
    torch.manual_seed(seed)
    model = AMIR(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_grown_network_computes_what_the_smaller_one_did_and_its_new_blocks_learn():
    small = _trained_looking(TINY).eval()
    large = AMIR(DEEPER)
    new = load_grown(large, small.state_dict())
    assert new == ["encoder_level1.1", "encoder_level3.1", "encoder_level3.2", "latent.1",
                   "decoder_level3.1", "decoder_level3.2", "decoder_level1.1", "refinement.1"]
    x = torch.rand(2, 1, 40, 48)
    with torch.no_grad():
        torch.testing.assert_close(large.eval()(x), small(x), rtol=0, atol=1e-6)
        assert (small(x) - x).abs().max() > 1e-3  # the function compared is not the identity
    # the new blocks are not dead: their output projections get gradients from the first step
    large.train()
    restored, load_loss = large(x)
    ((restored - x.flip(-1)).abs().mean() + load_loss).backward()
    for name in new:
        block = large.get_submodule(name)
        assert block.attn.project_out.weight.grad.abs().sum() > 0
        assert block.ffn.project_out.weight.grad.abs().sum() > 0


def test_growth_needs_the_same_widths_and_no_fewer_blocks():
    assert grows_into(TINY, DEEPER) and grows_into(TINY, TINY) and grows_into(get_config("amir-s"), get_config("amir-m"))
    assert not grows_into(DEEPER, TINY)
    assert not grows_into(TINY, replace(DEEPER, dim=16))
    assert not grows_into(TINY, replace(DEEPER, num_experts=6))
    with pytest.raises(ValueError, match="do not fit"):
        load_grown(AMIR(replace(DEEPER, dim=16)), AMIR(TINY).state_dict())
    state = AMIR(TINY).state_dict()
    del state["output.weight"]
    with pytest.raises(ValueError, match="outside the added blocks"):
        load_grown(AMIR(DEEPER), state)


def test_train_starts_a_deeper_configuration_from_smaller_weights(tmp_path, monkeypatch):
    from test_train import TINY as TRAIN_TINY, _phantom, _save
    from amir_cli.training import TrainOptions, train

    data = tmp_path / "data"
    for kind in ("CT", "MRI", "PET"):
        _save(data / kind / f"{kind.lower()}.nii.gz", _phantom(kind, slices=4))
    small = _trained_looking(TINY)
    save_file(small.state_dict(), str(tmp_path / "small.safetensors"))
    deeper = dict(TRAIN_TINY, config="amir-m", data=str(data), iterations=1, val_every=100, lr=1e-12)
    run = tmp_path / "run"
    train(TrainOptions(**deeper, out=str(run), init=str(tmp_path / "small.safetensors")))
    info = json.loads((run / "run.json").read_text())
    assert info["init"]["grown_from"] == [1, 1, 1, 1, 1]
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["model"]
    assert torch.allclose(state["latent.0.attn.qkv.weight"], small.state_dict()["latent.0.attn.qkv.weight"], atol=1e-6)
    assert state["latent.5.ffn.project_out.weight"].abs().max() < 1e-6
    save_file(AMIR(replace(TINY, dim=16)).state_dict(), str(tmp_path / "wide.safetensors"))
    with pytest.raises(BadInputError, match="different configuration"):
        train(TrainOptions(**deeper, out=str(tmp_path / "run2"), init=str(tmp_path / "wide.safetensors")))
