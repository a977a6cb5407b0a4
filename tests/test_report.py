"""Report formatting: the numbers come from `grpo_ctrl.baselines`; these modules only lay them out."""

import json

import numpy as np

from grpo_ctrl.baselines import Profile, budget_comparison, random_choice
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.report import summary, write_report

CHEAP, FULL = Knobs("low", 1, 2), Knobs("high", 4, 6)


def val_report(estimated: bool = False) -> dict:
    p = Profile((CHEAP, FULL), np.array([[1, 0, 1, 0], [1, 1, 1, 1]]), np.array([[8.0] * 4, [20.0] * 4]))
    rand = random_choice(2, 4, np.random.default_rng(0))
    budgets = {"0.5": {"budget_ms": 10.0, **budget_comparison(p, np.zeros(4, int), 10.0, rand)},
               "1": {"budget_ms": 20.0, **budget_comparison(p, np.ones(4, int), 20.0, rand)}}
    if estimated:
        for b in budgets.values():
            b["controller"]["estimated_violation_rate"] = 0.25
    return {"reference_latency_ms": 20.0, "budgets": budgets, "static_settings": []}


def test_summary_has_a_row_per_budget_with_the_paired_interval():
    report = val_report()
    lines = summary(report).splitlines()
    assert len(lines) == 3 and "[95% CI]" in lines[0] and "(est)" not in lines[0]
    gap = report["budgets"]["0.5"]["best_static"]["controller_minus_static"]
    assert f"{gap['diff']:+.3f} [{gap['ci_low']:+.3f},{gap['ci_high']:+.3f}]" in lines[1]
    assert "(est)" in summary(val_report(estimated=True))


def test_write_report_round_trips_as_json(tmp_path):
    report = val_report()
    json_path, png_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(report))
    assert png_path.stat().st_size > 0
