"""Hooked latency: vision / prefill / decode of ONE generate() call, from forward hooks.

- `vision`: forward_pre_hook on `model.model.vision_tower` -> forward_hook on `model.model.multi_modal_projector`
  (vision encoder + projector; transformers 5.x runs it before the first forward, inside generate());
- `prefill`: the first top-level forward of the Llava model (pre + post hooks on `vlm.model`);
- `decode`: the later forwards, one per generated token after the first (`decode_steps_ms`);
- `total`: wall time of the whole `AdaptiveVLM.generate` call; `other = total - (vision + prefill + decode)`
  is generate() bookkeeping (input preparation, cache set-up, logits processing, stopping checks).

Every phase comes from the same call: nothing is subtracted between separate runs. Hooks are removed in
`finally`, also when generate() raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from grpo_ctrl.knobs import Knobs
from grpo_ctrl.latency.base import Request, require_inputs
from grpo_ctrl.latency.clock import now

PHASES = ("vision", "prefill", "decode", "other")


@dataclass(frozen=True)
class PhaseTiming:
    """Phases (ms) and token counts of one batch-1 request; `vision + prefill + decode + other == total`."""

    vision: float
    prefill: float
    decode: float
    other: float
    total: float
    decode_steps_ms: tuple[float, ...] = field(default=())
    image_tokens: int = 0
    prompt_tokens: int = 0  # prompt length without padding: BOS + image tokens + question
    generated_tokens: int = 0  # EOS included
    ended_with_eos: bool = False

    @property
    def num_decode_steps(self) -> int:
        return len(self.decode_steps_ms)

    @property
    def ttft(self) -> float:
        """Time to first token, as far as the model's work goes: vision + prefill."""
        return self.vision + self.prefill

    @property
    def covered(self) -> float:
        """Fraction of `total` inside the hooked phases (vision + prefill + decode)."""
        return (self.vision + self.prefill + self.decode) / self.total if self.total > 0 else float("nan")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["decode_steps_ms"] = list(self.decode_steps_ms)
        return out

    @classmethod
    def median(cls, runs: Sequence[PhaseTiming]) -> PhaseTiming:
        """Per-field median of repeated runs of the same request (robust summary; the phases of the summary
        sum to its total only approximately)."""
        if not runs:
            raise ValueError("PhaseTiming.median needs at least one run")
        first = runs[0]
        if any(r.num_decode_steps != first.num_decode_steps for r in runs):
            raise ValueError("PhaseTiming.median: runs generated different numbers of tokens")

        def med(name: str) -> float:
            return float(np.median([getattr(r, name) for r in runs]))

        steps = np.median(np.array([r.decode_steps_ms for r in runs], dtype=float).reshape(len(runs), -1), axis=0)
        return cls(med("vision"), med("prefill"), med("decode"), med("other"), med("total"),
                   tuple(float(s) for s in steps), first.image_tokens, first.prompt_tokens,
                   first.generated_tokens, first.ended_with_eos)


class PhaseTimer:
    """Forward hooks on a Llava-style model that time vision, each top-level forward, and nothing else.

    Use as a context manager around one generate() call; `attach()` / `detach()` also work. Timestamps use
    `clock.now(device)`: synchronised on GPU before every read, `time.perf_counter` on CPU.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device | str | None = None):
        self.model = model
        self.vision_tower = model.model.vision_tower
        self.projector = model.model.multi_modal_projector
        self.device = device
        self._handles: list = []
        self.reset()

    def reset(self) -> None:
        self.vision_intervals: list[tuple[float, float]] = []
        self.forward_intervals: list[tuple[float, float]] = []
        self._vision_start: float | None = None
        self._forward_start: float | None = None

    # Hooks read the current lists through `self`, so `reset()` may replace them (no bound `.append`).
    def _on_vision_start(self, module, args) -> None:
        self._vision_start = now(self.device)

    def _on_vision_end(self, module, args, output) -> None:
        if self._vision_start is not None:
            self.vision_intervals.append((self._vision_start, now(self.device)))
            self._vision_start = None

    def _on_forward_start(self, module, args) -> None:
        self._forward_start = now(self.device)

    def _on_forward_end(self, module, args, output) -> None:
        if self._forward_start is not None:
            self.forward_intervals.append((self._forward_start, now(self.device)))
            self._forward_start = None

    def attach(self) -> PhaseTimer:
        if self._handles:
            raise RuntimeError("PhaseTimer is already attached")
        self.reset()
        try:
            self._handles = [
                self.vision_tower.register_forward_pre_hook(lambda m, a: self._on_vision_start(m, a)),
                self.projector.register_forward_hook(lambda m, a, o: self._on_vision_end(m, a, o)),
                self.model.register_forward_pre_hook(lambda m, a: self._on_forward_start(m, a)),
                self.model.register_forward_hook(lambda m, a, o: self._on_forward_end(m, a, o)),
            ]
        except BaseException:
            self.detach()
            raise
        return self

    def detach(self) -> None:
        handles, self._handles = self._handles, []
        for h in handles:
            h.remove()

    def __enter__(self) -> PhaseTimer:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def phases_ms(self) -> tuple[float, float, list[float]]:
        """(vision, prefill, decode steps) in ms from the recorded intervals."""
        vision = sum(e - s for s, e in self.vision_intervals)
        if not self.forward_intervals:
            return vision * 1000, 0.0, []
        (p0, p1), rest = self.forward_intervals[0], self.forward_intervals[1:]
        prefill = p1 - p0
        # Older transformers encode the image inside the first forward: keep the phases disjoint.
        inside = sum(e - s for s, e in self.vision_intervals if s >= p0 and e <= p1)
        return vision * 1000, (prefill - inside) * 1000, [(e - s) * 1000 for s, e in rest]


def hooked_generate(vlm, inputs: dict[str, torch.Tensor], knobs: Knobs, max_new_tokens: int = 2,
                    min_new_tokens: int | None = None, image_features: torch.Tensor | None = None):
    """Run ONE `vlm.generate` under a `PhaseTimer`; returns (PhaseTiming, Generation).

    With `image_features` (pre-encoded vision) the vision encoder does not run and `vision` is 0.
    """
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError(f"hooked latency is defined at batch 1, got a batch of {inputs['input_ids'].shape[0]}")
    device = vlm.model.device
    timer = PhaseTimer(vlm.model, device)
    with timer:
        start = now(device)
        gen = vlm.generate(inputs, knobs, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                           image_features=image_features)
        total = (now(device) - start) * 1000
    vision, prefill, steps = timer.phases_ms()
    decode = float(sum(steps))
    request = Request.for_vlm(vlm, inputs, knobs, gen.num_generated[0], keep_inputs=False)
    timing = PhaseTiming(vision=vision, prefill=prefill, decode=decode, other=total - (vision + prefill + decode),
                         total=total, decode_steps_ms=tuple(steps), image_tokens=request.image_tokens,
                         prompt_tokens=request.prompt_tokens, generated_tokens=request.generated_tokens,
                         ended_with_eos=bool(gen.ended_with_eos[0]))
    return timing, gen


class HookedLatency:
    """Latency provider from hooked generate() calls of a `LatencyExperiment` (or anything with a
    `measure_inference_latency(inputs, knobs, max_new_tokens=, min_new_tokens=)` returning `PhaseTiming`).

    Each request: `warmup` untimed calls, then `repeats` hooked calls; its latency is the median total and
    `last_phases` keeps the per-field median `PhaseTiming` of each request of the last `latency_ms` call.
    """

    name = "hooked"
    needs_inputs = True

    def __init__(self, experiment, warmup: int = 1, repeats: int = 1):
        if warmup < 0 or repeats < 1:
            raise ValueError(f"hooked latency: warmup={warmup} must be >= 0 and repeats={repeats} >= 1")
        self.experiment = experiment
        self.warmup = warmup
        self.repeats = repeats
        self.last_phases: list[PhaseTiming] = []

    def measure(self, request: Request) -> PhaseTiming:
        inputs = require_inputs(request, self.name)
        n = request.generated_tokens
        runs = []
        for i in range(self.warmup + self.repeats):
            timing = self.experiment.measure_inference_latency(inputs, request.knobs, max_new_tokens=n,
                                                               min_new_tokens=n)
            if i >= self.warmup:
                runs.append(timing)
        return PhaseTiming.median(runs)

    def phases(self, requests: Sequence[Request]) -> list[PhaseTiming]:
        self.last_phases = [self.measure(r) for r in requests]
        return self.last_phases

    def latency_ms(self, requests: Sequence[Request]) -> np.ndarray:
        return np.array([p.total for p in self.phases(requests)], dtype=float)
