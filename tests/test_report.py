"""Validation report helpers."""

import numpy as np
import pytest

from grpo_ctrl.report import crossfit_accuracy, paired_difference


def test_crossfit_picks_on_one_half_and_scores_on_the_other():
    lucky_even = {"scores": [1, 0, 1, 0, 1, 0]}  # right on every even prompt only
    lucky_odd = {"scores": [0, 1, 0, 1, 0, 1]}
    steady = {"scores": [1, 1, 0, 1, 1, 0]}
    # even half picks lucky_even (1.0) and scores it on odd prompts: 0; odd half picks lucky_odd: 0 on even ones;
    # in-sample, every setting would look at least as good as 0.5
    assert crossfit_accuracy([lucky_even, lucky_odd]) == 0.0
    # with a setting that is good on both halves, both picks can find it
    assert crossfit_accuracy([steady, {"scores": [0] * 6}]) == pytest.approx((2 / 3 + 2 / 3) / 2)
    # settings tied on the choosing half share the pick instead of the first one winning
    perfect_on_odd = {"scores": [0, 1, 0, 1, 0, 1]}
    # even half picks the all-ones setting (1.0 on odd); odd half ties it with perfect_on_odd (0 on even): 0.5
    assert crossfit_accuracy([steady, perfect_on_odd, {"scores": [1] * 6}]) == pytest.approx((1.0 + 0.5) / 2)


def test_paired_difference_counts_prompts_won_and_lost():
    ctrl = [1, 1, 0, 1, 0.5]
    static = [1, 0, 1, 1, 0.0]
    gap = paired_difference(ctrl, static)
    diffs = [0, 1, -1, 0, 0.5]
    mean = sum(diffs) / 5
    se = (sum((d - mean) ** 2 for d in diffs) / 4) ** 0.5 / 5**0.5
    assert gap == {"diff": pytest.approx(mean), "se": pytest.approx(se), "wins": 2, "losses": 1}
    # the same policy against itself: no gap and no spread
    assert paired_difference(static, static) == {"diff": 0.0, "se": 0.0, "wins": 0, "losses": 0}


def test_the_report_is_a_function_of_the_results_alone():
    from grpo_ctrl.report import build_report

    statics = {"reference_ms": 20.0, "settings": [
        {"knobs": "low/k1/b2", "accuracy": 0.5, "mean_latency_ms": 8.0, "latency": np.array([8.0, 8.0]),
         "scores": [1.0, 0.0]},
        {"knobs": "high/k4/b6", "accuracy": 1.0, "mean_latency_ms": 20.0, "latency": np.array([20.0, 20.0]),
         "scores": [1.0, 1.0]}]}
    ctrl = {"0.5": {"budget_ms": 10.0, "reference_ms": 20.0, "accuracy": 0.5, "violation_rate": 0.0,
                    "budgeted_accuracy": 0.5, "latency_p50_ms": 8.0, "latency_p90_ms": 8.0,
                    "knobs": {"low/k1/b2": 2}, "scores": [1.0, 0.0]}}
    report = build_report(ctrl, statics, reference_ms=20.0)
    assert report == build_report(ctrl, statics, reference_ms=20.0)
    best = report["budgets"]["0.5"]["best_static"]
    assert best["knobs"] == "low/k1/b2" and best["controller_minus_static"]["diff"] == 0.0  # only it fits 10 ms
    assert report["reference_latency_ms"] == 20.0 and len(report["static_settings"]) == 2
