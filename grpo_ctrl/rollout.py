"""Rollouts: the outcome of (prompt, knobs) pairs, read from the outcome store or computed in a fixed chunk plan.

The plan: a pool's prompts, in source order, cut into chunks of `batch_size`. A pair that is not stored computes its
whole chunk at its knob setting as one batch (left-padded rows, vision encoded per chunk and tier). A chunk's
composition depends on the data alone, never on what training sampled, the ranks, the cache or which worker runs
it, and it always runs on one intra-op thread on a CPU: so every consumer of a pair sees the same bits on a
machine, however it got there, which keeps resume and parallel runs bit-identical while batching.
`batch_size=1` is batch-1 generation, request by request. A prompt outside a pool is a chunk of its own.

Throughput: batching, the store (`grpo_ctrl.outcomes`), an LRU of encoded chunks per tier, and CPU worker
processes (one chunk per task) or dp replicas.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.multiprocessing as mp

from grpo_ctrl.data import Split, VQASample, extract_answer, get_metric
from grpo_ctrl.data.source import LazySequence
from grpo_ctrl.fingerprint import digest
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.latency.guard import token_counts
from grpo_ctrl.outcomes import Outcome, OutcomeStore
from grpo_ctrl.preemption import STOP_SIGNALS
from grpo_ctrl.threads import intra_op_threads
from grpo_ctrl.vlm import VLMAdapter


@dataclass(frozen=True)
class Prompt:
    key: Hashable  # identity within a run, e.g. ("train", 17)
    sample: VQASample
    id: str = ""  # the sample's id in its data source (`Split.sample_id`); "" : the key's text
    pool: PromptPool | None = field(default=None, compare=False, repr=False)  # the plan it is computed in
    index: int = 0  # its position in `pool`

    @property
    def sample_id(self) -> str:
        if self.id:
            return self.id
        return "/".join(map(str, self.key)) if isinstance(self.key, tuple) else str(self.key)


class PromptPool(LazySequence):
    """The prompts of one split, each built when indexed (key: (split name, index)): a pool holds no images."""

    def __init__(self, split: Split, name: str):
        self.split, self.name = split, name

    def __len__(self) -> int:
        return len(self.split)

    def _get(self, index: int) -> Prompt:
        return Prompt((self.name, index), self.split[index], self.split.sample_id(index), self, index)


@dataclass(frozen=True)
class Scoring:
    """How an outcome is scored: the data's metric, and whether the dense gold-answer probability is computed
    (a multi-token gold answer costs one teacher-forced forward, so it is skipped when the reward ignores it)."""

    metric: str = "exact_match"
    gold_prob: bool = True


@dataclass(frozen=True)
class Chunk:
    """One chunk of the plan: its members' sample ids (the digest `plan` names it by) and how to build them."""

    ids: tuple[str, ...]
    plan: str
    members: Callable[[], list[Prompt]] = field(compare=False, repr=False)

    @classmethod
    def of_pool(cls, pool: PromptPool, start: int, stop: int) -> Chunk:
        ids = tuple(pool.split.sample_id(i) for i in range(start, stop))
        return cls(ids, digest(list(ids)), lambda: pool[start:stop])

    @classmethod
    def alone(cls, prompt: Prompt) -> Chunk:
        return cls((prompt.sample_id,), digest([prompt.sample_id]), lambda: [prompt])


def tier_key(vlm: VLMAdapter, tier: str) -> str:
    return f"{tier}={vlm.knob_space.tiers[tier]}"


def knob_key(vlm: VLMAdapter, knobs: Knobs) -> str:
    """Knob values as stored: a tier by name and value (the name alone can mean another pooling or pixel count)."""
    return f"{tier_key(vlm, knobs.tier)}/k{knobs.top_k}/b{knobs.num_blocks}"


def compute_chunk(vlm: VLMAdapter, inputs: dict[str, torch.Tensor], vision: list[dict[str, torch.Tensor]],
                  samples: Sequence[tuple[tuple[str, ...], str]], knobs: Knobs, max_new_tokens: int,
                  scoring: Scoring = Scoring()) -> list[Outcome]:
    """The outcomes of a chunk's rows at `knobs`: left-padded text `inputs` and each row's vision encoding at
    `knobs.tier` (`VLMAdapter.encode_vision`), generated as one batch; `samples` gives each row's (gold answers,
    most frequent gold answer)."""
    device = vlm.model.device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    gen = vlm.generate(inputs, knobs, max_new_tokens=max_new_tokens, vision=vision,
                       return_first_logits=scoring.gold_prob)
    metric = get_metric(scoring.metric)
    image_tokens, prompt_tokens = vlm.image_tokens(inputs), vlm.prompt_tokens(inputs)
    out = []
    for i, (answers, gold) in enumerate(samples):
        gold_prob = float("nan")
        if scoring.gold_prob:  # a multi-token gold answer: one teacher-forced forward of this row alone
            gold_prob = vlm.answer_probability(vlm.row(inputs, i), vision[i:i + 1], gold, knobs,
                                               gen.first_logits[i:i + 1])
        answer = extract_answer(gen.answers[i])
        out.append(Outcome(answer, metric(answer, answers), int(image_tokens[i]), int(prompt_tokens[i]),
                           gen.num_generated[i], gen.ended_with_eos[i], gold_prob))
    return out


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


def _worker_chunk(task: tuple) -> list[Outcome]:
    inputs, vision, *rest = task
    return compute_chunk(_worker_vlm, _from_numpy(inputs), [_from_numpy(v) for v in vision], *rest)


class RolloutEngine:
    def __init__(self, vlm: VLMAdapter, max_new_tokens: int = 2, batch_size: int = 1,
                 store: OutcomeStore | None = None, replicas: Sequence[VLMAdapter] = (), workers: int = 1,
                 scoring: Scoring = Scoring(), vision_cache_mb: float = 96):
        """`batch_size`: rows per chunk of the plan. `store`: where outcomes and features are kept (default: a
        fresh in-memory one). `replicas` (parallel=dp): copies of `vlm` on other devices, each answering its share
        of the chunks in a thread. `workers` > 1: that many CPU processes answer (the model's weights are shared
        with them, not copied). `vision_cache_mb`: memory for encoded (chunk, tier) entries (LRU, at least one)."""
        if workers > 1 and len(replicas) > 1:
            raise ValueError("rollout workers and dp replicas exclude each other; use one of them")
        if batch_size < 1:
            raise ValueError(f"rollout.batch_size={batch_size} must be >= 1")
        self.vlm = vlm
        self.replicas = list(replicas) or [vlm]
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.scoring = scoring
        self.store = store if store is not None else OutcomeStore()
        self.workers = workers
        self.vision_cache_bytes = vision_cache_mb * 2**20
        self._encoded_bytes = 0
        self._trimmed = time.monotonic()
        self._pool = None
        self._encoded: OrderedDict[tuple[str, str], tuple] = OrderedDict()
        self._chunks: dict[tuple[int, int], Chunk] = {}  # (pool, first index) -> chunk: ids only, a few bytes each
        self._counts: dict[str, list[tuple[int, int]]] = {}  # sample id -> token counts per tier (a guard's input)
        settings = {"max_new_tokens": max_new_tokens, "metric": scoring.metric, "gold_prob": scoring.gold_prob}
        self._settings = digest(settings)

    def close_workers(self) -> None:
        """Stop the worker processes (a later `run` starts them again)."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        """Stop the workers and close the store."""
        self.close_workers()
        self.store.close()

    # ------------------------------------------------------------ the plan
    def chunk(self, prompt: Prompt) -> Chunk:
        """The chunk of the plan that computes `prompt` (its members are built only to compute it)."""
        if prompt.pool is None:
            return Chunk.alone(prompt)
        start = prompt.index - prompt.index % self.batch_size
        key = (id(prompt.pool), start)
        if key not in self._chunks:
            self._chunks[key] = Chunk.of_pool(prompt.pool, start, min(start + self.batch_size, len(prompt.pool)))
        return self._chunks[key]

    def _plan(self, chunk: Chunk) -> str:
        return f"{self._settings}:{chunk.plan}"

    # ------------------------------------------------------------ controller features
    def question_features(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """Question feature (B, H) of each prompt (computed per question: no batch dependence)."""
        keys = [(p.sample_id, "") for p in prompts]
        found = self.store.features("question", keys)
        missing = {k: p for k, p in zip(keys, prompts) if k not in found}
        if missing:
            with intra_op_threads(1):
                values = self.vlm.question_features([p.sample.question for p in missing.values()])
            found.update(self.store.put_features("question", dict(zip(missing, values.numpy()))))
        return torch.from_numpy(np.stack([found[k] for k in keys]))

    def vision_features(self, prompts: Sequence[Prompt], tiers: Sequence[str]) -> torch.Tensor:
        """Pooled vision feature (B, H) of each prompt at its own tier (what stage 2 reads), encoded per chunk."""
        chunks = {p.key: self.chunk(p) for p in prompts}
        wanted = {}
        for p, t in zip(prompts, tiers):
            wanted.setdefault(tier_key(self.vlm, t), {})[(p.sample_id, chunks[p.key].plan)] = (p, t)
        found = {}
        for kind, pairs in wanted.items():
            have = self.store.features(f"vision:{kind}", pairs)
            for key, (p, t) in pairs.items():
                if key in have:
                    continue
                chunk = chunks[p.key]
                _, vision, _ = self._encode(chunk, t)
                summaries = {(i, chunk.plan): self.vlm.vision_summary(v).numpy() for i, v in zip(chunk.ids, vision)}
                have.update(self.store.put_features(f"vision:{kind}", summaries))
            found.update({(kind, *k): v for k, v in have.items()})
        return torch.from_numpy(np.stack([found[(tier_key(self.vlm, t), p.sample_id, chunks[p.key].plan)]
                                          for p, t in zip(prompts, tiers)]))

    def token_counts(self, prompt: Prompt) -> list[tuple[int, int]]:
        """(image tokens, prompt tokens) of a prompt at each tier, batch 1 (what a latency guard prices)."""
        if prompt.sample_id not in self._counts:
            self._counts[prompt.sample_id] = token_counts(self.vlm, prompt.sample.image, prompt.sample.question)
        return self._counts[prompt.sample_id]

    def _encode(self, chunk: Chunk, tier: str) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]], list]:
        """(left-padded text inputs, vision encoding per row, (gold answers, gold) per row) of a chunk at `tier`:
        samples are built, and the processor and the vision encoder run, once per (chunk, tier) while it stays in
        the LRU."""
        key = (chunk.plan, tier)
        if key in self._encoded:
            self._encoded.move_to_end(key)
            return self._encoded[key]
        vlm = self.vlm
        samples = [p.sample for p in chunk.members()]
        with intra_op_threads(1):
            inputs = vlm.inputs([s.image for s in samples], [s.question for s in samples], tier)
            vision = vlm.encode_vision({k: v.to(vlm.model.device) for k, v in inputs.items()}, tier)
        entry = (vlm.text_inputs(inputs), [{k: v.cpu() for k, v in row.items()} for row in vision],
                 [(s.answers, s.answer) for s in samples])
        self._encoded[key] = entry
        self._encoded_bytes += _nbytes(entry)
        while self._encoded_bytes > self.vision_cache_bytes and len(self._encoded) > 1:
            self._encoded_bytes -= _nbytes(self._encoded.popitem(last=False)[1])
        return entry

    # ------------------------------------------------------------ answers
    def run(self, prompts: Sequence[Prompt], knobs: Sequence[Knobs]) -> list[Outcome]:
        """Outcome of each (prompt, knobs) pair, in order: read from the store, or computed chunk by chunk."""
        keys = [(p.sample_id, knob_key(self.vlm, k)) for p, k in zip(prompts, knobs)]
        chunks = {p.key: self.chunk(p) for p in prompts}
        full = [(*key, self._plan(chunks[p.key])) for key, p in zip(keys, prompts)]
        found = self.store.outcomes(full)
        todo = {}
        for key, p, k in zip(full, prompts, knobs):
            if key not in found:
                todo.setdefault((chunks[p.key].plan, k), (chunks[p.key], k))
        if todo:
            for (chunk, k), outcomes in zip(todo.values(), self._answer(list(todo.values()))):
                items = {(i, knob_key(self.vlm, k), self._plan(chunk)): o for i, o in zip(chunk.ids, outcomes)}
                found.update(self.store.put_outcomes(items))
            if time.monotonic() - self._trimmed > TRIM_EVERY_S:
                _release_freed_memory()
                self._trimmed = time.monotonic()
        return [found[key] for key in full]

    def _answer(self, jobs: list[tuple[Chunk, Knobs]]) -> list[list[Outcome]]:
        tasks = []
        for chunk, k in jobs:
            inputs, vision, samples = self._encode(chunk, k.tier)
            tasks.append((inputs, vision, samples, k, self.max_new_tokens, self.scoring))
        if self.workers > 1 and len(tasks) > 1:
            if self._pool is None:  # spawn: forking a process that has run OpenMP threads can hang the child
                self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                                 initializer=_start_worker, initargs=(self.vlm,))
            tasks = [(_to_numpy(i), [_to_numpy(v) for v in vision], *rest) for i, vision, *rest in tasks]
            # A worker that dies raises BrokenProcessPool here (multiprocessing.Pool would wait forever).
            return list(self._pool.map(_worker_chunk, tasks))
        with intra_op_threads(1):
            if len(self.replicas) == 1:
                return [compute_chunk(self.vlm, *task) for task in tasks]
            n = len(self.replicas)
            with ThreadPoolExecutor(n) as pool:  # one thread per replica, each working through its share
                shares = list(pool.map(lambda r: [compute_chunk(self.replicas[r], *t) for t in tasks[r::n]],
                                       range(n)))
        out = [None] * len(tasks)
        for r, share in enumerate(shares):
            out[r::n] = share
        return out


TRIM_EVERY_S = 2.0  # returning freed memory costs ~20 ms: at most once per this many seconds of computing


def _release_freed_memory() -> None:
    """Hand the memory a batch of chunks freed back to the OS. glibc's malloc keeps freed blocks of a process that
    allocates and frees steadily (a large dataset's stream of new chunks): with the encoded-chunk cache bounded, a
    10k-sample hf_vqa run's peak RSS was 1.49x a 1k-sample run's without this, 1.23x with it after every batch."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _nbytes(entry: tuple) -> int:
    inputs, vision, _ = entry
    tensors = [*inputs.values(), *(v for row in vision for v in row.values())]
    return sum(t.numel() * t.element_size() for t in tensors)


def default_workers(device: str, local_ranks: int = 1) -> int:
    """One rollout process per CPU core this rank may use (its share of the machine's); none extra when the
    model runs on a GPU."""
    if not device.startswith("cpu"):
        return 1
    return max(1, len(os.sched_getaffinity(0)) // local_ranks)
