"""Overhead of hooked latency measurement: interleaved pairs of plain generate() and hooked generate()
(LatencyExperiment.measure_inference_latency) on the same batch-1 request; prints the median ratio of the
latency each reports (the same interval: the generate() call, with and without the hooks in it), and the wall
time of the whole hooked call (which also attaches the hooks and counts tokens, outside its clock).

    .venv/bin/python benchmarks/latency_overhead.py [model=DIR] [pairs=30] [warmup=3] [new_tokens=8]
        [knobs=full|cheapest] [device=cpu] [threads=2]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

from grpo_ctrl.cli import parse_key_values
from grpo_ctrl.data import GridVQA
from grpo_ctrl.latency.clock import now
from grpo_ctrl.latency.experiment import LatencyExperiment
from grpo_ctrl.vlm import load_vlm

KNOBS = ("full", "cheapest")


@dataclass
class Args:
    model: str | None = None  # model dir (default: the embedded VLM)
    pairs: int = 30  # interleaved plain/hooked pairs (>= 20)
    warmup: int = 3  # untimed pairs first
    new_tokens: int = 8  # forced output length (min = max new tokens)
    knobs: str = "full"  # the knob setting: full or cheapest
    device: str = "cpu"  # where the model runs (cpu, cuda, cuda:1, ...)
    threads: int = 2  # torch intra-op threads


def paired_times(exp: LatencyExperiment, inputs: dict, knobs, n: int, pairs: int,
                 warmup: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(plain ms, hooked ms, hooked wall ms) of `pairs` interleaved plain / hooked generate() calls of one batch-1
    request with `n` forced new tokens, after `warmup` untimed pairs; which of the two runs first alternates so
    drift cancels. Plain ms is the call's wall time; hooked ms is the total the hooked measurement reports for
    the same interval; hooked wall ms is the wall time of the whole `measure_inference_latency` call."""
    vlm = exp.vlm
    device = vlm.model.device

    def plain() -> float:
        start = now(device)
        vlm.generate(inputs, knobs, max_new_tokens=n, min_new_tokens=n)
        return (now(device) - start) * 1000

    def hooked() -> tuple[float, float]:
        start = now(device)
        total = exp.measure_inference_latency(inputs, knobs, max_new_tokens=n, min_new_tokens=n).total
        return total, (now(device) - start) * 1000

    for _ in range(warmup):
        plain()
        hooked()
    p_ms, h_ms = [], []
    for i in range(pairs):
        if i % 2:
            h_ms.append(hooked())
            p_ms.append(plain())
        else:
            p_ms.append(plain())
            h_ms.append(hooked())
    h = np.array(h_ms)
    return np.array(p_ms), h[:, 0], h[:, 1]


def main() -> None:
    program = "benchmarks/latency_overhead.py"
    args = parse_key_values(Args, program, f"python {program} [key=value ...]")
    if args.knobs not in KNOBS:
        print(f"{program}: knobs={args.knobs} is not a setting here; use one of {list(KNOBS)}", file=sys.stderr)
        sys.exit(2)
    if args.pairs < 20:
        print(f"{program}: pairs={args.pairs} must be >= 20", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(args.threads)
    vlm = load_vlm(args.model)
    vlm.model.to(args.device)
    device = vlm.model.device
    exp = LatencyExperiment(vlm=vlm)
    knobs = getattr(vlm.knob_space, args.knobs)
    sample = GridVQA().split("test", 1)[0]
    inputs = {k: v.to(device) for k, v in exp.inputs_for(sample, knobs).items()}
    n = args.new_tokens
    p_ms, h_ms, wall_ms = paired_times(exp, inputs, knobs, n, args.pairs, args.warmup)
    ratios = h_ms / p_ms
    t = exp.measure_inference_latency(inputs, knobs, max_new_tokens=n, min_new_tokens=n)
    print(f"{knobs}, {n} new tokens, {args.pairs} interleaved pairs on {device} ({args.threads} threads)")
    print(f"plain  generate: median {np.median(p_ms):.3f} ms (p10 {np.percentile(p_ms, 10):.3f}, "
          f"p90 {np.percentile(p_ms, 90):.3f})")
    print(f"hooked generate: median {np.median(h_ms):.3f} ms (p10 {np.percentile(h_ms, 10):.3f}, "
          f"p90 {np.percentile(h_ms, 90):.3f})")
    ratio = float(np.median(ratios))
    print(f"median pair ratio hooked/plain: {ratio:.4f} (ratio of medians {np.median(h_ms) / np.median(p_ms):.4f}); "
          f"target <= 1.02: {'met' if ratio <= 1.02 else 'NOT met'}; whole hooked call / plain: "
          f"{np.median(wall_ms / p_ms):.4f}")
    print(f"one hooked run: vision {t.vision:.3f}, prefill {t.prefill:.3f}, decode {t.decode:.3f} "
          f"({t.num_decode_steps} steps), total {t.total:.3f} ms; in model forwards {t.forward_ms:.3f} ms "
          f"({100 * t.forward_share:.0f}%), the rest is generate() bookkeeping")


if __name__ == "__main__":
    main()
