"""`make_latency_provider`: the provider behind `cfg.latency.train` (reward) and `cfg.latency.val` (validation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grpo_ctrl.latency.base import LatencyProvider
from grpo_ctrl.latency.estimator import DEFAULT_ESTIMATOR_PATH, ESTIMATOR_FILE, EstimatorLatency, LatencyEstimator
from grpo_ctrl.latency.hooked import HookedLatency
from grpo_ctrl.latency.measured import MeasuredLatency

KINDS = ("estimator", "measured", "hooked")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def default_estimator_path(vlm=None) -> Path:
    """The estimator saved next to the model `vlm` was loaded from, else the embedded VLM's."""
    source = getattr(getattr(getattr(vlm, "model", None), "config", None), "_name_or_path", "") or ""
    if source and (Path(source) / ESTIMATOR_FILE).is_file():
        return Path(source) / ESTIMATOR_FILE
    return DEFAULT_ESTIMATOR_PATH


def make_latency_provider(kind: str, vlm=None, latency_cfg: Any = None, experiment=None) -> LatencyProvider:
    """Provider for `kind` in estimator | measured | hooked.

    - estimator: `LatencyEstimator.load(latency_cfg.estimator_path or <model dir>/latency_estimator.json)`;
    - measured: `MeasuredLatency(vlm, latency_cfg.warmup, .repeats, .threads, .statistic)`;
    - hooked: `HookedLatency(experiment or LatencyExperiment(vlm=vlm), ...)` with the same keys.
    """
    if kind == "estimator":
        path = _get(latency_cfg, "estimator_path") or default_estimator_path(vlm)
        return EstimatorLatency(LatencyEstimator.load(path))
    warmup, repeats = int(_get(latency_cfg, "warmup", 1)), int(_get(latency_cfg, "repeats", 3))
    threads, statistic = _get(latency_cfg, "threads"), _get(latency_cfg, "statistic", "median")
    if kind == "measured":
        if vlm is None:
            raise ValueError("the measured latency provider needs the vlm")
        return MeasuredLatency(vlm, warmup=warmup, repeats=repeats, threads=threads, statistic=statistic)
    if kind == "hooked":
        if experiment is None:
            if vlm is None:
                raise ValueError("the hooked latency provider needs a LatencyExperiment or the vlm")
            from grpo_ctrl.experiment import LatencyExperiment

            experiment = LatencyExperiment(vlm=vlm)
        return HookedLatency(experiment, warmup=warmup, repeats=repeats, threads=threads, statistic=statistic)
    raise ValueError(f"latency provider {kind!r} is unknown; use one of {list(KINDS)}")
