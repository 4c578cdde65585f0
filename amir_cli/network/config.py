"""Architecture hyperparameters of AMIR and the named configurations."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class AmirConfig:
    """One network's hyperparameters. A manifest recorded before the routing fields existed reads
    with their defaults, which every network had then."""

    dim: int = 42
    num_blocks: tuple[int, int, int, int] = (5, 7, 7, 9)
    num_refinement_blocks: int = 4
    heads: tuple[int, int, int, int] = (1, 2, 4, 8)
    ffn_expansion_factor: float = 2.66
    bias: bool = False
    layernorm_type: str = "WithBias"  # or "BiasFree"
    in_channels: int = 1
    out_channels: int = 1
    atom_num: int = 32  # learned atoms in the routing dictionary
    atom_dim: int = 256  # length of the routing instruction vector
    num_experts: int = 4  # experts of each spatial routing
    top_k: int = 2  # experts mixed at each pixel

    def __post_init__(self):
        if self.dim < 1 or len(self.num_blocks) != 4 or len(self.heads) != 4:
            raise ValueError("AmirConfig needs dim >= 1 and four entries in num_blocks and heads")
        for level, h in enumerate(self.heads):
            if (self.dim * 2 ** min(level, 3)) % h:
                raise ValueError(f"level {level + 1} width is not divisible by {h} heads")
        if self.layernorm_type not in ("WithBias", "BiasFree"):
            raise ValueError(f"layernorm_type must be WithBias or BiasFree, not {self.layernorm_type!r}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be in 1..{self.num_experts} (num_experts), got {self.top_k}")
        if self.num_experts > 256:
            raise ValueError(f"at most 256 experts (the routing sorts their indices as bytes), got {self.num_experts}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AmirConfig":
        d = dict(d)
        for key in ("num_blocks", "heads"):
            d[key] = tuple(d[key])
        return cls(**d)


CONFIGS: dict[str, AmirConfig] = {
    # The published configuration: 23.54 M parameters.
    "amir": AmirConfig(),
    # CPU-sized model for the shipped weights.
    "amir-s": AmirConfig(dim=8, num_blocks=(1, 2, 3, 4), num_refinement_blocks=1),
    # amir-s with more blocks below full resolution and a second refinement block; it starts from
    # amir-s's weights (`amir train --config amir-m --init amir-s`, see growth.py).
    "amir-m": AmirConfig(dim=8, num_blocks=(1, 3, 4, 6), num_refinement_blocks=2),
    # amir-s at width 12 (1.15 M parameters); it starts from amir-s's weights (`amir train --config
    # amir-w --init amir-s`, see widening.py).
    "amir-w": AmirConfig(dim=12, num_blocks=(1, 2, 3, 4), num_refinement_blocks=1),
    # Test-sized model.
    "amir-tiny": AmirConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1),
}


def get_config(name: str) -> AmirConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown configuration {name!r}; known: {', '.join(CONFIGS)}") from None
