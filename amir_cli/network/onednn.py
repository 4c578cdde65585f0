"""oneDNN fused operators for CPU inference: a convolution together with the elementwise operation
that follows it (GELU, a product, a residual sum) in one pass over memory.

These are the operators PyTorch's compiler emits for the CPU (`torch.ops.mkldnn`), called directly:
no compilation and no start-up cost. They have no gradients and run fp32 only, so they serve
inference on the CPU; everything else takes the plain operators. Measured on 2 cores (256x256
slices of amir-s), they make the network about a tenth faster when torch runs one thread, and no
faster with two, where they cost a quarter more working memory: the "auto" engine fuses with one
thread only, and only where amir's own kernels (`native`) do not build.
"""
from __future__ import annotations

import functools

import torch


ENGINE_PATHS = ("auto", "native", "fused", "plain")  # "native": amir's own kernels (`native`)


@functools.cache
def available() -> bool:
    """Whether this torch build has the fused operators (oneDNN builds: x86 and most ARM wheels)."""
    try:
        ops = torch.ops.mkldnn
        return torch.backends.mkldnn.is_available() and all(
            hasattr(ops, name) for name in ("_convolution_pointwise", "_convolution_pointwise_"))
    except (AttributeError, RuntimeError):
        return False


def fuses(engine: str, device: torch.device, precision: str = "fp32") -> bool:
    """Whether ``engine`` ("auto": with one torch thread, where amir's own kernels, which compute
    the blocks whole, do not build) runs the fused operators on ``device`` in ``precision`` (they
    serve fp32 on the CPU, where this torch has them)."""
    from . import native

    wanted = engine == "fused" or (engine == "auto" and torch.get_num_threads() == 1 and not native.available())
    return wanted and device.type == "cpu" and precision == "fp32" and available()


def inference_in_fp32(x: torch.Tensor) -> bool:
    """Whether ``x`` is fp32 outside autograd and autocast: what the kernels without gradients
    (these and amir's own, `native`) take."""
    return x.dtype == torch.float32 and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")


def applies(engine: str, x: torch.Tensor) -> bool:
    """Whether ``x`` goes through the fused operators: ``fuses`` for its device, in inference in fp32."""
    return inference_in_fp32(x) and fuses(engine, x.device)


def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, gelu: bool = False,
         mul: torch.Tensor | None = None, add: torch.Tensor | None = None) -> torch.Tensor:
    """A stride-1 'same' convolution (1x1, or 3x3 plain or depthwise) followed by GELU, a product
    with ``mul`` or a sum with ``add`` (maps of the output's shape and memory format)."""
    args = ([weight.shape[-1] // 2] * 2, [1, 1], [1, 1], x.shape[1] // weight.shape[1])
    if mul is not None or add is not None:
        other, how = (mul, "mul") if mul is not None else (add, "add")
        return torch.ops.mkldnn._convolution_pointwise.binary(x, other, weight, bias, *args, how, 1.0, None, [], None)
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *args, "gelu" if gelu else "none", [],
                                                   "none" if gelu else "")


def conv_add_(total: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``total`` += the 1x1 convolution of ``x``, in place; returns ``total``."""
    return torch.ops.mkldnn._convolution_pointwise_.binary(total, x, weight, None, [0, 0], [1, 1], [1, 1], 1, "add",
                                                           1.0, None, [], None)

