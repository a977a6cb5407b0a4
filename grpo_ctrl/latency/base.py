"""The one latency protocol: every provider maps batch-1 requests to end-to-end milliseconds.

Latency (everywhere in the project) = wall time of ONE request at batch 1: vision encoder + prefill +
decode of the generated tokens (+ generate() bookkeeping). Providers differ only in how they get it:
a fitted estimator (fast, vectorised), a measured end-to-end generate(), or forward hooks that also split
it into phases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from grpo_ctrl.knobs import Knobs
from grpo_ctrl.threads import intra_op_threads


@dataclass(frozen=True)
class Request:
    """One batch-1 request as the latency providers see it.

    `prompt_tokens` is the prompt length without padding, i.e. the prefill length: BOS + `image_tokens`
    (`<image>` ids, set by the tier) + question tokens (the convention of `rollout.Outcome`).
    `generated_tokens` (>= 1) is the number of new tokens, EOS included. `inputs` (the batch-1 model inputs
    from `VLMAdapter.inputs`) is needed only by the measuring providers (`provider.needs_inputs`).
    """

    knobs: Knobs
    image_tokens: int
    prompt_tokens: int
    generated_tokens: int
    inputs: dict[str, torch.Tensor] | None = field(default=None, compare=False, repr=False)

    @property
    def text_tokens(self) -> int:
        return self.prompt_tokens - self.image_tokens

    @classmethod
    def from_inputs(cls, inputs: dict[str, torch.Tensor], knobs: Knobs, generated_tokens: int,
                    image_token_id: int, keep_inputs: bool = True) -> Request:
        """Count the tokens of batch-1 `inputs` (ids outside the attention mask are padding)."""
        ids = inputs["input_ids"]
        if ids.shape[0] != 1:
            raise ValueError(f"a latency request is one prompt at batch 1, got a batch of {ids.shape[0]}")
        mask = inputs.get("attention_mask")
        real = ids[0] if mask is None else ids[0][mask[0].bool()]
        image = int((real == image_token_id).sum())
        return cls(knobs, image, int(real.numel()), int(generated_tokens), inputs if keep_inputs else None)

    @classmethod
    def for_vlm(cls, vlm: Any, inputs: dict[str, torch.Tensor], knobs: Knobs, generated_tokens: int,
                keep_inputs: bool = True) -> Request:
        """`from_inputs` with the image token id of a `VLMAdapter`."""
        return cls.from_inputs(inputs, knobs, generated_tokens, vlm.image_token_id, keep_inputs)


@runtime_checkable
class LatencyProvider(Protocol):
    """Anything that returns the end-to-end latency (ms) of each request."""

    name: str
    needs_inputs: bool  # True: each Request must carry `inputs` (the provider runs the model)

    def latency_ms(self, requests: Sequence[Request]) -> np.ndarray:
        """float64 array of shape (len(requests),): end-to-end ms of each request at batch 1."""
        ...


def require_inputs(request: Request, provider: str) -> dict[str, torch.Tensor]:
    if request.inputs is None:
        raise ValueError(f"the {provider} latency provider runs the model, so each Request needs `inputs` "
                         "(batch-1 model inputs from VLMAdapter.inputs); build it with Request.for_vlm")
    if request.generated_tokens < 1:
        raise ValueError(f"generated_tokens={request.generated_tokens} must be >= 1")
    return request.inputs


STATISTICS = ("median", "min")


def check_timing(provider: str, warmup: int, repeats: int, threads: int | None, statistic: str = "median") -> None:
    if warmup < 0 or repeats < 1 or (threads is not None and threads < 1):
        raise ValueError(f"{provider} latency: warmup={warmup} must be >= 0, repeats={repeats} >= 1 and "
                         f"threads={threads} >= 1 or None")
    if statistic not in STATISTICS:
        raise ValueError(f"{provider} latency: statistic={statistic!r} is unknown; use one of {list(STATISTICS)}")


def interleaved_runs(requests: Sequence[Request], run_one: Callable[[Request], Any], warmup: int, repeats: int,
                     seed: int = 0, threads: int | None = None) -> list[list]:
    """Results of `repeats` timed runs of each request, after `warmup` untimed ones, taken in passes over all
    requests (each pass in its own random order), with `threads` intra-op threads (`intra_op_threads`).
    A machine's speed drifts over seconds to minutes; run back to back, one request's repeats would share
    one moment's speed, while across passes every request, and the reference it is compared with, sees the
    same mix of moments."""
    rng = np.random.default_rng(seed)
    runs: list[list] = [[] for _ in requests]
    with intra_op_threads(threads):
        for p in range(warmup + repeats):
            for i in rng.permutation(len(requests)):
                result = run_one(requests[i])
                if p >= warmup:
                    runs[i].append(result)
    return runs
