"""Rollouts/s of building the outcome store (every knob setting over a pool of prompts, chunked by `--batch-size`,
N worker processes) against the batch-1 engine with the same workers, on the same (prompt, setting) pairs; prints
the ratio and the share of pairs whose score differs between the two (the flip rate).

    .venv/bin/python benchmarks/rollout_throughput.py [--prompts 64] [--settings 27] [--batch-size 16] [--workers 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from grpo_ctrl.data import GridVQA
from grpo_ctrl.rollout import Prompt, PromptPool, RolloutEngine
from grpo_ctrl.vlm import load_vlm


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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--settings", type=int, default=27, help="the first N settings of the knob space")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
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
