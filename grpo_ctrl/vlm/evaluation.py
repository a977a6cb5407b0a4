"""A forward-only proxy of answering right, for block subsets outside the knob space (block importance)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from grpo_ctrl.data import VQASample
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.vlm import VLMAdapter


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
