"""Profile rows: hooked timings of (knob setting, prompt, forced output length) cells, as the estimator is fitted,
checked and calibrated on (`experiments/profile_latency.py`, `experiments/calibrate_latency.py`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from grpo_ctrl.knobs import Knobs
from grpo_ctrl.latency.hooked import PhaseTiming


class Cell(NamedTuple):
    knobs: Knobs
    prompt: int  # index into the samples
    generated_tokens: int  # forced output length (EOS suppressed until then)


def grid_cells(settings: Sequence[Knobs], prompts: int, lengths: Sequence[int]) -> list[Cell]:
    return [Cell(k, p, n) for k in settings for p in range(prompts) for n in lengths]


def profile(exp, samples, cells: Sequence[Cell], repeats: int, warmup: int, seed: int,
            log: bool = True) -> tuple[list[dict], dict]:
    """Hooked runs (`LatencyExperiment.measure_inference_latency`) of every cell, `repeats` passes in fresh random
    orders after `warmup` untimed runs per setting.

    Returns the profile rows (per-phase medians; `runs_total` keeps each run's end-to-end ms) and checks over
    every raw run."""
    cells = list(cells)
    settings = list(dict.fromkeys(c.knobs for c in cells))
    inputs = {(c.knobs.tier, c.prompt): exp.inputs_for(samples[c.prompt], c.knobs) for c in cells}
    longest = max(c.generated_tokens for c in cells)
    for k in settings:
        first = next(c.prompt for c in cells if c.knobs == k)
        for _ in range(warmup):
            exp.measure_inference_latency(inputs[(k.tier, first)], k, max_new_tokens=longest, min_new_tokens=longest)
    runs: list[list[PhaseTiming]] = [[] for _ in cells]
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for r in range(repeats):
        for i in rng.permutation(len(cells)):
            c = cells[i]
            runs[i].append(exp.measure_inference_latency(inputs[(c.knobs.tier, c.prompt)], c.knobs,
                                                         max_new_tokens=c.generated_tokens,
                                                         min_new_tokens=c.generated_tokens))
        if log:
            print(f"pass {r + 1}/{repeats}: {len(cells)} requests, {time.perf_counter() - start:.0f} s", flush=True)
    rows = [row(c, ts) for c, ts in zip(cells, runs)]
    return rows, checks(cells, runs, rows)


def row(cell: Cell, runs: Sequence[PhaseTiming]) -> dict:
    k, med = cell.knobs, PhaseTiming.median(runs)
    return {"knobs": str(k), "tier": k.tier, "top_k": k.top_k, "num_blocks": k.num_blocks, "prompt": cell.prompt,
            "image_tokens": med.image_tokens, "prompt_tokens": med.prompt_tokens,
            "generated_tokens": cell.generated_tokens, "vision": med.vision, "prefill": med.prefill,
            "decode": med.decode, "total": med.total, "forward_ms": med.forward_ms,
            "decode_steps_ms": list(med.decode_steps_ms), "runs_total": [t.total for t in runs]}


def checks(cells: Sequence[Cell], runs: Sequence[Sequence[PhaseTiming]], rows: Sequence[dict]) -> dict:
    """That the hooked phases partition each run and the forced lengths held, and the repeats' spread."""
    every = [t for ts in runs for t in ts]
    covered = np.array([t.covered for t in every])
    cv = np.array([np.std(r["runs_total"]) / np.mean(r["runs_total"]) for r in rows])
    return {
        "runs": len(every),
        "min_phase_ms": float(min(min(t.vision, t.prefill, t.decode, *t.decode_steps_ms) for t in every)),
        "all_phases_nonneg": all(min(t.vision, t.prefill, t.decode, *t.decode_steps_ms) >= 0 for t in every),
        "decode_steps_eq_generated_minus_1": all(t.num_decode_steps == t.generated_tokens - 1 for t in every),
        "generated_eq_forced": all(t.generated_tokens == c.generated_tokens for c, ts in zip(cells, runs) for t in ts),
        "covered_median": float(np.median(covered)), "covered_min": float(covered.min()),
        "frac_runs_covered>=0.97": float((covered >= 0.97).mean()),
        "forward_share_median": float(np.median([t.forward_share for t in every])),
        "repeat_cv_median": float(np.median(cv)), "repeat_cv_p90": float(np.percentile(cv, 90)),
    }
