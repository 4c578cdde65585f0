"""amir's own CPU kernels (`amir_cli.network.native`): the same network as the published computation,
in inference only; built once into the cache folder, safely under races; without a compiler the
network computes as before and an explicit --engine native is refused in one line."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from amir_cli.network import AmirConfig, native, restormer
from amir_cli.network.routing import NoisyTopKExperts

from conftest import amir, crop_nifti
from test_network_paths import RANDOM_CONFIGS, random_model

needs_native = pytest.mark.skipif(not native.available(), reason=f"no native kernels here: {native.reason()}")
ROUTING_CONFIGS = [  # top-1, top-3 of 5 experts, and every expert at once
    AmirConfig(dim=6, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 2, 2, 3), num_experts=3, top_k=1),
    AmirConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=0, heads=(2, 2, 4, 4), num_experts=5, top_k=3),
    AmirConfig(dim=4, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1), num_experts=2, top_k=2),
]


@needs_native
@pytest.mark.parametrize("config", RANDOM_CONFIGS + ROUTING_CONFIGS,
                         ids=lambda c: f"dim{c.dim}-{c.layernorm_type}-bias{c.bias}-top{c.top_k}of{c.num_experts}")
@pytest.mark.parametrize("size", [(40, 48), (37, 53)], ids=["40x48", "37x53"])
def test_native_engine_equals_the_published_computation(config, size):
    """Two images of a batch (each with its own routing cue), a size that the U-Net pads; twice
    the same to the bit."""
    model = random_model(config).eval()
    x = torch.rand(2, 1, *size)
    with torch.no_grad():
        ref = model.set_computation(reference=True)(x)
        out = model.set_computation(engine="native")(x)
        assert torch.equal(model(x), out)
    assert (out - ref).abs().max() < 1e-5


@needs_native
def test_native_kernels_run_in_fp32_on_the_cpu_training_only_the_feed_forward(monkeypatch):
    """Inference takes every kernel; training the feed-forward's, on maps of at least
    native.TRAIN_SIDE a side (here level 1 of 24x24, not level 2); other engines and the published
    computation none."""
    calls = []
    for name in ("attention_block", "ffn_block", "experts", "ffn_block_trained"):
        real = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _real=real, _name=name, **k: calls.append((_name, a[0].shape[-1])) or _real(*a, **k))
    model = random_model(RANDOM_CONFIGS[0]).set_computation(engine="native")
    x = torch.rand(1, 1, 24, 24)
    model.train()
    model(x)[0].sum().backward()
    assert calls and set(calls) == {("ffn_block_trained", 24)}
    calls.clear()
    model.set_computation(engine="plain")(x)[0].sum().backward()
    with torch.no_grad():
        model.eval()(x)
        model.set_computation(reference=True)(x)
    assert calls == []
    with torch.no_grad():
        model.set_computation(engine="native")(x)
    assert {name for name, _ in calls} == {"attention_block", "ffn_block", "experts"}


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dim, bias, norm, shape", [
    (8, False, "WithBias", (1, 16, 16)), (8, True, "BiasFree", (2, 7, 19)), (16, True, "WithBias", (3, 9, 8)),
    (5, False, "WithBias", (1, 1, 1)), (12, True, "BiasFree", (1, 20, 33))], ids=lambda v: str(v))
def test_feed_forward_kernel_gradients_equal_autograd_of_the_operators(threads, dim, bias, norm, shape):
    """The output and every gradient (x, LayerNorm, expansion, depthwise, projection, biases) of the
    trained feed-forward half against autograd through the operators."""
    torch.manual_seed(dim)
    block = restormer.TransformerBlock(dim, 1, 2.66, bias, norm)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    params = list(block.norm2.parameters()) + list(block.ffn.parameters())
    x0 = torch.randn(shape[0], dim, *shape[1:]).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(x0.shape)
    before = torch.get_num_threads()
    results = []
    try:
        torch.set_num_threads(threads)
        for trained in (native.ffn_block_trained, lambda x, n, f: f(n(x), residual=x)):
            block.zero_grad()
            for m in (block.norm2, block.ffn):
                m.engine = "plain"
            x = x0.clone().requires_grad_()
            out = trained(x, block.norm2, block.ffn)
            (out * weight).sum().backward()
            results.append([out.detach(), x.grad] + [p.grad.clone() for p in params])
    finally:
        torch.set_num_threads(before)
    for ours, ref in zip(*results):
        assert (ours - ref).abs().max() < 1e-5 * max(1.0, ref.abs().max().item())


@needs_native
def test_feed_forward_kernel_gelu_matches_the_exact_gelu():
    """The kernel's GELU (a rational erf) against float64's exact one, from far negative to far
    positive: a block whose gates are its expansion's biases (one per channel, exact), values 1,
    and the identity after the gate, on a zero pixel (its LayerNorm is 0)."""
    gates = torch.linspace(-12, 12, 24000).view(-1, 1000)
    block = restormer.TransformerBlock(1000, 1, 1.0, True, "WithBias").eval()
    ffn = block.ffn
    with torch.no_grad():
        for p in ffn.parameters():
            p.zero_()
        ffn.dwconv.weight[:, 0, 1, 1] = 1
        ffn.project_out.weight[:, :, 0, 0] = torch.eye(1000)
        ffn.project_in.bias[1000:] = 1
        x = torch.zeros(1, 1000, 1, 1).contiguous(memory_format=torch.channels_last)
        out = []
        for row in gates:
            ffn.project_in.bias[:1000] = row
            out.append(native.ffn_block(x, block.norm2, ffn).flatten())
    exact = torch.nn.functional.gelu(gates.double())
    assert (torch.stack(out).double() - exact).abs().max() < 3e-6


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dim, heads, bias, norm, shape", [
    (8, 1, False, "WithBias", (1, 64, 64)), (8, 2, True, "BiasFree", (2, 17, 35)), (16, 4, False, "WithBias", (3, 33, 8)),
    (42, 3, True, "WithBias", (1, 20, 49)), (8, 1, False, "WithBias", (2, 1, 1)), (5, 1, True, "WithBias", (4, 2, 16)),
    (72, 8, False, "WithBias", (1, 9, 16))], ids=lambda v: str(v))
def test_block_kernels_equal_the_block_computed_by_operators(threads, dim, heads, bias, norm, shape):
    """Both halves of a transformer block, each streaming rows, against the operators: channels
    in whole vectors and not, every padding of the rows, images split into bands across threads or
    one image per thread, one row, one pixel, heads of one to nine channels."""
    torch.manual_seed(dim)
    block = restormer.TransformerBlock(dim, heads, 2.66, bias, norm).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(*shape[:1], dim, *shape[1:]).contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with torch.no_grad():
            out = block(x)
            for m in block.modules():
                if isinstance(m, restormer.Computation):
                    m.engine = "plain"
            ref = block(x)
    finally:
        torch.set_num_threads(before)
    assert (out - ref).abs().max() < 1e-5 * max(1.0, ref.abs().max().item())


@needs_native
@pytest.mark.parametrize("pixels", [None, 37], ids=["one-call", "calls-of-37-pixels"])
def test_experts_kernel_routes_each_pixel_to_its_top_k(pixels, monkeypatch):
    """The kernel alone against the module's own sparse inference: every pixel, also where the
    image's cue changes the choice; a large map in several calls, each with its pixels' images."""
    if pixels:
        monkeypatch.setattr(native, "_PIXELS", pixels)
    torch.manual_seed(1)
    moe = NoisyTopKExperts(6, 2.0, num_experts=4, k=2).eval()
    with torch.no_grad():
        moe.w_gate.mul_(3)
        x = torch.randn(3, 6, 9, 11).contiguous(memory_format=torch.channels_last)
        cue = torch.randn(3, 6) * 3
        moe.engine = "plain"
        ref, _ = moe(x, cue)
        moe.engine = "native"
        out, _ = moe(x, cue)
    assert (out - ref).abs().max() < 1e-5


def _python(code: str, cache: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "AMIR_CACHE": str(cache), **env})


PROBE = "from amir_cli.network import native; print(native.available(), native.reason())"


@needs_native
def test_library_builds_once_and_racing_builds_both_end_whole(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", PROBE], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "AMIR_CACHE": str(tmp_path)}) for _ in range(2)]
    assert [p.communicate(timeout=300)[0].strip() for p in procs] == ["True None"] * 2
    built = list((tmp_path / "native").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # no partial file left behind
    stamp = built[0].stat().st_mtime_ns
    assert _python(PROBE, tmp_path).stdout.strip() == "True None"
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not built again


@needs_native
def test_a_damaged_cached_library_is_built_again(tmp_path):
    assert _python(PROBE, tmp_path).stdout.strip() == "True None"
    (built,) = (tmp_path / "native").iterdir()
    built.write_bytes(b"not a library")
    assert _python(PROBE, tmp_path).stdout.strip() == "True None"
    assert built.read_bytes()[:4] == b"\x7fELF" or sys.platform != "linux"


@needs_native
def test_the_library_is_built_from_the_source_read_with_the_module(tmp_path, monkeypatch):
    """A source file replaced under a running program (an upgrade) does not reach its library."""
    monkeypatch.setenv("AMIR_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_SOURCE", native._SOURCE + "\nint amir_probe(void) { return 7; }\n")
    native.library.cache_clear()
    try:
        assert native.library().amir_probe() == 7
    finally:
        native.library.cache_clear()


def test_without_a_compiler_the_network_computes_with_torch_alone(tmp_path, monkeypatch, tiny_weights):
    ct_crop_nii = crop_nifti("ct/cranium_ct.nii.gz", (slice(96, 160), slice(100, 164), slice(50, 52)), tmp_path / "ct.nii.gz")
    monkeypatch.setenv("AMIR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    native.library.cache_clear()
    try:
        assert not native.available() and "no-such-compiler" in native.reason()
        model = random_model(RANDOM_CONFIGS[0]).eval()
        x = torch.rand(1, 1, 24, 24)
        with torch.no_grad():
            assert (model.set_computation(engine="native")(x) - model.set_computation(reference=True)(x)).abs().max() < 1e-5
        out = tmp_path / "out.nii.gz"
        code, _, err = amir("restore", ct_crop_nii, "-o", out, "--weights", tiny_weights, "--device", "cpu",
                            "--engine", "native", "--quiet")
        assert code == 1 and not out.exists()
        assert err.startswith("amir: error: --engine native is not available here: the native kernels could not be built")
        assert len(err.strip().splitlines()) == 1
        code, _, err = amir("restore", ct_crop_nii, "-o", out, "--weights", tiny_weights, "--device", "cpu", "--quiet")
        assert code == 0, err
    finally:
        native.library.cache_clear()
