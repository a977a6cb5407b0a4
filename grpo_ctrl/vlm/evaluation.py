"""Accuracy of a VLM under fixed knob settings, per question type (batched greedy generation)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from grpo_ctrl.data import VQASample, vqa_score
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.vlm.adaptive import AdaptiveVLM


def score_setting(vlm: AdaptiveVLM, samples: Sequence[VQASample], knobs: Knobs, batch_size: int = 128) -> np.ndarray:
    """Per-sample VQA score of the greedy answer under `knobs`."""
    scores = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        gen = vlm.answer([s.image for s in chunk], [s.question for s in chunk], knobs)
        scores += [vqa_score(a, s.answers) for a, s in zip(gen.answers, chunk)]
    return np.array(scores)


def by_type(samples: Sequence[VQASample], scores: np.ndarray) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for s, v in zip(samples, scores):
        groups[s.qtype].append(float(v))
    return {"all": float(np.mean(scores)), **{t: float(np.mean(v)) for t, v in sorted(groups.items())}}


def oracle_cheapest(settings: Sequence[Knobs], scores: dict[Knobs, np.ndarray], cost: dict[Knobs, float]) -> list:
    """For each sample, the cheapest setting that answers it correctly (None if none does)."""
    order = sorted(settings, key=lambda k: cost[k])
    n = len(next(iter(scores.values())))
    return [next((k for k in order if scores[k][i] > 0.5), None) for i in range(n)]


@torch.no_grad()
def first_token_correct(vlm: AdaptiveVLM, samples: Sequence[VQASample], pool: int, top_k: int,
                        keep: Sequence[int], batch_size: int = 128) -> np.ndarray:
    """Whether the greedy first answer token is right, under any block subset (not only the knob space).

    One forward per batch instead of generate(): the embedded task's answers are single tokens.
    """
    previous = vlm.knobs
    tok = vlm.processor.tokenizer
    vlm.set_pool(pool)
    vlm.set_top_k(top_k)
    vlm.keep_blocks(keep)
    try:
        correct = []
        for i in range(0, len(samples), batch_size):
            chunk = samples[i:i + batch_size]
            inputs = vlm.processor([s.image for s in chunk], [s.question for s in chunk], pool)
            pred = vlm.model(**inputs, logits_to_keep=1).logits[:, -1].argmax(-1)
            gold = torch.tensor([tok.convert_tokens_to_ids(s.answer) for s in chunk])
            correct += (pred == gold).tolist()
    finally:
        vlm.set_knobs(previous)
    return np.array(correct, dtype=float)
