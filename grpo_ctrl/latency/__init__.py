"""Latency providers behind one protocol: `latency_ms(requests) -> np.ndarray` of end-to-end batch-1 ms."""

from grpo_ctrl.latency.base import LatencyProvider, Request
from grpo_ctrl.latency.clock import now
from grpo_ctrl.latency.estimator import (
    DEFAULT_ESTIMATOR_PATH,
    ESTIMATOR_FILE,
    EstimatorError,
    EstimatorLatency,
    LatencyEstimator,
    evaluate,
    fit_estimator,
)
from grpo_ctrl.latency.hooked import HookedLatency, PhaseTimer, PhaseTiming, hooked_generate
from grpo_ctrl.latency.measured import LatencyStats, MeasuredLatency, time_generate
from grpo_ctrl.latency.providers import KINDS, estimator_path, make_latency_provider

__all__ = [
    "DEFAULT_ESTIMATOR_PATH", "ESTIMATOR_FILE", "KINDS", "EstimatorError", "EstimatorLatency", "HookedLatency",
    "LatencyEstimator", "LatencyProvider", "LatencyStats", "MeasuredLatency", "PhaseTimer", "PhaseTiming", "Request",
    "estimator_path", "evaluate", "fit_estimator", "hooked_generate", "make_latency_provider", "now",
    "time_generate",
]
