"""Every supported family on a tiny random-weight model (`grpo_ctrl.vlm.tiny`): hooked / plain generate()
(interleaved pairs), hooked phases against an independent logits-processor timer on the same calls, and the
latency estimator's held-out end-to-end error (`experiments/profile_latency.py` on a small sweep).

    .venv/bin/python benchmarks/families.py [--pairs 30] [--new-tokens 8] [--threads 1] [--no-estimator]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from latency_overhead import paired_times  # benchmarks/ is on sys.path when run as a script
from transformers import LogitsProcessor, LogitsProcessorList

from grpo_ctrl.data import GridVQA
from grpo_ctrl.experiment import LatencyExperiment
from grpo_ctrl.latency import PhaseTimer
from grpo_ctrl.vlm import load_vlm
from grpo_ctrl.vlm.tiny import FAMILIES, TINY_KNOBS, write_family_dir

ROOT = Path(__file__).resolve().parent.parent


class Stamps(LogitsProcessor):
    """Called once per generated token, right after that token's forward: an independent clock of the steps."""

    def __init__(self):
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores):
        self.stamps.append(time.perf_counter())
        return scores


def against_logits_timer(vlm, inputs: dict, knobs, n: int, runs: int) -> tuple[float, float]:
    """Median relative gap (hooked vs logits-processor stamps) of time to first token and of time per decode step,
    both clocks on the same generate() calls."""
    ttft, step = [], []
    for _ in range(runs):
        timer, lp = PhaseTimer(vlm), Stamps()
        with timer:
            timer.timeline.start()
            start = time.perf_counter()
            vlm.generate(inputs, knobs, max_new_tokens=n, min_new_tokens=n, logits_processor=LogitsProcessorList([lp]))
            end = timer.timeline.stamp()
        phases = timer.phases_ms(end)
        lp_ttft = (lp.stamps[0] - start) * 1000
        lp_step = float(np.mean(np.diff(lp.stamps))) * 1000
        ttft.append(abs(phases["vision"] + phases["prefill"] - lp_ttft) / lp_ttft)
        step.append(abs(float(np.mean(phases["decode_steps_ms"])) - lp_step) / lp_step)
    return float(np.median(ttft)), float(np.median(step))


def estimator_mape(model_dir: Path, family: str, threads: int) -> float | None:
    tiers = TINY_KNOBS.get(family, {}).get("tiers")
    override = ["model.knobs.tiers={" + ",".join(f"{k}:{v}" for k, v in tiers.items()) + "}"] if tiers else []
    with tempfile.TemporaryDirectory() as out:
        res = subprocess.run([sys.executable, "experiments/profile_latency.py", f"model.path={model_dir}", *override,
                              "samples=4", "generated_tokens=[1,4]", "repeats=2", "warmup=1", "write_to_model=false",
                              "plot=false", f"threads={threads}", f"hydra.run.dir={out}"],
                             cwd=ROOT, capture_output=True, text=True)
    found = re.search(r"held-out accuracy \(MAPE %\):.*total_mape ([0-9.]+)", res.stdout)
    if res.returncode or not found:
        print(res.stderr[-2000:], file=sys.stderr)
        return None
    return float(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-estimator", action="store_true", help="skip the profile + fit per family")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sample = GridVQA().split("test", 1)[0]
    n = args.new_tokens
    print(f"{args.pairs} pairs, {n} new tokens, {args.threads} threads, full knobs")
    print(f"{'family':<20}{'hooked/plain':>13}{'TTFT gap':>10}{'step gap':>10}{'est. MAPE %':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for family in FAMILIES:
            model_dir = write_family_dir(family, Path(tmp) / family)
            vlm = load_vlm(model_dir, knob_space=TINY_KNOBS.get(family))
            exp = LatencyExperiment(vlm=vlm)
            knobs = vlm.knob_space.full
            inputs = exp.inputs_for(sample, knobs)
            plain_ms, hooked_ms = paired_times(exp, inputs, knobs, n, args.pairs)
            ratio = float(np.median(hooked_ms / plain_ms))
            gap_ttft, gap_step = against_logits_timer(vlm, inputs, knobs, n, args.pairs)
            mape = None if args.no_estimator else estimator_mape(model_dir, family, args.threads)
            mape_s = "-" if mape is None else f"{mape:.1f}"
            print(f"{family:<20}{ratio:>13.4f}{100 * gap_ttft:>9.2f}%{100 * gap_step:>9.2f}%{mape_s:>13}", flush=True)
    print("targets: hooked/plain <= 1.02; hooked phases within 3% of the logits-processor timer")


if __name__ == "__main__":
    main()
