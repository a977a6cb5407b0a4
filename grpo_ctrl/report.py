"""Validation report: the controller per budget against the best static setting and uniformly random knobs; a pure
function of the validation results (`JointGRPOTrainer.validate`, `statics.static_settings`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def crossfit_accuracy(settings: list[dict]) -> float:
    """Accuracy of the best of `settings` chosen on one half of the val prompts and scored on the other, both
    ways round (settings tied on the choosing half share the pick): the best static setting a user could pick
    without seeing the prompts it is scored on. The in-sample best of many settings is optimistic."""
    scores = np.array([s["scores"] for s in settings], dtype=float)
    halves = [np.arange(scores.shape[1]) % 2 == 0, np.arange(scores.shape[1]) % 2 == 1]
    accs = []
    for pick, score in (halves, halves[::-1]):
        on_pick = scores[:, pick].mean(axis=1)
        tied = np.isclose(on_pick, on_pick.max())
        accs.append(float(scores[tied][:, score].mean()))
    return float(np.mean(accs))


def paired_difference(scores: list[float], reference: list[float]) -> dict:
    """Mean per-prompt difference of two policies' scores on the same prompts and its standard error: whether
    an accuracy gap is larger than which prompts happened to be drawn (0.005 of 192 prompts is one answer)."""
    diff = np.asarray(scores, dtype=float) - np.asarray(reference, dtype=float)
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    return {"diff": float(diff.mean()), "se": se, "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum())}


def build_report(controller_report: dict, statics: dict, reference_ms: float, seed: int = 0) -> dict:
    """`reference_ms`: the training reference latency (the unit of fractional budgets)."""
    rng = np.random.default_rng(seed)
    val_ref = next(iter(controller_report.values()))["reference_ms"]
    out = {"reference_latency_ms": reference_ms, "val_reference_latency_ms": val_ref,
           "static_reference_latency_ms": statics["reference_ms"], "budgets": {}}
    settings = statics["settings"]
    n_timed = len(settings[0]["latency"])
    for frac, ctrl in controller_report.items():
        budget = ctrl["budget_ms"]
        # The static settings were timed in their own call: the same budget fraction of their own reference.
        static_budget = budget * statics["reference_ms"] / ctrl["reference_ms"]
        feasible = [s for s in settings if s["mean_latency_ms"] <= static_budget]
        best = max(feasible, key=lambda s: s["accuracy"]) if feasible else None
        # Uniformly random knobs per request (on the timed prompts, where each setting's latency is known).
        pick = rng.integers(len(settings), size=n_timed)
        rand_score = np.array([settings[j]["scores"][i] for i, j in enumerate(pick)])
        rand_lat = np.array([settings[j]["latency"][i] for i, j in enumerate(pick)])
        out["budgets"][frac] = {
            "budget_ms": budget, "static_budget_ms": static_budget,
            "controller": {k: ctrl[k] for k in ("accuracy", "violation_rate", "estimated_violation_rate",
                                                "budgeted_accuracy", "latency_p50_ms", "latency_p90_ms", "knobs")
                           if k in ctrl},
            "best_static": None if best is None else {
                "knobs": best["knobs"], "accuracy": best["accuracy"], "mean_latency_ms": best["mean_latency_ms"],
                "violation_rate": float((best["latency"] > static_budget).mean()),
                "crossfit_accuracy": crossfit_accuracy(feasible),
                "controller_minus_static": paired_difference(ctrl["scores"], best["scores"])},
            "random": {"accuracy": float(rand_score.mean()),
                       "violation_rate": float((rand_lat > static_budget).mean()),
                       "budgeted_accuracy": float((rand_score * (rand_lat <= static_budget)).mean())},
        }
        b = out["budgets"][frac]
        b["controller_beats_best_static"] = best is None or ctrl["accuracy"] >= best["accuracy"]
    out["static_settings"] = [{k: v for k, v in s.items() if k not in ("latency", "scores")} for s in settings]
    return out


def write_report(report: dict, run_dir: Path) -> tuple[Path, Path]:
    run_dir = Path(run_dir)
    json_path = run_dir / "val_report.json"
    json_path.write_text(json.dumps(report, indent=2))
    png_path = run_dir / "val_report.png"
    plot_report(report, png_path)
    return json_path, png_path


def plot_report(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = report["budgets"]
    x = np.array([b["budget_ms"] for b in budgets.values()])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(x, [b["controller"]["accuracy"] for b in budgets.values()], "o-", label="controller")
    ax1.plot(x, [b["best_static"]["accuracy"] if b["best_static"] else np.nan for b in budgets.values()], "s--",
             label="best static meeting budget")
    ax1.plot(x, [b["random"]["budgeted_accuracy"] for b in budgets.values()], "^:", label="random (within budget)")
    ax1.set_xlabel("budget (ms)")
    ax1.set_ylabel("accuracy")
    ax1.legend()
    ax1.set_title("accuracy per budget")
    ax2.plot(x, x, "k:", label="budget")
    ax2.plot(x, [b["controller"]["latency_p50_ms"] for b in budgets.values()], "o-", label="controller p50")
    ax2.plot(x, [b["controller"]["latency_p90_ms"] for b in budgets.values()], "o--", label="controller p90")
    ax2.set_xlabel("budget (ms)")
    ax2.set_ylabel("latency (ms)")
    ax2.legend()
    ax2.set_title("latency per budget")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
