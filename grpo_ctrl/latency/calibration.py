"""Moving a latency estimator to this machine from a few timed requests, and its calibrated uncertainty.

Calibration. An estimator's features count two kinds of work: per-call work (a constant, per block, per expert:
modules launched whatever the prompt) and work that grows with the tokens a request carries (image tokens, prompt
length, KV length). Another machine, device or thread count changes the two at different rates (more threads speed
up the matmuls over tokens, not the per-module dispatch), so `calibrate` fits one multiplier per kind and phase
(vision, prefill, decode): six numbers, identifiable from ~25 hooked requests that span the knob space, where a
re-fit needs every setting x prompts x lengths. The result is an ordinary estimator (multiplied coefficients).

Uncertainty. `residual_scores` are split-conformal scores: measured / predicted end-to-end latency of single runs
the estimator was not fitted on, per knob setting. The (1 - alpha) conformal quantile q of those scores makes
`predicted x q` an upper latency that a new request exceeds with probability at most alpha (exchangeability;
`LatencyEstimator.upper_factors`). A calibration's scores are leave-one-request-out (`loo_scores`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from grpo_ctrl.knobs import Knobs
from grpo_ctrl.latency.estimator import (
    PROFILE_KEYS,
    LatencyEstimator,
    decode_sum_features,
    finish_features,
    fit_nonneg,
    prefill_features,
    vision_features,
)
from grpo_ctrl.latency.profile import Cell

# Per feature of each phase (estimator.FEATURES): True where it grows with the request's tokens.
TOKEN_WORK = {
    "vision": (False, True, True),
    "prefill": (False, True, True, True, False, False, True),
    "decode_step": (False, False, False, True),
    "finish": (False, False),
}
PHASES = ("vision", "prefill", "decode")
MIN_REQUESTS = 6  # one per multiplier


class CalibrationError(ValueError):
    """Too few or unusable calibration requests (one line)."""


def conformal_factor(scores: Sequence[float], alpha: float) -> float:
    """The split-conformal (1 - alpha) quantile of `scores`: the ceil((n + 1)(1 - alpha))-th smallest, or inf when
    there are too few scores for that level (n < (1 - alpha) / alpha)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha} must be in (0, 1)")
    s = np.sort(np.asarray(scores, dtype=np.float64))
    rank = math.ceil((len(s) + 1) * (1 - alpha))
    return float(s[rank - 1]) if rank <= len(s) else math.inf


def upper_factors(scores: Mapping[str, Sequence[float]], settings: Sequence[str], alpha: float) -> dict[str, float]:
    """Each setting's conformal factor: its own scores' where they suffice for alpha, else all scores'."""
    pooled = conformal_factor([x for v in scores.values() for x in v], alpha)
    own = {k: conformal_factor(scores.get(k, ()), alpha) for k in settings}
    return {k: f if math.isfinite(f) else pooled for k, f in own.items()}


def min_scores(alpha: float) -> int:
    """The fewest scores with a finite (1 - alpha) conformal quantile."""
    return math.ceil((1 - alpha) / alpha - 1e-9)


def residual_scores(estimator: LatencyEstimator, rows: Sequence[Mapping]) -> dict[str, list[float]]:
    """Measured / predicted end-to-end ms of each run (`runs_total`, else the row's `total`) of profile rows, per
    setting. Rows the estimator was fitted on give optimistic scores: pass held-out ones."""
    pred = estimator.predict_total(*(np.array([r[k] for r in rows], dtype=np.float64) for k in PROFILE_KEYS))
    scores: dict[str, list[float]] = {}
    for r, p in zip(rows, pred):
        scores.setdefault(r["knobs"], []).extend(float(t) / float(p) for t in r.get("runs_total") or [r["total"]])
    return scores


def _split(phase: str, coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.array(TOKEN_WORK[phase])
    return np.where(tokens, 0.0, coef), np.where(tokens, coef, 0.0)


def _parts(estimator: LatencyEstimator, rows: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """(rows, 2): each phase's predicted per-call and token work."""
    img, t, n, k, b = (np.array([r[key] for r in rows], dtype=np.float64) for key in PROFILE_KEYS)
    features = {"vision": vision_features(img), "prefill": prefill_features(t, b, k),
                "decode_step": decode_sum_features(t, b, k, n), "finish": finish_features(b)}
    parts = {p: np.stack([f @ c for c in _split(p, estimator.coef[p])], axis=1) for p, f in features.items()}
    return {"vision": parts["vision"], "prefill": parts["prefill"], "decode": parts["decode_step"] + parts["finish"]}


def fit_multipliers(estimator: LatencyEstimator, rows: Sequence[Mapping]) -> dict[str, tuple[float, float]]:
    """(per-call, token) multiplier per phase minimising the relative error on `rows` (hooked profile rows). A kind
    of work the rows do not exercise keeps the phase's other multiplier."""
    parts = _parts(estimator, rows)
    out = {}
    for phase in PHASES:
        x, y = parts[phase], np.array([r[phase] for r in rows], dtype=np.float64)
        used = np.abs(x).sum(axis=0) > 0
        m = np.ones(2)
        if used.any():
            m[used] = fit_nonneg(x[:, used], y)
            m[~used] = m[used].mean()
        out[phase] = (float(m[0]), float(m[1]))
    return out


def apply_multipliers(estimator: LatencyEstimator, multipliers: Mapping[str, tuple[float, float]],
                      meta: dict | None = None) -> LatencyEstimator:
    by_phase = {"vision": "vision", "prefill": "prefill", "decode_step": "decode", "finish": "decode"}
    coef = {}
    for phase, c in estimator.coef.items():
        fixed, tokens = _split(phase, c)
        per_call, per_token = multipliers[by_phase[phase]]
        coef[phase] = fixed * per_call + tokens * per_token
    return LatencyEstimator(coef, meta if meta is not None else estimator.meta)


def check_rows(rows: Sequence[Mapping]) -> None:
    if len(rows) < MIN_REQUESTS:
        raise CalibrationError(f"{len(rows)} calibration requests: give at least {MIN_REQUESTS} (one per multiplier)")
    if not any(r["generated_tokens"] > 1 for r in rows):
        raise CalibrationError("no calibration request decodes more than one token, so decode cannot be calibrated: "
                               "include generated_tokens > 1")


def calibrate(estimator: LatencyEstimator, rows: Sequence[Mapping], meta: dict | None = None) -> LatencyEstimator:
    """`estimator` re-scaled to the machine `rows` were timed on (`fit_multipliers`), with leave-one-out residual
    scores; `meta` (provenance) replaces the estimator's."""
    check_rows(rows)
    multipliers = fit_multipliers(estimator, rows)
    calibrated = apply_multipliers(estimator, multipliers, meta)
    calibrated.scores = loo_scores(estimator, rows)
    calibrated.meta["multipliers"] = {p: {"per_call": m[0], "tokens": m[1]} for p, m in multipliers.items()}
    return calibrated


def loo_scores(estimator: LatencyEstimator, rows: Sequence[Mapping]) -> dict[str, list[float]]:
    """Residual scores of each request under the calibration fitted on all the others (cross-conformal)."""
    scores: dict[str, list[float]] = {}
    for i, r in enumerate(rows):
        others = [o for j, o in enumerate(rows) if j != i]
        held = apply_multipliers(estimator, fit_multipliers(estimator, others))
        for key, values in residual_scores(held, [r]).items():
            scores.setdefault(key, []).extend(values)
    return scores


def design(settings: Sequence[Knobs], typical_ms: Sequence[float], requests: int, lengths: Sequence[int]) -> list[Cell]:
    """`requests` calibration cells that span the knob space: settings evenly spaced in the order of their predicted
    latency (each once while there are enough), request i on prompt i, the output lengths in turn (so that both the
    per-call and the per-token work of every phase vary across them)."""
    order = np.argsort(np.asarray(typical_ms, dtype=np.float64), kind="stable")
    picks = order[np.round(np.linspace(0, len(order) - 1, requests)).astype(int)]
    return [Cell(settings[j], i, int(lengths[i % len(lengths)])) for i, j in enumerate(picks)]


def holdout_cells(settings: Sequence[Knobs], count: int, first_prompt: int, lengths: Sequence[int],
                  seed: int) -> list[Cell]:
    """`count` random (setting, length) cells on prompts from `first_prompt` on (none of the calibration's)."""
    rng = np.random.default_rng(seed)
    return [Cell(settings[int(rng.integers(len(settings)))], first_prompt + i, int(rng.choice(lengths)))
            for i in range(count)]


def coverage(estimator: LatencyEstimator, rows: Sequence[Mapping], alpha: float) -> float:
    """Share of the single runs of `rows` at or under the estimator's (1 - alpha) upper latency (`upper_factors`)."""
    scores = residual_scores(estimator, rows)
    factors = upper_factors(estimator.scores, list(scores), alpha)
    return float(np.mean([x <= factors[k] for k, v in scores.items() for x in v]))
