"""Median end-to-end generate() latency (batch 1) and accuracy on a fixed sample, for every knob setting
(accuracy from the rollout engine, in chunks of `batch_size`, as training and evaluation score it).

    .venv/bin/python benchmarks/knob_latency.py [model=DIR] [requests=8] [repeats=5] [samples=256]
        [batch_size=16] [threads=2]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from grpo_ctrl.cli import parse_key_values
from grpo_ctrl.data import GridVQA
from grpo_ctrl.latency.measured import median_generate_ms
from grpo_ctrl.rollout import PromptPool, RolloutEngine, Scoring
from grpo_ctrl.vlm import load_vlm


@dataclass
class Args:
    model: str | None = None  # model dir (default: the embedded VLM)
    requests: int = 8  # test requests timed per setting
    repeats: int = 5  # timed repeats per request
    samples: int = 256  # test samples for accuracy
    batch_size: int = 16  # rows per chunk when scoring
    threads: int = 2  # intra-op threads while timing


def main() -> None:
    args = parse_key_values(Args, "benchmarks/knob_latency.py", "python benchmarks/knob_latency.py [key=value ...]")
    torch.set_num_threads(args.threads)
    vlm = load_vlm(args.model)
    data = GridVQA()
    timed = data.split("test", args.requests)
    scored = list(PromptPool(data.split("test", args.samples), "test"))
    engine = RolloutEngine(vlm, batch_size=args.batch_size, scoring=Scoring(gold_prob=False))
    print(f"{'setting':<16}{'image tok':>10}{'p50 ms':>9}{'accuracy':>10}")
    rows = []
    for knobs in vlm.knob_space.all():
        acc = float(np.mean([o.score for o in engine.run(scored, [knobs] * len(scored))]))
        rows.append((knobs, median_generate_ms(vlm, timed, knobs, warmup=1, repeats=args.repeats), acc))
        tokens = vlm.image_tokens(vlm.inputs([timed[0].image], [timed[0].question], knobs.tier))[0]
        print(f"{str(knobs):<16}{tokens:>10}{rows[-1][1]:>9.2f}{acc:>10.3f}", flush=True)
    lat = {k: t for k, t, _ in rows}
    cheap, full = vlm.knob_space.cheapest, vlm.knob_space.full
    print(f"cheapest/full latency: {lat[cheap]:.2f} / {lat[full]:.2f} ms = {lat[cheap] / lat[full]:.2f}")


if __name__ == "__main__":
    main()
