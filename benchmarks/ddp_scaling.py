"""Rollouts/s with 2 DDP ranks (gloo on CPU, nccl on GPU) against 1 rank, on the same global batch.

Each rank runs the rollout engine (a fresh one per round: no stored outcomes reused) on its own shard of the
prompts x random knobs, as `parallel=ddp` does; wall time is from a barrier before to a barrier after. The engine
computes on one intra-op thread per rank on a CPU (workers=1), so the ranks are the only parallelism.

    .venv/bin/python benchmarks/ddp_scaling.py [model=DIR] [prompts=32] [group=8] [rounds=3]
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from grpo_ctrl.cli import parse_key_values
from grpo_ctrl.data import GridVQA
from grpo_ctrl.parallel import free_port
from grpo_ctrl.rollout import Prompt, RolloutEngine
from grpo_ctrl.vlm import load_vlm


@dataclass
class Args:
    model: str | None = None  # model dir (default: the embedded VLM)
    prompts: int = 32  # prompts per round, split over the ranks (>= 2)
    group: int = 8  # random knob settings per prompt
    rounds: int = 3  # timed rounds, after one warm-up round (>= 1)


def worker(rank: int, world: int, port: int, args, threads: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = f"cuda:{rank}" if torch.cuda.is_available() else "cpu"
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", rank=rank, world_size=world)
    torch.set_num_threads(threads)
    vlm = load_vlm(args.model)
    vlm.model.to(device)
    data = GridVQA()
    settings = vlm.knob_space.all()
    rng = np.random.default_rng(0)
    elapsed, count = 0.0, 0
    for r in range(args.rounds + 1):  # round 0 warms up
        prompts = [Prompt(("b", r, i), data.sample("test", r * 1000 + i)) for i in range(args.prompts)]
        pairs = [(p, settings[rng.integers(len(settings))]) for p in prompts for _ in range(args.group)]
        per_rank = len(prompts) // world
        mine = pairs[rank * per_rank * args.group:(rank + 1) * per_rank * args.group]
        engine = RolloutEngine(vlm)
        dist.barrier()
        start = time.perf_counter()
        engine.run([p for p, _ in mine], [k for _, k in mine])
        dist.barrier()
        if r > 0:
            elapsed += time.perf_counter() - start
            count += per_rank * world * args.group  # what the ranks computed (a remainder of prompts is left out)
    if rank == 0:
        out.put(count / elapsed)
    del vlm
    dist.destroy_process_group()


def measure(world: int, threads: int, args) -> float:
    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(worker, args=(world, free_port(), args, threads, queue), nprocs=world, start_method="spawn")
    return queue.get()


def main() -> None:
    program = "benchmarks/ddp_scaling.py"
    args = parse_key_values(Args, program, f"python {program} [key=value ...]")
    if args.prompts < 2 or args.rounds < 1:
        print(f"{program}: prompts={args.prompts} rounds={args.rounds}: prompts must be >= 2 (one per rank) and "
              "rounds >= 1", file=sys.stderr)
        sys.exit(2)
    cores = os.cpu_count() or 1
    one = measure(1, cores, args)
    two = measure(2, max(1, cores // 2), args)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {cores} cores"
    print(f"device: {device}; {args.prompts} prompts x group {args.group} per round, {args.rounds} rounds")
    # Rollouts compute on one intra-op thread per rank whatever torch.set_num_threads says (the engine's choice).
    print(f"1 rank : {one:8.1f} rollouts/s")
    print(f"2 ranks: {two:8.1f} rollouts/s")
    print(f"2 ranks / 1 rank: {two / one:.2f}x")


if __name__ == "__main__":
    main()
