"""Measured latency: end-to-end `generate()` wall time of one request at batch 1."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from grpo_ctrl.knobs import Knobs
from grpo_ctrl.latency.clock import now
from grpo_ctrl.vlm.adaptive import AdaptiveVLM


@dataclass(frozen=True)
class LatencyStats:
    p50: float
    p90: float
    p99: float
    mean: float
    cv: float  # coefficient of variation (std / mean)
    n: int

    @classmethod
    def of(cls, samples_ms) -> LatencyStats:
        x = np.asarray(samples_ms, dtype=float)
        p50, p90, p99 = np.percentile(x, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(x.mean()), float(x.std() / x.mean()), len(x))

    def to_dict(self) -> dict:
        return asdict(self)


def time_generate(vlm: AdaptiveVLM, inputs: dict, knobs: Knobs, warmup: int = 2, repeats: int = 5,
                  max_new_tokens: int = 2, min_new_tokens: int | None = None) -> list[float]:
    """Wall times (ms) of `repeats` full generate() calls on `inputs` (batch 1), after `warmup` untimed calls."""
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError(f"measured latency is defined at batch 1, got a batch of {inputs['input_ids'].shape[0]}")
    device = vlm.model.device
    times = []
    for i in range(warmup + repeats):
        start = now(device)
        vlm.generate(inputs, knobs, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)
        elapsed = (now(device) - start) * 1000
        if i >= warmup:
            times.append(elapsed)
    return times
