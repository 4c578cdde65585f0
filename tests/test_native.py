"""amir's own CPU kernels (`amir_cli.network.native`): the same network as the published computation,
and in training the same gradients as autograd through the operators; built once into the cache folder, safely under races; without a compiler the
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
def test_native_kernels_run_in_fp32_on_the_cpu_and_train_where_faster(monkeypatch):
    """Inference takes every kernel; training the halves' kernels with gradients on maps of at
    least native.TRAIN_SIDE a side (here both halves at levels 1 and 2 of 32x32, not at level 3);
    other engines and the published computation none."""
    calls = []
    for name in ("attention_block", "ffn_block", "experts"):
        real = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _real=real, _name=name, **k: calls.append(
            (_name, a[0].shape[-1], torch.is_grad_enabled())) or _real(*a, **k))
    model = random_model(RANDOM_CONFIGS[0]).set_computation(engine="native")
    x = torch.rand(1, 1, 32, 32)
    model.train()
    model(x)[0].sum().backward()
    assert set(calls) == {(name, side, True) for name in ("attention_block", "ffn_block") for side in (32, 16)}
    calls.clear()
    model.set_computation(engine="plain")(x)[0].sum().backward()
    with torch.no_grad():
        model.eval()(x)
        model.set_computation(reference=True)(x)
    assert calls == []
    with torch.no_grad():
        model.set_computation(engine="native")(x)
    assert {(name, grad) for name, _, grad in calls} == {("attention_block", False), ("ffn_block", False), ("experts", False)}


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("half", ["attention", "ffn"])
@pytest.mark.parametrize("dim, heads, bias, norm, shape", [
    (8, 1, False, "WithBias", (1, 16, 16)), (8, 2, True, "BiasFree", (2, 7, 19)), (16, 4, True, "WithBias", (3, 9, 8)),
    (5, 1, False, "WithBias", (1, 1, 1)), (12, 3, True, "BiasFree", (1, 20, 33))], ids=lambda v: str(v))
def test_block_kernel_gradients_equal_autograd_of_the_operators(threads, half, dim, heads, bias, norm, shape):
    """The output and every gradient (x, LayerNorm, the 1x1 and depthwise convolutions, the
    projection, the biases, the attention's temperature) of a block half trained in the kernels,
    against autograd through the operators."""
    torch.manual_seed(dim)
    block = restormer.TransformerBlock(dim, heads, 2.66, bias, norm)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    for m in block.modules():
        if isinstance(m, restormer.Computation):
            m.engine = "plain"
    norm_, body = (block.norm1, block.attn) if half == "attention" else (block.norm2, block.ffn)
    trained = native.attention_block if half == "attention" else native.ffn_block
    params = list(norm_.parameters()) + list(body.parameters())
    x0 = torch.randn(shape[0], dim, *shape[1:]).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(x0.shape)
    before = torch.get_num_threads()
    results = []
    try:
        torch.set_num_threads(threads)
        for run in (trained, lambda x, n, b: b(n(x), residual=x)):
            block.zero_grad()
            x = x0.clone().requires_grad_()
            out = run(x, norm_, body)
            (out * weight).sum().backward()
            results.append([out.detach(), x.grad] + [p.grad.clone() for p in params])
    finally:
        torch.set_num_threads(before)
    for ours, ref in zip(*results):
        assert (ours - ref).abs().max() < 2e-5 * max(1.0, ref.abs().max().item())


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
@pytest.mark.parametrize("capability, vectors", [("DEFAULT", []), ("AVX2", ["-mavx2"]), ("AVX512", ["-mavx2", "-mavx512f"])])
def test_the_build_targets_the_vectors_pytorch_found(capability, vectors, monkeypatch):
    """On x86 the kernels are compiled for what PyTorch's own kernels use (ATEN_CPU_CAPABILITY
    lowers it), never for more: a library built for AVX-512 would stop an AVX2 CPU."""
    monkeypatch.setattr(native.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(native.torch.backends.cpu, "get_cpu_capability", lambda: capability)
    flags = native._flags()
    assert [f for f in flags if f in ("-mavx2", "-mavx512f")] == vectors


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
