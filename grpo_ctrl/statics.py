"""The static baselines of the validation report: every fixed knob setting on the val prompts."""

from __future__ import annotations

import numpy as np

from grpo_ctrl.trainer import JointGRPOTrainer


def static_settings(trainer: JointGRPOTrainer, provider, latency_requests: int | None = None) -> dict:
    """Accuracy of every fixed knob setting on the val prompts, and its mean latency from `provider` (over the
    first `latency_requests` prompts when measuring is expensive). All settings are timed in one provider call
    (interleaved when measured); `reference_ms` is the full-knob setting's median there when a measuring
    provider gives the unit of fractional budgets, else the trainer's."""
    prompts = list(trainer.val_pool)
    timed = prompts if latency_requests is None else prompts[:latency_requests]
    settings = trainer.space.all()
    outcomes = {k: trainer.engine.run(prompts, [k] * len(prompts)) for k in settings}
    lat = trainer.latency(provider, [p for _ in settings for p in timed], [k for k in settings for _ in timed],
                       [o for k in settings for o in outcomes[k][: len(timed)]]).reshape(len(settings), -1)
    rows = [{"knobs": str(k), "accuracy": float(np.mean([o.score for o in outcomes[k]])),
             "mean_latency_ms": float(t.mean()), "latency": t, "scores": [o.score for o in outcomes[k]]}
            for k, t in zip(settings, lat)]
    reference = trainer.ref_ms
    if provider.needs_inputs and trainer.cfg.budgets.unit == "fraction":
        reference = float(np.median(lat[settings.index(trainer.space.full)]))
    return {"settings": rows, "reference_ms": reference}
