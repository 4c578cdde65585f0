"""Start a wider network from a narrower one's weights (function-preserving widening, "Net2WiderNet").

Each new channel copies an old one: every layer's rows follow its output channels' copies, and the
columns of a copied input are divided by its number of copies, so each linear map and convolution
gives the same values on every copy. LayerNorm over the channels and the channel attention (a softmax
over a head's channels) are unchanged when every old channel has the same number of copies (and each
head's new channels copy that head's old ones): with twice the width the wider network computes
exactly what the narrower one did. Other widths start close to it, not equal. Training needs the
copies to differ, so a small jitter can be added to the widened weights.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .config import AmirConfig


def widens_into(small: AmirConfig, large: AmirConfig) -> bool:
    """True when ``large`` is ``small`` with a larger ``dim`` (more blocks allowed too, see growth.py)."""
    return large.dim > small.dim and replace(small, dim=large.dim, num_blocks=large.num_blocks,
                                             num_refinement_blocks=large.num_refinement_blocks) == large


def _cycle(new: int, old: int, heads: int = 1) -> torch.Tensor:
    """new channel -> old channel: each head's new channels cycle through that head's old ones."""
    j = torch.arange(new)
    return (j // (new // heads)) * (old // heads) + (j % (new // heads)) % (old // heads)


def _through_unshuffle(target: torch.Tensor) -> torch.Tensor:
    """The convolution's channel map whose pixel-unshuffle by 2 gives the map ``target``."""
    conv = target[::4] // 4
    if not torch.equal(target, (conv[:, None] * 4 + torch.arange(4)).flatten()):
        raise ValueError("these widths cannot be widened through the downsampling")
    return conv


def _before_shuffle(shuffled: torch.Tensor) -> torch.Tensor:
    """The convolution's channel map whose pixel-shuffle by 2 gives the map ``shuffled``."""
    return (shuffled[:, None] * 4 + torch.arange(4)).flatten()


class _Widener:
    """Builds the wider state from the narrower one, tensor by tensor."""

    def __init__(self, state: dict, jitter: float, generator: torch.Generator | None):
        self.old, self.new, self.jitter, self.generator = state, {}, jitter, generator

    def put(self, name: str, value: torch.Tensor) -> None:
        self.new[name] = value.contiguous()

    def map(self, name: str, out: torch.Tensor | None = None, inp: torch.Tensor | None = None, axes=(0, 1)) -> None:
        """Tensor ``name`` with its output axis following ``out`` and its input axis ``inp``
        (each copy of an input taking its share)."""
        w = self.old[name]
        if out is not None:
            w = w.index_select(axes[0], out)
        if inp is not None:
            share = torch.bincount(inp).to(w.dtype)[inp]
            shape = [1] * w.dim()
            shape[axes[1]] = -1
            w = w.index_select(axes[1], inp) / share.view(shape)
        if self.jitter:
            noise = torch.randn(w.shape, generator=self.generator, dtype=w.dtype)
            w = w + noise * self.jitter * w.std(correction=0)
        self.put(name, w)

    def block(self, name: str, stream: torch.Tensor, width: tuple[int, int], heads: int, hidden: tuple[int, int]) -> None:
        (new, old), (hid_new, hid_old) = width, hidden
        for norm in ("norm1", "norm2"):
            for p in ("weight", "bias"):
                if f"{name}.{norm}.body.{p}" in self.old:
                    self.map(f"{name}.{norm}.body.{p}", out=stream)
        attn = _cycle(new, old, heads)
        qkv = torch.cat([attn + i * old for i in range(3)])
        self.map(f"{name}.attn.qkv.weight", qkv, stream)
        self.map(f"{name}.attn.qkv_dwconv.weight", qkv)
        self.map(f"{name}.attn.project_out.weight", stream, attn)
        self.put(f"{name}.attn.temperature", self.old[f"{name}.attn.temperature"])
        h = _cycle(hid_new, hid_old)
        gate_value = torch.cat([h, h + hid_old])
        self.map(f"{name}.ffn.project_in.weight", gate_value, stream)
        self.map(f"{name}.ffn.dwconv.weight", gate_value)
        self.map(f"{name}.ffn.project_out.weight", stream, h)


def widen_state(state: dict, small: AmirConfig, large: AmirConfig, *, jitter: float = 0.0,
                generator: torch.Generator | None = None) -> dict:
    """A state of ``large`` (``small`` with a larger ``dim``, or ``small`` itself) made from
    ``small``'s ``state``: the same function when large.dim is twice small.dim, close to it otherwise.
    ``jitter`` adds noise of that fraction of each widened tensor's spread to it."""
    same_depth = (large.num_blocks, large.num_refinement_blocks) == (small.num_blocks, small.num_refinement_blocks)
    if large != small and not (same_depth and widens_into(small, large)):
        raise ValueError("only the width may differ between the two configurations")
    if small.bias:
        raise ValueError("widening networks with convolution biases is not supported")
    w = _Widener(state, jitter, generator)
    old = [small.dim * 2 ** i for i in range(4)]
    new = [large.dim * 2 ** i for i in range(4)]
    hidden = lambda width: int(width * small.ffn_expansion_factor)  # noqa: E731
    stream = [_cycle(n, o, h) for n, o, h in zip(new, old, small.heads)]
    up = [_cycle(n, o) for n, o in zip(new, old)]  # the map of each level's upsampled input
    top = torch.cat([up[0], old[0] + stream[0]])  # decoder level 1: [upsampled, encoder level 1]

    for name, value in state.items():
        if name.startswith("dict_generator.") or name.endswith(("moe.mean", "moe.std")):
            w.put(name, value)
    w.map("patch_embed.proj.weight", out=stream[0])
    for level in range(3):
        s, prefix = stream[level], f"spatial_routing_encoder_level{level + 1}"
        w.map(f"{prefix}.fc.weight", out=s)
        w.map(f"{prefix}.fc.bias", out=s)
        for gate in ("w_gate", "w_noise"):
            w.map(f"{prefix}.moe.{gate}", inp=torch.cat([s, old[level] + s]), axes=(1, 0))
        h = _cycle(hidden(new[level]), hidden(old[level]))
        for e in range(small.num_experts):
            expert = f"{prefix}.moe.experts.{e}"
            w.map(f"{expert}.fc1.weight", h, s)
            w.map(f"{expert}.fc1.bias", h)
            w.map(f"{expert}.fc2.weight", s, h)
            w.map(f"{expert}.fc2.bias", s)
        w.map(f"down{level + 1}_{level + 2}.body.0.weight", _through_unshuffle(stream[level + 1]), s)
    for name, s in (("latent", stream[3]), ("decoder_level3", stream[2]), ("decoder_level2", stream[1]),
                    ("decoder_level1", top)):
        w.map(f"channel_routing_{name}.fc.weight", out=s)
        w.map(f"channel_routing_{name}.fc.bias", out=s)
        for p in ("beta", "gamma"):
            w.map(f"channel_routing_{name}.{p}", out=s, axes=(1, 1))
    for level in (3, 2, 1):
        w.map(f"up{level + 1}_{level}.body.0.weight", _before_shuffle(up[level - 1]), stream[level])
    for level in (3, 2):
        w.map(f"reduce_chan_level{level}.weight", stream[level - 1], torch.cat([up[level - 1], old[level - 1] + stream[level - 1]]))

    stages = [("encoder_level1", 0, small.num_blocks[0]), ("encoder_level2", 1, small.num_blocks[1]),
              ("encoder_level3", 2, small.num_blocks[2]), ("latent", 3, small.num_blocks[3]),
              ("decoder_level3", 2, small.num_blocks[2]), ("decoder_level2", 1, small.num_blocks[1])]
    for name, level, depth in stages:
        for i in range(depth):
            w.block(f"{name}.{i}", stream[level], (new[level], old[level]), small.heads[level],
                    (hidden(new[level]), hidden(old[level])))
    for name, depth in (("decoder_level1", small.num_blocks[0]), ("refinement", small.num_refinement_blocks)):
        for i in range(depth):
            w.block(f"{name}.{i}", top, (new[1], old[1]), small.heads[0], (hidden(new[1]), hidden(old[1])))
    w.map("output.weight", inp=top)
    missing = sorted(set(state) - set(w.new))
    if missing:
        raise ValueError(f"the narrower weights hold tensors this widening does not know: {', '.join(missing[:3])}")
    return w.new
