"""Controller decision time at batch 1 on CPU: stage 1 + stage 2 (target p50 <= 0.2 ms), for the torch module
(what training uses) and its folded numpy serving form `GreedyPolicy` (what a server calls per request).

    .venv/bin/python benchmarks/controller_overhead.py [iters=2000] [threads=1]
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from grpo_ctrl.cli import parse_key_values
from grpo_ctrl.controller import TwoStageController
from grpo_ctrl.knobs import KnobSpace
from grpo_ctrl.policy import GreedyPolicy


@dataclass
class Args:
    iters: int = 2000  # timed decisions per form (after 200 untimed)
    threads: int = 1  # torch intra-op threads


def timed(stage1, stage2, iters: int, warmup: int = 200) -> dict[str, np.ndarray]:
    times = {"stage1": [], "stage2": [], "total": []}
    for i in range(iters + warmup):
        t0 = time.perf_counter()
        state = stage1()
        t1 = time.perf_counter()
        stage2(state)
        t2 = time.perf_counter()
        if i >= warmup:
            times["stage1"].append(t1 - t0)
            times["stage2"].append(t2 - t1)
            times["total"].append(t2 - t0)
    return {k: np.array(v) * 1000 for k, v in times.items()}


def main() -> None:
    args = parse_key_values(Args, "benchmarks/controller_overhead.py",
                            "python benchmarks/controller_overhead.py [key=value ...]")
    torch.set_num_threads(args.threads)
    space = KnobSpace({"low": 4, "medium": 2, "high": 1}, (1, 2, 4), (2, 4, 6))
    c = TwoStageController(space, question_dim=256, vision_dim=256).eval()
    policy = GreedyPolicy(c)
    b, q, v = torch.tensor([0.6]), torch.randn(1, 256), torch.randn(1, 256)
    qn, vn = q[0].numpy(), v[0].numpy()
    print(f"controller parameters: {sum(p.numel() for p in c.parameters())}")
    with torch.inference_mode():
        def module_stage1():
            request = c.encode(b, q)
            return request, c.choose_tier(request)

        results = {
            "torch module": timed(module_stage1, lambda s: c.choose_rest(s[0], v, s[1]), args.iters),
            "GreedyPolicy": timed(lambda: policy.tier(0.6, qn), lambda s: policy.rest(s, vn), args.iters),
        }
    for label, times in results.items():
        print(label)
        for name, ms in times.items():
            print(f"  {name:<7} p50 {np.percentile(ms, 50):.4f} ms  p90 {np.percentile(ms, 90):.4f} ms")
    p50 = float(np.percentile(results["GreedyPolicy"]["total"], 50))
    print(f"target p50 <= 0.2 ms (serving path, GreedyPolicy): {'met' if p50 <= 0.2 else 'NOT met'} ({p50:.4f} ms)")


if __name__ == "__main__":
    main()
