"""Hooked latency: vision / prefill / decode of ONE generate() call, from forward hooks.

The hooks stamp the boundaries of the request's phases; the phases are the intervals between them, so they
partition the request's wall time (the serving view: time to first token, then time per output token):

- `vision`: the vision encoder (+ projector / merger), between the modules the model's adapter names
  (`VLMAdapter.phase_modules()`: for Llava, a pre-hook on the vision tower and a hook on the projector);
- `prefill`: the rest of the time to the first token: from the call's start to the end of the first top-level
  forward of the model (knob application, input and cache set-up, the prompt's forward), minus vision;
- `decode`: from there to the call's end. `decode_steps_ms[i]` is the interval between the ends of forwards
  i and i+1 (that token's forward plus the logits processing and stopping checks before it); what follows
  the last forward (output assembly) is `decode - sum(decode_steps_ms)`.

`forward_ms` is the part of the call spent inside the vision encoder and the top-level forwards (model work);
the rest is generate() bookkeeping. Every number comes from the same call: nothing is subtracted between
separate runs. Hooks are removed in `finally`, also when generate() raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from grpo_ctrl.knobs import Knobs
from grpo_ctrl.latency.base import Request, check_timing, interleaved_runs, require_inputs
from grpo_ctrl.latency.clock import Timeline

PHASES = ("vision", "prefill", "decode")


@dataclass(frozen=True)
class PhaseTiming:
    """Phases (ms) and token counts of one batch-1 request; `vision + prefill + decode == total`."""

    vision: float
    prefill: float
    decode: float
    total: float
    decode_steps_ms: tuple[float, ...] = field(default=())
    forward_ms: float = 0.0  # inside the vision encoder and the model's forwards (the rest is bookkeeping)
    image_tokens: int = 0
    prompt_tokens: int = 0  # prompt length without padding: BOS + image tokens + question
    generated_tokens: int = 0  # EOS included
    ended_with_eos: bool = False

    @property
    def num_decode_steps(self) -> int:
        return len(self.decode_steps_ms)

    @property
    def ttft(self) -> float:
        """Time to first token: vision + prefill."""
        return self.vision + self.prefill

    @property
    def covered(self) -> float:
        """(vision + prefill + decode) / total: 1 up to rounding, since the phases partition the call."""
        return (self.vision + self.prefill + self.decode) / self.total if self.total > 0 else float("nan")

    @property
    def forward_share(self) -> float:
        """Fraction of `total` spent in model forwards (vision included)."""
        return self.forward_ms / self.total if self.total > 0 else float("nan")

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
        return cls(med("vision"), med("prefill"), med("decode"), med("total"), tuple(float(s) for s in steps),
                   med("forward_ms"), first.image_tokens, first.prompt_tokens, first.generated_tokens,
                   first.ended_with_eos)


class PhaseTimer:
    """Forward hooks on a VLM (at its adapter's `phase_modules()`) that stamp the start and end of vision and of
    each top-level forward.

    Use as a context manager around one generate() call; `attach()` / `detach()` also work. Stamps come from a
    `clock.Timeline`: `time.perf_counter` on CPU, CUDA events read after the call on GPU (no synchronize inside it).
    """

    def __init__(self, vlm):
        self.modules = vlm.phase_modules()
        self.timeline = Timeline(vlm.model.device)
        self._handles: list = []
        self.reset()

    def reset(self) -> None:
        self.vision_intervals: list[tuple] = []  # (start stamp, end stamp)
        self.forward_intervals: list[tuple] = []
        self._vision_start = None
        self._forward_start = None

    # Hooks read the current lists through `self`, so `reset()` may replace them (no bound `.append`).
    def _on_vision_start(self, module, args) -> None:
        self._vision_start = self.timeline.stamp()

    def _on_vision_end(self, module, args, output) -> None:
        if self._vision_start is not None:
            self.vision_intervals.append((self._vision_start, self.timeline.stamp()))
            self._vision_start = None

    def _on_forward_start(self, module, args) -> None:
        self._forward_start = self.timeline.stamp()

    def _on_forward_end(self, module, args, output) -> None:
        if self._forward_start is not None:
            self.forward_intervals.append((self._forward_start, self.timeline.stamp()))
            self._forward_start = None

    def attach(self) -> PhaseTimer:
        if self._handles:
            raise RuntimeError("PhaseTimer is already attached")
        self.reset()
        try:
            self._handles = [
                self.modules.vision_start.register_forward_pre_hook(lambda m, a: self._on_vision_start(m, a)),
                self.modules.vision_end.register_forward_hook(lambda m, a, o: self._on_vision_end(m, a, o)),
                self.modules.forward.register_forward_pre_hook(lambda m, a: self._on_forward_start(m, a)),
                self.modules.forward.register_forward_hook(lambda m, a, o: self._on_forward_end(m, a, o)),
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

    def phases_ms(self, end) -> dict:
        """Phases (ms) of the call from `timeline.start()` to the stamp `end`, and its `total`."""
        sec = self.timeline.seconds
        end = sec(end)
        visions = [(sec(s), sec(e)) for s, e in self.vision_intervals]
        forwards = [(sec(s), sec(e)) for s, e in self.forward_intervals]
        vision = sum(e - s for s, e in visions)
        forward = sum(e - s for s, e in forwards)
        # Older transformers encode the image inside the first forward: count that time once.
        forward -= sum(e - s for s, e in visions if any(s >= f0 and e <= f1 for f0, f1 in forwards))
        ends = [e for _, e in forwards]
        first_token = ends[0] if ends else end  # seconds since the call's start
        return {"vision": vision * 1000, "prefill": (first_token - vision) * 1000,
                "decode": (end - first_token) * 1000,
                "decode_steps_ms": tuple((b - a) * 1000 for a, b in zip(ends, ends[1:])),
                "forward_ms": (vision + forward) * 1000, "total": end * 1000}


def hooked_generate(vlm, inputs: dict[str, torch.Tensor], knobs: Knobs, max_new_tokens: int = 2,
                    min_new_tokens: int | None = None, vision: dict[str, torch.Tensor] | None = None):
    """Run ONE `vlm.generate` under a `PhaseTimer`; returns (PhaseTiming, Generation).

    With `vision` (pre-encoded, `VLMAdapter.encode_vision`) the vision encoder does not run and `vision` is 0.
    """
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError(f"hooked latency is defined at batch 1, got a batch of {inputs['input_ids'].shape[0]}")
    timer = PhaseTimer(vlm)
    with timer:
        timer.timeline.start()
        gen = vlm.generate(inputs, knobs, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                           vision=vision)
        end = timer.timeline.stamp()
    request = Request.for_vlm(vlm, inputs, knobs, gen.num_generated[0], keep_inputs=False)
    timing = PhaseTiming(**timer.phases_ms(end), image_tokens=request.image_tokens,
                         prompt_tokens=request.prompt_tokens, generated_tokens=request.generated_tokens,
                         ended_with_eos=bool(gen.ended_with_eos[0]))
    return timing, gen


class HookedLatency:
    """Latency provider from hooked generate() calls of a `LatencyExperiment` (or anything with a
    `measure_inference_latency(inputs, knobs, max_new_tokens=, min_new_tokens=)` returning `PhaseTiming`).

    `warmup` untimed passes over the requests, then `repeats` hooked passes (`base.interleaved_runs`, with
    `threads` and `statistic` as in `MeasuredLatency`). With "median", a request's latency is its median total
    and `last_phases` keeps the per-field median `PhaseTiming` of each request of the last `latency_ms` call;
    with "min", both come from the request's fastest run (whose phases add up to its total).
    """

    name = "hooked"
    needs_inputs = True

    def __init__(self, experiment, warmup: int = 1, repeats: int = 1, threads: int | None = None,
                 statistic: str = "median"):
        check_timing(self.name, warmup, repeats, threads, statistic)
        self.statistic = statistic
        self.experiment = experiment
        self.warmup = warmup
        self.repeats = repeats
        self.threads = threads
        self.last_phases: list[PhaseTiming] = []

    def _measure_once(self, request: Request) -> PhaseTiming:
        n = request.generated_tokens
        return self.experiment.measure_inference_latency(request.inputs, request.knobs, max_new_tokens=n,
                                                         min_new_tokens=n)

    def phases(self, requests: Sequence[Request]) -> list[PhaseTiming]:
        for r in requests:  # every request is checked before any is timed
            require_inputs(r, self.name)
        runs = interleaved_runs(requests, self._measure_once, self.warmup, self.repeats, threads=self.threads)
        if self.statistic == "min":
            self.last_phases = [min(ts, key=lambda t: t.total) for ts in runs]
        else:
            self.last_phases = [PhaseTiming.median(ts) for ts in runs]
        return self.last_phases

    def latency_ms(self, requests: Sequence[Request]) -> np.ndarray:
        return np.array([p.total for p in self.phases(requests)], dtype=float)
