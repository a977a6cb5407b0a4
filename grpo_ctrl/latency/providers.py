"""`make_latency_provider`: the provider behind `cfg.latency.train` (reward) and `cfg.latency.val` (validation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grpo_ctrl.latency.base import LatencyProvider
from grpo_ctrl.latency.estimator import (
    ESTIMATOR_FILE,
    REFIT_COMMAND,
    EstimatorError,
    EstimatorLatency,
    LatencyEstimator,
)
from grpo_ctrl.latency.hooked import HookedLatency
from grpo_ctrl.latency.measured import MeasuredLatency

KINDS = ("estimator", "measured", "hooked")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def estimator_path(latency_cfg: Any, model_dir: str | Path | None) -> Path:
    """`latency.estimator_path` when set, else the estimator saved next to the model; never another model's.

    Raises EstimatorError (one line, naming the command that fits one) when there is none."""
    explicit = _get(latency_cfg, "estimator_path")
    if explicit:
        return Path(explicit)
    if model_dir is None:
        raise EstimatorError("the model was not loaded from a directory, so no latency estimator goes with it; "
                             "set latency.estimator_path")
    path = Path(model_dir) / ESTIMATOR_FILE
    if not path.is_file():
        raise EstimatorError(f"no latency estimator for the model at {model_dir} ({ESTIMATOR_FILE} missing); fit one "
                             f"with `{REFIT_COMMAND} model.path={model_dir}` (it writes it there) or set "
                             "latency.estimator_path")
    return path


def check_estimator_model(estimator: LatencyEstimator, path: Path, signature: dict) -> None:
    """Refuse an estimator fitted on another model (its meta records the model's signature)."""
    fitted = estimator.meta.get("model")
    if fitted is None:
        return
    diff = {k: (fitted.get(k), v) for k, v in signature.items() if fitted.get(k) != v}
    if diff:
        what = ", ".join(f"{k} {a} (estimator) vs {b} (model)" for k, (a, b) in diff.items())
        raise EstimatorError(f"latency estimator {path} was fitted on another model: {what}; fit one for this model "
                             f"with `{REFIT_COMMAND} model.path=DIR`")


def load_estimator(latency_cfg: Any, model_dir: str | Path | None, signature: dict | None) -> LatencyEstimator:
    """The estimator `estimator_path` names, refused if it was fitted on another model than `signature`'s."""
    path = estimator_path(latency_cfg, model_dir)
    estimator = LatencyEstimator.load(path)
    if signature is not None:
        check_estimator_model(estimator, path, signature)
    return estimator


def make_latency_provider(kind: str, vlm=None, latency_cfg: Any = None, experiment=None) -> LatencyProvider:
    """Provider for `kind` in estimator | measured | hooked.

    - estimator: `LatencyEstimator.load(latency_cfg.estimator_path or <model dir>/latency_estimator.json)`,
      refused if it was fitted on another model;
    - measured: `MeasuredLatency(vlm, latency_cfg.warmup, .repeats, .threads, .statistic)`;
    - hooked: `HookedLatency(experiment or LatencyExperiment(vlm=vlm), ...)` with the same keys.
    """
    if kind == "estimator":
        return EstimatorLatency(load_estimator(latency_cfg, getattr(vlm, "source", None),
                                               getattr(vlm, "signature", None)))
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
            from grpo_ctrl.latency.experiment import LatencyExperiment

            experiment = LatencyExperiment(vlm=vlm)
        return HookedLatency(experiment, warmup=warmup, repeats=repeats, threads=threads, statistic=statistic)
    raise ValueError(f"latency provider {kind!r} is unknown; use one of {list(KINDS)}")
