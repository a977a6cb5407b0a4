"""The static baselines of the validation report: every fixed knob setting on the val prompts."""

from __future__ import annotations

import numpy as np

from grpo_ctrl.trainer import JointGRPOTrainer


def static_settings(trainer: JointGRPOTrainer, provider, latency_requests: int | None = None) -> dict:
    """Accuracy of every fixed knob setting on the val prompts, and its mean latency from `provider` (over the
    first `latency_requests` prompts when measuring is expensive). Every rank calls it and answers its shard of
    the prompts (`ParallelContext.shard`, as validation does); all get the whole result. A rank times all
    settings in one provider call (interleaved when measured); `reference_ms` is the full-knob setting's median
    there when a measuring provider gives the unit of fractional budgets, else the trainer's."""
    ctx, pool = trainer.ctx, trainer.val_pool
    n_timed = len(pool) if latency_requests is None else min(latency_requests, len(pool))
    indices = ctx.shard(range(len(pool)))
    prompts = [pool[i] for i in indices]
    timed = [p for i, p in zip(indices, prompts) if i < n_timed]  # this rank's shard of the first n_timed
    settings = trainer.space.all()
    outcomes = {k: trainer.engine.run(prompts, [k] * len(prompts)) for k in settings}
    lat = trainer.latency(provider, [p for _ in settings for p in timed], [k for k in settings for _ in timed],
                          [o for k in settings for o in outcomes[k][: len(timed)]]).reshape(len(settings), -1)
    # Gathered per prompt in val-pool order, then (setting, prompt) as the unsharded computation lays them out.
    scores = np.array(ctx.unshard([[outcomes[k][i].score for k in settings] for i in range(len(prompts))]))
    scores, lat = np.ascontiguousarray(scores.T), np.ascontiguousarray(np.array(ctx.unshard(lat.T.tolist())).T)
    rows = [{"knobs": str(k), "accuracy": float(s.mean()), "mean_latency_ms": float(t.mean()), "latency": t,
             "scores": s.tolist()} for k, s, t in zip(settings, scores, lat)]
    reference = trainer.ref_ms
    if provider.needs_inputs and trainer.cfg.budgets.unit == "fraction":
        reference = float(np.median(lat[settings.index(trainer.space.full)]))
    return {"settings": rows, "reference_ms": reference}
