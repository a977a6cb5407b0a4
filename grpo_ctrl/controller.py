"""Two-stage controller: stage 1 picks the vision tier before the vision encoder; stage 2 picks the MoE
top-k and the number of blocks after it, reading the pooled vision feature of the chosen tier.

Budgets enter as a fraction of the reference (full-knob) latency, so one controller transfers across
machines whose absolute speed differs.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Categorical

from grpo_ctrl.knobs import Knobs, KnobSpace


class BudgetEncoder(nn.Module):
    """Budget fraction -> [b, sin(2^i pi b), cos(2^i pi b)] -> linear."""

    def __init__(self, frequencies: int, out_dim: int):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(frequencies, dtype=torch.float), persistent=False)
        self.proj = nn.Linear(1 + 2 * frequencies, out_dim)

    def forward(self, budget: torch.Tensor) -> torch.Tensor:
        b = budget.float()[:, None]
        angles = b * self.freqs
        return self.proj(torch.cat([b, angles.sin(), angles.cos()], dim=-1))


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    # tanh GELU: the same function in the numpy serving path (`policy.GreedyPolicy`).
    return nn.Sequential(nn.Linear(inp, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, out))


class TwoStageController(nn.Module):
    def __init__(self, space: KnobSpace, question_dim: int, vision_dim: int, hidden: int = 64,
                 budget_frequencies: int = 8, feature_dim: int = 32):
        super().__init__()
        self.space = space
        n_tiers, n_k, n_blocks = len(space.tier_names), len(space.top_ks), len(space.num_blocks)
        self.budget = BudgetEncoder(budget_frequencies, feature_dim)
        self.question = nn.Linear(question_dim, feature_dim)
        self.vision = nn.Linear(vision_dim, feature_dim)
        self.stage1 = _mlp(2 * feature_dim, hidden, n_tiers)
        self.stage2 = _mlp(3 * feature_dim + n_tiers, hidden, n_k + n_blocks)
        self.n_tiers, self.n_k = n_tiers, n_k

    # ------------------------------------------------------------ logits
    def encode(self, budget: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        """What both stages read about the request: budget and question features (B, 2F)."""
        return torch.cat([self.budget(budget), self.question(question)], dim=-1)

    def stage1_logits(self, request: torch.Tensor) -> torch.Tensor:
        return self.stage1(request)

    def stage2_logits(self, request: torch.Tensor, vision: torch.Tensor,
                      tier: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tier_onehot = nn.functional.one_hot(tier, self.n_tiers).to(request.dtype)
        logits = self.stage2(torch.cat([request, self.vision(vision), tier_onehot], dim=-1))
        return logits[:, : self.n_k], logits[:, self.n_k:]

    # ------------------------------------------------------------ policy
    def log_prob(self, budget, question, vision, actions) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint log-prob (B,) of `actions` (tier, top_k, num_blocks indices) and per-head entropies (B, 3)."""
        request = self.encode(budget, question)
        k_logits, b_logits = self.stage2_logits(request, vision, actions[:, 0])
        dists = [Categorical(logits=self.stage1_logits(request)), Categorical(logits=k_logits),
                 Categorical(logits=b_logits)]
        logp = sum(d.log_prob(actions[:, i]) for i, d in enumerate(dists))
        entropy = torch.stack([d.entropy() for d in dists], dim=-1)
        return logp, entropy

    def forward(self, budget, question, vision, actions) -> tuple[torch.Tensor, torch.Tensor]:
        return self.log_prob(budget, question, vision, actions)

    def choose_tier(self, request: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """Stage 1. `u` (B,) uniform numbers sample the tier by inverse CDF; None picks the argmax."""
        return _pick(self.stage1_logits(request), u)

    def choose_rest(self, request: torch.Tensor, vision: torch.Tensor, tier: torch.Tensor,
                    u: torch.Tensor | None = None) -> torch.Tensor:
        """Stage 2 given the chosen tiers; `u` (B, 2) samples top_k and num_blocks, None is greedy.
        Returns the full actions (B, 3)."""
        k_logits, b_logits = self.stage2_logits(request, vision, tier)
        k = _pick(k_logits, None if u is None else u[:, 0])
        b = _pick(b_logits, None if u is None else u[:, 1])
        return torch.stack([tier, k, b], dim=-1)

    def to_knobs(self, actions: torch.Tensor) -> list[Knobs]:
        return [self.space.from_index(*row) for row in actions.tolist()]


def _pick(logits: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """Argmax, or a sample by inverse CDF from given uniforms (so a prompt's samples do not depend on
    which rank or batch position it lands on)."""
    if u is None:
        return logits.argmax(-1)
    cdf = logits.softmax(-1).cumsum(-1)
    return (cdf < u[:, None].to(cdf.dtype)).sum(-1).clamp(max=logits.shape[-1] - 1)


def build_controller(cfg, space: KnobSpace, question_dim: int, vision_dim: int) -> TwoStageController:
    return TwoStageController(space, question_dim, vision_dim, hidden=cfg.hidden,
                              budget_frequencies=cfg.budget_frequencies, feature_dim=cfg.feature_dim)
