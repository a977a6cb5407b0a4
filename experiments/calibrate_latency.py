"""Calibrate an existing latency estimator to this machine (device, thread count) from ~25 timed requests, instead
of a full re-profile: one multiplier per kind of work and phase (grpo_ctrl/latency/calibration.py), leave-one-out
residual scores for the latency guard, and the held-out error before and after on other requests timed alongside.

    python experiments/calibrate_latency.py [model.path=DIR] [estimator=FILE] [threads=1] [requests=25]
                                            [holdout=100] [output=FILE] [model.device=cuda]
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from grpo_ctrl.cli import check_command_line, check_minimums
from grpo_ctrl.latency.calibration import (
    MIN_REQUESTS,
    CalibrationError,
    calibrate,
    coverage,
    design,
    holdout_cells,
)
from grpo_ctrl.latency.estimator import ESTIMATOR_FILE, EstimatorError, LatencyEstimator, evaluate
from grpo_ctrl.latency.experiment import LatencyExperiment
from grpo_ctrl.latency.profile import profile
from grpo_ctrl.latency.providers import check_estimator_model, estimator_path
from grpo_ctrl.script_configs import register_script_configs
from grpo_ctrl.vlm import EMBEDDED_DIR


def output_path(cfg: DictConfig, original: Path, device: str, output_dir: Path) -> Path | None:
    """Where the calibrated estimator goes besides the run's output dir (None: only there)."""
    if cfg.output:
        return Path(cfg.output)
    if original.parent.resolve() == EMBEDDED_DIR.resolve():
        return None  # the package's shipped files stay as shipped
    return original.with_name(f"{Path(ESTIMATOR_FILE).stem}.{device.replace(':', '')}-{cfg.threads}t.json")


def fmt(metrics: dict) -> str:
    keys = ("total_mape", "total_p90_abs_pct", "vision_mape", "prefill_mape", "decode_mape")
    return ", ".join(f"{k} {metrics[k]:.2f}" for k in keys if k in metrics)


register_script_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="experiments/calibrate_latency")
def main(cfg: DictConfig) -> None:
    check_minimums(cfg, {"requests": MIN_REQUESTS, "generated_tokens": 1, "repeats": 1, "warmup": 0, "holdout": 0,
                         "threads": 1}, "calibrate_latency.py")
    if not 0 < cfg.max_violation < 1:
        print(f"config error: calibrate_latency.py: max_violation={cfg.max_violation} must be in (0, 1)",
              file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(cfg.threads)
    exp = LatencyExperiment(cfg)
    vlm = exp.vlm
    try:
        source = Path(cfg.estimator) if cfg.estimator else estimator_path(None, vlm.source)
        original = LatencyEstimator.load(source)
        check_estimator_model(original, source, vlm.signature)
    except EstimatorError as err:
        print(f"calibrate_latency.py: {err}", file=sys.stderr)
        sys.exit(2)
    lengths = sorted({int(n) for n in cfg.generated_tokens})
    settings = vlm.knob_space.all()
    samples = exp.data.split("test", cfg.requests + cfg.holdout)
    if len(samples) < cfg.requests + cfg.holdout:
        print(f"calibrate_latency.py: the test split has {len(samples)} samples; requests={cfg.requests} + "
              f"holdout={cfg.holdout} need one each (lower them)", file=sys.stderr)
        sys.exit(2)
    typical = [exp.inputs_for(samples[0], k) for k in settings]
    token_counts = [(int(vlm.image_tokens(i)[0]), int(vlm.prompt_tokens(i)[0])) for i in typical]
    typical_ms = [float(original.predict_total(img, t, max(lengths), k.top_k, k.num_blocks))
                  for (img, t), k in zip(token_counts, settings)]
    cells = design(settings, typical_ms, cfg.requests, lengths)
    held = holdout_cells(settings, cfg.holdout, cfg.requests, lengths, cfg.seed)
    device = str(vlm.model.device)
    print(f"timing {len(cells)} calibration + {len(held)} held-out requests x {cfg.repeats} on {device} "
          f"({cfg.threads} threads)", flush=True)
    started = time.perf_counter()
    rows, checks = profile(exp, samples, cells + held, cfg.repeats, cfg.warmup, cfg.seed, log=False)
    timed_s = time.perf_counter() - started
    fit_rows, test_rows = rows[: len(cells)], rows[len(cells):]
    meta = {**original.meta, "device": device, "threads": cfg.threads, "torch": torch.__version__,
            "host": platform.node(), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "calibrated_from": {"path": str(source), "device": original.meta.get("device"),
                                "threads": original.meta.get("threads"), "host": original.meta.get("host"),
                                "created": original.meta.get("created")},
            "calibration": {"requests": len(fit_rows), "repeats": cfg.repeats, "generated_tokens": lengths}}
    try:
        calibrated = calibrate(original, fit_rows, meta)
    except CalibrationError as err:
        print(f"calibrate_latency.py: {err}", file=sys.stderr)
        sys.exit(2)
    report = {"config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "estimator": str(source),
              "timed_s": timed_s, "checks": checks, "multipliers": calibrated.meta["multipliers"]}
    print(f"timed in {timed_s:.0f} s; multipliers (per call, tokens): "
          + ", ".join(f"{p} {m['per_call']:.3f} {m['tokens']:.3f}" for p, m in report["multipliers"].items()))
    if test_rows:
        before, after = evaluate(original, test_rows), evaluate(calibrated, test_rows)
        covered = coverage(calibrated, test_rows, cfg.max_violation)
        report.update(heldout_before=before, heldout_after=after, heldout_coverage=covered)
        calibrated.meta["calibration"].update(heldout_before=before, heldout_after=after, heldout_coverage=covered)
        print(f"held-out error on {len(test_rows)} requests (MAPE %)\n  before: {fmt(before)}\n  after:  {fmt(after)}")
        print(f"held-out runs at or under the calibrated {1 - cfg.max_violation:.0%} upper latency: {covered:.1%}")
    written = [calibrated.save(exp.output_dir / ESTIMATOR_FILE)]
    target = output_path(cfg, source, device, exp.output_dir)
    if target is not None:
        written.append(calibrated.save(target))
    report["written"] = [str(p) for p in written]
    exp.save_results("calibrate_latency_report", report)
    print("calibrated estimator: " + ", ".join(map(str, written)))
    print(f"use it with latency.estimator_path={written[-1]} (training and validation on this machine), or "
          f"policy.guard=true policy.guard_estimator={written[-1]} (serve / evaluate: guard=true "
          f"guard_estimator={written[-1]})")
    print(json.dumps({"heldout_total_mape_before": report.get("heldout_before", {}).get("total_mape"),
                      "heldout_total_mape_after": report.get("heldout_after", {}).get("total_mape")}))


if __name__ == "__main__":
    check_command_line("experiments/calibrate_latency")
    main()
