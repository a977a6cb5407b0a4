"""The latency guard: which knob settings a request can afford, with calibrated uncertainty.

A setting fits budget B when the estimator's (1 - alpha) upper latency of the request at that setting is <= B:
its prediction at the longest output (`max_new_tokens`: the output length is not known before generation) times
the setting's split-conformal quantile of measured / predicted latency (`calibration.conformal_factor` of the
estimator's residual scores; the pooled scores' where a setting has too few for alpha). The served decision is the
controller's best setting that fits (`GreedyPolicy.decide(..., allowed=...)`), or the cheapest when none does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from grpo_ctrl.knobs import KnobSpace
from grpo_ctrl.latency.calibration import min_scores, upper_factors
from grpo_ctrl.latency.estimator import CALIBRATE_COMMAND, EstimatorError, LatencyEstimator


class LatencyGuard:
    def __init__(self, estimator: LatencyEstimator, space: KnobSpace, alpha: float, max_new_tokens: int,
                 source: str = "the latency estimator"):
        if not 0 < alpha < 1:
            raise ValueError(f"guard: alpha={alpha} must be in (0, 1)")
        pooled = [x for v in estimator.scores.values() for x in v]
        if len(pooled) < min_scores(alpha):
            raise EstimatorError(
                f"{source} carries {len(pooled)} residual scores, and a guard at alpha={alpha} needs "
                f"{min_scores(alpha)}: calibrate it on this machine with `{CALIBRATE_COMMAND}` (it writes one with "
                "scores) and point the guard at that file")
        factors = upper_factors(estimator.scores, [str(k) for k in space.all()], alpha)
        shape = (len(space.tiers), len(space.top_ks), len(space.num_blocks))
        self.factor = np.array(list(factors.values())).reshape(shape)
        self.estimator, self.space, self.alpha, self.max_new_tokens = estimator, space, alpha, max_new_tokens
        self._top_k = np.array(space.top_ks, dtype=np.float64)[None, :, None]
        self._blocks = np.array(space.num_blocks, dtype=np.float64)[None, None, :]

    def upper_ms(self, counts: Sequence[tuple[int, int]]) -> np.ndarray:
        """(tiers, top_ks, num_blocks) upper latency (ms) of a request whose (image tokens, prompt tokens) at each
        tier are `counts`."""
        c = np.asarray(counts, dtype=np.float64).reshape(-1, 2)
        predicted = self.estimator.predict_total(c[:, 0, None, None], c[:, 1, None, None], self.max_new_tokens,
                                                 self._top_k, self._blocks)
        return predicted * self.factor

    def allowed(self, budget_ms: float, counts: Sequence[tuple[int, int]]) -> np.ndarray:
        """(tiers, top_ks, num_blocks) bool: the settings whose upper latency fits `budget_ms`."""
        return self.upper_ms(counts) <= budget_ms


def token_counts(vlm, image, question: str) -> list[tuple[int, int]]:
    """(image tokens, prompt tokens) of one request at each tier of the model's knob space (the processor only)."""
    out = []
    for tier in vlm.knob_space.tier_names:
        inputs = vlm.inputs([image], [question], tier)
        out.append((int(vlm.image_tokens(inputs)[0]), int(vlm.prompt_tokens(inputs)[0])))
    return out


def load_guard(latency_cfg, model_dir, signature: dict, space: KnobSpace, alpha: float, max_new_tokens: int,
               estimator: str | None = None) -> LatencyGuard:
    """The guard of a model (its directory, signature and knob space) from `estimator` (a file) or else the run's
    latency estimator (`latency_cfg`'s), refused in one line (`EstimatorError`) when it was fitted on another model
    or carries too few residual scores for `alpha`."""
    from grpo_ctrl.latency.providers import check_estimator_model, estimator_path

    path = Path(estimator) if estimator else estimator_path(latency_cfg, model_dir)
    fitted = LatencyEstimator.load(path)
    check_estimator_model(fitted, path, signature)
    return LatencyGuard(fitted, space, alpha, max_new_tokens, source=f"latency estimator {path}")
