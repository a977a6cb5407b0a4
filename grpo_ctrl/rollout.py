"""Rollout engine: the outcome of each (prompt, knobs) pair, computed for that request alone.

An outcome is a pure function of (prompt, knobs, weights, CPU): each request runs at batch 1 (no padding,
no neighbours) on one intra-op thread, so every kernel sees the same shapes, strides and thread count
whatever else is in flight. Batching, the memo cache, a resume, a replica or a worker process therefore
cannot change a bit of it, which is what makes resume and parallel runs bit-identical. (Batched rows do
not have this property on CPU: MKL picks other kernels for small row counts, padding changes attention
widths, and each expert's row count depends on the other requests.) Throughput comes from caching
inputs and vision tokens per (prompt, tier), memoising outcomes across steps, and worker processes, one per core.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.multiprocessing as mp

from grpo_ctrl.data import Split, VQASample, extract_answer, get_metric
from grpo_ctrl.data.source import LazySequence
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.latency.base import intra_op_threads
from grpo_ctrl.preemption import STOP_SIGNALS
from grpo_ctrl.vlm import VLMAdapter


@dataclass(frozen=True)
class Prompt:
    key: Hashable  # stable identity, e.g. ("train", 17)
    sample: VQASample


class PromptPool(LazySequence):
    """The prompts of one split, each built when indexed (key: (split name, index)): a pool holds no images."""

    def __init__(self, split: Split, name: str):
        self.split, self.name = split, name

    def __len__(self) -> int:
        return len(self.split)

    def _get(self, index: int) -> Prompt:
        return Prompt((self.name, index), self.split[index])


@dataclass(frozen=True)
class Outcome:
    answer: str  # the extracted answer (`data.extract_answer` of the generated text)
    score: float  # the data's metric of the answer against the gold answers
    image_tokens: int
    prompt_tokens: int  # input length: <s> + image tokens + question
    generated_tokens: int  # EOS included
    ended_with_eos: bool
    gold_prob: float = float("nan")  # exp(mean token log-prob) of the most frequent gold answer (dense reward)


@dataclass(frozen=True)
class Scoring:
    """How an outcome is scored: the data's metric, and whether the dense gold-answer probability is computed
    (a multi-token gold answer costs one teacher-forced forward, so it is skipped when the reward ignores it)."""

    metric: str = "exact_match"
    gold_prob: bool = True


def compute_outcome(vlm: VLMAdapter, inputs: dict[str, torch.Tensor], vision: dict[str, torch.Tensor],
                    answers: Sequence[str], gold: str, knobs: Knobs, max_new_tokens: int,
                    scoring: Scoring = Scoring()) -> Outcome:
    """One request at batch 1: its text inputs and vision encoding (`VLMAdapter.encode_vision`) at `knobs.tier`;
    `gold` is the most frequent of the gold `answers`."""
    device = vlm.model.device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    gen = vlm.generate(inputs, knobs, max_new_tokens=max_new_tokens, vision=vision,
                       return_first_logits=scoring.gold_prob)
    gold_prob = vlm.answer_probability(inputs, vision, gold, knobs, gen.first_logits) if scoring.gold_prob \
        else float("nan")
    answer = extract_answer(gen.answers[0])
    return Outcome(answer, get_metric(scoring.metric)(answer, answers), vlm.image_tokens(inputs),
                   int(inputs["input_ids"].shape[1]), gen.num_generated[0], gen.ended_with_eos[0], gold_prob)


# ---------------------------------------------------------------- worker processes
_worker_vlm: VLMAdapter | None = None


def _start_worker(vlm: VLMAdapter) -> None:
    global _worker_vlm
    torch.set_num_threads(1)
    # Slurm signals every process of a job step: the trainer stops at its next step boundary, which needs
    # the workers alive until then (it shuts them down itself). A trainer killed outright cannot: then a worker
    # leaves on its own (a pool worker would otherwise wait for work forever).
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()
    _worker_vlm = vlm


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


def _to_numpy(tensors: dict[str, torch.Tensor]) -> dict:
    return {k: v.numpy() for k, v in tensors.items()}


def _from_numpy(arrays: dict) -> dict[str, torch.Tensor]:
    # A fresh torch allocation: the same 64-byte alignment as a tensor made in the parent.
    return {k: torch.from_numpy(v).clone() for k, v in arrays.items()}


def _worker_outcome(task: tuple) -> Outcome:
    inputs, vision, *rest = task
    return compute_outcome(_worker_vlm, _from_numpy(inputs), _from_numpy(vision), *rest)


class RolloutEngine:
    def __init__(self, vlm: VLMAdapter, max_new_tokens: int = 2, memoize: bool = True,
                 replicas: Sequence[VLMAdapter] = (), workers: int = 1, scoring: Scoring = Scoring()):
        """`replicas` (parallel=dp): copies of `vlm` on other devices, each answering its share in a thread.
        `workers` > 1: that many CPU processes answer (the model's weights are shared with them, not copied)."""
        if workers > 1 and len(replicas) > 1:
            raise ValueError("rollout workers and dp replicas exclude each other; use one of them")
        self.vlm = vlm
        self.replicas = list(replicas) or [vlm]
        self.max_new_tokens = max_new_tokens
        self.scoring = scoring
        self.memoize = memoize
        self.workers = workers
        self._pool = None
        self._outcomes: dict[tuple[Hashable, Knobs], Outcome] = {}
        # Per (prompt, tier): text inputs and vision encoding, made once, alone, kept on the CPU.
        self._encoded: dict[tuple[Hashable, str], tuple[dict, dict]] = {}
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

    def encoded(self, prompt: Prompt, tier: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(text inputs, vision encoding) of the prompt at `tier`: the processor and the vision encoder run once."""
        key = (prompt.key, tier)
        if key not in self._encoded:
            vlm = self.vlm
            with intra_op_threads(1):
                sample = prompt.sample
                inputs = vlm.inputs([sample.image], [sample.question], tier)
                vision = vlm.encode_vision({k: v.to(vlm.model.device) for k, v in inputs.items()}, tier)
            self._encoded[key] = (vlm.text_inputs(inputs), {k: v.cpu() for k, v in vision.items()})
        return self._encoded[key]

    def vision_features(self, prompts: Sequence[Prompt], tiers: Sequence[str]) -> torch.Tensor:
        """Pooled vision feature (B, H) of each prompt at its own tier (what stage 2 reads)."""
        return torch.stack([self.vlm.vision_summary(self.encoded(p, t)[1]) for p, t in zip(prompts, tiers)])

    # ------------------------------------------------------------ answers
    def run(self, prompts: Sequence[Prompt], knobs: Sequence[Knobs]) -> list[Outcome]:
        """Outcome of each (prompt, knobs) pair, in order."""
        todo = list({(p.key, k): (p, k) for p, k in zip(prompts, knobs) if (p.key, k) not in self._outcomes}.values())
        tasks = [(*self.encoded(p, k.tier), p.sample.answers, p.sample.answer, k, self.max_new_tokens, self.scoring)
                 for p, k in todo]
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
            tasks = [(_to_numpy(i), _to_numpy(v), *rest) for i, v, *rest in tasks]
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

