"""Controller decision time at batch 1 on CPU: stage 1 + stage 2 (target p50 <= 0.2 ms).

    .venv/bin/python benchmarks/controller_overhead.py [--iters 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from grpo_ctrl.controller import TwoStageController
from grpo_ctrl.knobs import KnobSpace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    space = KnobSpace({"low": 4, "medium": 2, "high": 1}, (1, 2, 4), (2, 4, 6))
    c = TwoStageController(space, question_dim=256, vision_dim=256).eval()
    b, q, v = torch.tensor([0.6]), torch.randn(1, 256), torch.randn(1, 256)
    times = {"stage1": [], "stage2": [], "total": []}
    with torch.inference_mode():
        for i in range(args.iters + 200):
            t0 = time.perf_counter()
            request = c.encode(b, q)
            tier = c.choose_tier(request)
            t1 = time.perf_counter()
            c.choose_rest(request, v, tier)
            t2 = time.perf_counter()
            if i >= 200:  # warm-up
                times["stage1"].append(t1 - t0)
                times["stage2"].append(t2 - t1)
                times["total"].append(t2 - t0)
    print(f"controller parameters: {sum(p.numel() for p in c.parameters())}")
    for name, t in times.items():
        ms = np.array(t) * 1000
        print(f"{name:<7} p50 {np.percentile(ms, 50):.4f} ms  p90 {np.percentile(ms, 90):.4f} ms")
    p50 = np.percentile(np.array(times["total"]) * 1000, 50)
    print(f"target p50 <= 0.2 ms: {'met' if p50 <= 0.2 else 'NOT met'} ({p50:.4f} ms)")


if __name__ == "__main__":
    main()
