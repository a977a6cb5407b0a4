"""Rollouts/s of building the outcome store (every knob setting over a pool of prompts, chunked by `batch_size`,
N worker processes) against the batch-1 engine with the same workers, on the same (prompt, setting) pairs; prints
the ratio and the share of pairs whose score differs between the two (the flip rate).

    .venv/bin/python benchmarks/rollout_throughput.py [model=DIR] [prompts=64] [settings=27] [batch_size=16]
        [workers=2]
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from grpo_ctrl.cli import parse_key_values
from grpo_ctrl.data import GridVQA
from grpo_ctrl.rollout import Prompt, PromptPool, RolloutEngine
from grpo_ctrl.vlm import load_vlm


@dataclass
class Args:
    model: str | None = None  # model dir (default: the embedded VLM)
    prompts: int = 64  # test prompts of the pool
    settings: int = 27  # the first N settings of the knob space
    batch_size: int = 16  # rows per chunk of the chunked build
    workers: int = 2  # rollout worker processes


def build(vlm, prompts, settings, batch_size: int, workers: int) -> tuple[float, list]:
    """Seconds to fill a fresh in-memory store with every (setting, prompt) pair, and the outcomes."""
    engine = RolloutEngine(vlm, batch_size=batch_size, workers=workers)
    try:
        if workers > 1:  # start the worker processes outside the timed part (on a prompt outside the pool)
            warm = Prompt(("warm", 0), GridVQA().sample("val", 0))
            engine.run([warm, warm], vlm.knob_space.all()[:2])
        start = time.perf_counter()
        outcomes = [engine.run(prompts, [k] * len(prompts)) for k in settings]
        return time.perf_counter() - start, outcomes
    finally:
        engine.close()


def main() -> None:
    args = parse_key_values(Args, "benchmarks/rollout_throughput.py",
                            "python benchmarks/rollout_throughput.py [key=value ...]")
    torch.set_num_threads(1)
    vlm = load_vlm(args.model)
    settings = vlm.knob_space.all()[: args.settings]
    pools = {b: list(PromptPool(GridVQA().split("test", args.prompts), "test")) for b in (1, args.batch_size)}
    seconds, outcomes = {}, {}
    for b in (1, args.batch_size):
        seconds[b], outcomes[b] = build(vlm, pools[b], settings, b, args.workers)
    n = len(settings) * args.prompts
    pairs = [(a, c) for x, y in zip(outcomes[1], outcomes[args.batch_size]) for a, c in zip(x, y)]
    flips = sum(a.score != c.score for a, c in pairs)
    print(f"{n} rollouts ({len(settings)} settings x {args.prompts} prompts), {args.workers} worker(s)")
    print(f"batch 1            : {n / seconds[1]:7.1f} rollouts/s")
    print(f"chunks of {args.batch_size:<8} : {n / seconds[args.batch_size]:7.1f} rollouts/s "
          f"({seconds[1] / seconds[args.batch_size]:.2f}x batch 1)")
    print(f"flip rate (score differs from batch 1): {flips}/{n} = {flips / n:.2%}")


if __name__ == "__main__":
    main()
