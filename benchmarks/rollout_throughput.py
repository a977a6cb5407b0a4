"""Rollouts/s of the rollout engine (each request alone at batch 1 on one thread, vision cached per prompt x tier,
no memo reuse) with 1 and N worker processes, against naive one-by-one generate() on the same (prompt, knobs)
pairs; checks that both engines give the same outcomes, bit for bit.

    .venv/bin/python benchmarks/rollout_throughput.py [--prompts 16] [--group 8] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from grpo_ctrl.data import GridVQA
from grpo_ctrl.rollout import Prompt, RolloutEngine
from grpo_ctrl.vlm import load_vlm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of the naive loop")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    vlm = load_vlm(args.model)
    data = GridVQA()
    settings = vlm.knob_space.all()
    rng = np.random.default_rng(0)
    pooled = RolloutEngine(vlm, memoize=False, workers=args.workers)
    pooled.run([Prompt(("warm", 0), data.sample("test", 0))], [vlm.knob_space.full])  # start the workers
    seconds, n, same = {"naive": 0.0, "engine": 0.0, "workers": 0.0}, 0, 0
    for r in range(args.rounds):
        prompts = [Prompt(("bench", r * 1000 + i), data.sample("test", r * 1000 + i)) for i in range(args.prompts)]
        pairs = [(p, settings[rng.integers(len(settings))]) for p in prompts for _ in range(args.group)]
        start = time.perf_counter()
        for p, k in pairs:
            vlm.answer([p.sample.image], [p.sample.question], k)
        seconds["naive"] += time.perf_counter() - start
        results = {}
        for name, engine in (("engine", RolloutEngine(vlm, memoize=False)), ("workers", pooled)):
            engine._vision.clear()  # fresh vision cache each round: no reuse across rounds
            start = time.perf_counter()
            results[name] = engine.run([p for p, _ in pairs], [k for _, k in pairs])
            seconds[name] += time.perf_counter() - start
        n += len(pairs)
        same += sum(a == b for a, b in zip(results["engine"], results["workers"]))
    pooled.close()
    print(f"{n} rollouts ({args.prompts} prompts x group {args.group}, {args.rounds} rounds, random knobs)")
    print(f"naive generate ({args.threads} threads): {n / seconds['naive']:7.1f} rollouts/s")
    print(f"engine, in process      : {n / seconds['engine']:7.1f} rollouts/s "
          f"({seconds['naive'] / seconds['engine']:.2f}x naive)")
    print(f"engine, {args.workers} workers       : {n / seconds['workers']:7.1f} rollouts/s "
          f"({seconds['naive'] / seconds['workers']:.2f}x naive)")
    print(f"outcomes identical in process and in workers: {same}/{n}")


if __name__ == "__main__":
    main()
