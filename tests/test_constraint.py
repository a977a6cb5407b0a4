"""Constrained training: per-band Lagrange multipliers moved by dual ascent on the violation rate."""

import numpy as np
import pytest

from grpo_ctrl.constraint import ViolationMultipliers
from grpo_ctrl.reward import constrained_reward


def test_each_band_moves_by_its_own_violation_rate():
    m = ViolationMultipliers(0.4, 1.0, bands=3, alpha=0.05, lr=1.0, initial=0.5)
    fractions = np.array([0.45, 0.45, 0.45, 0.45, 0.65, 0.65, 0.65, 0.65])  # bands 0 and 1; band 2 unseen
    violated = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    logged = m.update(fractions, violated)
    assert m.values.tolist() == pytest.approx([0.5 + 0.5 - 0.05, 0.5 - 0.05, 0.5])
    assert logged["lambda_max"] == pytest.approx(0.95)
    for _ in range(20):
        m.update(fractions, np.zeros(8))
    assert m.values[1] == 0.0 and m.values[2] == 0.5  # floored at 0; untouched without rollouts
    assert m.band([0.0, 0.4, 0.6, 0.8, 1.0, 9.0]).tolist() == [0, 0, 1, 2, 2, 2]  # outside: the nearest band
    # rollouts whose budget no setting meets are left out of the rate: an unreachable band keeps its price
    before = m.values.copy()
    m.update(fractions, np.ones(8), feasible=np.array([0, 0, 0, 0, 1, 1, 1, 1]))
    assert m.values[0] == before[0] and m.values[1] == pytest.approx(before[1] + 0.95)


def test_dual_ascent_finds_the_price_that_holds_the_violation_rate_at_alpha():
    """A two-armed bandit per budget: `fast` answers 0.6 and never runs over, `slow` answers 1.0 and always runs
    over. Policy gradient on the constrained reward against dual ascent on the price: primal-dual steps circle the
    saddle point, and on average the policy picks slow alpha of the time, at a price near the accuracy it buys
    (0.4); with the price fixed at 0 it would always pick slow."""
    alpha = 0.05
    m = ViolationMultipliers(0.0, 1.0, bands=1, alpha=alpha, lr=0.05, initial=0.0)
    logit, n, picked, prices = 0.0, 2000, [], []
    for _ in range(4000):
        p = 1 / (1 + np.exp(-logit))
        slow = np.arange(n) < round(p * n)  # the expected share of this step's rollouts that pick slow
        fractions = np.full(n, 0.5)
        reward = constrained_reward(np.where(slow, 1.0, 0.6), np.where(slow, 2.0, 0.5), np.ones(n),
                                    m.at(fractions))
        logit += 0.5 * p * (1 - p) * (reward[slow].mean() - reward[~slow].mean() if 0 < slow.sum() < n else 0.0)
        m.update(fractions, slow)
        picked.append(p)
        prices.append(m.values[0])
    assert np.mean(picked[2000:]) == pytest.approx(alpha, abs=0.01)
    assert np.mean(prices[2000:]) == pytest.approx(0.4, abs=0.1)


def test_the_reward_prices_only_violations():
    r = constrained_reward([1.0, 1.0, 0.0], [5.0, 12.0, 12.0], [10.0, 10.0, 10.0], [2.0, 2.0, 2.0], spend_bonus=0.1)
    assert r.tolist() == pytest.approx([1.0 + 0.05, 1.0 + 0.1 - 2.0, 0.1 - 2.0])
