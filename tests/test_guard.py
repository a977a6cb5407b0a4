"""The latency guard: calibrated upper latencies decide which settings fit, the policy keeps to them (its best fitting
choice, the cheapest when nothing fits) and says which happened, in validation's decisions and in the served result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grpo_ctrl.controller import TwoStageController
from grpo_ctrl.knobs import KnobSpace
from grpo_ctrl.latency.estimator import EstimatorError, LatencyEstimator
from grpo_ctrl.latency.guard import LatencyGuard
from grpo_ctrl.policy import GreedyPolicy

SPACE = KnobSpace({"low": 4, "medium": 2, "high": 1}, (1, 2, 4), (2, 4, 6))
COEF = {"vision": [0.3, 0.01, 1e-4], "prefill": [0.5, 0.002, 0.004, 0.001, 0.05, 0.02, 1e-5],
        "decode_step": [0.2, 0.05, 0.03, 1e-4], "finish": [0.1, 0.01]}
COUNTS = [(4, 12), (16, 24), (64, 72)]  # (image, prompt) tokens at each tier


def _guard(scores, alpha=0.05, max_new_tokens=2):
    return LatencyGuard(LatencyEstimator(COEF, scores=scores), SPACE, alpha, max_new_tokens)


def test_upper_latency_is_the_prediction_at_the_longest_output_times_the_setting_factor():
    pooled = list(np.linspace(1.0, 1.2, 39))
    own = list(np.linspace(1.0, 1.5, 19))  # enough for alpha 0.05 by itself: its largest
    guard = _guard({"low/k1/b2": pooled, "high/k4/b6": own}, max_new_tokens=3)
    upper = guard.upper_ms(COUNTS)
    est = guard.estimator
    full = est.predict_total(64, 72, 3, 4, 6)
    cheapest = est.predict_total(4, 12, 3, 1, 2)
    unscored = est.predict_total(16, 24, 3, 2, 4)
    assert upper.shape == (3, 3, 3)
    assert upper[2, 2, 2] == pytest.approx(full * 1.5)
    assert upper[0, 0, 0] == pytest.approx(cheapest * sorted(pooled)[37])  # ceil(40 * 0.95) = 38th
    assert upper[1, 1, 1] == pytest.approx(unscored * sorted(pooled + own)[56])  # no scores of its own: all 58's
    budget = float(upper[1, 1, 1])
    assert (guard.allowed(budget, COUNTS) == (upper <= budget)).all()


def test_a_guard_without_enough_scores_is_one_line():
    with pytest.raises(EstimatorError, match=r"carries 10 residual scores.*needs 19.*calibrate_latency.py"):
        _guard({"low/k1/b2": [1.0] * 10})
    with pytest.raises(ValueError, match="alpha=0 must be in"):
        _guard({"low/k1/b2": [1.0] * 40}, alpha=0)


def _policy(seed=3):
    torch.manual_seed(seed)
    c = TwoStageController(SPACE, question_dim=8, vision_dim=8, hidden=16, feature_dim=8)
    with torch.no_grad():
        for p in c.parameters():
            p.mul_(3.0)
    return GreedyPolicy(c.eval())


def _decide(policy, allowed, seed=0):
    rng = np.random.default_rng(seed)
    q, v = rng.normal(size=8), {t: rng.normal(size=8) for t in SPACE.tier_names}
    asked = []

    def vision_at(tier):
        asked.append(tier)
        return v[tier]

    return policy.decide(0.6, q, vision_at, allowed), asked


def test_the_policy_keeps_moves_or_falls_back_and_says_so():
    policy = _policy()
    free, _ = _decide(policy, None)
    everything = np.ones((3, 3, 3), dtype=bool)
    kept, _ = _decide(policy, everything)
    assert kept == (free.knobs, "kept")

    nothing, asked = _decide(policy, np.zeros((3, 3, 3), dtype=bool))
    assert nothing == (SPACE.cheapest, "fallback") and asked == ["low"]  # generation runs on the cheapest tier

    without = everything.copy()
    without[SPACE.index(free.knobs)] = False  # the controller's own choice no longer fits
    moved, asked = _decide(policy, without)
    assert moved.guard == "moved" and moved.knobs != free.knobs and without[SPACE.index(moved.knobs)]
    assert asked == [moved.knobs.tier]


def test_a_moved_choice_is_the_best_fitting_one_by_the_heads_logits():
    policy = _policy(seed=5)
    rng = np.random.default_rng(1)
    for trial in range(50):
        allowed = rng.random((3, 3, 3)) < 0.3
        if not allowed.any():
            continue
        decision, _ = _decide(policy, allowed, seed=trial)
        t, k, b = SPACE.index(decision.knobs)
        assert allowed[t, k, b]
        # stage 1: the best tier among those with any fitting setting; stage 2: the best fitting pair at it
        q_rng = np.random.default_rng(trial)
        q, v = q_rng.normal(size=8), {n: q_rng.normal(size=8) for n in SPACE.tier_names}
        first = policy.tier(0.6, q, allowed.any(axis=(1, 2)))
        assert first.tier == t
        pre = first.pre2 + policy.vision_w @ v[SPACE.tier_names[t]].astype(np.float32) + policy.tier_w[t]
        logits = policy.out2_w @ (0.5 * pre * (1 + np.tanh(0.7978845608028654 * (pre + 0.044715 * pre**3)))) \
            + policy.out2_b
        joint = logits[:3, None] + logits[None, 3:]
        assert joint[k, b] == pytest.approx(joint[allowed[t]].max())


def test_validation_keeps_to_the_guard(tiny_model_dir, tmp_path):
    from conftest import small_cfg

    from grpo_ctrl.app import train
    from grpo_ctrl.parallel import ParallelContext

    est = LatencyEstimator.load(tiny_model_dir / "latency_estimator.json")
    est.scores = {"any": [1.0] * 40}
    est.save(tmp_path / "scored.json")
    cfg = small_cfg(tiny_model_dir, "policy.guard=true", f"policy.guard_estimator={tmp_path / 'scored.json'}",
                    "budgets.val=[0.01,5.0]")
    with pytest.warns(UserWarning):  # 0.01 of full is below the cheapest setting: nothing fits there
        report = train(cfg, tmp_path / "run", ParallelContext())
    n = cfg.data.val_size
    assert report["budgets"]["0.01"]["controller"]["knobs"] == {"low/k1/b2": n}
    assert sum(report["budgets"]["5"]["controller"]["knobs"].values()) == n


@pytest.mark.slow
def test_a_guard_without_residual_scores_stops_train_py_in_one_line(tiny_model_dir, tmp_path):
    import subprocess

    from conftest import ROOT, one_line, tiny_command

    res = subprocess.run(tiny_command(tiny_model_dir, tmp_path / "run", "policy.guard=true"), cwd=ROOT,
                         capture_output=True, text=True)
    assert "carries 0 residual scores" in one_line(res) and "calibrate_latency.py" in one_line(res)
