"""Rollout engine: answers for many (prompt, knobs) pairs, batching pairs that share a knob setting.

Vision features are computed once per (prompt, tier) and reused by every top-k / block setting; greedy
answers are deterministic, so (prompt, knobs) -> outcome is memoised across steps.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from grpo_ctrl.data import VQASample, vqa_score
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.vlm.adaptive import AdaptiveVLM


@dataclass(frozen=True)
class Prompt:
    key: Hashable  # stable identity, e.g. ("train", 17)
    sample: VQASample


@dataclass(frozen=True)
class Outcome:
    answer: str
    score: float  # VQA score of the answer (exact match for one gold answer)
    image_tokens: int
    prompt_tokens: int  # input length without padding: <s> + image tokens + question
    generated_tokens: int  # EOS included
    ended_with_eos: bool
    gold_prob: float = float("nan")  # probability of the (best) gold answer's first token at the first step


class RolloutEngine:
    def __init__(self, vlm: AdaptiveVLM, max_new_tokens: int = 2, batch_size: int = 64, memoize: bool = True,
                 replicas: Sequence[AdaptiveVLM] = ()):
        """`replicas` (parallel=dp): copies of `vlm` on other devices; batches are scattered across all of them."""
        self.vlm = vlm
        self.replicas = list(replicas) or [vlm]
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.memoize = memoize
        self._outcomes: dict[tuple[Hashable, Knobs], Outcome] = {}
        self._vision: dict[tuple[Hashable, str], torch.Tensor] = {}
        self._question: dict[Hashable, torch.Tensor] = {}
        self._gold_ids: dict[Hashable, list[int]] = {}

    # ------------------------------------------------------------ controller features
    def question_features(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        missing = list({p.key: p for p in prompts if p.key not in self._question}.values())
        if missing:
            feats = self.vlm.question_features([p.sample.question for p in missing])
            self._question.update({p.key: f for p, f in zip(missing, feats)})
        return torch.stack([self._question[p.key] for p in prompts])

    def vision_tokens(self, prompts: Sequence[Prompt], tier: str, vlm: AdaptiveVLM | None = None) -> torch.Tensor:
        """Projected vision tokens per prompt at `tier`, computed once (on `vlm`'s device) and kept on the CPU."""
        vlm = vlm or self.vlm
        missing = list({p.key: p for p in prompts if (p.key, tier) not in self._vision}.values())
        for i in range(0, len(missing), self.batch_size):
            chunk = missing[i:i + self.batch_size]
            px = vlm.processor.pixel_values([p.sample.image for p in chunk]).to(vlm.model.device)
            feats = vlm.encode_vision(px, tier).cpu()
            self._vision.update({(p.key, tier): f for p, f in zip(chunk, feats)})
        return torch.stack([self._vision[(p.key, tier)] for p in prompts])

    def vision_features(self, prompts: Sequence[Prompt], tiers: Sequence[str]) -> torch.Tensor:
        """Pooled vision feature (B, H) of each prompt at its own tier (what stage 2 reads)."""
        by_tier: dict[str, list[Prompt]] = defaultdict(list)
        for p, t in zip(prompts, tiers):
            by_tier[t].append(p)
        for t, ps in by_tier.items():
            self.vision_tokens(ps, t)
        return torch.stack([self.vlm.vision_summary(self._vision[(p.key, t)][None])[0] for p, t in zip(prompts, tiers)])

    # ------------------------------------------------------------ answers
    def run(self, prompts: Sequence[Prompt], knobs: Sequence[Knobs]) -> list[Outcome]:
        """Outcome of each (prompt, knobs) pair, in order."""
        todo: dict[Knobs, dict[Hashable, Prompt]] = defaultdict(dict)
        for p, k in zip(prompts, knobs):
            if (p.key, k) not in self._outcomes:
                todo[k][p.key] = p
        batches = [(ps[i:i + self.batch_size], k) for k, by_key in todo.items() for ps in [list(by_key.values())]
                   for i in range(0, len(ps), self.batch_size)]
        if len(self.replicas) == 1:
            for ps, k in batches:
                self._generate(ps, k, self.vlm)
        else:  # one thread per replica, each working through its share of the batches
            shares = [batches[r::len(self.replicas)] for r in range(len(self.replicas))]
            with ThreadPoolExecutor(len(self.replicas)) as pool:
                list(pool.map(lambda r: [self._generate(ps, k, self.replicas[r]) for ps, k in shares[r]],
                              range(len(self.replicas))))
        out = [self._outcomes[(p.key, k)] for p, k in zip(prompts, knobs)]
        if not self.memoize:
            self._outcomes.clear()
        return out

    def _generate(self, prompts: list[Prompt], knobs: Knobs, vlm: AdaptiveVLM) -> None:
        pool = vlm.knob_space.tiers[knobs.tier]
        inputs = vlm.processor.text_inputs([p.sample.question for p in prompts], pool)
        inputs = {k: v.to(vlm.model.device) for k, v in inputs.items()}
        feats = self.vision_tokens(prompts, knobs.tier, vlm).to(vlm.model.device)
        gen = vlm.generate(inputs, knobs, max_new_tokens=self.max_new_tokens, image_features=feats,
                           return_first_logits=True)
        for p in prompts:
            if p.key not in self._gold_ids:
                self._gold_ids[p.key] = [vlm.answer_first_token(a) for a in p.sample.answers]
        # Only the gold answers' probabilities leave the device (a row of logits is vocabulary-sized).
        width = max(len(self._gold_ids[p.key]) for p in prompts)
        ids = torch.tensor([(ids * width)[:width] for ids in (self._gold_ids[p.key] for p in prompts)],
                           device=gen.first_logits.device)
        gold_probs = gen.first_logits.float().softmax(dim=-1).gather(1, ids).amax(dim=1).tolist()
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        n_image = vlm.processor.num_image_tokens(pool)
        for i, p in enumerate(prompts):
            self._outcomes[(p.key, knobs)] = Outcome(gen.answers[i], vqa_score(gen.answers[i], p.sample.answers),
                                                     n_image, int(lengths[i]), gen.num_generated[i],
                                                     gen.ended_with_eos[i], gold_probs[i])
