"""The controller's share of a served request at batch 1 on the embedded default: `Server.generate` on test
requests at budgets from the cheapest setting to the full model; prints decision time, end-to-end latency and
their ratio (the decision's time does not depend on the controller's weights, so a fresh one is used unless
`run_dir` names a trained run).

    .venv/bin/python benchmarks/serve_overhead.py [run_dir=DIR] [requests=64] [threads=2]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from grpo_ctrl.budget import BudgetScale
from grpo_ctrl.cli import parse_key_values
from grpo_ctrl.controller import TwoStageController
from grpo_ctrl.data import GridVQA
from grpo_ctrl.policy import GreedyPolicy
from grpo_ctrl.serve import Server
from grpo_ctrl.vlm import load_vlm


@dataclass
class Args:
    run_dir: str | None = None  # a trained run's dir (default: a fresh controller on the embedded VLM)
    requests: int = 64  # test requests per budget
    threads: int = 2  # torch intra-op threads


def main() -> None:
    args = parse_key_values(Args, "benchmarks/serve_overhead.py", "python benchmarks/serve_overhead.py [key=value ...]")
    torch.set_num_threads(args.threads)
    if args.run_dir:
        server = Server.from_run_dir(args.run_dir)
    else:
        vlm = load_vlm(None)
        dim = vlm.feature_dim
        policy = GreedyPolicy(TwoStageController(vlm.knob_space, question_dim=dim, vision_dim=dim).eval())
        server = Server(vlm, policy, BudgetScale("ms", 20.0))
    samples = GridVQA().split("test", args.requests)
    for s in samples[:4]:  # warm-up
        server.generate(s.image, s.question, budget_fraction=1.0)
    print(f"{args.requests} test requests per budget, batch 1, {args.threads} threads")
    print(f"{'budget':>7}{'decision p50 ms':>17}{'e2e p50 ms':>12}{'decision / e2e p50':>20}{'max':>8}  knobs")
    worst = 0.0
    for fraction in (0.4, 0.55, 0.7, 0.85, 1.0):
        served = [server.generate(s.image, s.question, budget_fraction=fraction) for s in samples]
        decision = np.array([r.decision_ms for r in served])
        e2e = np.array([r.latency_ms for r in served])
        share = decision / e2e
        worst = max(worst, float(np.median(share)))
        knobs = sorted({str(r.knobs) for r in served})
        print(f"{fraction:>7}{np.median(decision):>17.4f}{np.median(e2e):>12.3f}{100 * np.median(share):>19.2f}%"
              f"{100 * share.max():>7.2f}%  {', '.join(knobs[:3])}{' ...' if len(knobs) > 3 else ''}")
    print(f"target: decision <= 1 % of end-to-end latency (median per budget): "
          f"{'met' if worst <= 0.01 else 'NOT met'} (worst {100 * worst:.2f} %)")


if __name__ == "__main__":
    main()
