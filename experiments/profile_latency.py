"""Profile hooked latency over knob settings x prompts x output lengths, fit the latency estimator, check it on
held-out settings and prompts, then refit on everything and write latency_estimator.json, with the held-out runs'
residual scores (what a latency guard's upper latencies come from).

    python experiments/profile_latency.py [model.path=DIR] [samples=8] [repeats=3] [generated_tokens=[1,2,4,8]]
                                          [write_to_model=true] [model.device=cuda]
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from grpo_ctrl.artifacts import atomic_write
from grpo_ctrl.cli import check_command_line, check_minimums
from grpo_ctrl.latency.calibration import residual_scores
from grpo_ctrl.latency.estimator import (
    ESTIMATOR_FILE,
    PROFILE_KEYS,
    LatencyEstimator,
    evaluate,
    fit_estimator,
)
from grpo_ctrl.latency.experiment import LatencyExperiment
from grpo_ctrl.latency.profile import grid_cells, profile
from grpo_ctrl.script_configs import register_script_configs
from grpo_ctrl.vlm.loading import write_to_model_dir

TARGETS = {"total_mape": 5.0, "decode_per_token_mape": 10.0, "predictions_per_s": 1e5, "covered": 0.97}


def holdout_split(rows: list[dict], n_settings: int, n_prompts: int, fraction: float, seed: int):
    """Train on rows whose setting AND prompt are both kept; evaluate on every other row."""
    rng = np.random.default_rng(seed + 1)
    settings = sorted({r["knobs"] for r in rows})
    held_s = set(rng.permutation(settings)[: max(1, round(fraction * n_settings))].tolist()) if fraction > 0 else set()
    held_p = set(rng.permutation(n_prompts)[: max(1, round(fraction * n_prompts))].tolist()) if fraction > 0 else set()
    train = [r for r in rows if r["knobs"] not in held_s and r["prompt"] not in held_p]
    test = [r for r in rows if r["knobs"] in held_s or r["prompt"] in held_p]
    both = [r for r in test if r["knobs"] in held_s and r["prompt"] in held_p]
    return train, test, both, sorted(held_s), sorted(held_p)


def throughput(est: LatencyEstimator, n: int = 100_000, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    image = rng.choice([4, 16, 64, 256], n)
    cols = (image, image + rng.integers(4, 16, n), rng.integers(1, 9, n), rng.choice([1, 2, 4], n),
            rng.integers(1, 7, n))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        est.predict_total(*cols)
        best = min(best, time.perf_counter() - t0)
    return n / best


def plot(path: Path, est: LatencyEstimator, train: list[dict], test: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.5))
    for rows, colour, label in ((train, "0.6", "fit"), (test, "tab:red", "held out")):
        if not rows:
            continue
        pred = est.predict(*(np.array([r[k] for r in rows], dtype=float) for k in PROFILE_KEYS))
        n = np.array([r["generated_tokens"] for r in rows], dtype=float)
        multi = n > 1
        pairs = {
            "total (end to end)": (np.array([r["total"] for r in rows]), pred["total"]),
            "vision": (np.array([r["vision"] for r in rows]), pred["vision"]),
            "prefill": (np.array([r["prefill"] for r in rows]), pred["prefill"]),
            "decode per token": (np.array([sum(r["decode_steps_ms"]) for r in rows])[multi] / (n[multi] - 1),
                                 pred["decode_per_token"][multi]),
        }
        for ax, (title, (measured, predicted)) in zip(axes, pairs.items()):
            ax.scatter(measured, predicted, s=8, c=colour, label=label, alpha=0.7)
            ax.set_title(title)
            ax.set_xlabel("measured ms")
            ax.set_ylabel("predicted ms")
    for ax in axes:
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.legend(loc="upper left")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)


def fmt(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k != "rows")


register_script_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="experiments/profile_latency")
def main(cfg: DictConfig) -> None:
    check_minimums(cfg, {"samples": 1, "generated_tokens": 1, "repeats": 1, "warmup": 0, "threads": 1,
                         "holdout_fraction": 0.0}, "profile_latency.py")
    torch.set_num_threads(cfg.threads)
    exp = LatencyExperiment(cfg)
    vlm = exp.vlm
    samples = exp.data.split("test", cfg.samples)
    lengths = sorted({int(n) for n in cfg.generated_tokens})
    if not lengths or lengths[0] < 1:
        raise ValueError(f"generated_tokens={list(cfg.generated_tokens)}: list output lengths >= 1")
    settings = vlm.knob_space.all()
    print(f"profiling {len(settings)} knob settings x {len(samples)} prompts x lengths {lengths} x {cfg.repeats} "
          f"repeats on {vlm.model.device} ({cfg.threads} threads)", flush=True)
    rows, checks = profile(exp, samples, grid_cells(settings, len(samples), lengths), cfg.repeats, cfg.warmup,
                           cfg.seed)
    profile_path = exp.save_results("latency_profile", {"rows": rows, "checks": checks})
    print("hooked checks:", json.dumps(checks))

    train, test, both, held_s, held_p = holdout_split(rows, len(settings), len(samples), cfg.holdout_fraction,
                                                      cfg.seed)
    held = fit_estimator(train)
    heldout = evaluate(held, test)
    heldout_both = evaluate(held, both)
    print(f"held out {len(held_s)} settings {held_s} and prompts {held_p}: fit on {len(train)} rows, "
          f"evaluated on {len(test)} ({len(both)} with both held out)")
    print(f"held-out accuracy (MAPE %): {fmt(heldout)}")
    if heldout_both:
        print(f"  setting AND prompt held out: {fmt(heldout_both)}")

    meta = {"model_path": str(vlm.source), "model": vlm.signature,
            "device": str(vlm.model.device), "dtype": cfg.model.dtype, "threads": cfg.threads,
            "torch": torch.__version__, "host": platform.node(), "knob_space": vlm.knob_space.to_dict(),
            "generated_tokens": lengths, "samples": len(samples), "repeats": cfg.repeats,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"), "heldout": heldout}
    est = fit_estimator(rows, meta=meta)
    # Split-conformal: single runs of the held-out rows against the fit that did not see them.
    est.scores = residual_scores(held, test)
    rate = throughput(est)
    full = evaluate(est, rows)
    print(f"refit on all {len(rows)} rows (in-sample): {fmt(full)}")
    print(f"estimator throughput: {rate:,.0f} predictions/s")
    for phase, coef in est.coef.items():
        print(f"  {phase}: " + ", ".join(f"{c:.4g}" for c in coef))

    targets = {
        "heldout_total_mape": heldout.get("total_mape"), "total_mape<=5": heldout.get("total_mape", 1e9) <= 5,
        "heldout_total_p90_abs_pct": heldout.get("total_p90_abs_pct"),
        "heldout_decode_per_token_mape": heldout.get("decode_per_token_mape"),
        "decode_per_token_mape<=10": heldout.get("decode_per_token_mape", 1e9) <= 10,
        "predictions_per_s": rate, "predictions_per_s>=1e5": rate >= TARGETS["predictions_per_s"],
        "hooked_covered_median": checks["covered_median"],
        "hooked_vision+prefill+decode_within_3pct_of_total": checks["covered_min"] >= TARGETS["covered"],
        "hooked_phases_nonneg": checks["all_phases_nonneg"],
        "hooked_decode_steps==generated-1": checks["decode_steps_eq_generated_minus_1"],
    }
    print("targets:", json.dumps(targets, indent=2))
    out_est = est.save(exp.output_dir / ESTIMATOR_FILE)
    if cfg.plot:
        plot(exp.output_dir / "predicted_vs_measured.png", held, train, test)
    report = exp.save_results("profile_latency_report", {
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "checks": checks, "heldout": heldout,
        "heldout_both": heldout_both, "held_out_settings": held_s, "held_out_prompts": held_p,
        "in_sample": full, "targets": targets, "profile": str(profile_path), "estimator": str(out_est)})
    print(f"profile: {profile_path}\nestimator: {out_est}\nreport: {report}")
    if cfg.write_to_model:
        write_to_model_dir(vlm.source, ESTIMATOR_FILE, est.save, cfg.overwrite_shipped)


if __name__ == "__main__":
    check_command_line("experiments/profile_latency")
    main()
