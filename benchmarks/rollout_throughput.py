"""Rollouts/s of the rollout engine (knob-batched generate, vision cached per prompt x tier, no memo reuse)
against naive one-by-one generate() on the same (prompt, knobs) pairs (target >= 3x).

    .venv/bin/python benchmarks/rollout_throughput.py [--prompts 16] [--group 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from grpo_ctrl.data import GridVQA
from grpo_ctrl.rollout import Prompt, RolloutEngine
from grpo_ctrl.vlm.adaptive import AdaptiveVLM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    vlm = AdaptiveVLM.from_pretrained(args.model)
    data = GridVQA()
    settings = vlm.knob_space.all()
    rng = np.random.default_rng(0)
    engine_s, naive_s, n, agree = 0.0, 0.0, 0, 0
    for r in range(args.rounds):
        prompts = [Prompt(("bench", r * 1000 + i), data.sample("test", r * 1000 + i)) for i in range(args.prompts)]
        pairs = [(p, settings[rng.integers(len(settings))]) for p in prompts for _ in range(args.group)]
        engine = RolloutEngine(vlm, memoize=False)  # fresh caches: no reuse across rounds
        start = time.perf_counter()
        outcomes = engine.run([p for p, _ in pairs], [k for _, k in pairs])
        engine_s += time.perf_counter() - start
        start = time.perf_counter()
        naive = [vlm.answer([p.sample.image], [p.sample.question], k).answers[0] for p, k in pairs]
        naive_s += time.perf_counter() - start
        n += len(pairs)
        agree += sum(o.answer == a for o, a in zip(outcomes, naive))
    print(f"{n} rollouts ({args.prompts} prompts x group {args.group}, {args.rounds} rounds, random knobs)")
    print(f"engine: {n / engine_s:8.1f} rollouts/s")
    print(f"naive : {n / naive_s:8.1f} rollouts/s")
    print(f"speed-up: {naive_s / engine_s:.2f}x (target >= 3x); answers identical: {agree}/{n}")


if __name__ == "__main__":
    main()
