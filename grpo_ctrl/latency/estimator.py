"""Latency estimator: per-phase linear models fitted on a profile of hooked measurements.

Phases and features (all counts at batch 1; T = prompt tokens = BOS + image + question tokens,
B = num_blocks, K = top_k, N = generated tokens, p = KV length during a decode step):

- vision  ~ [1, n_img, n_img^2]                                 (encoder + projector on the tier's tokens)
- prefill ~ [1, T, T*B, T*B*K, B, B*K, T^2*B]                    (set-up, per-token, per-block, expert, attention)
- decode step ~ [1, B, B*K, B*p]; step i of N-1 has p = T + i   (summed in closed form over the steps)
- finish  ~ [1, B]                                              (after the last forward: output assembly)

The phases are those of `hooked.PhaseTiming`, which partition a request's wall time:
decode = sum of the N-1 decode steps + finish, and total = vision + prefill + decode. Coefficients are
non-negative (each feature counts work), fitted to minimise the mean absolute relative error (`fit_nonneg`).
Prediction is vectorised over numpy arrays. An estimator may carry residual scores (measured / predicted end-to-end
latency of runs it was not fitted on, per knob setting: `calibration.residual_scores`), from which `guard` takes
calibrated upper latencies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from grpo_ctrl.artifacts import write_json
from grpo_ctrl.latency.base import Request
from grpo_ctrl.vlm import EMBEDDED_DIR

ESTIMATOR_FILE = "latency_estimator.json"
DEFAULT_ESTIMATOR_PATH = EMBEDDED_DIR / ESTIMATOR_FILE
REFIT_COMMAND = "python experiments/profile_latency.py"
CALIBRATE_COMMAND = "python experiments/calibrate_latency.py"  # from ~25 requests on another machine / thread count
FORMAT = "grpo_ctrl.latency_estimator"
VERSION = 2  # 2: phases partition the request (no `other`; decode = steps + finish)

FEATURES: dict[str, tuple[str, ...]] = {
    "vision": ("1", "img", "img^2"),
    "prefill": ("1", "T", "T*B", "T*B*K", "B", "B*K", "T^2*B"),
    "decode_step": ("1", "B", "B*K", "B*p"),
    "finish": ("1", "B"),
}
PHASES = ("vision", "prefill", "decode")


class EstimatorError(RuntimeError):
    """The latency estimator file is missing or unusable (the message names the command that re-fits it)."""


def _f(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def vision_features(image_tokens) -> np.ndarray:
    n = _f(image_tokens)
    return np.stack([np.ones_like(n), n, n * n], axis=-1)


def prefill_features(prefill_tokens, num_blocks, top_k) -> np.ndarray:
    t, b, k = np.broadcast_arrays(_f(prefill_tokens), _f(num_blocks), _f(top_k))
    tb = t * b
    return np.stack([np.ones_like(t), t, tb, tb * k, b, b * k, tb * t], axis=-1)


def decode_step_features(num_blocks, top_k, kv_length) -> np.ndarray:
    b, k, p = np.broadcast_arrays(_f(num_blocks), _f(top_k), _f(kv_length))
    return np.stack([np.ones_like(b), b, b * k, b * p], axis=-1)


def decode_sum_features(prefill_tokens, num_blocks, top_k, generated_tokens) -> np.ndarray:
    """Sum of `decode_step_features` over the N-1 decode steps (p = T+1 .. T+N-1), in closed form."""
    t, b, k, n = np.broadcast_arrays(_f(prefill_tokens), _f(num_blocks), _f(top_k), _f(generated_tokens))
    steps = np.maximum(n - 1.0, 0.0)
    sum_p = steps * t + steps * (steps + 1.0) / 2.0
    return np.stack([steps, steps * b, steps * b * k, b * sum_p], axis=-1)


def finish_features(num_blocks) -> np.ndarray:
    b = _f(num_blocks)
    return np.stack([np.ones_like(b), b], axis=-1)


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Non-negative least squares min ||a x - b|| s.t. x >= 0 (Lawson-Hanson active set)."""
    a, b = _f(a), _f(b)
    m, n = a.shape
    max_iter = max_iter or 30 * n
    tol = 10 * np.finfo(float).eps * np.abs(a).sum(axis=0).max() * max(m, n)
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    w = a.T @ (b - a @ x)
    it = 0
    while (~passive).any() and np.max(np.where(passive, -np.inf, w)) > tol and it < max_iter:
        passive[int(np.argmax(np.where(passive, -np.inf, w)))] = True
        while it < max_iter:
            it += 1
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if np.all(z[passive] > 0):
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
        w = a.T @ (b - a @ x)
    return x


def _weighted_nnls(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    xw, yw = x * w[:, None], y * w
    scale = np.abs(xw).max(axis=0)
    scale[scale == 0] = 1.0
    return nnls(xw / scale, yw) / scale


def fit_nonneg(features: np.ndarray, target: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Non-negative coefficients of `features @ coef ~= target` minimising the mean absolute relative error
    (the MAPE the estimator is judged by): least squares on relative error, then iteratively reweighted least
    squares towards the L1 solution, which also keeps the right-skewed latency outliers from pulling the fit."""
    x, y = _f(features), _f(target)
    if x.shape[0] == 0:
        return np.zeros(x.shape[1])
    inv = 1.0 / np.maximum(np.abs(y), 1e-9)
    coef = _weighted_nnls(x, y, inv)
    for _ in range(iterations):
        rel = np.abs(x @ coef - y) * inv
        coef = _weighted_nnls(x, y, inv / np.sqrt(np.maximum(rel, 1e-4)))
    return coef


class LatencyEstimator:
    """Predicts per-phase and end-to-end latency (ms) from knobs and token counts, vectorised."""

    def __init__(self, coef: Mapping[str, Sequence[float]], meta: dict | None = None,
                 scores: Mapping[str, Sequence[float]] | None = None):
        self.coef = {}
        for phase, names in FEATURES.items():
            if phase not in coef:
                raise ValueError(f"latency estimator has no coefficients for phase {phase!r}")
            c = _f(coef[phase])
            if c.shape != (len(names),) or not np.all(np.isfinite(c)):
                raise ValueError(f"phase {phase!r} needs {len(names)} finite coefficients {names}, got {list(c)}")
            if np.any(c < 0):  # each feature counts work: a negative cost would predict negative latencies
                shown = [round(float(v), 6) for v in c]
                raise ValueError(f"phase {phase!r} has negative coefficients {shown} (each must be >= 0)")
            self.coef[phase] = c
        self.meta = dict(meta or {})
        self.scores = {str(k): [float(x) for x in v] for k, v in (scores or {}).items()}
        bad = [k for k, v in self.scores.items() if not all(math.isfinite(x) and x > 0 for x in v)]
        if bad:
            raise ValueError(f"residual scores of {bad[:3]} must be finite and > 0 (measured / predicted latency)")

    # ------------------------------------------------------------------ prediction
    def predict(self, image_tokens, prompt_tokens, generated_tokens, top_k, num_blocks) -> dict[str, np.ndarray]:
        """Per-phase ms (`vision`, `prefill`, `decode`, `total`; `decode_steps` and `finish` within decode,
        `decode_per_token` = decode_steps / (N - 1)) for arrays of requests; inputs broadcast."""
        img, t, n, k, b = np.broadcast_arrays(_f(image_tokens), _f(prompt_tokens), _f(generated_tokens),
                                              _f(top_k), _f(num_blocks))
        steps = decode_sum_features(t, b, k, n) @ self.coef["decode_step"]
        finish = finish_features(b) @ self.coef["finish"]
        out = {
            "vision": vision_features(img) @ self.coef["vision"],
            "prefill": prefill_features(t, b, k) @ self.coef["prefill"],
            "decode": steps + finish,
            "decode_steps": steps,
            "finish": finish,
            "decode_per_token": np.where(n > 1, steps / np.maximum(n - 1, 1), 0.0),
        }
        out["total"] = out["vision"] + out["prefill"] + out["decode"]
        return out

    def predict_total(self, image_tokens, prompt_tokens, generated_tokens, top_k, num_blocks) -> np.ndarray:
        img, t, n, k, b = np.broadcast_arrays(_f(image_tokens), _f(prompt_tokens), _f(generated_tokens),
                                              _f(top_k), _f(num_blocks))
        return (vision_features(img) @ self.coef["vision"] + prefill_features(t, b, k) @ self.coef["prefill"]
                + decode_sum_features(t, b, k, n) @ self.coef["decode_step"]
                + finish_features(b) @ self.coef["finish"])

    def decode_step_ms(self, num_blocks, top_k, kv_length) -> np.ndarray:
        return decode_step_features(num_blocks, top_k, kv_length) @ self.coef["decode_step"]

    def predict_requests(self, requests: Sequence[Request]) -> dict[str, np.ndarray]:
        return self.predict(*request_arrays(requests))

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        out = {"format": FORMAT, "version": VERSION, "features": {p: list(n) for p, n in FEATURES.items()},
               "coef": {p: [float(v) for v in c] for p, c in self.coef.items()}, "meta": self.meta}
        if self.scores:
            out["residual_scores"] = self.scores
        return out

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path | None = None) -> LatencyEstimator:
        """Load a fitted estimator (default: the embedded VLM's). Missing or unusable -> one-line `EstimatorError`."""
        path = Path(path) if path is not None else DEFAULT_ESTIMATOR_PATH
        fix = f"fit it with `{REFIT_COMMAND}` (model.path=DIR for another model) or set latency.estimator_path"
        if not path.is_file():
            raise EstimatorError(f"latency estimator {path} not found; {fix}")
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')!r}, this code reads version {VERSION}")
            saved = {p: tuple(n) for p, n in data["features"].items()}
            if saved != FEATURES:
                raise ValueError("its features differ from this code's")
            return cls(data["coef"], data.get("meta"), data.get("residual_scores"))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
            reason = " ".join(str(err).split()) or type(err).__name__
            raise EstimatorError(f"latency estimator {path} is unusable ({reason}); re-{fix}") from None


def request_arrays(requests: Sequence[Request]) -> tuple[np.ndarray, ...]:
    """(image_tokens, prompt_tokens, generated_tokens, top_k, num_blocks) arrays of `requests`."""
    a = np.array([(r.image_tokens, r.prompt_tokens, r.generated_tokens, r.knobs.top_k, r.knobs.num_blocks)
                  for r in requests], dtype=np.float64).reshape(-1, 5)
    return tuple(a.T)


# ---------------------------------------------------------------------- fitting
PROFILE_KEYS = ("image_tokens", "prompt_tokens", "generated_tokens", "top_k", "num_blocks")


def _col(rows: Sequence[Mapping], key: str) -> np.ndarray:
    return np.array([r[key] for r in rows], dtype=np.float64)


def fit_estimator(rows: Iterable[Mapping], meta: dict | None = None) -> LatencyEstimator:
    """Fit every phase on profile rows: dicts with `PROFILE_KEYS`, the phases `vision`, `prefill`, `decode`
    (ms) and `decode_steps_ms` (ms of each decode step, N-1 of them; the rest of `decode` is the finish)."""
    rows = list(rows)
    if not rows:
        raise ValueError("fit_estimator: the profile is empty")
    img, t, n, k, b = (_col(rows, key) for key in PROFILE_KEYS)
    coef = {
        "vision": fit_nonneg(vision_features(img), _col(rows, "vision")),
        "prefill": fit_nonneg(prefill_features(t, b, k), _col(rows, "prefill")),
        "finish": fit_nonneg(finish_features(b), _col(rows, "decode") - np.array([_steps_ms(r) for r in rows])),
    }
    step_b, step_k, step_p, step_y = [], [], [], []
    for r, ti in zip(rows, t):
        for i, ms in enumerate(r.get("decode_steps_ms") or (), start=1):
            step_b.append(r["num_blocks"])
            step_k.append(r["top_k"])
            step_p.append(ti + i)
            step_y.append(ms)
    coef["decode_step"] = fit_nonneg(decode_step_features(step_b, step_k, step_p), step_y)
    return LatencyEstimator(coef, {**(meta or {}), "fitted_rows": len(rows), "fitted_decode_steps": len(step_y)})


def _steps_ms(row: Mapping) -> float:
    return float(sum(row.get("decode_steps_ms") or ()))


def abs_pct_errors(pred, true) -> np.ndarray:
    pred, true = _f(pred), _f(true)
    return 100.0 * np.abs(pred - true) / np.maximum(np.abs(true), 1e-12)


def evaluate(estimator: LatencyEstimator, rows: Sequence[Mapping]) -> dict[str, float]:
    """Held-out accuracy: MAPE (%) per phase and end-to-end, p90 abs % error end-to-end, decode-per-token MAPE."""
    rows = list(rows)
    if not rows:
        return {}
    pred = estimator.predict(*(_col(rows, key) for key in PROFILE_KEYS))
    n = _col(rows, "generated_tokens")
    out = {"rows": float(len(rows))}
    for phase in ("vision", "prefill", "total"):
        out[f"{phase}_mape"] = float(abs_pct_errors(pred[phase], _col(rows, phase)).mean())
    multi = n > 1
    if multi.any():
        out["decode_mape"] = float(abs_pct_errors(pred["decode"][multi], _col(rows, "decode")[multi]).mean())
        per_token = np.array([_steps_ms(r) for r in rows])[multi] / (n[multi] - 1)
        out["decode_per_token_mape"] = float(abs_pct_errors(pred["decode_per_token"][multi], per_token).mean())
    errors = abs_pct_errors(pred["total"], _col(rows, "total"))
    out["total_p90_abs_pct"] = float(np.percentile(errors, 90))
    out["total_max_abs_pct"] = float(errors.max())
    return out


def fraction_drift(settings: Sequence, measured_ms: np.ndarray, estimated_ms: np.ndarray, full: int) -> dict:
    """How far the estimator's latency fractions of the full setting are from the measured ones, per setting.

    `measured_ms` and `estimated_ms` are (settings, requests) over the same requests; a setting's fraction is its
    mean over them divided by the full setting's. A controller budgets by these fractions, so where an estimator
    fitted on another machine under-estimates a setting it chooses violations, and where it over-estimates, it
    leaves budget unused. `drift` is estimated - measured."""
    measured, estimated = (np.asarray(x, dtype=np.float64).mean(axis=1) for x in (measured_ms, estimated_ms))
    measured, estimated = measured / measured[full], estimated / estimated[full]
    drift = estimated - measured
    worst = int(np.abs(drift).argmax())
    rows = [{"knobs": str(k), "measured_fraction": float(m), "estimated_fraction": float(e)}
            for k, m, e in zip(settings, measured, estimated)]
    return {"max_abs_drift": float(abs(drift[worst])), "worst": rows[worst], "settings": rows}


class EstimatorLatency:
    """Latency provider backed by a fitted `LatencyEstimator` (no model run; vectorised)."""

    name = "estimator"
    needs_inputs = False

    def __init__(self, estimator: LatencyEstimator):
        self.estimator = estimator

    def latency_ms(self, requests: Sequence[Request]) -> np.ndarray:
        return self.estimator.predict_total(*request_arrays(requests))

    def phases(self, requests: Sequence[Request]) -> dict[str, np.ndarray]:
        return self.estimator.predict_requests(requests)
