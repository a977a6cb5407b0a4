"""Constrained training: keep the controller within `budgets.max_violation` at every budget it trains on.

The constraint is P(L > B) <= alpha per budget. Its Lagrangian gives each rollout the reward
accuracy - lambda * [L > B] (the alpha term is the same for every member of a group, so advantages ignore it), and
dual ascent moves lambda by the measured violation rate: up while a band of budgets runs over more often than
alpha, down (to 0) while it has room. Tight budgets need a larger price than loose ones, so there is one multiplier
per band of training budgets (equal-width bands of the budget fraction). Every rank sums the same counts, so the
multipliers stay identical across ranks, and they are checkpointed with the controller.
"""

from __future__ import annotations

import numpy as np
import torch

from grpo_ctrl.parallel import ParallelContext


class ViolationMultipliers:
    def __init__(self, low: float, high: float, bands: int, alpha: float, lr: float, initial: float):
        self.edges = np.linspace(low, high, bands + 1)
        self.alpha, self.lr = alpha, lr
        self.values = np.full(bands, float(initial))

    def band(self, fractions) -> np.ndarray:
        """The band of each budget fraction (outside [low, high]: the nearest band)."""
        inner = self.edges[1:-1]
        return np.searchsorted(inner, np.asarray(fractions, dtype=float), side="right")

    def at(self, fractions) -> np.ndarray:
        """Each request's price of running over its budget."""
        return self.values[self.band(fractions)]

    def update(self, fractions, violated, ctx: ParallelContext | None = None, feasible=None) -> dict[str, float]:
        """One dual-ascent step from this step's rollouts (summed over ranks); returns what to log. A rollout
        whose budget not even the cheapest setting meets (`feasible` False) runs over whatever the controller
        chooses: it is left out of the rate, or an unreachable band's price would grow without end."""
        n = len(self.values)
        bands = self.band(fractions)
        weight = np.ones(len(bands)) if feasible is None else np.asarray(feasible, dtype=float)
        counts = np.bincount(bands, weights=weight, minlength=n)
        over = np.bincount(bands, weights=weight * np.asarray(violated, dtype=float), minlength=n)
        totals = torch.tensor(np.concatenate([counts, over]), dtype=torch.float64)
        totals = (ctx or ParallelContext()).all_reduce_sum(totals).numpy()
        counts, over = totals[:n], totals[n:]
        seen = counts > 0
        rate = np.divide(over, counts, out=np.zeros(n), where=seen)
        self.values = np.maximum(0.0, self.values + self.lr * np.where(seen, rate - self.alpha, 0.0))
        return {"lambda_mean": float(self.values.mean()), "lambda_min": float(self.values.min()),
                "lambda_max": float(self.values.max())}

    def state_dict(self) -> dict:
        return {"edges": self.edges.tolist(), "values": self.values.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.edges, self.values = np.array(state["edges"]), np.array(state["values"])
