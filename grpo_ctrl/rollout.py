"""Rollout engine: the outcome of each (prompt, knobs) pair, computed for that request alone.

An outcome is a pure function of (prompt, knobs, weights, CPU): each request runs at batch 1 (no padding,
no neighbours) on one intra-op thread, so every kernel sees the same shapes, strides and thread count
whatever else is in flight. Batching, the memo cache, a resume, a replica or a worker process therefore
cannot change a bit of it, which is what makes resume and parallel runs bit-identical. (Batched rows do
not have this property on CPU: MKL picks other kernels for small row counts, padding changes attention
widths, and each expert's row count depends on the other requests.) Throughput comes from caching
vision tokens per (prompt, tier), memoising outcomes across steps, and worker processes, one per core.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.multiprocessing as mp

from grpo_ctrl.data import VQASample, vqa_score
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.latency.base import intra_op_threads
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
    prompt_tokens: int  # input length: <s> + image tokens + question
    generated_tokens: int  # EOS included
    ended_with_eos: bool
    gold_prob: float = float("nan")  # probability of the (best) gold answer's first token at the first step


def compute_outcome(vlm: AdaptiveVLM, question: str, answers: Sequence[str], knobs: Knobs,
                    vision_tokens: torch.Tensor, max_new_tokens: int) -> Outcome:
    """One request at batch 1, its vision tokens (N_tier, H) from `AdaptiveVLM.encode_vision` at `knobs.tier`."""
    device = vlm.model.device
    pool = vlm.knob_space.tiers[knobs.tier]
    inputs = {k: v.to(device) for k, v in vlm.processor.text_inputs([question], pool).items()}
    gen = vlm.generate(inputs, knobs, max_new_tokens=max_new_tokens, image_features=vision_tokens[None].to(device),
                       return_first_logits=True)
    gold_ids = torch.tensor([vlm.answer_first_token(a) for a in answers], device=device)
    # Only the gold answers' probabilities leave the device (a row of logits is vocabulary-sized).
    gold_prob = float(gen.first_logits[0].float().softmax(dim=-1)[gold_ids].max())
    return Outcome(gen.answers[0], vqa_score(gen.answers[0], answers), vlm.processor.num_image_tokens(pool),
                   int(inputs["input_ids"].shape[1]), gen.num_generated[0], gen.ended_with_eos[0], gold_prob)


# ---------------------------------------------------------------- worker processes
_worker_vlm: AdaptiveVLM | None = None


def _start_worker(vlm: AdaptiveVLM) -> None:
    global _worker_vlm
    torch.set_num_threads(1)
    _worker_vlm = vlm


def _worker_outcome(task: tuple) -> Outcome:
    question, answers, knobs, tokens, max_new_tokens = task
    # A fresh torch allocation: the same 64-byte alignment as a tensor made in the parent.
    return compute_outcome(_worker_vlm, question, answers, knobs, torch.from_numpy(tokens).clone(), max_new_tokens)


class RolloutEngine:
    def __init__(self, vlm: AdaptiveVLM, max_new_tokens: int = 2, memoize: bool = True,
                 replicas: Sequence[AdaptiveVLM] = (), workers: int = 1):
        """`replicas` (parallel=dp): copies of `vlm` on other devices, each answering its share in a thread.
        `workers` > 1: that many CPU processes answer (the model's weights are shared with them, not copied)."""
        if workers > 1 and len(replicas) > 1:
            raise ValueError("rollout workers and dp replicas exclude each other; use one of them")
        self.vlm = vlm
        self.replicas = list(replicas) or [vlm]
        self.max_new_tokens = max_new_tokens
        self.memoize = memoize
        self.workers = workers
        self._pool = None
        self._outcomes: dict[tuple[Hashable, Knobs], Outcome] = {}
        self._vision: dict[tuple[Hashable, str], torch.Tensor] = {}
        self._question: dict[Hashable, torch.Tensor] = {}

    def close(self) -> None:
        """Stop the worker processes (a later `run` starts them again)."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    # ------------------------------------------------------------ controller features
    def question_features(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        missing = list({p.key: p for p in prompts if p.key not in self._question}.values())
        with intra_op_threads(1):
            for p in missing:
                self._question[p.key] = self.vlm.question_features([p.sample.question])[0]
        return torch.stack([self._question[p.key] for p in prompts])

    def vision_tokens(self, prompt: Prompt, tier: str) -> torch.Tensor:
        """Projected vision tokens (N_tier, H) of the prompt at `tier`, computed once, alone, kept on the CPU."""
        key = (prompt.key, tier)
        if key not in self._vision:
            with intra_op_threads(1):
                px = self.vlm.processor.pixel_values([prompt.sample.image]).to(self.vlm.model.device)
                self._vision[key] = self.vlm.encode_vision(px, tier)[0].cpu()
        return self._vision[key]

    def vision_features(self, prompts: Sequence[Prompt], tiers: Sequence[str]) -> torch.Tensor:
        """Pooled vision feature (B, H) of each prompt at its own tier (what stage 2 reads)."""
        return torch.stack([self.vlm.vision_summary(self.vision_tokens(p, t)[None])[0] for p, t in zip(prompts, tiers)])

    # ------------------------------------------------------------ answers
    def run(self, prompts: Sequence[Prompt], knobs: Sequence[Knobs]) -> list[Outcome]:
        """Outcome of each (prompt, knobs) pair, in order."""
        todo = list({(p.key, k): (p, k) for p, k in zip(prompts, knobs) if (p.key, k) not in self._outcomes}.values())
        tasks = [(p.sample.question, tuple(p.sample.answers), k, self.vision_tokens(p, k.tier),
                  self.max_new_tokens) for p, k in todo]
        for (p, k), outcome in zip(todo, self._answer(tasks)):
            self._outcomes[(p.key, k)] = outcome
        out = [self._outcomes[(p.key, k)] for p, k in zip(prompts, knobs)]
        if not self.memoize:
            self._outcomes.clear()
        return out

    def _answer(self, tasks: list[tuple]) -> list[Outcome]:
        if not tasks:
            return []
        if self.workers > 1:
            if self._pool is None:  # spawn: forking a process that has run OpenMP threads can hang the child
                self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                                 initializer=_start_worker, initargs=(self.vlm,))
            tasks = [(q, a, k, t.numpy(), n) for q, a, k, t, n in tasks]
            # A worker that dies raises BrokenProcessPool here (multiprocessing.Pool would wait forever).
            return list(self._pool.map(_worker_outcome, tasks, chunksize=max(1, len(tasks) // (4 * self.workers))))
        with intra_op_threads(1):
            if len(self.replicas) == 1:
                return [compute_outcome(self.vlm, *task) for task in tasks]
            n = len(self.replicas)
            with ThreadPoolExecutor(n) as pool:  # one thread per replica, each working through its share
                shares = list(pool.map(lambda r: [compute_outcome(self.replicas[r], *t) for t in tasks[r::n]],
                                       range(n)))
        out = [None] * len(tasks)
        for r, share in enumerate(shares):
            out[r::n] = share
        return out


def default_workers(device: str, local_ranks: int = 1) -> int:
    """One rollout process per CPU core this rank may use (its share of the machine's); none extra when the
    model runs on a GPU."""
    if not device.startswith("cpu"):
        return 1
    return max(1, len(os.sched_getaffinity(0)) // local_ranks)

