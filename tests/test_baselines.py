"""Held-out evaluation of budget policies on hand-made profiles."""

import csv
import json
import math

import numpy as np
import pytest

from grpo_ctrl.baselines import (
    POLICIES,
    Profile,
    accuracy_by_type,
    best_static,
    bootstrap_interval,
    budget_comparison,
    budget_points,
    cheapest_correct,
    crossfit_accuracy,
    evaluate_budgets,
    evaluate_choice,
    headroom,
    oracle_gap_closed,
    paired_vs,
    pareto_front,
    per_request_oracle,
    random_choice,
    type_routing,
)
from grpo_ctrl.budget import meets_budget, overshoot, violation_rate
from grpo_ctrl.knobs import Knobs, KnobSpace
from grpo_ctrl.latency.estimator import fraction_drift
from grpo_ctrl.report import markdown, write_outputs

CHEAP, MID, FULL = Knobs("low", 2, 4), Knobs("high", 2, 6), Knobs("high", 4, 6)


def small_profile() -> Profile:
    # request:            r0  r1  r2  r3
    scores = [[1, 0, 0, 0],  # cheap: accuracy 0.25
              [1, 1, 0, 1],  # mid:   accuracy 0.75
              [1, 1, 1, 1]]  # full:  accuracy 1.00
    latency = [[10, 10, 10, 50],  # cheap: mean 20 (slow on r3)
               [20, 20, 20, 40],  # mid:   mean 25 (fastest on r3)
               [30, 30, 30, 70]]  # full:  mean 40
    return Profile((CHEAP, MID, FULL), np.array(scores), np.array(latency))


def test_profile_validates_shapes_and_ranges():
    p = small_profile()
    assert p.mean_latency_ms.tolist() == [20, 25, 40]
    assert p.accuracy.tolist() == [0.25, 0.75, 1.0]
    assert p.index(MID) == 1 and p.tier_order == ("low", "high")  # order of first appearance
    with pytest.raises(ValueError, match="not one of"):
        p.index(Knobs("low", 4, 6))
    with pytest.raises(ValueError, match="must both be"):
        Profile((CHEAP, MID), np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="must both be"):
        Profile((CHEAP, MID, FULL), np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        Profile((CHEAP,), np.full((1, 2), 1.5), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="repeat"):
        Profile((CHEAP, CHEAP), np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="tier_order"):
        Profile((CHEAP, MID), np.zeros((2, 2)), np.zeros((2, 2)), tier_order=("high",))


def test_best_static_is_the_most_accurate_setting_that_meets_the_budget():
    p = small_profile()
    # cheap's mean (20) fits 20, but r3 (50) runs over: 1 request in 4 is 25 %, more than alpha (5 %)
    assert best_static(p, 20) is None
    assert best_static(p, 19, alpha=0.25) == 0  # a looser rule admits cheap (one request over), not mid (all four)
    assert best_static(p, 50) == 1  # mid (0.75) meets 50 on every request; full runs over on r3 (70)
    assert best_static(p, 70) == 2
    # a mean well under the budget with 40 % of the requests over it is refused
    spiky = Profile((CHEAP, MID), np.array([[1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]),
                    np.array([[5, 5, 5, 30, 30], [18, 18, 18, 18, 18]]))
    assert spiky.mean_latency_ms[0] == 15 and best_static(spiky, 20) == 1
    assert best_static(spiky, 20, alpha=0.4) == 0
    # two settings tied on accuracy: the one faster on average, wherever it is listed
    tied = Profile((FULL, MID), np.array([[1, 0], [0, 1]]), np.array([[30, 30], [10, 20]]))
    assert best_static(tied, 100) == 1  # both 0.5; mid's mean 15 < full's 30


def test_meeting_a_budget_is_one_rule():
    latency = np.array([[10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 30]])
    assert meets_budget(latency, 20).tolist() == [True]  # 1 of 20 over: exactly 5 %
    assert meets_budget(latency, 20, alpha=0.04).tolist() == [False]
    assert violation_rate(latency, 20).tolist() == [0.05]
    assert overshoot(latency[0], 20, 0.99) == pytest.approx(0.5 * 0.81, rel=0.05)  # the top request: 50 % over
    assert overshoot(latency[0], 20, 0.9) == 0.0


def test_per_request_oracle_picks_the_cheapest_best_setting_and_falls_back_to_the_fastest():
    p = small_profile()
    # budget 30: r0 every setting scores 1 -> cheap (10 ms); r1 mid and full score 1 -> mid (20 < 30);
    # r2 only full scores 1 (30 ms fits); r3 nothing fits (50, 40, 70) -> the fastest on r3: mid
    assert per_request_oracle(p, 30).tolist() == [0, 1, 2, 1]
    # budget 25: full never fits; r2 cheap and mid both score 0 -> the faster, cheap
    assert per_request_oracle(p, 25).tolist() == [0, 1, 0, 1]
    # budget 5: nothing fits anywhere -> each request's fastest setting
    assert per_request_oracle(p, 5).tolist() == [0, 0, 0, 1]


def test_evaluate_choice_numbers():
    p = small_profile()
    r = evaluate_choice(p, np.array([0, 1, 2, 1]), budget_ms=30)
    # scores cheap@r0=1, mid@r1=1, full@r2=1, mid@r3=1; latencies 10, 20, 30, 40 (only r3 is over 30)
    assert r.accuracy == 1.0 and r.violation_rate == 0.25 and r.budgeted_accuracy == 0.75
    assert r.scores.tolist() == [1, 1, 1, 1] and r.latency_ms.tolist() == [10, 20, 30, 40]
    # linear percentiles of 10, 20, 30, 40: p50 = 25; p90 at rank 2.7 = 30 + 0.7 * 10; p99 at rank 2.97
    assert (r.mean_latency_ms, r.latency_p50_ms) == (25, 25)
    assert r.latency_p90_ms == pytest.approx(37) and r.latency_p99_ms == pytest.approx(39.7)
    # tiers low=0, high=1: 0, 1, 1, 1; top_k 2, 2, 4, 2; num_blocks 4, 6, 6, 6
    assert (r.mean_tier, r.mean_top_k, r.mean_num_blocks) == (0.75, 2.5, 5.5)
    assert r.histogram == {"low/k2/b4": 1, "high/k2/b6": 2, "high/k4/b6": 1}
    d = r.to_dict()
    assert "scores" not in d and "latency_ms" not in d and json.loads(json.dumps(d)) == d
    # the tier index follows tier_order, not the order settings are listed in
    flipped = Profile((FULL, CHEAP), p.scores[[2, 0]], p.latency_ms[[2, 0]], tier_order=("low", "high"))
    assert evaluate_choice(flipped, np.array([1, 1, 1, 1]), 30).mean_tier == 0.0
    with pytest.raises(ValueError, match="integer setting indices"):
        evaluate_choice(p, np.array([0, 1, 3, 0]), 30)
    with pytest.raises(ValueError, match="integer setting indices"):
        evaluate_choice(p, np.array([0, 1]), 30)


def test_random_choice_is_uniform_and_seeded():
    a = random_choice(3, 3000, np.random.default_rng(1))
    assert a.tolist() == random_choice(3, 3000, np.random.default_rng(1)).tolist()
    assert set(a.tolist()) == {0, 1, 2} and np.allclose(np.bincount(a) / 3000, 1 / 3, atol=0.03)


def test_bootstrap_interval():
    assert bootstrap_interval(np.full(50, 0.5)) == (0.5, 0.5)  # no spread: every resample's mean is 0.5
    x = np.random.default_rng(3).normal(0.3, 1.0, size=2000)
    low, high = bootstrap_interval(x)
    assert low < 0.3 < high
    assert high - low == pytest.approx(2 * 1.96 * x.std() / math.sqrt(len(x)), rel=0.1)  # ~0.088
    assert bootstrap_interval(x, seed=5) == bootstrap_interval(x, seed=5)
    narrow = bootstrap_interval(x, level=0.5)
    assert low < narrow[0] < narrow[1] < high
    with pytest.raises(ValueError):
        bootstrap_interval(np.array([]))


def test_paired_vs_counts_requests_won_and_lost():
    p = small_profile()
    cheap, mid = evaluate_choice(p, np.zeros(4, int), 30), evaluate_choice(p, np.ones(4, int), 30)
    vs = paired_vs(cheap, mid)
    # mid - cheap per request: 0, 1, 0, 1
    assert (vs["diff"], vs["wins"], vs["losses"]) == (0.5, 2, 0)
    assert 0 <= vs["ci_low"] <= 0.5 <= vs["ci_high"] <= 1
    assert paired_vs(mid, mid) == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "wins": 0, "losses": 0}


def test_oracle_gap_closed():
    assert oracle_gap_closed(0.7, 0.6, 0.8) == pytest.approx(0.5)
    assert oracle_gap_closed(0.8, 0.6, 0.8) == 1.0
    assert oracle_gap_closed(0.5, 0.6, 0.8) == pytest.approx(-0.5)  # worse than the table
    assert math.isnan(oracle_gap_closed(0.7, 0.6, 0.6))  # no gap to close


def test_pareto_front():
    # points:    0    1    2    3    4    5
    latency = [30, 10, 20, 25, 20, 40]
    accuracy = [0.8, 0.5, 0.7, 0.6, 0.7, 0.8]
    # 3 is dominated by 2 (faster, more accurate); 5 by 0 (same accuracy, slower); 2 and 4 are the same point
    assert pareto_front(latency, accuracy) == [1, 2, 4, 0]
    assert pareto_front([5.0], [0.1]) == [0]


def synthetic_profiles() -> tuple[Profile, Profile, KnobSpace]:
    space = KnobSpace({"low": 4, "high": 1}, (2, 4), (4, 6))
    settings = space.all()
    rng = np.random.default_rng(0)
    cost = np.linspace(10, 40, len(settings))
    skill = np.linspace(0.3, 0.9, len(settings))
    n = 200
    # per-request latency jitter, so meeting the mean budget is not meeting it on every request
    latency = cost[:, None] * rng.uniform(0.7, 1.3, size=(1, n)) * rng.uniform(0.9, 1.1, size=(len(settings), n))
    easy = rng.uniform(size=n)
    test_scores = (rng.uniform(size=(len(settings), n)) * easy < skill[:, None] * 0.8).astype(float)
    val_scores = (rng.uniform(size=(len(settings), n)) < skill[:, None]).astype(float)
    # the same latencies on val, so the table chosen there also meets its mean budget on test
    test = Profile(tuple(settings), test_scores, latency, space.tier_names)
    return test, Profile(tuple(settings), val_scores, latency, space.tier_names), space


def test_evaluate_budgets_end_to_end(tmp_path):
    test, val, space = synthetic_profiles()
    budgets = [5.0, 20.0, 30.0]
    controller = {5.0: per_request_oracle(test, 5.0), 20.0: per_request_oracle(test, 20.0),
                  30.0: np.full(200, best_static(val, 30.0))}
    result = evaluate_budgets(test, val, budgets, controller, full=space.full, seed=0)
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert result["full"] == "high/k4/b6" and len(result["settings"]) == 8
    front = [s for s in result["settings"] if s["pareto_front"]]
    assert front and all(s["pareto_front"] == (i in pareto_front(test.mean_latency_ms, test.accuracy))
                         for i, s in enumerate(result["settings"]))

    tight, mid, loose = result["budgets"]
    # below every setting's mean latency: no static table, nothing to compare against
    assert tight["policies"]["lut"] is None and tight["policies"]["oracle_static"] is None
    assert tight["controller_vs_lut"] is None and tight["oracle_gap_closed"] is None
    for b in (mid, loose):
        p = b["policies"]
        assert p["per_request_oracle"]["budgeted_accuracy"] >= max(p[k]["budgeted_accuracy"] for k in POLICIES)
        assert p["oracle_static"]["accuracy"] >= p["lut"]["accuracy"]
        assert p["lut"]["knobs"] == str(val.settings[best_static(val, b["budget_ms"])])
        assert p["full"]["knobs"] == "high/k4/b6" and "knobs" not in p["controller"]
        assert p["random"]["accuracy"] == tight["policies"]["random"]["accuracy"]  # one draw for every budget
    # the controller that is the per-request oracle closes the whole gap, and its diff is oracle - lut
    assert mid["oracle_gap_closed"] == pytest.approx(1.0)
    vs = mid["controller_vs_lut"]
    assert vs["diff"] == pytest.approx(mid["policies"]["controller"]["accuracy"] - mid["policies"]["lut"]["accuracy"])
    assert vs["ci_low"] <= vs["diff"] <= vs["ci_high"]
    # the controller that is the lookup table closes none of it and ties it on every request
    assert loose["oracle_gap_closed"] == pytest.approx(0.0)
    assert loose["controller_vs_lut"] == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "wins": 0, "losses": 0}
    with pytest.raises(ValueError, match="no controller choice"):
        evaluate_budgets(test, val, [40.0], controller)

    paths = write_outputs(result, tmp_path / "out")
    assert set(paths) == {"json", "csv", "md", "png"} and all(p.stat().st_size > 0 for p in paths.values())
    assert json.loads(paths["json"].read_text()) == result
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [(float(r["budget_ms"]), r["policy"]) for r in rows] == [(b, p) for b in budgets for p in POLICIES]
    by = {(float(r["budget_ms"]), r["policy"]): r for r in rows}
    assert by[5.0, "lut"]["accuracy"] == "" and by[5.0, "controller"]["gap_closed"] == ""
    assert float(by[20.0, "controller"]["gap_closed"]) == pytest.approx(1.0)
    assert float(by[20.0, "controller"]["diff_vs_lut"]) == pytest.approx(vs["diff"])
    assert by[20.0, "lut"]["diff_vs_lut"] == "" and by[20.0, "full"]["knobs"] == "high/k4/b6"
    md = paths["md"].read_text()
    assert md.count("\n| 5 |") + md.count("\n| 20 |") + md.count("\n| 30 |") == 3 and "high/k4/b6" in md
    assert "latency estimator" not in md  # only measured or hooked evaluations compare it


def test_fraction_drift_compares_each_setting_to_full_on_the_same_requests():
    settings = ["cheap", "mid", "full"]
    measured = np.array([[3.0, 5.0], [6.0, 6.0], [10.0, 10.0]])  # fractions 0.4, 0.6, 1
    estimated = 2 * np.array([[2.0, 4.0], [6.0, 6.0], [10.0, 10.0]])  # another scale; fractions 0.3, 0.6, 1
    drift = fraction_drift(settings, measured, estimated, full=2)
    assert [r["measured_fraction"] for r in drift["settings"]] == pytest.approx([0.4, 0.6, 1.0])
    assert [r["estimated_fraction"] for r in drift["settings"]] == pytest.approx([0.3, 0.6, 1.0])
    assert drift["max_abs_drift"] == pytest.approx(0.1) and drift["worst"]["knobs"] == "cheap"
    test, val, space = synthetic_profiles()
    result = evaluate_budgets(test, val, [30.0], {30.0: np.zeros(200, dtype=int)}, full=space.full)
    md = markdown({**result, "estimator_drift": drift})
    assert "off by up to 0.100 (cheap: 0.300 estimated, 0.400 measured)" in md


def test_budget_points_are_evenly_spaced_or_fractions_of_the_reference():
    assert budget_points(3, 10.0, 30.0, 40.0) == [10.0, 20.0, 30.0]
    assert budget_points([0.5, 1.0], 10.0, 30.0, 40.0) == [20.0, 40.0]


def test_type_routing_sends_each_type_to_its_best_setting_within_the_budget():
    qtypes = ["a", "a", "b", "b"]
    scores = [[1, 1, 0, 1],  # shallow, mean latency 1
              [0, 1, 1, 1],  # deep, 2
              [1, 1, 1, 1]]  # full, 5
    p = Profile((CHEAP, MID, FULL), np.array(scores), np.array([[1.0] * 4, [2.0] * 4, [5.0] * 4]))
    # a -> shallow (2/2), b -> deep (2/2): every question, where the best single setting answers 3 of 4
    assert type_routing(p, qtypes, budget_ms=2.0) == 1.0
    assert type_routing(p, qtypes, budget_ms=1.0) == 0.75  # only shallow fits
    assert type_routing(p, qtypes, budget_ms=0.5) is None
    assert accuracy_by_type(p.scores[1], qtypes) == {"all": 0.75, "a": 0.5, "b": 1.0}
    # each type is routed among the settings that meet the budget on ITS requests: deep runs over on b's
    slow_on_b = Profile((CHEAP, MID, FULL), np.array(scores), np.array([[1.0] * 4, [2.0, 2.0, 9.0, 9.0], [5.0] * 4]))
    assert type_routing(slow_on_b, qtypes, budget_ms=2.0) == 0.75  # a -> shallow (2/2), b -> shallow (1/2)


def test_cheapest_correct_is_per_request_by_mean_latency():
    p = small_profile()
    assert cheapest_correct(p).tolist() == [0, 1, 2, 1]
    wrong = Profile(p.settings, np.zeros((3, 4)), p.latency_ms)
    assert cheapest_correct(wrong).tolist() == [-1] * 4


def test_crossfit_picks_on_one_half_and_scores_on_the_other():
    settings = (CHEAP, MID, FULL)
    even_only, odd_only = [1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 1]
    steady, ones = [1, 1, 0, 1, 1, 0], [1] * 6

    def profile(*rows, means=(10.0, 10.0, 10.0)):
        return Profile(settings[:len(rows)], np.array(rows), np.array([[m] * 6 for m in means[:len(rows)]]))

    # the even half picks even_only and scores it on the odd prompts (0), and the other way round: 0, where
    # in-sample either looks as good as 0.5
    assert crossfit_accuracy(profile(even_only, odd_only), 100) == 0.0
    # a setting good on both halves is found from either
    assert crossfit_accuracy(profile(steady, [0] * 6), 100) == pytest.approx(2 / 3)
    # ties on the choosing half go to the faster setting (best_static's rule): odd_only (10 ms) over ones (30 ms)
    # on the odd half, scoring 0 on the even prompts; the even half picks ones: 1.0
    assert crossfit_accuracy(profile(steady, odd_only, ones, means=(10, 10, 30)), 100) == pytest.approx(0.5)
    assert crossfit_accuracy(profile(steady, means=(50,)), 20) is None


def tied_profile() -> Profile:
    """MID and CHEAP tie on accuracy (0.75) within 30 ms; CHEAP is faster, MID comes first (a "first maximum" rule
    would name it). FULL is the most accurate but over."""
    scores = [[1, 0, 1, 1],   # MID: 0.75, mean 20
              [1, 1, 0, 1],   # CHEAP: 0.75, mean 15
              [1, 1, 1, 1]]   # FULL: 1.0, mean 40
    latency = [[20] * 4, [15] * 4, [40] * 4]
    return Profile((MID, CHEAP, FULL), np.array(scores), np.array(latency, dtype=float))


def test_every_report_names_the_same_best_static_setting_under_ties():
    p = tied_profile()
    assert p.settings[best_static(p, 30)] == CHEAP
    choice = np.full(4, 2)
    validation = budget_comparison(p, choice, 30, random_choice(3, 4, np.random.default_rng(0)))
    held_out = evaluate_budgets(p, p, [30], {30: choice}, full=FULL)["budgets"][0]["policies"]
    knob_study = headroom(p, ["a"] * 4, [30])[0]
    assert validation["best_static"]["knobs"] == held_out["lut"]["knobs"] == held_out["oracle_static"]["knobs"] \
        == knob_study["best_static_knobs"] == str(CHEAP)


def test_budget_comparison_pairs_the_controller_with_the_best_static_setting():
    p = tied_profile()
    rand = random_choice(3, 4, np.random.default_rng(0))
    out = budget_comparison(p, np.full(4, 2), 30, rand)
    assert out == budget_comparison(p, np.full(4, 2), 30, rand)  # a function of its inputs
    ctrl, best = out["controller"], out["best_static"]
    assert ctrl["accuracy"] == 1.0 and ctrl["violation_rate"] == 1.0 and ctrl["budgeted_accuracy"] == 0.0
    assert ctrl["knobs"] == {str(FULL): 4}
    assert best["controller_minus_static"]["diff"] == pytest.approx(1.0 - 0.75)
    assert (best["controller_minus_static"]["wins"], best["controller_minus_static"]["losses"]) == (1, 0)
    assert best["knobs"] == str(CHEAP) and best["crossfit_accuracy"] is not None
    assert not out["controller_beats_best_static"]  # more accurate, but over the budget on every request
    # a controller that meets the budget and wins with an interval above 0 beats the static setting
    halves = Profile((CHEAP, MID), np.array([[1] * 10 + [0] * 10, [0] * 10 + [1] * 10]), np.full((2, 20), 10.0))
    routed = np.array([0] * 10 + [1] * 10)
    won = budget_comparison(halves, routed, 15, routed)
    assert won["controller"]["meets_budget"] and won["best_static"]["controller_minus_static"]["ci_low"] > 0
    assert won["controller_beats_best_static"]
    # winning without an interval above 0 is not beating
    assert not budget_comparison(halves, np.zeros(20, int), 15, routed)["controller_beats_best_static"]
    assert budget_comparison(p, np.full(4, 2), 10, rand)["best_static"] is None  # nothing fits 10 ms
