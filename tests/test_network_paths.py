"""The computations a model can be set to (`AMIR.set_computation`) agree with the published one:
dense experts, channels-first LayerNorm, chunked inference, a bf16-cast model."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from amir_cli.network import AMIR, AmirConfig, get_config
from amir_cli.network import native, onednn, restormer, routing

from conftest import official_state

RANDOM_CONFIGS = [
    AmirConfig(dim=6, num_blocks=(2, 1, 1, 1), num_refinement_blocks=1, heads=(2, 3, 4, 6)),
    AmirConfig(dim=8, num_blocks=(1, 1, 2, 1), num_refinement_blocks=0, ffn_expansion_factor=2.0,
               bias=True, layernorm_type="BiasFree"),
    AmirConfig(dim=4, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2), bias=True),
]
FAST = [dict(experts="dense", norm="channels"), dict(experts="dense", norm="permuted"),
        dict(experts="sparse", norm="channels"), dict(experts="sparse", norm="permuted")]


def random_model(config: AmirConfig, seed: int = 0) -> AMIR:
    """Random weights with the gates and experts scaled up, so that the routing and the log-space
    combine change the output well beyond the tolerance (a default init barely routes)."""
    torch.manual_seed(seed)
    model = AMIR(config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, routing.NoisyTopKExperts):
                m.w_gate.mul_(3)
                m.w_noise.normal_(0, 0.5)
                for e in m.experts:
                    e.fc2.weight.mul_(4)
                    e.fc2.bias.normal_(0, 0.5)
            if isinstance(m, restormer.ChannelLayerNorm):
                m.body.weight.normal_(1, 0.3)
                if m.body.bias is not None:
                    m.body.bias.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("computation", FAST, ids=str)
@pytest.mark.parametrize("config", RANDOM_CONFIGS, ids=lambda c: f"dim{c.dim}-{c.layernorm_type}-bias{c.bias}")
def test_fast_paths_equal_reference_on_random_configurations(config, computation):
    model = random_model(config).eval()
    x = torch.rand(2, 1, 40, 48)
    with torch.no_grad():
        ref = model.set_computation(reference=True)(x)
        out = model.set_computation(**computation)(x)
    assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
@pytest.mark.parametrize("gram", ["whole", "per-head"])
@pytest.mark.parametrize("chunked", [False, True], ids=["whole-maps", "chunked"])
@pytest.mark.parametrize("config", RANDOM_CONFIGS[:2], ids=["no-bias", "bias"])
def test_inference_paths_equal_reference(config, fused, gram, chunked, monkeypatch):
    """oneDNN's fused operators or plain ones, the attention's Gram matrix as one C x C product or
    one per head, maps whole or in groups of channels and pixels (large images)."""
    model = random_model(config).eval()
    x = torch.rand(2, 1, 40, 48)
    with torch.no_grad():
        ref = model.set_computation(reference=True)(x)
        monkeypatch.setattr(restormer, "_FULL_GRAM_WIDTH", 64 if gram == "whole" else 0)
        if chunked:
            monkeypatch.setattr(restormer, "_FFN_CHUNK", 1000)
            monkeypatch.setattr(routing, "_SPARSE_CHUNK", 2000)
        out = model.set_computation(engine="fused" if fused else "plain")(x)
    assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize("gram", ["whole", "per-head"])
@pytest.mark.parametrize("computation", FAST, ids=str)
def test_fast_paths_equal_reference_in_training_loss_and_gradients(computation, gram, monkeypatch):
    monkeypatch.setattr(restormer, "_FULL_GRAM_WIDTH", 64 if gram == "whole" else 0)
    model = random_model(RANDOM_CONFIGS[0]).train()
    x = torch.rand(2, 1, 32, 32)
    results = []
    for kwargs in (dict(reference=True), computation):
        model.set_computation(**kwargs)
        model.zero_grad()
        torch.manual_seed(1)  # the same gating noise
        out, load = model(x)
        ((out - x).abs().mean() + 0.01 * load).backward()
        results.append((out.detach(), load.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (out_r, load_r, grad_r), (out_f, load_f, grad_f) = results
    assert (out_f - out_r).abs().max() < 1e-5
    assert abs(load_f.item() - load_r.item()) < 1e-5 * max(1.0, abs(load_r.item()))
    for name, g in grad_r.items():
        assert (grad_f[name] - g).abs().max() < 1e-5 * max(1.0, g.abs().max().item()), name


def test_dense_experts_match_the_sparse_combine_exactly_per_chunk(monkeypatch):
    """Inference splits the pixels into chunks (tiny here): the result is the same."""
    model = random_model(RANDOM_CONFIGS[1]).eval()
    x = torch.rand(3, 1, 24, 40)
    with torch.no_grad():
        ref = model.set_computation(experts="sparse")(x)
        monkeypatch.setattr(routing, "_DENSE_CHUNK", 1000)
        monkeypatch.setattr(restormer, "_FFN_CHUNK", 500)
        out = model.set_computation(experts="dense")(x)
    assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize("mask", [True, False])
def test_an_unrouted_expert_adds_nothing_even_when_its_exp_overflows(mask, monkeypatch):
    """An expert outside every pixel's top 2 whose exp would be inf: the dense combine masks it
    before the exp (without the mask, inf * 0 gives NaN, in the output and in the gradients)."""
    torch.manual_seed(0)
    moe = routing.NoisyTopKExperts(8, 2.0).eval()
    with torch.no_grad():
        moe.w_gate[:, 0] = 0
        moe.w_gate[8:, 0] = -1e3  # the cue half: expert 0 never makes the top 2
        moe.experts[0].fc2.bias.fill_(200.0)  # exp(200) overflows fp32
    x, cue = torch.randn(2, 8, 10, 10), torch.ones(2, 8)
    moe.experts_path = "sparse"
    ref, _ = moe(x, cue)
    moe.experts_path = "dense"
    if not mask:
        monkeypatch.setattr(torch.Tensor, "masked_fill", lambda self, m, value: self)
    xg = x.clone().requires_grad_()
    out, _ = moe(xg, cue)
    out.sum().backward()
    ok = bool(torch.isfinite(xg.grad).all()) and (out.detach() - ref).abs().max() < 1e-5
    assert ok == mask


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops, self.shapes = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.append(str(func.overloadpacket))
        self.shapes.append(tuple(out.shape) if isinstance(out, torch.Tensor) else None)
        return out


def run_logged(moe, x, cue):
    log = OpLog()
    with torch.no_grad(), log:
        moe(x, cue)
    return log


@pytest.mark.parametrize("training", [False, True])
def test_dense_experts_have_static_shapes_and_no_host_synchronisation(training):
    """No nonzero, no .item(), and the same ops with the same shapes whatever the routing; the
    sparse dispatch (checked too, so that the test can fail) has both."""
    torch.manual_seed(0)
    moe = routing.NoisyTopKExperts(8, 2.0).train(training)
    x1, x2, cue = torch.randn(2, 8, 12, 12), 3 * torch.randn(2, 8, 12, 12), torch.randn(2, 8)
    moe.experts_path = "dense"
    a, b = run_logged(moe, x1, cue), run_logged(moe, x2, cue)
    routed = {"aten.nonzero", "aten.bincount", "aten._local_scalar_dense", "aten.item"}  # sizes read on the host
    assert not routed & set(a.ops)
    assert a.ops == b.ops and a.shapes == b.shapes
    moe.experts_path, moe.engine = "sparse", "plain"  # PyTorch's sparse dispatch (`native` routes inside one call)
    a, b = run_logged(moe, x1, cue), run_logged(moe, x2, cue)
    assert routed & set(a.ops) and a.shapes != b.shapes


class StorageLog(TorchDispatchMode):
    """The sizes of the storages that the ops' results live in (a view: its base's)."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.sizes.append(out.untyped_storage().nbytes())
        return out


def test_sparse_inference_allocates_the_same_buffers_whatever_the_routing():
    """Buffers sized by the routing fragment the heap (the process grows slice after slice): the
    sparse experts write into buffers sized by the pixels alone."""
    torch.manual_seed(0)
    moe = routing.NoisyTopKExperts(8, 2.0).eval()
    moe.experts_path = "sparse"
    x1, x2, cue = torch.randn(2, 8, 12, 12), 3 * torch.randn(2, 8, 12, 12), torch.randn(2, 8)
    logs = []
    for x in (x1, x2):
        with torch.no_grad(), StorageLog() as log:
            moe(x, cue)
        logs.append(sorted(log.sizes))
    assert logs[0] == logs[1]


def test_computation_is_chosen_per_model():
    a, b = AMIR(get_config("amir-tiny")), AMIR(get_config("amir-tiny"))
    a.set_computation(reference=True)
    assert all(m.reference for m in a.modules() if isinstance(m, restormer.Computation))
    assert not any(m.reference for m in b.modules() if isinstance(m, restormer.Computation))
    assert a.set_computation(experts="dense") is a
    assert not a.reference and a.spatial_routing_encoder_level1.moe.experts_path == "dense"
    with pytest.raises(ValueError):
        a.set_computation(experts="fast")
    with pytest.raises(ValueError):
        a.set_computation(norm="nchw")


@pytest.mark.parametrize("computation", [dict(), dict(experts="dense", norm="channels")], ids=str)
def test_bf16_cast_model_runs_close_to_fp32(official_fixture, computation):
    model = AMIR(get_config("amir-tiny")).eval()
    model.load_state_dict(official_state(official_fixture))
    x = official_fixture["input"]
    with torch.no_grad():
        ref = model.set_computation(**computation)(x)
        model.to(torch.bfloat16)
        out = model(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    mse = (out.float() - ref).pow(2).mean().item()
    assert 10 * torch.log10(torch.tensor(1.0 / mse)).item() > 35  # dB on the [0, 1] range


@pytest.mark.parametrize("engine", ["plain", "fused", "native"])
def test_bf16_autocast_in_groups_of_channels(engine, monkeypatch):
    """CPU autocast (`--precision bf16`) on a map large enough for the feed-forward to go in
    groups of hidden channels (tiny groups here): each group's product adds into the bf16 sum."""
    model = random_model(RANDOM_CONFIGS[1]).eval().set_computation(engine=engine)
    x = torch.rand(1, 1, 24, 32)
    with torch.no_grad():
        ref = model(x)
        monkeypatch.setattr(restormer, "_FFN_CHUNK", 1000)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.shape == ref.shape and (out.float() - ref).abs().mean() < 0.02


def test_weight_slices_are_aligned_off_the_cpu():
    """What the chunked feed-forward hands a convolution: a slice off a 16-byte boundary is copied
    (checked on a meta tensor, which reports a device other than the CPU)."""
    w = torch.empty(222, 1, 3, 3, dtype=torch.bfloat16, device="meta")
    odd, even = w[111:140], w[16:48]
    assert odd.storage_offset() * 2 % 16 and restormer._weight(odd).storage_offset() == 0
    assert restormer._weight(even) is even
    cpu = torch.empty(222, 1, 3, 3, dtype=torch.bfloat16)[111:140]
    assert restormer._weight(cpu).storage_offset() == cpu.storage_offset()


@pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN fused operators")
def test_fused_operators_run_in_cpu_inference_only():
    from torch.profiler import profile

    model = random_model(RANDOM_CONFIGS[2])
    x = torch.rand(1, 1, 24, 24)

    def fused_ops(run) -> set:
        with profile() as prof:
            run()
        return {e.key for e in prof.key_averages() if e.key.startswith("mkldnn::")}

    with torch.no_grad():
        assert "mkldnn::_convolution_pointwise" in fused_ops(lambda: model.eval().set_computation(engine="fused")(x))
        assert not fused_ops(lambda: model.set_computation(engine="plain")(x))
        model.set_computation(engine="auto")
        threads = torch.get_num_threads()
        try:
            for n, fused in ((1, not native.available()), (2, False)):  # auto: with one thread, without the kernels
                torch.set_num_threads(n)
                assert bool(fused_ops(lambda: model(x))) == fused
        finally:
            torch.set_num_threads(threads)
    model.set_computation(engine="fused").train()
    assert not fused_ops(lambda: model(x)[0].sum().backward())


def test_gelu_of_a_channels_last_map_keeps_values_layout_and_gradient():
    """The GDFN gate's GELU runs on the NHWC view of a channels-last map."""
    x = torch.randn(2, 5, 7, 9).contiguous(memory_format=torch.channels_last).requires_grad_()
    plain = x.detach().contiguous().requires_grad_()
    y, ref = restormer.gelu(x), torch.nn.functional.gelu(plain)
    assert y.is_contiguous(memory_format=torch.channels_last) and y.shape == ref.shape
    assert (y - ref).abs().max() < 1e-6
    g = torch.randn_like(ref)
    y.backward(g)
    ref.backward(g)
    assert (x.grad - plain.grad).abs().max() < 1e-6
