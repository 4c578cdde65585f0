import pytest
import torch

from amir_cli.network import AMIR, CONFIGS, AmirConfig, get_config
from amir_cli.weights import build_from_state, infer_config, read_state_dict

from conftest import FIXTURE, official_state


COMPUTATIONS = [
    dict(reference=True),
    dict(),
    dict(experts="dense", norm="channels"),
    dict(experts="sparse", norm="channels"),
    dict(experts="dense", norm="permuted"),
]


@pytest.mark.parametrize("computation", COMPUTATIONS, ids=str)
def test_reproduces_published_output(official_fixture, computation):
    model = AMIR(AmirConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1)).eval()
    model.load_state_dict(official_state(official_fixture), strict=True)
    model.set_computation(**computation)
    with torch.no_grad():
        out = model(official_fixture["input"])
        instruction = model.instruction(official_fixture["input"])
    assert (out - official_fixture["output"]).abs().max() < 1e-5
    assert (instruction - official_fixture["instruction"]).abs().max() < 1e-5


def test_fixture_file_loads_through_the_api(official_fixture):
    import amir_cli

    model = amir_cli.load_model(str(FIXTURE))
    assert not model.training
    with torch.no_grad():
        out = model(official_fixture["input"])
    assert (out - official_fixture["output"]).abs().max() < 1e-5


def test_summed_gates_without_log_combine_would_miss(official_fixture):
    """The exp/log combine matters: removing it moves the output well past the tolerance."""
    model = build_from_state(official_state(official_fixture)).set_computation(reference=True)

    def plain_sum(moe):
        return lambda tokens, gates: sum(gates[:, e : e + 1] * ex(tokens) for e, ex in enumerate(moe.experts))

    for sr in (model.spatial_routing_encoder_level1, model.spatial_routing_encoder_level2, model.spatial_routing_encoder_level3):
        sr.moe._combine = plain_sum(sr.moe)
    with torch.no_grad():
        out = model(official_fixture["input"])
    assert (out - official_fixture["output"]).abs().max() > 1e-4


@pytest.mark.parametrize(
    "config",
    [
        AmirConfig(dim=6, num_blocks=(2, 1, 3, 1), num_refinement_blocks=2, heads=(2, 3, 4, 6)),
        AmirConfig(dim=8, num_blocks=(1, 2, 1, 2), num_refinement_blocks=0, ffn_expansion_factor=2.0,
                   bias=True, layernorm_type="BiasFree"),
        AmirConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, atom_num=16, atom_dim=64, num_experts=3),
        CONFIGS["amir-s"],
    ],
)
def test_configuration_is_inferred_from_tensors(tmp_path, config):
    torch.manual_seed(0)
    model = AMIR(config).eval()
    path = tmp_path / "m.pth"
    torch.save(model.state_dict(), path)
    state = read_state_dict(path)
    assert infer_config(state) == config
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(build_from_state(state)(x), model(x))


def test_a_training_checkpoint_is_read_as_its_weight_average(tmp_path):
    """last.pt holds the trained weights and their EMA: scoring it scores the EMA that training
    validated and `amir weights add --last` exports."""
    torch.manual_seed(0)
    raw, ema = AMIR(get_config("amir-tiny")).state_dict(), AMIR(get_config("amir-tiny")).state_dict()
    path = tmp_path / "last.pt"
    torch.save({"model": raw, "ema": ema, "iteration": 5}, path)
    state = read_state_dict(path)
    assert all(torch.equal(state[k], ema[k]) for k in ema) and not all(torch.equal(state[k], raw[k]) for k in raw)
    torch.save({"model": raw, "ema": None, "iteration": 5}, path)  # trained without --ema
    assert all(torch.equal(read_state_dict(path)[k], raw[k]) for k in raw)


def test_paper_configuration_size():
    assert sum(p.numel() for p in AMIR(get_config("amir")).parameters()) == pytest.approx(23.54e6, rel=1e-3)


@pytest.mark.parametrize("hw", [(9, 9), (37, 50), (64, 64), (65, 17)])
def test_any_size_is_padded_and_cropped(hw):
    torch.manual_seed(0)
    model = AMIR(get_config("amir-tiny")).eval()
    x = torch.rand(2, 1, *hw)
    with torch.no_grad():
        y = model(x)
        y0 = model(x[:1])
    assert y.shape == x.shape
    assert torch.allclose(y[:1], y0, atol=1e-5)  # batching does not mix images


def test_too_small_image_is_refused():
    with pytest.raises(ValueError, match="9x9"):
        AMIR(get_config("amir-tiny")).eval()(torch.rand(1, 1, 8, 20))


def test_train_mode_returns_load_loss_with_gradients():
    torch.manual_seed(0)
    model = AMIR(get_config("amir-tiny")).train()
    out, load_loss = model(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 1, 32, 32) and load_loss.ndim == 0 and load_loss.item() >= 0
    (out.abs().mean() + 0.001 * load_loss).backward()
    moe = model.spatial_routing_encoder_level1.moe
    assert moe.w_gate.grad.abs().sum() > 0 and moe.w_noise.grad.abs().sum() > 0


@pytest.mark.parametrize("computation", COMPUTATIONS[1:], ids=str)
def test_fast_and_reference_paths_agree_in_training(computation):
    torch.manual_seed(0)
    model = AMIR(get_config("amir-tiny")).train()
    x = torch.rand(2, 1, 24, 24)
    results = []
    for kwargs in (computation, dict(reference=True)):
        model.set_computation(**kwargs)
        torch.manual_seed(1)
        out, loss = model(x)
        out.sum().backward()
        results.append((out.detach(), loss.detach(), model.patch_embed.proj.weight.grad.clone()))
        model.zero_grad()
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_unknown_configuration_name():
    with pytest.raises(ValueError, match="unknown configuration"):
        get_config("nope")


def test_configuration_bounds_the_experts():
    with pytest.raises(ValueError, match="at most 256 experts"):
        AmirConfig(num_experts=257)
    with pytest.raises(ValueError, match="top_k"):
        AmirConfig(num_experts=2, top_k=3)
