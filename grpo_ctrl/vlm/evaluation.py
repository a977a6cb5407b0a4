"""Per-question-type accuracy of knob settings, the per-request oracle and routing by type (scores come from the
rollout engine)."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from grpo_ctrl.data import VQASample
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.vlm import VLMAdapter


def by_type(samples: Sequence[VQASample], scores: np.ndarray) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for s, v in zip(samples, scores):
        if s.qtype:  # "": the source has no question types
            groups[s.qtype].append(float(v))
    return {"all": float(np.mean(scores)), **{t: float(np.mean(v)) for t, v in sorted(groups.items())}}


def oracle_cheapest(settings: Sequence[Knobs], scores: dict[Knobs, np.ndarray], cost: dict[Knobs, float]) -> list:
    """For each sample, the cheapest setting that answers it correctly (None if none does)."""
    order = sorted(settings, key=lambda k: cost[k])
    n = len(next(iter(scores.values())))
    return [next((k for k in order if scores[k][i] > 0.5), None) for i in range(n)]


def type_routing(settings: Sequence[Knobs], scores: dict[Knobs, np.ndarray], cost: dict[Knobs, float],
                 qtypes: Sequence[str], budget: float) -> float | None:
    """Accuracy when each question type goes to the setting, among those costing at most `budget`, that answers
    that type best: what a controller that knows the question type and nothing else can reach. It picks one
    setting per type, not per request, so answers a setting gets right by chance lift it far less than the
    per-request oracle. None if nothing fits."""
    fits = [k for k in settings if cost[k] <= budget]
    if not fits:
        return None
    qtypes = np.asarray(qtypes)
    right = sum(max(float(scores[k][qtypes == t].sum()) for k in fits) for t in np.unique(qtypes))
    return right / len(qtypes)


@torch.no_grad()
def first_token_correct(vlm: VLMAdapter, samples: Sequence[VQASample], knobs: Knobs,
                        keep: Sequence[int] | None = None, batch_size: int = 128) -> np.ndarray:
    """Whether the greedy first answer token is that of the most frequent gold answer under `knobs`, optionally with
    another block subset `keep` (block importance visits subsets outside the knob space). One forward per batch
    instead of generate(): for multi-token answers a fast proxy of answering right."""
    correct = []
    with vlm.apply(knobs), (vlm.blocks_kept(keep) if keep is not None else contextlib.nullcontext()):
        for i in range(0, len(samples), batch_size):
            chunk = samples[i:i + batch_size]
            inputs = vlm.inputs([s.image for s in chunk], [s.question for s in chunk], knobs.tier)
            inputs = {k: v.to(vlm.model.device) for k, v in inputs.items()}
            pred = vlm.first_token_logits(inputs).argmax(-1).cpu()
            gold = torch.tensor([vlm.answer_first_token(s.answer) for s in chunk])
            correct += (pred == gold).tolist()
    return np.array(correct, dtype=float)
