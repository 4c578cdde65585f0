"""amir's own fused CPU kernels (`native.c`) for fp32 inference: LayerNorm over a few channels
per pixel; a transformer block's second half (LayerNorm, the gated feed-forward, the residual) in
one pass that never holds the hidden map; the attention's Gram matrix with the norms of q and k;
and spatial routing's whole mixture of experts (gating, each expert on its own pixels, the
log-space combine) in one call where PyTorch's operators take some twenty passes over memory.
Their GELU uses a rational approximation of erf without exp.

The C source ships with the package and is compiled on first use with the system's C compiler
(`$CC`, else `cc`) into the user cache folder (`$AMIR_CACHE`, else the platform's), once per
source, compiler and flags; later runs load the cached library. Without a compiler, or if the
build fails, `available()` is false, `reason()` says why, and the network computes with PyTorch's
operators. The kernels have no gradients: training never takes them.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

from . import onednn

SOURCE = Path(__file__).with_name("native.c")
# The Gram kernel beats the library's matrix product only on narrow maps larger than the caches
# (benchmarks/results/native_kernels_cpu.txt): at most this many channels, at least this many pixels.
GRAM_CHANNELS, GRAM_PIXELS = 16, 1 << 15
_PIXELS = 1 << 20  # pixels per call of the experts' kernel: bounds its work space (12 bytes a pixel and rank)
_failure: list[str] = []  # why the library could not be built or loaded


def cache_folder() -> Path:
    if os.environ.get("AMIR_CACHE"):
        return Path(os.environ["AMIR_CACHE"]) / "native"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("amir")) / "native"


def _flags() -> list[str]:
    flags = ["-O3", "-shared", "-fPIC", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    if platform.machine().lower() in ("x86_64", "amd64") and torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        flags += ["-mavx2", "-mfma"]  # what PyTorch itself found this CPU to have (AVX2 or AVX-512)
    return flags


def _compiler_identity(cc: str) -> str:
    done = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.splitlines()[0] if done.stdout else cc


def _build(cc: str, flags: list[str], target: Path) -> None:
    """Compile into a temporary file beside ``target`` and rename it into place, so that a reader
    never sees half a library, and two processes building at once both end with a whole one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=target.stem, suffix=".partial", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([cc, *flags, "-o", partial, str(SOURCE), "-lm"], capture_output=True, text=True,
                              timeout=300)
        if done.returncode:
            lines = [line for line in done.stderr.splitlines() if "error" in line] or done.stderr.splitlines() or [""]
            raise RuntimeError(f"{cc} failed: {lines[0].strip()}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first use; None (and `reason()`) where they cannot be had."""
    cc, flags = os.environ.get("CC", "cc"), _flags()
    try:
        key = hashlib.sha256("\0".join([SOURCE.read_text(), _compiler_identity(cc), *flags]).encode()).hexdigest()
        target = cache_folder() / f"amir_kernels_{key[:16]}.so"
        if not target.exists():
            _build(cc, flags, target)
        try:
            lib = ctypes.CDLL(str(target))
        except OSError:  # a damaged cached file: build it again once
            _build(cc, flags, target)
            lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        _failure.append(f"the native kernels could not be built with {cc!r}: {e}")
        return None
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.amir_layer_norm.argtypes = [p, p, p, p, i, i, ctypes.c_float]
    lib.amir_gram.argtypes = [p, p, i, i, i, i, i, i, i, i, p, p, p]
    lib.amir_experts.argtypes = [p] * 11 + [i] * 7 + [ctypes.c_float]
    lib.amir_ffn_block.argtypes = [p, p, p, ctypes.c_float] + [p] * 8 + [i] * 6
    for name in ("amir_layer_norm", "amir_ffn_block", "amir_gram", "amir_experts"):
        getattr(lib, name).restype = None
    return lib


def available() -> bool:
    return library() is not None


def reason() -> str | None:
    """Why the kernels are not available (None when they are)."""
    return None if available() else _failure[-1]


def runs(engine: str, device: torch.device, precision: str = "fp32") -> bool:
    """Whether ``engine`` ("native", or "auto" where the kernels build) runs the kernels on
    ``device`` in ``precision`` (they serve fp32 on the CPU)."""
    return (engine in ("native", "auto") and device.type == "cpu" and precision == "fp32" and available())


def applies(engine: str, x: torch.Tensor) -> bool:
    """Whether ``x`` goes through the kernels: `runs` for its device, in inference in fp32."""
    return onednn.inference_in_fp32(x) and runs(engine, x.device)


def _run(kernel: str, *args) -> None:
    """Call a kernel under a profiler label of its own (`amir::<kernel>`), so that operator profiles
    count its time (ctypes calls are no PyTorch operators)."""
    with torch.profiler.record_function(f"amir::{kernel}"):
        getattr(library(), kernel)(*args)


def _ptr(t: torch.Tensor | None):
    """The address of a tensor's data: the caller keeps the tensor referenced until the kernel returns."""
    return None if t is None else t.data_ptr()


def layer_norm(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LayerNorm of contiguous (N, C) rows; without a bias the mean is kept (the bias-free variant)."""
    out = torch.empty_like(rows)
    weight, bias = weight.contiguous(), None if bias is None else bias.contiguous()
    _run("amir_layer_norm", _ptr(rows), _ptr(weight), _ptr(bias), _ptr(out), rows.shape[0], rows.shape[1], eps)
    return out


def gram(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q^T k, (B, C, C); the sums of squares of q's channels, then k's, (B, 2C)) for (B, N, C) maps
    whose channels are contiguous within a pixel (strided views of one q/k/v map will do)."""
    B, N, C = q.shape
    assert q.stride(2) == 1 and k.stride(2) == 1, "gram needs each pixel's channels side by side"
    out, squares = q.new_empty(B, C, C), q.new_empty(B, 2 * C)
    threads = torch.get_num_threads()
    partial = q.new_empty(threads, C * C + 2 * C)
    _run("amir_gram", _ptr(q), _ptr(k), q.stride(1), k.stride(1), q.stride(0), k.stride(0), B, N, C, threads,
         _ptr(partial), _ptr(out), _ptr(squares))
    return out, squares


def experts(tokens: torch.Tensor, per_image: int, gate_w: torch.Tensor, cue_logits: torch.Tensor, w1: torch.Tensor,
            b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, k: int, floor: float) -> torch.Tensor:
    """Spatial routing's log-space mixture of the top-``k`` experts for contiguous (N, C) ``tokens``,
    ``per_image`` rows per image: gate weights (C, E), the images' cue logits (B, E), the experts'
    stacked layers w1 (E, hidden, C), b1 (E, hidden), w2 (E, C, hidden), b2 (E, C); a zero sum is
    floored at ``floor`` before the log."""
    N, C = tokens.shape
    E, hidden = w1.shape[:2]
    out = torch.empty_like(tokens)
    step = min(N, _PIXELS)
    chosen, order = (torch.empty(step * k, dtype=torch.int32) for _ in range(2))
    gates = torch.empty(step * k)
    args = [t.contiguous() for t in (gate_w, cue_logits, w1, b1, w2, b2)]
    for first in range(0, N, step):
        n = min(step, N - first)
        _run("amir_experts", _ptr(tokens[first:]), *map(_ptr, args), _ptr(out[first:]), _ptr(chosen), _ptr(order),
             _ptr(gates), n, first, per_image, C, hidden, E, k, floor)
    return out


def ffn_block(x: torch.Tensor, norm, ffn) -> torch.Tensor:
    """x + ffn(norm(x)) for a channels-last (B, C, H, W) map, in one pass that never holds the
    hidden map: ``norm`` a ChannelLayerNorm, ``ffn`` a GatedDconvFeedForward (modules, for their weights)."""
    B, C, H, W = x.shape
    hidden = ffn.project_out.in_channels
    threads = torch.get_num_threads()
    stride = -(-W // 16) * 16 + 2  # a row of the kernel's ring: its pixels in whole vectors, and a zero each side
    work = x.new_empty(threads * 3 * 2 * hidden * stride)
    out = torch.empty_like(x)
    weights = [None if t is None else t.detach().contiguous() for t in (
        norm.body.weight, norm.body.bias, ffn.project_in.weight, ffn.project_in.bias, ffn.dwconv.weight,
        ffn.dwconv.bias, ffn.project_out.weight, ffn.project_out.bias)]
    ln_w, ln_b, w_in, b_in, w_dw, b_dw, w_out, b_out = weights
    _run("amir_ffn_block", _ptr(x), _ptr(ln_w), _ptr(ln_b), 1e-5, _ptr(w_in), _ptr(b_in), _ptr(w_dw), _ptr(b_dw),
         _ptr(w_out), _ptr(b_out), _ptr(out), _ptr(work), B, H, W, C, hidden, threads)
    return out
