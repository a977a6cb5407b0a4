"""Reports as files and tables, formatting only (every number comes from `grpo_ctrl.baselines`): the validation
report of a training run (`val_report.json` / `.png` and the summary table train.py prints) and the held-out
evaluation of `experiments/evaluate.py` (JSON, CSV, markdown and a Pareto plot)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from grpo_ctrl.artifacts import atomic_write, write_json
from grpo_ctrl.baselines import POLICIES
from grpo_ctrl.budget import MAX_VIOLATION
from grpo_ctrl.latency.estimator import CALIBRATE_COMMAND

CSV_COLUMNS = ("budget_ms", "policy", "knobs", "accuracy", "violation_rate", "meets_budget", "budgeted_accuracy",
               "mean_latency_ms", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "overshoot_p90",
               "overshoot_p99", "mean_tier", "mean_top_k", "mean_num_blocks", "diff_vs_lut", "ci_low", "ci_high",
               "beats_lut", "gap_closed")


def summary(report: dict) -> str:
    """The validation report as the table train.py prints: per budget the controller (its violation rate starred
    where it does not meet the budget), the best static setting meeting it (and its cross-fitted accuracy), their
    paired difference with its 95 % interval and won/lost prompts, and random knobs."""
    estimated = any("estimated_violation_rate" in b["controller"] for b in report["budgets"].values())
    lines = [f"{'budget':>8} {'ms':>7} {'ctrl acc':>9} {'viol':>6} " + (f"{'(est)':>6} " if estimated else "")
             + f"{'static acc':>11} {'(x-fit)':>8} {'static':>14} {'ctrl-static [95% CI] won/lost':>33} "
             f"{'random':>7}"]
    for frac, b in report["budgets"].items():
        best = b["best_static"] or {"accuracy": float("nan"), "crossfit_accuracy": None, "knobs": "-"}
        gap = best.get("controller_minus_static")
        gap = (f"{gap['diff']:+.3f} [{gap['ci_low']:+.3f},{gap['ci_high']:+.3f}] {gap['wins']}/{gap['losses']}"
               if gap else "-")
        crossfit = best["crossfit_accuracy"]
        est = f"{b['controller']['estimated_violation_rate']:>6.3f} " if estimated else ""
        viol = f"{b['controller']['violation_rate']:.3f}" + ("" if b["controller"].get("meets_budget", True) else "*")
        lines.append(f"{frac:>8} {b['budget_ms']:>7.2f} {b['controller']['accuracy']:>9.3f} "
                     f"{viol:>6} {est}{best['accuracy']:>11.3f} "
                     f"{'-' if crossfit is None else f'{crossfit:.3f}':>8} {best['knobs']:>14} {gap:>33} "
                     f"{b['random']['budgeted_accuracy']:>7.3f}")
    if any(not b["controller"].get("meets_budget", True) for b in report["budgets"].values()):
        lines.append(f"* more than {report.get('max_violation', MAX_VIOLATION):.0%} of requests over the budget "
                     "(budgets.max_violation): the controller does not meet it there")
    alpha = report.get("max_violation", MAX_VIOLATION)
    drifted = [frac for frac, b in report["budgets"].items() if estimated
               and b["controller"]["violation_rate"] > alpha >= b["controller"]["estimated_violation_rate"]]
    if drifted:
        lines.append(f"at {', '.join(drifted)} the estimator the controller trained on says it meets the budget and "
                     "this machine's timings say it does not: the estimator is off here; calibrate it to this machine "
                     f"with `{CALIBRATE_COMMAND}` (about 25 requests) and validate or serve with policy.guard=true "
                     "policy.guard_estimator=<the file it writes>, or re-fit it and re-train")
    return "\n".join(lines)


def write_report(report: dict, run_dir: Path) -> tuple[Path, Path]:
    run_dir = Path(run_dir)
    json_path = run_dir / "val_report.json"
    write_json(json_path, report)
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
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


def write_outputs(result: dict, out_dir: Path, stem: str = "evaluation") -> dict[str, Path]:
    """`result` of `evaluate_budgets` as <stem>.json, .csv (a row per budget and policy), .md and a Pareto .png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("json", "csv", "md", "png")}
    write_json(paths["json"], result)
    atomic_write(paths["csv"], csv_text(CSV_COLUMNS, csv_rows(result)))
    atomic_write(paths["md"], markdown(result))
    plot_pareto(result, paths["png"])
    return paths


def csv_text(columns, rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, list(columns), restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def csv_rows(result: dict) -> list[dict]:
    rows = []
    for b in result["budgets"]:
        vs = b["controller_vs_lut"] or {}
        for name, policy in b["policies"].items():
            extra = {"diff_vs_lut": vs.get("diff"), "ci_low": vs.get("ci_low"), "ci_high": vs.get("ci_high"),
                     "beats_lut": b["controller_beats_lut"], "gap_closed": b["oracle_gap_closed"]} \
                if name == "controller" else {}
            rows.append({**(policy or {}), "budget_ms": b["budget_ms"], "policy": name, **extra})
    return rows


def markdown(result: dict) -> str:
    def acc(policy: dict | None) -> str:
        if policy is None:
            return "—"
        knobs = f" ({policy['knobs']})" if "knobs" in policy else ""
        over = "" if policy["meets_budget"] else "*"
        return f"{policy['accuracy']:.3f} / {policy['violation_rate']:.0%}{over}{knobs}"

    alpha = result.get("max_violation", MAX_VIOLATION)
    lines = ["| budget (ms) | " + " | ".join(POLICIES) + " | controller − lut [95 % CI] | beats lut | controller p99 "
             "overshoot | gap closed |", "|---:" * (len(POLICIES) + 5) + "|"]
    for b in result["budgets"]:
        vs, gap = b["controller_vs_lut"], b["oracle_gap_closed"]
        diff = "—" if vs is None else f"{vs['diff']:+.3f} [{vs['ci_low']:+.3f}, {vs['ci_high']:+.3f}]"
        cells = [f"{b['budget_ms']:g}", *(acc(b["policies"][p]) for p in POLICIES), diff,
                 "yes" if b["controller_beats_lut"] else "no",
                 f"{b['policies']['controller']['overshoot_p99']:.1%}", "—" if gap is None else f"{gap:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Policies: accuracy / share of requests over the budget on test; * = over {alpha:.0%}, the share "
              "a policy may run over and still meet the budget (budgets.max_violation). Static settings are chosen "
              "among those that meet it (lut on val). Controller − lut is in accuracy, and the controller beats the "
              "table only when it meets the budget and the interval lies above 0; gap closed (lut → per-request "
              "oracle) is in budgeted accuracy (a request over the budget scores 0), where the oracle is an upper "
              "bound.",
              "", "| setting | accuracy | mean latency (ms) | Pareto |", "|---|---:|---:|:---:|"]
    lines += [f"| {s['knobs']} | {s['accuracy']:.3f} | {s['mean_latency_ms']:.1f} | {'✓' * s['pareto_front']} |"
              for s in result["settings"]]
    if guard := result.get("guard"):
        counts = "; ".join(f"{b} ms: " + ", ".join(f"{n} {a}" for a, n in sorted(c.items()))
                           for b, c in guard["actions"].items())
        lines += ["", f"The controller's choices went through the latency guard at alpha {guard['alpha']:g} (kept: its "
                      f"choice fits; moved: its best fitting setting; fallback: nothing fits, the cheapest): {counts}."]
    if drift := result.get("estimator_drift"):
        worst = drift["worst"]
        lines += ["", f"The run's latency estimator on this machine: fractions of full off by up to "
                      f"{drift['max_abs_drift']:.3f} ({worst['knobs']}: {worst['estimated_fraction']:.3f} estimated, "
                      f"{worst['measured_fraction']:.3f} measured)."]
    return "\n".join(lines) + "\n"


def plot_pareto(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = result["settings"]
    front = sorted((s for s in settings if s["pareto_front"]), key=lambda s: s["mean_latency_ms"])
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter([s["mean_latency_ms"] for s in settings], [s["accuracy"] for s in settings], s=14, c="0.7",
               label="static settings")
    ax.plot([s["mean_latency_ms"] for s in front], [s["accuracy"] for s in front], "-", c="0.45",
            label="static Pareto front")
    for name, style in (("controller", "o-"), ("lut", "s--"), ("per_request_oracle", "^:"), ("random", "x-.")):
        rows = [b["policies"][name] for b in result["budgets"]]
        ax.plot([r["mean_latency_ms"] if r else np.nan for r in rows], [r["accuracy"] if r else np.nan for r in rows],
                style, label=name.replace("_", " "))
    ax.set_xlabel("mean latency on test (ms)")
    ax.set_ylabel("accuracy on test")
    ax.set_title("policies over budgets against the static settings")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)
