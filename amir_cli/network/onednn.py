"""oneDNN fused operators for CPU inference: a convolution together with the elementwise operation
that follows it (GELU, a product, a residual sum) in one pass over memory.

These are the operators PyTorch's compiler emits for the CPU (`torch.ops.mkldnn`), called directly:
no compilation and no start-up cost. They have no gradients and run fp32 only, so they serve
inference on the CPU; everything else takes the plain operators.
"""
from __future__ import annotations

import functools

import torch


@functools.cache
def available() -> bool:
    """Whether this torch build has the fused operators (oneDNN builds: x86 and most ARM wheels)."""
    try:
        ops = torch.ops.mkldnn
        return torch.backends.mkldnn.is_available() and all(
            hasattr(ops, name) for name in ("_convolution_pointwise", "_convolution_pointwise_"))
    except (AttributeError, RuntimeError):
        return False


def applies(x: torch.Tensor) -> bool:
    """Whether ``x`` can go through the fused operators: fp32 on the CPU, without autograd or autocast."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu") and available())


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

