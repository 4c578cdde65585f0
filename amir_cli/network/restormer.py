"""Restormer building blocks: channel LayerNorm, MDTA attention, GDFN feed-forward, resizing.

Parameter names follow the published AMIR checkpoints so their state_dicts load with strict=True.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import native, onednn

_FFN_CHUNK = 1 << 23  # hidden activations (channels x pixels) held at once by inference
NORM_PATHS = ("auto", "channels", "permuted")
# Below this width the attention's whole C x C Gram matrix, one product, is cheaper than a product per head.
_FULL_GRAM_WIDTH = 64


class Computation:
    """How a module computes, chosen per model instance by `AMIR.set_computation` (class defaults:
    the fast path). `reference` follows the published code step by step (hand-written LayerNorm
    over a (B, HW, C) view, NCHW layout, q/k/v in one map, each expert on its own pixels): tests
    and benchmarks compare the fast path against it."""

    reference = False
    engine = "auto"  # amir's kernels (`native.applies`), oneDNN's fused operators (`onednn.applies`), or neither


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


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU of a map; a channels-last map is passed as its NHWC view, a plain contiguous array,
    for which PyTorch's CPU kernel (forward and backward) is vectorised and about a third faster."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return F.gelu(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return F.gelu(x)


def _nhwc_rows(x: torch.Tensor) -> torch.Tensor:
    """The (B * H * W, C) rows of a channels-last (B, C, H, W) map: a view."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _from_rows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B * H * W, C) rows back to a channels-last (B, C, H, W) map shaped like ``like``: a view."""
    B, _, H, W = like.shape
    return rows.view(B, H, W, -1).permute(0, 3, 1, 2)


def _base(residual: torch.Tensor | None, conv: nn.Conv2d) -> torch.Tensor | None:
    """What a projection's product is added to: the residual rows plus the projection's bias."""
    if residual is None:
        return None if conv.bias is None else conv.bias
    rows = _nhwc_rows(channels_last(residual))
    return rows if conv.bias is None else rows + conv.bias


class GatedDconvFeedForward(Computation, nn.Module):
    """GDFN: 1x1 expansion to two branches, depthwise 3x3, GELU gate, 1x1 projection."""

    def __init__(self, dim: int, expansion: float, bias: bool):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The feed-forward of ``x``, plus ``residual`` when given (added inside the last product)."""
        if self.reference:
            gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
            y = self.project_out(F.gelu(gate) * value)
            return y if residual is None else y + residual
        hidden = self.project_out.in_channels
        step = hidden if torch.is_grad_enabled() else max(1, _FFN_CHUNK // x[0, 0].numel())
        project = self._project_fused if onednn.applies(self.engine, x) else self._project
        out = residual
        for i in range(0, hidden, step):
            out = project(self._gated(x, i, min(i + step, hidden)), i, out, owned=i > 0)
        return out

    def _project(self, gated: torch.Tensor, lo: int, total: torch.Tensor | None, owned: bool) -> torch.Tensor:
        """``total`` + project_out's hidden channels [lo, lo + n) applied to ``gated`` (n channels),
        as one product that adds the sum (in place where ``owned``) and, with the first group, the bias."""
        w = _weight(self.project_out.weight[:, lo : lo + gated.shape[1], 0, 0]).t()
        rows = _nhwc_rows(gated)
        b = self.project_out.bias if lo == 0 else None
        if total is None:
            out = rows @ w if b is None else torch.addmm(b, rows, w)
        elif owned and not torch.is_grad_enabled() and not torch.is_autocast_enabled(rows.device.type):
            out = _nhwc_rows(total).addmm_(rows, w)
        else:
            base = _nhwc_rows(channels_last(total))
            out = torch.addmm(base if b is None else base + b, rows, w)
        return _from_rows(out, gated)

    def _project_fused(self, gated: torch.Tensor, lo: int, total: torch.Tensor | None, owned: bool) -> torch.Tensor:
        w = self.project_out.weight[:, lo : lo + gated.shape[1]]
        b = self.project_out.bias if lo == 0 else None
        if owned:  # a later group: b is None
            return onednn.conv_add_(total, gated, w)
        return onednn.conv(gated, w, b, add=None if total is None else channels_last(total))

    def _gated(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """GELU(gate) * value of hidden channels [lo, hi).

        Gate and value are computed as separate maps (each pair only meets its own depthwise
        filter, so the split is exact): contiguous maps make GELU several times faster than on
        the interleaved halves of one map, and the fused operators take the GELU and the product
        into the depthwise convolutions. Inference goes in groups of channels, so the full hidden
        map is never held.
        """
        hidden = self.project_out.in_channels
        fuse = onednn.applies(self.engine, x)

        def branch(rows: slice, **post) -> torch.Tensor:
            b_in, b_dw = self.project_in.bias, self.dwconv.bias
            w_in, w_dw = _weight(self.project_in.weight[rows]), _weight(self.dwconv.weight[rows])
            b_in, b_dw = (None if b is None else _weight(b[rows]) for b in (b_in, b_dw))
            if fuse:
                return onednn.conv(onednn.conv(x, w_in, b_in), w_dw, b_dw, **post)
            return F.conv2d(F.conv2d(x, w_in, b_in), w_dw, b_dw, padding=1, groups=hi - lo)

        if fuse:
            return branch(slice(hidden + lo, hidden + hi), mul=branch(slice(lo, hi), gelu=True))
        gate, value = branch(slice(lo, hi)), branch(slice(hidden + lo, hidden + hi))
        gate = gelu(gate)
        return gate * value if torch.is_grad_enabled() else gate.mul_(value)


class TransposedAttention(Computation, nn.Module):
    """MDTA: attention across channels (C x C per head) with a learned temperature per head.

    The fast path never forms the normalised q and k nor the attention's output map: the Gram
    matrix of q and k per head is divided by the outer product of their norms, and the output
    projection is folded into the attention matrix (W_out @ A, C x C per image), so that one
    product of v does both and adds the residual.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The attention of ``x``, plus ``residual`` when given (added inside the last product)."""
        if self.reference:
            y = self._reference(x)
            return y if residual is None else y + residual
        B, C, H, W = x.shape
        heads, c = self.num_heads, C // self.num_heads
        if torch.is_grad_enabled() or 3 * x.numel() <= _FFN_CHUNK:
            qkv = self._project(x, slice(0, 3 * C))
            (q, k, v), qk = qkv.split(C, dim=-1), qkv[..., : 2 * C]
        else:  # a large inference map: q and k, then v once they are freed
            (q, k), v, qk = (self._project(x, slice(i * C, (i + 1) * C)) for i in range(2)), None, None
        if heads == 1 or C <= _FULL_GRAM_WIDTH:  # one C x C product, its diagonal blocks kept
            gram = (q.transpose(1, 2) @ k).view(B, heads, c, heads, c).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)
        else:
            gram = torch.stack([q[b].view(-1, heads, c).permute(1, 2, 0) @ k[b].view(-1, heads, c).transpose(0, 1)
                                for b in range(B)])  # (B, heads, c, c)
        squares = qk.square().sum(1) if qk is not None else torch.cat([q.square().sum(1), k.square().sum(1)], 1)
        del q, k
        mix = self.mixing(gram, squares)
        if v is None:
            v = self._project(x, slice(2 * C, 3 * C))
        base = _base(residual, self.project_out)
        if base is None:
            out = v @ mix.transpose(1, 2)
        else:
            out = torch.baddbmm(base.view(B, H * W, C) if base.dim() > 1 else base, v, mix.transpose(1, 2))
        return _from_rows(out.view(-1, C), x)

    def mixing(self, gram: torch.Tensor, squares: torch.Tensor) -> torch.Tensor:
        """Each image's matrix for v, W_out @ blockdiag(softmax per head), (B, C, C), from the Gram
        matrices of q and k per head (B, heads, c, c) and the sums of squares of q's channels, then
        k's (B, 2C)."""
        B, heads, c, _ = gram.shape
        C = heads * c
        norm_q, norm_k = squares.sqrt().clamp_min(1e-12).split(C, dim=1)  # F.normalize's floor
        scale = norm_q.reshape(B, heads, c, 1) * norm_k.reshape(B, heads, 1, c)
        attn = (gram / scale * self.temperature).softmax(dim=-1)
        w_out = _weight(self.project_out.weight).view(C, heads, c).transpose(0, 1)  # (heads, C, c)
        return (w_out @ attn).permute(0, 2, 1, 3).reshape(B, C, C)

    def _project(self, x: torch.Tensor, rows: slice) -> torch.Tensor:
        """Channels ``rows`` of the 1x1 + depthwise projection, as (B, H * W, channels) rows."""
        bias = lambda conv: None if conv.bias is None else _weight(conv.bias[rows])  # noqa: E731
        w, w_dw = _weight(self.qkv.weight[rows]), _weight(self.qkv_dwconv.weight[rows])
        if onednn.applies(self.engine, x):
            y = onednn.conv(onednn.conv(x, w, bias(self.qkv)), w_dw, bias(self.qkv_dwconv))
        else:
            y = F.conv2d(F.conv2d(x, w, bias(self.qkv)), w_dw, bias(self.qkv_dwconv), padding=1, groups=w.shape[0])
        return _nhwc_rows(channels_last(y)).view(x.shape[0], -1, y.shape[1])

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv_dwconv(self.qkv(x)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W)
        q, k, v = qkv.unbind(1)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        return self.project_out((attn.softmax(dim=-1) @ v).reshape(B, C, H, W))


class TransformerBlock(Computation, nn.Module):
    def __init__(self, dim: int, num_heads: int, expansion: float, bias: bool, layernorm_type: str):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, layernorm_type)
        self.attn = TransposedAttention(dim, num_heads, bias)
        self.norm2 = ChannelLayerNorm(dim, layernorm_type)
        self.ffn = GatedDconvFeedForward(dim, expansion, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = channels_last(x, self.reference)
        serves = lambda half: not self.reference and native.serves(self.engine, x, half)  # noqa: E731
        if serves("attention"):  # each half in amir's kernels, streaming rows
            x = native.attention_block(x, self.norm1, self.attn)
        else:
            x = self.attn(self.norm1(x), residual=x)
        if serves("ffn"):
            return native.ffn_block(x, self.norm2, self.ffn)
        return self.ffn(self.norm2(x), residual=x)


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
