"""Latency estimator: fitting recovers known coefficients, predictions are monotone, files round-trip,
and a missing or corrupt file gives one line naming the command that re-fits it."""

import itertools
import json

import numpy as np
import pytest

from grpo_ctrl.knobs import Knobs
from grpo_ctrl.latency import EstimatorError, EstimatorLatency, LatencyEstimator, Request, evaluate, fit_estimator
from grpo_ctrl.latency.estimator import FEATURES, decode_step_features, nnls

TRUE = {
    "vision": [0.8, 0.01, 2e-5],
    "prefill": [0.5, 0.004, 0.002, 0.0007, 0.3, 0.05, 1e-6],
    "decode_step": [0.4, 0.6, 0.08, 0.0005],
    "finish": [0.7, 0.05],
}


def synthetic_profile(coef=TRUE, noise=0.0, seed=0):
    """Rows as profile_latency.py writes them, from a known step model (optionally with multiplicative noise)."""
    est = LatencyEstimator(coef)
    rng = np.random.default_rng(seed)
    rows = []
    for image, text, n, k, b in itertools.product((4, 16, 64), (6, 8, 11), (1, 2, 4, 8), (1, 2, 4), (2, 3, 4)):
        t = image + text
        p = est.predict(image, t, n, k, b)
        steps = est.decode_step_ms(b, k, t + np.arange(1, n)) * (1 + noise * rng.standard_normal(n - 1))
        row = {"knobs": f"{image}/k{k}/b{b}", "prompt": text, "image_tokens": image, "prompt_tokens": t,
               "generated_tokens": n, "top_k": k, "num_blocks": b, "decode_steps_ms": steps.tolist(),
               "decode": float(steps.sum() + p["finish"] * (1 + noise * rng.standard_normal()))}
        for phase in ("vision", "prefill"):
            row[phase] = float(p[phase]) * (1 + noise * rng.standard_normal())
        row["total"] = row["vision"] + row["prefill"] + row["decode"]
        rows.append(row)
    return rows


def test_fit_recovers_known_coefficients():
    est = fit_estimator(synthetic_profile())
    for phase, coef in TRUE.items():
        np.testing.assert_allclose(est.coef[phase], coef, rtol=1e-5, atol=1e-9, err_msg=phase)
    metrics = evaluate(est, synthetic_profile())
    assert metrics["total_mape"] < 1e-4 and metrics["decode_per_token_mape"] < 1e-4


def test_fit_generalises_to_held_out_settings_under_noise():
    rows = synthetic_profile(noise=0.02, seed=1)
    held = {r["knobs"] for r in rows if r["num_blocks"] == 3 and r["top_k"] == 2}
    train = [r for r in rows if r["knobs"] not in held and r["prompt"] != 8]
    test = [r for r in rows if r["knobs"] in held or r["prompt"] == 8]
    metrics = evaluate(fit_estimator(train), test)
    assert metrics["total_mape"] < 5 and metrics["decode_per_token_mape"] < 10


def test_fitted_coefficients_are_non_negative():
    rows = synthetic_profile()
    for r in rows:  # a phase that shrinks with blocks would need a negative coefficient
        r["prefill"] = 5.0 - 0.5 * r["num_blocks"]
    est = fit_estimator(rows)
    assert all((c >= 0).all() for c in est.coef.values())


def test_nnls_matches_a_hand_checked_solution():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = np.array([2.0, -1.0, 1.0])  # unconstrained solution has x2 < 0
    x = nnls(a, b)
    np.testing.assert_allclose(x, [1.5, 0.0], atol=1e-12)
    grad = a.T @ (a @ x - b)
    assert grad[1] >= 0 and abs(grad[0]) < 1e-12  # KKT


def test_predictions_increase_with_tokens_blocks_top_k_and_length():
    est = fit_estimator(synthetic_profile())
    base = dict(image_tokens=16, prompt_tokens=24, generated_tokens=4, top_k=2, num_blocks=3)
    total = est.predict_total(**base)
    for key, more in (("image_tokens", 64), ("generated_tokens", 8), ("top_k", 4), ("num_blocks", 4)):
        bigger = {**base, key: more}
        if key == "image_tokens":
            bigger["prompt_tokens"] = base["prompt_tokens"] + 48
        assert est.predict_total(**bigger) > total, key
    assert est.predict_total(**{**base, "prompt_tokens": 30}) > total


def test_prediction_is_vectorised_and_matches_requests():
    est = LatencyEstimator(TRUE)
    rng = np.random.default_rng(0)
    n = 1000
    image = rng.choice([4, 16, 64], n)
    cols = (image, image + rng.integers(5, 12, n), rng.integers(1, 9, n), rng.choice([1, 2, 4], n),
            rng.choice([2, 3, 4], n))
    phases = est.predict(*cols)
    assert all(v.shape == (n,) for v in phases.values())
    np.testing.assert_allclose(est.predict_total(*cols), phases["total"])
    np.testing.assert_allclose(phases["total"], phases["vision"] + phases["prefill"] + phases["decode"])
    np.testing.assert_allclose(phases["decode"], phases["decode_steps"] + phases["finish"])
    tiers = {4: "low", 16: "medium", 64: "high"}
    reqs = [Request(Knobs(tiers[int(c[0])], int(c[3]), int(c[4])), int(c[0]), int(c[1]), int(c[2]))
            for c in zip(*cols)]
    provider = EstimatorLatency(est)
    assert provider.needs_inputs is False
    np.testing.assert_allclose(provider.latency_ms(reqs), phases["total"])
    finish = 0.7 + 0.05 * 3
    one = est.predict(16, 24, 1, 2, 3)
    assert one["decode"] == pytest.approx(finish) and one["decode_per_token"] == 0  # one token: no decode step
    step = decode_step_features(3, 2, 25) @ np.array(TRUE["decode_step"])
    assert est.predict(16, 24, 2, 2, 3)["decode"] == pytest.approx(step + finish)
    assert est.predict(16, 24, 2, 2, 3)["decode_per_token"] == pytest.approx(step)


def test_save_load_round_trip(tmp_path):
    est = fit_estimator(synthetic_profile(), meta={"device": "cpu", "threads": 1})
    path = est.save(tmp_path / "sub" / "latency_estimator.json")
    back = LatencyEstimator.load(path)
    for phase in FEATURES:
        np.testing.assert_array_equal(back.coef[phase], est.coef[phase])
    assert back.meta["device"] == "cpu" and back.meta["fitted_rows"] == len(synthetic_profile())
    assert back.predict_total(16, 24, 4, 2, 3) == est.predict_total(16, 24, 4, 2, 3)


def _assert_one_line_refit_error(path):
    with pytest.raises(EstimatorError) as info:
        LatencyEstimator.load(path)
    message = str(info.value)
    assert "\n" not in message and "experiments/profile_latency.py" in message and str(path) in message


def test_missing_estimator_file_is_one_clear_line(tmp_path):
    _assert_one_line_refit_error(tmp_path / "nope.json")


@pytest.mark.parametrize("content", [
    "{not json",
    "",
    json.dumps([1, 2, 3]),
    json.dumps({"format": "something else"}),
    json.dumps({**LatencyEstimator(TRUE).to_dict(), "version": 99}),
    json.dumps({**LatencyEstimator(TRUE).to_dict(), "coef": {**TRUE, "prefill": [1.0, 2.0]}}),
    json.dumps({**LatencyEstimator(TRUE).to_dict(), "coef": {"vision": TRUE["vision"]}}),
    json.dumps({**LatencyEstimator(TRUE).to_dict(), "features": {"vision": ["1"]}}),
])
def test_corrupt_estimator_file_is_one_clear_line(tmp_path, content):
    path = tmp_path / "latency_estimator.json"
    path.write_text(content)
    _assert_one_line_refit_error(path)


def test_binary_garbage_is_one_clear_line(tmp_path):
    path = tmp_path / "latency_estimator.json"
    path.write_bytes(b"\xff\xfe\x00garbage\n\x80")
    _assert_one_line_refit_error(path)
