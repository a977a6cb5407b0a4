"""Measured latency: end-to-end `generate()` wall time of one request at batch 1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from grpo_ctrl.knobs import Knobs
from grpo_ctrl.latency.base import Request, check_timing, interleaved_runs, require_inputs
from grpo_ctrl.latency.clock import now


@dataclass(frozen=True)
class LatencyStats:
    min: float
    p50: float
    p90: float
    p99: float
    mean: float
    cv: float  # coefficient of variation (std / mean)
    n: int

    @classmethod
    def of(cls, samples_ms) -> LatencyStats:
        x = np.asarray(samples_ms, dtype=float)
        if x.size == 0:
            raise ValueError("LatencyStats.of needs at least one sample")
        p50, p90, p99 = np.percentile(x, [50, 90, 99])
        mean = float(x.mean())
        cv = float(x.std() / mean) if mean else 0.0
        return cls(float(x.min()), float(p50), float(p90), float(p99), mean, cv, len(x))

    def to_dict(self) -> dict:
        return asdict(self)


def time_generate(vlm, inputs: dict, knobs: Knobs, warmup: int = 2, repeats: int = 5,
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


def median_generate_ms(vlm, samples, knobs: Knobs, warmup: int = 1, repeats: int = 3) -> float:
    """Median generate() time (ms) over `repeats` timed calls of each sample, one request at a time."""
    times = []
    for s in samples:
        inputs = vlm.inputs([s.image], [s.question], knobs.tier)
        times += time_generate(vlm, inputs, knobs, warmup=warmup, repeats=repeats)
    return float(np.median(times))


class MeasuredLatency:
    """Latency provider that times full generate() calls with exactly `generated_tokens` new tokens
    (min_new_tokens == max_new_tokens): `warmup` untimed passes over the requests, then `repeats` timed
    passes (`base.interleaved_runs`, with `threads` intra-op threads; None keeps the process's); each
    request's latency is the `statistic` of its timed runs: "median" (what the request takes at a typical
    moment on this machine) or "min" (what its knobs cost with the least interference from the rest of the
    machine: on a shared VM, other tenants only ever add time).

    `last_stats` keeps the `LatencyStats` (min/p50/p90/p99/CV) of each request of the last `latency_ms` call.
    """

    name = "measured"
    needs_inputs = True

    def __init__(self, vlm, warmup: int = 1, repeats: int = 3, threads: int | None = None,
                 statistic: str = "median"):
        check_timing(self.name, warmup, repeats, threads, statistic)
        self.statistic = statistic
        self.vlm = vlm
        self.warmup = warmup
        self.repeats = repeats
        self.threads = threads
        self.last_stats: list[LatencyStats] = []

    def _time_once(self, request: Request) -> float:
        n = request.generated_tokens
        return time_generate(self.vlm, request.inputs, request.knobs, warmup=0, repeats=1, max_new_tokens=n,
                             min_new_tokens=n)[0]

    def stats(self, requests: Sequence[Request]) -> list[LatencyStats]:
        device = self.vlm.model.device
        on_device = [replace(r, inputs={k: v.to(device) for k, v in require_inputs(r, self.name).items()})
                     for r in requests]
        runs = interleaved_runs(on_device, self._time_once, self.warmup, self.repeats, threads=self.threads)
        self.last_stats = [LatencyStats.of(x) for x in runs]
        return self.last_stats

    def latency_ms(self, requests: Sequence[Request]) -> np.ndarray:
        field = "p50" if self.statistic == "median" else "min"
        return np.array([getattr(s, field) for s in self.stats(requests)], dtype=float)
