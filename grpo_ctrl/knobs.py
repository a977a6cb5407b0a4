"""The three inference knobs and the space of values they may take."""

from __future__ import annotations

import itertools
from dataclasses import dataclass


class KnobError(ValueError):
    """A knob value outside the configured knob space."""


@dataclass(frozen=True, order=True)
class Knobs:
    """One inference setting: vision-token tier, MoE experts per token, transformer blocks kept."""

    tier: str
    top_k: int
    num_blocks: int

    def __str__(self) -> str:
        return f"{self.tier}/k{self.top_k}/b{self.num_blocks}"


@dataclass(frozen=True)
class KnobSpace:
    """Allowed knob values, ordered cheapest first, with index <-> value maps for controller heads.

    `tiers` maps a tier name to its patch-grid pooling factor (1 = every patch is a vision token).
    """

    tiers: dict[str, int]
    top_ks: tuple[int, ...]
    num_blocks: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tiers", dict(self.tiers))
        object.__setattr__(self, "top_ks", tuple(self.top_ks))
        object.__setattr__(self, "num_blocks", tuple(self.num_blocks))
        if not self.tiers or not self.top_ks or not self.num_blocks:
            raise KnobError("knob space: tiers, top_ks and num_blocks must each list at least one value")
        if any(k < 1 for k in self.top_ks) or any(n < 1 for n in self.num_blocks):
            raise KnobError(f"knob space: top_ks {self.top_ks} and num_blocks {self.num_blocks} must be >= 1")

    @property
    def tier_names(self) -> tuple[str, ...]:
        return tuple(self.tiers)

    @property
    def cheapest(self) -> Knobs:
        return Knobs(self.tier_names[0], min(self.top_ks), min(self.num_blocks))

    @property
    def full(self) -> Knobs:
        return Knobs(self.tier_names[-1], max(self.top_ks), max(self.num_blocks))

    def all(self) -> list[Knobs]:
        """Every setting in the space, cheapest-first in each knob."""
        return [Knobs(*v) for v in itertools.product(self.tier_names, self.top_ks, self.num_blocks)]

    def validate(self, knobs: Knobs) -> Knobs:
        if knobs.tier not in self.tiers:
            raise KnobError(f"knobs.tier={knobs.tier!r} is not a tier of this model; use one of {list(self.tiers)}")
        if knobs.top_k not in self.top_ks:
            raise KnobError(f"knobs.top_k={knobs.top_k} is not allowed; use one of {list(self.top_ks)}")
        if knobs.num_blocks not in self.num_blocks:
            raise KnobError(f"knobs.num_blocks={knobs.num_blocks} is not allowed; use one of {list(self.num_blocks)}")
        return knobs

    def index(self, knobs: Knobs) -> tuple[int, int, int]:
        self.validate(knobs)
        return (
            self.tier_names.index(knobs.tier),
            self.top_ks.index(knobs.top_k),
            self.num_blocks.index(knobs.num_blocks),
        )

    def from_index(self, tier: int, top_k: int, num_blocks: int) -> Knobs:
        return Knobs(self.tier_names[int(tier)], self.top_ks[int(top_k)], self.num_blocks[int(num_blocks)])

    def to_dict(self) -> dict:
        return {"tiers": dict(self.tiers), "top_ks": list(self.top_ks), "num_blocks": list(self.num_blocks)}
