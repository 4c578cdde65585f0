"""Restormer building blocks: channel LayerNorm, MDTA attention, GDFN feed-forward, resizing.

Parameter names follow the published AMIR checkpoints so their state_dicts load with strict=True.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_FFN_CHUNK = 1 << 23  # hidden activations (channels x pixels) held at once by inference
NORM_PATHS = ("auto", "channels", "permuted")


class Computation:
    """How a module computes, chosen per model instance by `AMIR.set_computation` (class defaults:
    the fast path). `reference` follows the published code step by step (hand-written LayerNorm
    over a (B, HW, C) view, NCHW layout, q/k/v in one map, each expert on its own pixels): tests
    and benchmarks compare the fast path against it."""

    reference = False


def channels_last(x: torch.Tensor, reference: bool = False) -> torch.Tensor:
    """NHWC layout for the fast path: depthwise and 1x1 convolutions run several times faster."""
    return x if reference else x.contiguous(memory_format=torch.channels_last)


def _weight(w: torch.Tensor) -> torch.Tensor:
    """A slice of a weight as a convolution can take it in any dtype: off the CPU a slice whose
    start is not 16-byte aligned (a bf16 or fp16 weight's rows at an odd offset) is copied, since
    cuDNN finds no engine for such a pointer."""
    if w.device.type == "cpu" or (w.is_contiguous() and w.storage_offset() * w.element_size() % 16 == 0):
        return w
    return w.clone(memory_format=torch.contiguous_format)


class _NormBody(nn.Module):
    """Holds the LayerNorm parameters under the published names (`body.weight`, `body.bias`)."""

    def __init__(self, dim: int, with_bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if with_bias else None


class ChannelLayerNorm(Computation, nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map, eps 1e-5.

    The bias-free variant scales by the standard deviation without removing the mean. The fast
    path normalises over C in the layout the convolutions use ("channels"), or runs F.layer_norm on
    the NHWC view ("permuted"); `norm_path` "auto" takes "channels" off the CPU and "permuted" on it,
    where it is faster. Low-precision maps are normalised in fp32 and returned in their own dtype.
    """

    norm_path = "auto"  # one of NORM_PATHS, set by AMIR.set_computation

    def __init__(self, dim: int, layernorm_type: str = "WithBias"):
        super().__init__()
        self.with_bias = layernorm_type == "WithBias"
        self.body = _NormBody(dim, self.with_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.body.weight, self.body.bias
        if self.reference:
            return self._reference(x, w, b)
        if self.with_bias and not self.channels_first(x.device):
            y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, eps=1e-5)
            return y.permute(0, 3, 1, 2)
        xf = x.float()
        if not self.with_bias:
            var = xf.var(1, keepdim=True, unbiased=False)
            return (xf * torch.rsqrt(var + 1e-5) * w.view(1, -1, 1, 1)).to(x.dtype)
        var, mean = torch.var_mean(xf, 1, keepdim=True, unbiased=False)
        y = torch.addcmul(b.view(1, -1, 1, 1), (xf - mean) * torch.rsqrt(var + 1e-5), w.view(1, -1, 1, 1))
        return y.to(x.dtype)

    def channels_first(self, device: torch.device) -> bool:
        return self.norm_path == "channels" or (self.norm_path == "auto" and device.type != "cpu")

    @staticmethod
    def _reference(x, w, b):
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)
        var = t.var(-1, keepdim=True, unbiased=False)
        if b is None:
            t = t / torch.sqrt(var + 1e-5) * w
        else:
            t = (t - t.mean(-1, keepdim=True)) / torch.sqrt(var + 1e-5) * w + b
        return t.transpose(1, 2).reshape(B, C, H, W)


class GatedDconvFeedForward(Computation, nn.Module):
    """GDFN: 1x1 expansion to two branches, depthwise 3x3, GELU gate, 1x1 projection."""

    def __init__(self, dim: int, expansion: float, bias: bool):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reference:
            gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
            return self.project_out(F.gelu(gate) * value)
        hidden = self.project_out.in_channels
        step = hidden if torch.is_grad_enabled() else max(1, _FFN_CHUNK // x[0, 0].numel())
        out = None
        for i in range(0, hidden, step):
            part = self._gated(x, i, min(i + step, hidden))
            out = part if out is None else out.add_(part)
        if self.project_out.bias is not None:
            out = out + self.project_out.bias.view(1, -1, 1, 1)
        return out

    def _gated(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """The projected GELU(gate) * value of hidden channels [lo, hi).

        Gate and value are computed as separate maps (each pair only meets its own depthwise
        filter, so the split is exact): contiguous maps make GELU several times faster than on
        the interleaved halves of one map. Inference goes in groups of channels, so the full
        hidden map is never held.
        """
        hidden = self.project_out.in_channels

        def branch(rows: slice) -> torch.Tensor:
            b_in, b_dw = self.project_in.bias, self.dwconv.bias
            h = F.conv2d(x, _weight(self.project_in.weight[rows]), None if b_in is None else _weight(b_in[rows]))
            w_dw = _weight(self.dwconv.weight[rows])
            return F.conv2d(h, w_dw, None if b_dw is None else _weight(b_dw[rows]), padding=1, groups=hi - lo)

        gate = F.gelu(branch(slice(lo, hi)))
        value = branch(slice(hidden + lo, hidden + hi))
        gated = gate * value if torch.is_grad_enabled() else gate.mul_(value)
        return F.conv2d(gated, _weight(self.project_out.weight[:, lo:hi]))


class TransposedAttention(Computation, nn.Module):
    """MDTA: attention across channels (C x C per head) with a learned temperature per head."""

    def __init__(self, dim: int, num_heads: int, bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if torch.is_grad_enabled() or self.reference:
            qkv = self.qkv_dwconv(self.qkv(x)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W)
            q, k, v = qkv.unbind(1)
            attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        else:  # inference: q, k, v one at a time, and v only once q and k are freed
            shape = (B, self.num_heads, C // self.num_heads, H * W)
            q, k = (self._project(x, part).reshape(shape) for part in range(2))
            for t in (q, k):  # F.normalize, in place on these fresh copies
                t.div_(t.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            attn = (q @ k.transpose(-2, -1)) * self.temperature
            del q, k
            v = self._project(x, 2).reshape(shape)
        out = attn.softmax(dim=-1) @ v
        del v
        out = channels_last(out.reshape(B, C, H, W), self.reference)  # rebinding frees the (heads, HW) layout first
        return self.project_out(out)

    def _project(self, x: torch.Tensor, part: int) -> torch.Tensor:
        """Channels [part*C, (part+1)*C) of the 1x1 + depthwise projection (q, k or v)."""
        C = x.shape[1]
        rows = slice(part * C, (part + 1) * C)
        bias = lambda conv: None if conv.bias is None else _weight(conv.bias[rows])  # noqa: E731
        y = F.conv2d(x, _weight(self.qkv.weight[rows]), bias(self.qkv))
        return F.conv2d(y, _weight(self.qkv_dwconv.weight[rows]), bias(self.qkv_dwconv), padding=1, groups=C)


class TransformerBlock(Computation, nn.Module):
    def __init__(self, dim: int, num_heads: int, expansion: float, bias: bool, layernorm_type: str):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, layernorm_type)
        self.attn = TransposedAttention(dim, num_heads, bias)
        self.norm2 = ChannelLayerNorm(dim, layernorm_type)
        self.ffn = GatedDconvFeedForward(dim, expansion, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = channels_last(x, self.reference)
        # in place on the fresh branch output (nothing keeps it for backward): one map less at the peak
        x = self.attn(self.norm1(x)).add_(x)
        return self.ffn(self.norm2(x)).add_(x)


class PatchEmbed(nn.Module):
    """3x3 convolution from image channels to the level-1 width."""

    def __init__(self, in_channels: int, dim: int, bias: bool = False):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """Halve the resolution and double the width: 3x3 conv to C/2, pixel-unshuffle by 2."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """Double the resolution and halve the width: 3x3 conv to 2C, pixel-shuffle by 2."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def stage(dim: int, depth: int, heads: int, expansion: float, bias: bool, layernorm_type: str) -> nn.Sequential:
    return nn.Sequential(*[TransformerBlock(dim, heads, expansion, bias, layernorm_type) for _ in range(depth)])
