"""amir's own fused CPU kernels (`native.c`) for fp32, in inference and in training. Each half of a
transformer block streams rows: its LayerNorm, 1x1 expansion and depthwise convolution are
computed row by row into a small ring per thread, so that neither the normalised map nor the
expanded one is ever held.
The feed-forward half ends in the GELU gate, the projection and the residual; the attention half
takes two passes, one for the Gram matrices of q and k per head with their norms, one for v times
each image's matrix (the softmax and the output projection folded together) plus the residual.
Spatial routing's whole mixture of experts (gating, each expert on its own pixels, the log-space
combine) is one call where PyTorch's operators take some twenty passes over memory. The GELU uses
a rational approximation of erf without exp.

In training the block halves run as autograd functions whose backward pass is one more kernel
(`amir_half_backward`): it computes the expansion again as it streams rows, rather than keep it,
and the gradient of the depthwise outputs one row behind. The experts train with PyTorch's operators.

The C source ships with the package and is compiled on first use with the system's C compiler
(`$CC`, else `cc`) into the user cache folder (`$AMIR_CACHE`, else the platform's), once per
source, compiler and flags; later runs load the cached library. Without a compiler, or if the
build fails, `available()` is false, `reason()` says why, and the network computes with PyTorch's
operators.
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

# The kernels' C source, read with this module, so that a library built later always has the
# functions this module calls (a package upgraded under a running program leaves both as they were).
_SOURCE = Path(__file__).with_name("native.c").read_text()
_PIXELS = 1 << 20  # pixels per call of the experts' kernel: bounds its work space (12 bytes a pixel and rank)
# The smallest map side at which each half of a block trains faster in the kernels than with
# PyTorch's operators (benchmarks/results/xeon_avx512/native_kernels_cpu.txt): each band computes two rows
# beyond its own at either end, and a row fills 16 lanes at a time.
TRAIN_SIDE = {"ffn": 16, "attention": 16}
_failure: list[str] = []  # why the library could not be built or loaded


def cache_folder() -> Path:
    if os.environ.get("AMIR_CACHE"):
        return Path(os.environ["AMIR_CACHE"]) / "native"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("amir")) / "native"


def _flags() -> list[str]:
    flags = ["-O3", "-shared", "-fPIC", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    capability = torch.backends.cpu.get_cpu_capability()  # what PyTorch itself found this CPU to have
    if platform.machine().lower() in ("x86_64", "amd64") and capability != "DEFAULT":
        flags += ["-mavx2", "-mfma"]
        if capability == "AVX512":
            flags += ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mprefer-vector-width=512"]
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
        done = subprocess.run([cc, *flags, "-o", partial, "-x", "c", "-", "-lm"], input=_SOURCE,
                              capture_output=True, text=True, timeout=300)
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
        key = hashlib.sha256("\0".join([_SOURCE, _compiler_identity(cc), *flags]).encode()).hexdigest()
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
    lib.amir_experts.argtypes = [p] * 11 + [i] * 7 + [ctypes.c_float]
    f = ctypes.c_float
    lib.amir_block_half.argtypes = [p, p, p, f] + [p] * 5 + [i, p, i, p, p] + [i] * 6
    lib.amir_attention_gram.argtypes = [p, p, p, f] + [p] * 4 + [i] + [p] * 4 + [i] * 5
    lib.amir_half_backward.argtypes = [p, p, p, p, f] + [p] * 6 + [i, i] + [p] * 4 + [i] * 6
    lib.amir_block_half_work.argtypes, lib.amir_block_half_work.restype = [i] * 3, i
    lib.amir_attention_gram_space.argtypes = [i] * 6 + [p]
    lib.amir_half_backward_space.argtypes = [i] * 7 + [p]
    for name in ("amir_block_half", "amir_attention_gram", "amir_experts", "amir_half_backward",
                 "amir_attention_gram_space", "amir_half_backward_space"):
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


def serves(engine: str, x: torch.Tensor, half: str) -> bool:
    """Whether ``x`` goes through the kernels of a block's ``half`` ("attention" or "ffn"): in
    inference where they `applies`, in training (fp32, autograd on, autocast off) on maps of at
    least TRAIN_SIDE[half] pixels a side."""
    if applies(engine, x):
        return True
    return (x.dtype == torch.float32 and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and min(x.shape[-2:]) >= TRAIN_SIDE[half] and runs(engine, x.device))


def _run(kernel: str, *args) -> None:
    """Call a kernel under a profiler label of its own (`amir::<kernel>`), so that operator profiles
    count its time (ctypes calls are no PyTorch operators)."""
    with torch.profiler.record_function(f"amir::{kernel}"):
        getattr(library(), kernel)(*args)


def _ptr(t: torch.Tensor | None):
    """The address of a tensor's data: the caller keeps the tensor referenced until the kernel returns."""
    return None if t is None else t.data_ptr()


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


def _contiguous(*tensors) -> list:
    """The tensors detached and contiguous, as the kernels take them; None stays None (NULL)."""
    return [None if t is None else t.detach().contiguous() for t in tensors]


def _space(x: torch.Tensor, kernel: str, *sizes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialised (work, partial) buffers of the sizes `<kernel>_space` reports for ``x`` (B, C, H, W)
    and the kernel's own ``sizes``: the kernels spell their layouts once, in C."""
    B, C, H, W = x.shape
    floats = (ctypes.c_int64 * 2)()
    getattr(library(), f"{kernel}_space")(B, H, W, C, *sizes, torch.get_num_threads(), floats)
    return x.new_empty(floats[0]), x.new_empty(floats[1])


def _half(x: torch.Tensor, front: list, wide: int, w_out: torch.Tensor, b_out: torch.Tensor | None,
          gated: bool) -> torch.Tensor:
    """x + b_out + w_out @ (the depthwise outputs, or with ``gated`` their GELU gate) per pixel;
    w_out (C, n) for every image, or (B, C, C) one per image."""
    B, C, H, W = x.shape
    w_out, b_out = _contiguous(w_out, b_out)
    out = torch.empty_like(x)
    work = x.new_empty(library().amir_block_half_work(W, wide, torch.get_num_threads()))
    ln_w, ln_b, w_in, b_in, w_dw, b_dw = front
    _run("amir_block_half", _ptr(x), _ptr(ln_w), _ptr(ln_b), 1e-5, _ptr(w_in), _ptr(b_in), _ptr(w_dw), _ptr(b_dw),
         _ptr(w_out), C * C if w_out.dim() == 3 else 0, _ptr(b_out), int(gated), _ptr(out), _ptr(work), B, H, W, C,
         wide, torch.get_num_threads())
    return out


GATED, LINEAR, QUADRATIC = range(3)  # the halves `amir_half_backward` differentiates


def _half_backward(x, dout, front, m, kind: int, wide: int):
    """dx and the gradients of a block half (`amir_half_backward`): front (LayerNorm's weight and
    bias, w_in, b_in, w_dw, b_dw) as saved, m (see the kernel) contiguous. Returns dx, then the
    gradients of w_in, b_in, w_dw, b_dw, ln_w, ln_b, b_out flat, and w_out's per image (B, C, hidden)."""
    B, C, H, W = x.shape
    threads = torch.get_num_threads()
    hidden = wide // 2 if kind == GATED else wide
    ln_w, ln_b, w_in, b_in, w_dw, b_dw = _contiguous(*front)
    w_in = w_in.reshape(wide, C)
    sizes = [wide * C, wide, wide * 9, wide, C, C, C] + ([] if kind == QUADRATIC else [C * hidden])
    work, partial = _space(x, "amir_half_backward", wide, kind)
    dx, grads = torch.empty_like(x), x.new_empty(sum(sizes[:7]) + (0 if kind == QUADRATIC else B * C * hidden))
    dout = None if dout is None else dout.contiguous(memory_format=torch.channels_last)
    w_in_t = w_in.t().contiguous()
    _run("amir_half_backward", _ptr(x), _ptr(dout), _ptr(ln_w), _ptr(ln_b), 1e-5, _ptr(w_in), _ptr(w_in_t), _ptr(b_in),
         _ptr(w_dw), _ptr(b_dw), _ptr(m), m[0].numel() if m.dim() == 3 else 0, kind, _ptr(dx), _ptr(grads),
         _ptr(partial), _ptr(work), B, H, W, C, wide, threads)
    flat = grads[: sum(sizes[:7])].split(sizes[:7])
    per_image = grads[sum(sizes[:7]):].view(B, C, hidden) if kind != QUADRATIC else None
    return dx, flat, per_image


def _shaped(tensors, grads):
    """Each gradient in its tensor's shape; None for an absent tensor."""
    return [None if t is None else g.view_as(t) for t, g in zip(tensors, grads)]


class _FeedForwardHalf(torch.autograd.Function):
    """x + ffn(norm(x)) with its gradients in amir's kernels: the forward pass keeps only x, and the
    backward pass computes the expansion again as it streams rows."""

    @staticmethod
    def forward(ctx, x, ln_w, ln_b, w_in, b_in, w_dw, b_dw, w_out, b_out):
        C, hidden = x.shape[1], w_out.shape[1]
        ctx.save_for_backward(x, ln_w, ln_b, w_in, b_in, w_dw, b_dw, w_out, b_out)
        return _half(x, _contiguous(ln_w, ln_b, w_in, b_in, w_dw, b_dw), 2 * hidden, w_out.view(C, hidden), b_out,
                     gated=True)

    @staticmethod
    def backward(ctx, dout):
        x, ln_w, ln_b, w_in, b_in, w_dw, b_dw, w_out, b_out = ctx.saved_tensors
        C, hidden = x.shape[1], w_out.shape[1]
        m = w_out.detach().reshape(C, hidden).t().contiguous()
        dx, (g_in, g_bin, g_dw, g_bdw, g_lnw, g_lnb, g_bout), g_out = _half_backward(
            x, dout, (ln_w, ln_b, w_in, b_in, w_dw, b_dw), m, GATED, 2 * hidden)
        shaped = _shaped((ln_w, ln_b, w_in, b_in, w_dw, b_dw, w_out, b_out),
                         (g_lnw, g_lnb, g_in, g_bin, g_dw, g_bdw, g_out.sum(0), g_bout))
        return (dx, *shaped)


class _AttentionGram(torch.autograd.Function):
    """The Gram matrices per head and the squares of q and k (`amir_attention_gram`), with gradients."""

    @staticmethod
    def forward(ctx, x, heads, ln_w, ln_b, w_qk, b_qk, w_dw, b_dw):
        B, C, H, W = x.shape
        c = C // heads
        front = _contiguous(ln_w, ln_b, w_qk, b_qk, w_dw, b_dw)
        gram, squares = x.new_empty(B, heads, c, c), x.new_empty(B, 2 * C)
        work, partial = _space(x, "amir_attention_gram", heads)
        _run("amir_attention_gram", _ptr(x), *map(_ptr, front[:2]), 1e-5, *map(_ptr, front[2:]), heads, _ptr(partial),
             _ptr(work), _ptr(gram), _ptr(squares), B, H, W, C, torch.get_num_threads())
        ctx.save_for_backward(x, ln_w, ln_b, w_qk, b_qk, w_dw, b_dw)
        return gram, squares

    @staticmethod
    def backward(ctx, d_gram, d_squares):
        x, ln_w, ln_b, w_qk, b_qk, w_dw, b_dw = ctx.saved_tensors
        B, C = x.shape[:2]
        heads, c = d_gram.shape[1], d_gram.shape[2]
        # dq = d_gram @ k + 2 d_squares(q) q and dk = d_gram^T @ q + 2 d_squares(k) k, per head: one
        # (2C x 2C) matrix per image applied to [q; k]
        m = torch.diag_embed(2 * d_squares)
        for h in range(heads):
            q, k = slice(h * c, (h + 1) * c), slice(C + h * c, C + (h + 1) * c)
            m[:, q, k] = d_gram[:, h]
            m[:, k, q] = d_gram[:, h].transpose(1, 2)
        dx, (g_in, g_bin, g_dw, g_bdw, g_lnw, g_lnb, _), _ = _half_backward(
            x, None, (ln_w, ln_b, w_qk, b_qk, w_dw, b_dw), m.contiguous(), QUADRATIC, 2 * C)
        return (dx, None, *_shaped((ln_w, ln_b, w_qk, b_qk, w_dw, b_dw), (g_lnw, g_lnb, g_in, g_bin, g_dw, g_bdw)))


class _AttentionOutput(torch.autograd.Function):
    """x + b_out + mix[image] @ v (`amir_block_half`, not gated), with gradients."""

    @staticmethod
    def forward(ctx, x, ln_w, ln_b, w_v, b_v, w_dw, b_dw, mix, b_out):
        ctx.save_for_backward(x, ln_w, ln_b, w_v, b_v, w_dw, b_dw, mix, b_out)
        return _half(x, _contiguous(ln_w, ln_b, w_v, b_v, w_dw, b_dw), x.shape[1], mix, b_out, gated=False)

    @staticmethod
    def backward(ctx, dout):
        x, ln_w, ln_b, w_v, b_v, w_dw, b_dw, mix, b_out = ctx.saved_tensors
        m = mix.detach().transpose(1, 2).contiguous()
        dx, (g_in, g_bin, g_dw, g_bdw, g_lnw, g_lnb, g_bout), g_mix = _half_backward(
            x, dout, (ln_w, ln_b, w_v, b_v, w_dw, b_dw), m, LINEAR, x.shape[1])
        shaped = _shaped((ln_w, ln_b, w_v, b_v, w_dw, b_dw, mix, b_out), (g_lnw, g_lnb, g_in, g_bin, g_dw, g_bdw, g_mix, g_bout))
        return (dx, *shaped)


def ffn_block(x: torch.Tensor, norm, ffn) -> torch.Tensor:
    """x + ffn(norm(x)) for a (B, C, H, W) map, with gradients in training (weights and x alike):
    ``norm`` a ChannelLayerNorm, ``ffn`` a GatedDconvFeedForward (modules, for their weights)."""
    x = x.contiguous(memory_format=torch.channels_last)
    return _FeedForwardHalf.apply(x, norm.body.weight, norm.body.bias, ffn.project_in.weight, ffn.project_in.bias,
                                  ffn.dwconv.weight, ffn.dwconv.bias, ffn.project_out.weight, ffn.project_out.bias)


def attention_block(x: torch.Tensor, norm, attention) -> torch.Tensor:
    """x + attention(norm(x)) for a (B, C, H, W) map, with gradients in training (weights,
    temperature and x alike): ``norm`` a ChannelLayerNorm, ``attention`` a TransposedAttention,
    whose `mixing` turns the Gram matrices into each image's matrix for v."""
    x = x.contiguous(memory_format=torch.channels_last)
    C = x.shape[1]
    w, w_dw = attention.qkv.weight, attention.qkv_dwconv.weight
    b, b_dw = attention.qkv.bias, attention.qkv_dwconv.bias
    qk, v = slice(0, 2 * C), slice(2 * C, 3 * C)
    part = lambda t, rows: None if t is None else t[rows]  # noqa: E731
    gram, squares = _AttentionGram.apply(x, attention.num_heads, norm.body.weight, norm.body.bias, w[qk], part(b, qk),
                                         w_dw[qk], part(b_dw, qk))
    mix = attention.mixing(gram, squares)
    return _AttentionOutput.apply(x, norm.body.weight, norm.body.bias, w[v], part(b, v), w_dw[v], part(b_dw, v), mix,
                                  attention.project_out.bias)
