"""Task-adaptive routing: the Routing Instruction Network, spatial routing (a per-pixel noisy top-k
mixture of experts) and channel routing. Parameter names follow the published checkpoints."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import native
from .config import AmirConfig
from .restormer import Computation

_EPS = float(torch.finfo(torch.float64).eps)  # floor before the log, as in the published combine
_SPARSE_CHUNK = 1 << 23  # expert hidden activations (pixels x hidden) held at once by sparse inference
_DENSE_CHUNK = 1 << 26  # expert hidden activations (pixels x experts x hidden) held at once by dense inference
EXPERT_PATHS = ("auto", "dense", "sparse")


class RoutingInstructionNetwork(nn.Module):
    """Maps an image to one instruction vector: a softmax mixture of learned dictionary atoms."""

    def __init__(self, in_channels: int, atom_num: int = AmirConfig.atom_num, atom_dim: int = AmirConfig.atom_dim, hidden: int = 64):
        super().__init__()
        act = lambda: nn.LeakyReLU(0.1, inplace=True)  # noqa: E731
        self.CondNet = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, stride=3), act(),
            nn.Conv2d(hidden, hidden, 3, stride=3), act(),
            nn.Conv2d(hidden, hidden, 1), act(),
            nn.Conv2d(hidden, hidden, 1), act(),
            nn.Conv2d(hidden, 32, 1),
        )
        self.lastOut = nn.Linear(32, atom_num)
        self.dictionary = nn.Parameter(torch.randn(atom_num, atom_dim))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if min(image.shape[-2:]) < 9:
            raise ValueError(f"the routing network needs at least 9x9 pixels, got {tuple(image.shape[-2:])}")
        code = self.CondNet(image).mean(dim=(2, 3))
        atom_weights = self.lastOut(code).softmax(dim=-1)
        return F.gelu(atom_weights @ self.dictionary)


class Expert(nn.Module):
    """Two-layer MLP applied to each pixel's feature vector."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def _cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation (sample variance), the load-balancing penalty."""
    x = x.float()
    return x.var() / (x.mean() ** 2 + 1e-10)


class NoisyTopKExperts(Computation, nn.Module):
    """Per-pixel mixture of experts with noisy top-k gating (Shazeer et al.).

    The gate sees [feature, projected instruction]. Outputs are combined as
    log(sum_k gate_k * exp(expert_k(x))): the published combine works in log space, and its
    checkpoints depend on it.
    """

    experts_path = "auto"  # one of EXPERT_PATHS, set by AMIR.set_computation

    def __init__(self, dim: int, expansion: float, num_experts: int = AmirConfig.num_experts, k: int = AmirConfig.top_k):
        super().__init__()
        self.k = k
        self.num_experts = num_experts
        self.experts = nn.ModuleList([Expert(dim, int(dim * expansion)) for _ in range(num_experts)])
        self.w_gate = nn.Parameter(torch.randn(2 * dim, num_experts))
        self.w_noise = nn.Parameter(torch.zeros(2 * dim, num_experts))
        # Normal(0, 1) parameters kept as buffers for checkpoint compatibility.
        self.register_buffer("mean", torch.tensor([0.0]))
        self.register_buffer("std", torch.tensor([1.0]))

    def forward(self, x: torch.Tensor, cue: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, H, W) features, cue: (B, C) projected instruction. Returns (y, load_loss)."""
        B, C, H, W = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(-1, C)
        dense = self.dense(x.device)
        if not dense and not self.reference and not self.training and native.applies(self.engine, x):
            y, loss = self._native(tokens.contiguous(), cue, H * W), x.new_zeros(())
        elif not torch.is_grad_enabled() and not self.training:
            clean = self._logits(self.w_gate, tokens, cue)
            step = max(1, (_DENSE_CHUNK // self.num_experts if dense else _SPARSE_CHUNK) // self.experts[0].fc1.out_features)
            parts = [self._mix(t, *self._top_k(logits), dense) for t, logits in zip(tokens.split(step), clean.split(step))]
            y = parts[0] if len(parts) == 1 else torch.cat(parts)
            loss = x.new_zeros(())
        else:
            (top, idx), load = self._gates(tokens, cue)
            gates = self._spread(top, idx)
            y, loss = self._mix(tokens, top, idx, dense), _cv_squared(gates.sum(0)) + _cv_squared(load)
        return y.reshape(B, H, W, C).permute(0, 3, 1, 2), loss

    def _native(self, tokens: torch.Tensor, cue: torch.Tensor, per_image: int) -> torch.Tensor:
        """The sparse mixture in one pass of amir's own kernels (`native`): the same combine."""
        C = tokens.shape[1]
        stack = lambda layer, name: torch.stack([getattr(getattr(e, layer), name) for e in self.experts])  # noqa: E731
        return native.experts(tokens, per_image, self.w_gate[:C], cue @ self.w_gate[C:], stack("fc1", "weight"),
                              stack("fc1", "bias"), stack("fc2", "weight"), stack("fc2", "bias"), self.k, _EPS)

    def _mix(self, tokens: torch.Tensor, top: torch.Tensor, idx: torch.Tensor, dense: bool) -> torch.Tensor:
        """The experts' combined output for gates ``top`` of experts ``idx`` (N, k)."""
        if dense:
            return self._combine_dense(tokens, self._spread(top, idx))
        if self.reference:
            return self._combine(tokens, self._spread(top, idx))
        return self._combine_ranked(tokens, top, idx)

    def dense(self, device: torch.device) -> bool:
        """Whether the experts run densely: set per model by `AMIR.set_computation`; "auto" means
        dense everywhere but on the CPU, where running each expert on its own pixels is faster."""
        if self.reference or self.experts_path == "sparse":
            return False
        return self.experts_path == "dense" or device.type != "cpu"

    @staticmethod
    def _logits(w: torch.Tensor, tokens: torch.Tensor, cue: torch.Tensor) -> torch.Tensor:
        """[pixel feature, image cue] @ w in fp32 (also under autocast). The cue half is one vector
        per image, so its product is added once per image rather than concatenated to every pixel."""
        B, C = cue.shape
        per_pixel = (tokens @ w[:C]).view(B, -1, w.shape[1])
        return (per_pixel + (cue @ w[C:])[:, None]).float().view(tokens.shape[0], -1)

    def _top_k(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gates, experts), (N, k) each: the softmax over each pixel's k largest logits, and whose."""
        top_logits, top_idx = logits.topk(self.k, dim=1)
        if self.k == 2 and not self.reference:  # a softmax of two is a sigmoid of the difference (and far faster on rows of two)
            return torch.sigmoid(top_logits - top_logits.flip(1)), top_idx
        return top_logits.softmax(dim=1), top_idx

    def _spread(self, top: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(N, E) gates: ``top`` at the experts ``idx``, zero elsewhere."""
        return top.new_zeros(top.shape[0], self.num_experts).scatter(1, idx, top)

    def _gates(self, tokens, cue):
        """((top gates, experts), load): noisy gating in training; load is the differentiable expected count."""
        clean = self._logits(self.w_gate, tokens, cue)
        if not self.training:
            top = self._top_k(clean)
            return top, (self._spread(*top) > 0).sum(0)
        noise_std = F.softplus(self._logits(self.w_noise, tokens, cue)) + 1e-2
        logits = clean + torch.randn_like(clean) * noise_std
        top = self._top_k(logits)
        if self.k == self.num_experts:
            return top, (self._spread(*top) > 0).sum(0)
        top_logits = logits.topk(self.k + 1, dim=1).values
        return top, self._prob_in_top_k(clean, logits, noise_std, top_logits).sum(0)

    def _prob_in_top_k(self, clean, noisy, noise_std, top_logits):
        """Differentiable probability that each expert stays in the top k under fresh noise."""
        threshold_in = top_logits[:, self.k : self.k + 1]
        threshold_out = top_logits[:, self.k - 1 : self.k]
        normal = torch.distributions.Normal(self.mean, self.std, validate_args=False)
        p_in = normal.cdf((clean - threshold_in) / noise_std)
        p_out = normal.cdf((clean - threshold_out) / noise_std)
        return torch.where(noisy > threshold_in, p_in, p_out)

    def _combine(self, tokens, gates):
        """Each expert runs only on the pixels routed to it (k of the experts per pixel): the published combine."""
        mixed = tokens.new_zeros(tokens.shape, dtype=torch.float32)
        for e, expert in enumerate(self.experts):
            rows = gates[:, e].nonzero().squeeze(1)
            contrib = expert(tokens[rows]).float().exp() * gates[rows, e : e + 1]
            mixed.index_add_(0, rows, contrib)
        return mixed.masked_fill(mixed == 0, _EPS).log().to(tokens.dtype)

    def _combine_ranked(self, tokens: torch.Tensor, top: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The published combine with each expert on its own pixels, without a scatter-add (which
        the CPU runs serially): the (pixel, rank) pairs are sorted by expert, each expert runs on
        its run of them, and the terms go back to one slot per (rank, pixel), the k slots then
        summed (two terms: the same sum in any order). Without autograd or autocast every buffer has
        the same size whatever the routing, so that memory freed by one slice fits the next (buffers whose
        size follows the routing fragment the heap: the process grows slice after slice)."""
        N, k = idx.shape
        ranked = idx.t().flatten()  # rank-major: slot r * N + pixel
        order = ranked.to(torch.uint8).argsort(stable=True)  # as bytes (at most 256 experts): several times faster on the CPU
        inverse = torch.empty_like(order).index_copy_(0, order, torch.arange(k * N, device=order.device))
        runs = torch.bincount(ranked, minlength=self.num_experts).tolist()
        if torch.is_grad_enabled():  # the slots' copies of the tokens, permuted: gradients gathered, not scattered
            x = _Permutation.apply(tokens.repeat(k, 1), order, inverse)
        else:
            x = tokens.index_select(0, order % N)
        if torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):  # out= has neither
            y = torch.cat([expert(part) for expert, part in zip(self.experts, x.split(runs))])
        else:
            y = self._experts_into(x, runs)
        terms = y.float().exp() * top.t().flatten()[order, None]
        slots = _Permutation.apply(terms, inverse, order)
        mixed = slots.view(k, N, -1).sum(0)
        return mixed.masked_fill_(mixed == 0, _EPS).log().to(tokens.dtype)

    def _experts_into(self, x: torch.Tensor, runs: list[int]) -> torch.Tensor:
        """Each expert on its run of the rows of ``x``, written into buffers of x's length."""
        hidden = x.new_empty(x.shape[0], self.experts[0].fc1.out_features)
        out = torch.empty_like(x)
        bounds = [sum(runs[:e]) for e in range(len(runs) + 1)]
        for e, expert in enumerate(self.experts):
            rows = slice(bounds[e], bounds[e + 1])
            torch.addmm(expert.fc1.bias, x[rows], expert.fc1.weight.t(), out=hidden[rows])
        hidden = F.gelu(hidden)
        for e, expert in enumerate(self.experts):
            rows = slice(bounds[e], bounds[e + 1])
            torch.addmm(expert.fc2.bias, hidden[rows], expert.fc2.weight.t(), out=out[rows])
        return out

    def _combine_dense(self, tokens, gates):
        """The same combine with every expert run on every pixel: no host synchronisation and the
        same shapes whatever the routing. One product for all the experts' first layers and one
        batched product for their second layers; an expert's output is zeroed before the exp where
        its gate is zero, so that it adds exactly nothing (and no inf or NaN, also in backward)."""
        E, hidden = self.num_experts, self.experts[0].fc1.out_features
        w1 = torch.cat([e.fc1.weight for e in self.experts])  # (E * hidden, C)
        b1 = torch.cat([e.fc1.bias for e in self.experts])
        h = F.gelu(F.linear(tokens, w1, b1)).view(-1, E, hidden).transpose(0, 1)  # (E, N, hidden)
        w2 = torch.stack([e.fc2.weight for e in self.experts]).transpose(1, 2)  # (E, hidden, C)
        b2 = torch.stack([e.fc2.bias for e in self.experts])[:, None]  # (E, 1, C)
        out = torch.baddbmm(b2, h, w2).transpose(0, 1)  # (N, E, C)
        g = gates[:, :, None]
        contrib = out.float().masked_fill(g == 0, 0).exp_() * g
        mixed = contrib.sum(1)
        return mixed.masked_fill(mixed == 0, _EPS).log().to(tokens.dtype)


class _Permutation(torch.autograd.Function):
    """rows[order] for a permutation ``order`` of the rows (``inverse`` its inverse): the gradient
    is gathered by the inverse, where index_select's would be scattered with additions, serially
    on the CPU."""

    @staticmethod
    def forward(ctx, rows, order, inverse):
        ctx.save_for_backward(inverse)
        return rows.index_select(0, order)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


class SpatialRouting(nn.Module):
    """Residual per-pixel expert routing steered by the instruction."""

    def __init__(self, dim: int, c: AmirConfig):
        super().__init__()
        self.fc = nn.Linear(c.atom_dim, dim)
        self.moe = NoisyTopKExperts(dim, c.ffn_expansion_factor, c.num_experts, c.top_k)

    def forward(self, x: torch.Tensor, instruction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, loss = self.moe(x, self.fc(instruction))
        return y + x, loss


class ChannelRouting(nn.Module):
    """x + sigmoid(fc(instruction)) * (gamma * x + beta): instruction-gated channel modulation."""

    def __init__(self, dim: int, atom_dim: int = AmirConfig.atom_dim):
        super().__init__()
        self.fc = nn.Linear(atom_dim, dim)
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc(instruction))[:, :, None, None]
        # the same per-channel affine map folded into one scale and one shift: a single full-size op
        return torch.addcmul(self.beta * gate, x, 1 + self.gamma * gate)
