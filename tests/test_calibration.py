"""Calibrated latency: split-conformal quantiles cover at the stated rate, a calibration recovers a known change of
machine from a few requests, and its inputs are checked in one line."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grpo_ctrl.knobs import KnobSpace
from grpo_ctrl.latency.calibration import (
    CalibrationError,
    apply_multipliers,
    calibrate,
    conformal_factor,
    coverage,
    design,
    fit_multipliers,
    min_scores,
    residual_scores,
    upper_factors,
)
from grpo_ctrl.latency.estimator import LatencyEstimator

SPACE = KnobSpace({"low": 4, "medium": 2, "high": 1}, (1, 2, 4), (2, 4, 6))
IMAGE_TOKENS = {"low": 4, "medium": 16, "high": 64}
COEF = {"vision": [0.3, 0.01, 1e-4], "prefill": [0.5, 0.002, 0.004, 0.001, 0.05, 0.02, 1e-5],
        "decode_step": [0.2, 0.05, 0.03, 1e-4], "finish": [0.1, 0.01]}


def test_conformal_quantile_is_the_finite_sample_rank():
    scores = np.arange(1, 20, dtype=float)  # 1..19
    # n = 19, alpha = 0.05: rank ceil(20 * 0.95) = 19, the largest; with one score fewer the level is out of reach
    assert conformal_factor(scores, 0.05) == 19.0
    assert conformal_factor(scores[:18], 0.05) == math.inf
    assert min_scores(0.05) == 19 and min_scores(0.1) == 9
    assert conformal_factor(scores, 0.5) == 10.0  # ceil(20 * 0.5) = 10th smallest
    with pytest.raises(ValueError, match="alpha=1.2 must be in"):
        conformal_factor(scores, 1.2)


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_conformal_quantiles_cover_at_the_stated_rate(alpha):
    rng = np.random.default_rng(0)
    trials, n = 2000, 40
    covered = []
    for _ in range(trials):  # exchangeable scores: calibration set and one new point from the same law
        scores = rng.lognormal(0.0, 0.2, n + 1)
        covered.append(scores[-1] <= conformal_factor(scores[:-1], alpha))
    rate = float(np.mean(covered))
    # marginal coverage is in [1 - alpha, 1 - alpha + 1/(n+1)]; allow 3 binomial standard errors
    se = math.sqrt(alpha * (1 - alpha) / trials)
    assert 1 - alpha - 3 * se <= rate <= 1 - alpha + 1 / (n + 1) + 3 * se


def test_a_setting_without_enough_scores_uses_the_pooled_ones():
    scores = {"low/k1/b2": [1.0] * 5, "high/k4/b6": list(np.linspace(1.0, 2.0, 30))}
    factors = upper_factors(scores, ["low/k1/b2", "high/k4/b6", "medium/k2/b4"], 0.05)
    pooled = conformal_factor([x for v in scores.values() for x in v], 0.05)
    assert factors["high/k4/b6"] == conformal_factor(scores["high/k4/b6"], 0.05)
    assert factors["low/k1/b2"] == factors["medium/k2/b4"] == pooled


def _rows(estimator, n, seed, noise=0.0):
    """Hooked-profile-like rows of `estimator`'s own per-phase predictions (optionally with multiplicative noise)."""
    rng = np.random.default_rng(seed)
    settings = SPACE.all()
    rows = []
    for _ in range(n):
        k = settings[int(rng.integers(len(settings)))]
        img = IMAGE_TOKENS[k.tier]
        t, g = img + int(rng.integers(6, 14)), int(rng.choice([1, 2, 4, 8]))
        pred = estimator.predict(img, t, g, k.top_k, k.num_blocks)
        wobble = np.exp(rng.normal(0.0, noise, 3)) if noise else np.ones(3)
        phases = {p: float(pred[p]) * w for p, w in zip(("vision", "prefill", "decode"), wobble)}
        total = sum(phases.values())
        rows.append({"knobs": str(k), "image_tokens": img, "prompt_tokens": t, "generated_tokens": g,
                     "top_k": k.top_k, "num_blocks": k.num_blocks, **phases, "total": total,
                     "runs_total": [total * float(np.exp(rng.normal(0.0, noise))) for _ in range(3)] if noise
                     else [total]})
    return rows


def test_calibration_recovers_a_known_change_of_machine():
    base = LatencyEstimator(COEF)
    truth = {"vision": (1.5, 0.8), "prefill": (2.0, 1.25), "decode": (1.7, 0.6)}
    machine = apply_multipliers(base, truth)
    rows = _rows(machine, 25, seed=1)
    fitted = fit_multipliers(base, rows)
    for phase, (per_call, tokens) in truth.items():
        assert fitted[phase] == pytest.approx((per_call, tokens), rel=1e-6)
    calibrated = calibrate(base, rows, {"source": "test"})
    test = _rows(machine, 50, seed=2)
    for name in ("vision", "prefill", "decode", "total"):
        got = [calibrated.predict(r["image_tokens"], r["prompt_tokens"], r["generated_tokens"], r["top_k"],
                                  r["num_blocks"])[name] for r in test]
        assert got == pytest.approx([r[name] for r in test], rel=1e-6)
    assert calibrated.meta["source"] == "test" and set(calibrated.meta["multipliers"]) == {"vision", "prefill",
                                                                                          "decode"}
    # leave-one-out scores of exact rows are all 1: the calibrated upper latency is the prediction itself
    assert sum(map(len, calibrated.scores.values())) == 25
    assert all(s == pytest.approx(1.0, rel=1e-6) for v in calibrated.scores.values() for s in v)


def test_calibrated_upper_latency_covers_held_out_runs():
    base = LatencyEstimator(COEF)
    machine = apply_multipliers(base, {"vision": (1.2, 1.1), "prefill": (1.4, 0.9), "decode": (1.3, 1.0)})
    calibrated = calibrate(base, _rows(machine, 25, seed=3, noise=0.05))
    rate = coverage(calibrated, _rows(machine, 400, seed=4, noise=0.05), 0.1)
    assert rate >= 0.85  # 90 % nominal; 75 leave-one-out scores from 25 requests
    assert residual_scores(calibrated, _rows(machine, 3, seed=5))  # keyed by setting


def test_a_calibration_set_too_small_or_without_decode_is_one_line():
    base = LatencyEstimator(COEF)
    with pytest.raises(CalibrationError, match="5 calibration requests: give at least 6"):
        calibrate(base, _rows(base, 5, seed=0))
    single = [dict(r, generated_tokens=1) for r in _rows(base, 10, seed=0)]
    with pytest.raises(CalibrationError, match="decode cannot be calibrated"):
        calibrate(base, single)


def test_the_design_spans_the_settings_and_lengths():
    settings = SPACE.all()
    typical = [LatencyEstimator(COEF).predict_total(IMAGE_TOKENS[k.tier], IMAGE_TOKENS[k.tier] + 8, 8, k.top_k,
                                                    k.num_blocks) for k in settings]
    cells = design(settings, typical, 25, [1, 2, 4, 8])
    assert len(cells) == 25 and len({c.knobs for c in cells}) == 25
    assert [c.prompt for c in cells] == list(range(25))
    assert {c.generated_tokens for c in cells} == {1, 2, 4, 8}
    chosen = {c.knobs for c in cells}
    assert settings[int(np.argmin(typical))] in chosen and settings[int(np.argmax(typical))] in chosen


def test_residual_scores_round_trip_through_the_estimator_file(tmp_path):
    est = LatencyEstimator(COEF, {"x": 1}, {"low/k1/b2": [1.1, 0.9]})
    loaded = LatencyEstimator.load(est.save(tmp_path / "e.json"))
    assert loaded.scores == {"low/k1/b2": [1.1, 0.9]}
    with pytest.raises(ValueError, match="must be finite and > 0"):
        LatencyEstimator(COEF, scores={"low/k1/b2": [-1.0]})


@pytest.mark.slow
def test_calibrate_latency_writes_a_calibrated_estimator_beside_the_original(tiny_model_dir, tmp_path):
    import json
    import shutil
    import subprocess
    import sys

    from conftest import ROOT

    original = tmp_path / "est" / "latency_estimator.json"
    original.parent.mkdir()
    shutil.copy(tiny_model_dir / "latency_estimator.json", original)
    res = subprocess.run([sys.executable, "experiments/calibrate_latency.py",
                          f"model.path={tiny_model_dir}", f"estimator={original}", "requests=8", "holdout=6",
                          "repeats=2", "warmup=0", "generated_tokens=[1,2]", f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    written = original.with_name("latency_estimator.cpu-1t.json")
    calibrated = LatencyEstimator.load(written)
    assert calibrated.meta["calibrated_from"]["path"] == str(original) and calibrated.meta["threads"] == 1
    assert calibrated.meta.get("model") == LatencyEstimator.load(original).meta.get("model")
    assert sum(map(len, calibrated.scores.values())) == 16  # 8 requests x 2 runs, each left out of its own fit
    assert "before: total_mape" in res.stdout and "after:  total_mape" in res.stdout
    report = json.loads((tmp_path / "run" / "calibrate_latency_report.json").read_text())
    assert report["written"] == [str(tmp_path / "run" / "latency_estimator.json"), str(written)]
    assert original.read_bytes() == (tiny_model_dir / "latency_estimator.json").read_bytes()  # left as it was
