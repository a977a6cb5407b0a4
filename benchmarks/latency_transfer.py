"""Estimator transfer: an estimator fitted at one thread count, calibrated from `requests` timed requests at another
(grpo_ctrl/latency/calibration.py, as experiments/calibrate_latency.py does), against a full re-fit at that other
thread count measured in the same run, both on held-out prompts; in both directions.

    .venv/bin/python benchmarks/latency_transfer.py [threads=[2,1]] [samples=8] [heldout_prompts=2] [requests=25]
        [repeats=3] [model=DIR] [device=cpu]

Per thread count: a full hooked profile (every setting x `samples` prompts x lengths [1,2,4,8] x `repeats`); its
first samples - heldout_prompts prompts fit that thread count's estimator (the full re-fit), the others are the
held-out rows. Calibration requests run on prompts of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from grpo_ctrl.cli import parse_key_values
from grpo_ctrl.data import GridVQA
from grpo_ctrl.latency.calibration import calibrate, coverage, design
from grpo_ctrl.latency.estimator import evaluate, fit_estimator
from grpo_ctrl.latency.experiment import LatencyExperiment
from grpo_ctrl.latency.profile import grid_cells, profile
from grpo_ctrl.vlm import load_vlm

LENGTHS = (1, 2, 4, 8)


@dataclass
class Args:
    threads: list[int] = field(default_factory=lambda: [2, 1])  # the two thread counts
    samples: int = 8  # prompts of each full profile
    heldout_prompts: int = 2  # of them, held out of every fit
    requests: int = 25  # calibration requests
    repeats: int = 3
    warmup: int = 2
    model: str | None = None  # model dir (default: the embedded VLM)
    device: str = "cpu"
    alpha: float = 0.05  # coverage check of the calibrated upper latency


def main() -> None:
    args = parse_key_values(Args, "benchmarks/latency_transfer.py",
                            "python benchmarks/latency_transfer.py [key=value ...]")
    vlm = load_vlm(args.model)
    vlm.model.to(args.device)
    exp = LatencyExperiment(vlm=vlm, data=GridVQA())
    samples = exp.data.split("test", args.samples + args.requests)
    settings = vlm.knob_space.all()
    fit_prompts = args.samples - args.heldout_prompts
    full, fitted, heldout = {}, {}, {}
    for t in args.threads:
        torch.set_num_threads(t)
        rows, _ = profile(exp, samples, grid_cells(settings, args.samples, LENGTHS), args.repeats, args.warmup, seed=t,
                          log=False)
        full[t] = rows
        fitted[t] = fit_estimator([r for r in rows if r["prompt"] < fit_prompts])
        heldout[t] = [r for r in rows if r["prompt"] >= fit_prompts]
        print(f"{t} thread(s): profiled {len(rows)} rows; full re-fit on {fit_prompts} prompts, held-out MAPE "
              f"{evaluate(fitted[t], heldout[t])['total_mape']:.2f} %", flush=True)
    device = str(vlm.model.device)
    print(f"\n{'from -> to':<12}{'uncalibrated':>14}{'calibrated':>12}{'full re-fit':>13}{'coverage':>10}  "
          f"(held-out end-to-end MAPE %, {args.requests} calibration requests, {device})")
    for src, dst in ((args.threads[0], args.threads[1]), (args.threads[1], args.threads[0])):
        torch.set_num_threads(dst)
        typical = [r["total"] for r in full[src] if r["prompt"] == 0 and r["generated_tokens"] == max(LENGTHS)]
        cells = [c._replace(prompt=c.prompt + args.samples) for c in design(settings, typical, args.requests, LENGTHS)]
        rows, _ = profile(exp, samples, cells, args.repeats, args.warmup, seed=100 + dst, log=False)
        calibrated = calibrate(fitted[src], rows)
        test = heldout[dst]
        print(f"{f'{src} -> {dst}':<12}{evaluate(fitted[src], test)['total_mape']:>14.2f}"
              f"{evaluate(calibrated, test)['total_mape']:>12.2f}{evaluate(fitted[dst], test)['total_mape']:>13.2f}"
              f"{coverage(calibrated, test, args.alpha):>10.1%}", flush=True)


if __name__ == "__main__":
    main()
