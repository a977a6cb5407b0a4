"""One table for a Hydra multirun: every job's final validation metrics per budget against the swept parameters,
with its training wall time and rollouts/s (from each job's `val_report.json`, which carries its overrides).

Both the basic and the submitit launchers lay a sweep out as `<multirun dir>/<job number>/`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grpo_ctrl.artifacts import atomic_write
from grpo_ctrl.report import csv_text

REPORT = "val_report.json"
TIMING = ("train_wall_s", "rollouts_per_s")


class SweepError(ValueError):
    """A directory that holds no sweep to aggregate (one line naming the fix)."""


@dataclass(frozen=True)
class Job:
    num: int
    overrides: dict[str, str]  # key -> value as typed on the command line
    report: dict


def read_jobs(multirun_dir: Path) -> tuple[list[Job], list[int]]:
    """The finished jobs (those with a report), and the numbers of the unfinished ones."""
    multirun_dir = Path(multirun_dir)
    if not multirun_dir.is_dir():
        raise SweepError(f"{multirun_dir} is not a directory; give the multirun dir of a `train.py -m` sweep")
    nums = sorted(int(p.name) for p in multirun_dir.iterdir() if p.is_dir() and p.name.isdigit())
    finished = [n for n in nums if (multirun_dir / str(n) / REPORT).is_file()]
    if not finished:
        raise SweepError(f"{multirun_dir} holds no finished job (no <job number>/{REPORT}); give the multirun dir of "
                         "a `train.py -m` sweep, e.g. multirun/<date>/<time>")
    jobs = []
    for n in finished:
        report = json.loads((multirun_dir / str(n) / REPORT).read_text())
        overrides = dict(o.split("=", 1) for o in report.get("overrides", []) if "=" in o)
        jobs.append(Job(n, overrides, report))
    return jobs, [n for n in nums if n not in finished]


def swept_keys(jobs: list[Job]) -> list[str]:
    """The override keys whose values differ between jobs, in command-line order."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


def rows(jobs: list[Job], keys: list[str]) -> list[dict]:
    """One row per (job, validation budget): the swept values, the controller's numbers at that budget, the best
    static setting's accuracy and the paired gap to it, and the job's timing."""
    out = []
    for job in jobs:
        timing = job.report.get("timing", {})
        for budget, b in job.report["budgets"].items():
            best = b["best_static"]
            out.append({"job": job.num, **{k: job.overrides.get(k) for k in keys}, "budget": budget,
                        "budget_ms": b["budget_ms"],
                        **{k: v for k, v in b["controller"].items() if isinstance(v, (int, float))},
                        "best_static_accuracy": best["accuracy"] if best else None,
                        "controller_minus_static": best["controller_minus_static"]["diff"] if best else None,
                        **{k: timing.get(k) for k in TIMING}})
    return out


def write_sweep_report(multirun_dir: Path, out_dir: Path | None = None) -> tuple[dict[str, Path], list[int]]:
    """sweep.csv (a row per job and budget), sweep.md and sweep.png in `out_dir` (default: the multirun dir).
    Returns the paths and the unfinished jobs' numbers."""
    jobs, unfinished = read_jobs(multirun_dir)
    keys = swept_keys(jobs)
    table = rows(jobs, keys)
    out_dir = Path(out_dir or multirun_dir)
    paths = {ext: out_dir / f"sweep.{ext}" for ext in ("csv", "md", "png")}
    atomic_write(paths["csv"], csv_text(list(table[0]), table))
    atomic_write(paths["md"], markdown(table, keys))
    plot(table, keys, paths["png"])
    return paths, unfinished


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def markdown(table: list[dict], keys: list[str]) -> str:
    """A row per job: its swept values, accuracy (violation rate) at each budget, and its timing."""
    budgets = list(dict.fromkeys(r["budget"] for r in table))
    by_job: dict[int, dict[str, dict]] = {}
    for r in table:
        by_job.setdefault(r["job"], {})[r["budget"]] = r
    lines = ["| job | " + " | ".join([*keys, *(f"accuracy (violations) @ {b}" for b in budgets), *TIMING]) + " |",
             "|---" * (1 + len(keys)) + "|---:" * (len(budgets) + len(TIMING)) + "|"]
    for num, per_budget in by_job.items():
        first = next(iter(per_budget.values()))
        cells = [str(num), *(_fmt(first[k]) for k in keys),
                 *(f"{per_budget[b]['accuracy']:.3f} ({per_budget[b]['violation_rate']:.0%})" if b in per_budget
                   else "—" for b in budgets), *(_fmt(first[k]) for k in TIMING)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Budgets are validation budgets (fractions of the full-knob latency unless budgets.unit=ms); "
              "train_wall_s: the training loop (steps and validations) over every resumed segment; rollouts_per_s: "
              "rollouts per second of training steps."]
    return "\n".join(lines) + "\n"


def _ordered(values: set[str]) -> list[str]:
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def _mean_by_value(table: list[dict], key: str, values: list[str], metric: str, budget: str) -> list[float]:
    """`metric` at `budget` averaged over the jobs with each of `key`'s values (NaN where none has it)."""
    return [float(np.mean([r[metric] for r in table if str(r[key]) == v and r["budget"] == budget
                           and r[metric] is not None] or [np.nan])) for v in values]


def plot(table: list[dict], keys: list[str], path: Path) -> None:
    """Per swept parameter (a row of panels): accuracy and violation rate per budget, wall time and rollouts/s,
    each averaged over the jobs that share the parameter's value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(dict.fromkeys(r["budget"] for r in table))
    panels = [("accuracy", "accuracy"), ("violation_rate", "violation rate"), ("train_wall_s", "train wall (s)"),
              ("rollouts_per_s", "rollouts / s")]
    keys = keys or ["job"]  # a one-job sweep: by job
    fig, axes = plt.subplots(len(keys), len(panels), figsize=(4 * len(panels), 3.2 * len(keys)), squeeze=False)
    for row, key in zip(axes, keys):
        values = _ordered({str(r[key]) for r in table})
        x = np.arange(len(values))
        for ax, (metric, label) in zip(row, panels):
            # timing is the job's, repeated on each of its budget rows: one line
            for budget in budgets[:1] if metric in TIMING else budgets:
                ax.plot(x, _mean_by_value(table, key, values, metric, budget), "o-", label=f"budget {budget}")
            ax.set_xticks(x, values)
            ax.set_xlabel(key)
            ax.set_ylabel(label)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)
