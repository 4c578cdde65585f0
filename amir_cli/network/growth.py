"""Start a deeper network from a shallower one's weights so that it computes the same function.

Every Restormer block adds its attention and its feed-forward output to a residual, so a block whose
two output projections are zero is the identity. A deeper configuration (more blocks per stage, the
same widths, heads and routing) keeps each stage's trained blocks first and appends such identity
blocks, which training then moves away from zero.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .config import AmirConfig
from .restormer import TransformerBlock


def grows_into(small: AmirConfig, large: AmirConfig) -> bool:
    """True when ``large`` is ``small`` with at least as many blocks in every stage."""
    depth = dict(num_blocks=large.num_blocks, num_refinement_blocks=large.num_refinement_blocks)
    return (replace(small, **depth) == large
            and all(a <= b for a, b in zip(small.num_blocks, large.num_blocks))
            and small.num_refinement_blocks <= large.num_refinement_blocks)


def load_grown(model: nn.Module, state: dict) -> list[str]:
    """Load a shallower configuration's ``state`` into ``model``; the blocks ``state`` lacks become
    identity blocks. Returns the names of those new blocks. Raises ValueError when ``state`` holds a
    tensor the model lacks or of another shape, or lacks one outside the new blocks."""
    own = model.state_dict()
    foreign = [k for k in state if k not in own or own[k].shape != state[k].shape]
    if foreign:
        raise ValueError(f"the smaller weights do not fit this network: {', '.join(foreign[:3])}")
    missing = set(own) - set(state)
    new = [name for name, m in model.named_modules()
           if isinstance(m, TransformerBlock) and f"{name}.attn.project_out.weight" in missing]
    outside = [k for k in missing if not any(k.startswith(name + ".") for name in new)]
    if outside:
        raise ValueError(f"the smaller weights lack tensors outside the added blocks: {', '.join(sorted(outside)[:3])}")
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        for name in new:
            block = model.get_submodule(name)
            for projection in (block.attn.project_out, block.ffn.project_out):
                projection.weight.zero_()
                if projection.bias is not None:
                    projection.bias.zero_()
    return new
