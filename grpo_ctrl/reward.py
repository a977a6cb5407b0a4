"""Rewards: accuracy against latency under a per-request budget (vectorised over rollouts)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from omegaconf import MISSING

RewardFn = Callable[..., np.ndarray]


@dataclass
class RewardConfig:
    """What both rewards have (`reward=<option>`)."""

    name: str = MISSING  # the option: set by its schema
    gold_prob_weight: float = 0.0  # accuracy term = (1 - w) * answer score + w * p(gold answer) (`accuracy_signal`)


@dataclass
class ConstrainedRewardConfig(RewardConfig):
    """reward=constrained (the default): accuracy + spend_bonus * min(L, B) / B - lambda * [L > B], with one
    multiplier lambda per band of training budgets raised or lowered by dual ascent on the rollouts' violation rate
    towards budgets.max_violation (`grpo_ctrl.constraint`): no penalty to tune by hand."""

    name: str = "constrained"
    gold_prob_weight: float = 0.3  # dense: ranks settings that answer alike by how sure they are
    spend_bonus: float = 0.05  # + spend_bonus * min(L, B) / B (time under the budget is free; 0: off)
    bands: int = 8  # equal-width bands of the training budget range, one multiplier each
    dual_lr: float = 0.5  # multiplier change per step per unit of (violation rate - alpha)
    initial_multiplier: float = 1.0  # the price of a violation at the start (an answer is worth 1)


@dataclass
class DefaultRewardConfig(RewardConfig):
    """reward=default (`default_reward`): a soft budget, a violation costs in proportion to its overshoot."""

    name: str = "default"
    gold_prob_weight: float = 0.3  # dense: ranks settings that answer alike by how sure they are
    violation_penalty: float = 2.0  # - violation_penalty * max(0, L - B) / B
    latency_cost: float = 0.0  # - latency_cost * L / B
    violation_cost: float = 0.0  # - violation_cost * [L > B] (a per-request SLO)
    spend_bonus: float = 0.05  # + spend_bonus * min(L, B) / B (time under the budget is free; 0: off)


@dataclass
class SeedRewardConfig(RewardConfig):
    """reward=seed (`seed_reward`, the formula of the design note this project started from)."""

    name: str = "seed"
    alpha: float = 1.0
    beta: float = 0.5
    gamma: float = 10.0
    delta: float = 0.1
    epsilon: float = 0.05


def accuracy_signal(score, gold_prob, gold_prob_weight: float = 0.0) -> np.ndarray:
    """The accuracy term of a reward: (1 - w) * answer score + w * p(gold answer). The exact score is 0/1 per
    (prompt, knobs), so settings that are right slightly more often look alike in a group; the model's
    probability of the gold answer ranks them densely (e.g. at a loose budget, the setting that is surest)."""
    score = np.asarray(score, dtype=float)
    if gold_prob_weight == 0:
        return score
    return (1.0 - gold_prob_weight) * score + gold_prob_weight * np.asarray(gold_prob, dtype=float)


def default_reward(accuracy, latency, budget, complexity=None, violation_penalty: float = 2.0,
                   latency_cost: float = 0.0, violation_cost: float = 0.0, spend_bonus: float = 0.0) -> np.ndarray:
    """accuracy - violation_penalty * max(0, L - B) / B - latency_cost * L / B - violation_cost * [L > B]
    + spend_bonus * min(L, B) / B.

    `spend_bonus` > 0 says that time under the budget is free: where the sampled answers cannot tell two
    settings apart (both right), the one that uses more of the budget, and so more of the model, is preferred.
    Without it a loose budget gives such groups no signal, and the cheap habits learnt at tight budgets carry
    over (the controller under-spends)."""
    accuracy, latency, budget = (np.asarray(x, dtype=float) for x in (accuracy, latency, budget))
    over = np.maximum(0.0, latency - budget) / budget
    used = np.minimum(latency, budget) / budget
    return (accuracy - violation_penalty * over - latency_cost * latency / budget - violation_cost * (latency > budget)
            + spend_bonus * used)


def seed_reward(accuracy, latency, budget, complexity, alpha: float = 1.0, beta: float = 0.5, gamma: float = 10.0,
                delta: float = 0.1, epsilon: float = 0.05) -> np.ndarray:
    """The origin's formula: alpha*A - beta*sigmoid(10(L/B-1)) - gamma*(max(0,L-B)/B)^2 - epsilon*complexity
    + [L<=B]*delta*(1-L/B). `complexity` is the knob setting's cost in [0, 1]."""
    accuracy, latency, budget, complexity = (np.asarray(x, dtype=float) for x in (accuracy, latency, budget,
                                                                                  complexity))
    ratio = latency / budget
    sigmoid = 1.0 / (1.0 + np.exp(-10.0 * (ratio - 1.0)))
    over = np.maximum(0.0, latency - budget) / budget
    bonus = np.where(latency <= budget, delta * (1.0 - ratio), 0.0)
    return alpha * accuracy - beta * sigmoid - gamma * over**2 - epsilon * complexity + bonus


def constrained_reward(accuracy, latency, budget, multiplier, spend_bonus: float = 0.0) -> np.ndarray:
    """accuracy + spend_bonus * min(L, B) / B - multiplier * [L > B]: the Lagrangian of P(L > B) <= alpha per
    request, `multiplier` each request's current price of a violation (`constraint.ViolationMultipliers`)."""
    accuracy, latency, budget, multiplier = (np.asarray(x, dtype=float) for x in (accuracy, latency, budget,
                                                                                    multiplier))
    return accuracy + spend_bonus * np.minimum(latency, budget) / budget - multiplier * (latency > budget)


def make_reward(cfg) -> RewardFn:
    """reward(accuracy, latency, budget, complexity, multiplier): `multiplier` is used by reward=constrained only."""
    if cfg.name == "constrained":
        return lambda a, lat, b, c, m: constrained_reward(a, lat, b, m, cfg.spend_bonus)
    if cfg.name == "default":
        return lambda a, lat, b, c, m=None: default_reward(a, lat, b, c, cfg.violation_penalty, cfg.latency_cost,
                                                           cfg.violation_cost, cfg.spend_bonus)
    if cfg.name == "seed":
        return lambda a, lat, b, c, m=None: seed_reward(a, lat, b, c, cfg.alpha, cfg.beta, cfg.gamma, cfg.delta,
                                                        cfg.epsilon)
    raise ValueError(f"reward.name={cfg.name!r} is unknown; use constrained, default or seed")
