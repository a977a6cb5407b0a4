"""A sweep (basic launcher): each job's report carries its overrides, its wandb run is named after them in the
sweep's group; experiments/aggregate_sweep.py turns the sweep into one table."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import one_line

pytestmark = pytest.mark.slow  # every test launches processes

ROOT = Path(__file__).resolve().parent.parent
AGGREGATE = [sys.executable, "experiments/aggregate_sweep.py"]


def run(cmd, timeout=400):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def sweep(tiny_model_dir, tmp_path_factory):
    """Two jobs, group_size 2 and 4; the stdout of the sweep."""
    sweep_dir = tmp_path_factory.mktemp("multirun")
    res = run([sys.executable, "train.py", "-m", "group_size=2,4", "model=hf", f"model.path={tiny_model_dir}",
               "steps=2", "val_every=2", "prompts_per_step=4", "data.train_size=24", "data.val_size=8",
               "logger=wandb", "logger.mode=offline", "progress=false", "threads=1", "rollout.workers=1",
               f"hydra.sweep.dir={sweep_dir}"])
    assert res.returncode == 0, res.stderr[-2000:]
    return sweep_dir, res.stdout


def test_each_job_reports_its_overrides_and_logs_to_wandb_by_them_in_the_sweeps_group(sweep):
    sweep_dir, stdout = sweep
    for num, group_size in (("0", 2), ("1", 4)):
        overrides = json.loads((sweep_dir / num / "val_report.json").read_text())["overrides"]
        assert f"group_size={group_size}" in overrides
        name = ",".join(sorted(overrides))  # Hydra's override_dirname
        assert f"named {name!r} in group {str(sweep_dir)!r}" in stdout


def test_aggregate_sweep_tabulates_every_job_and_budget_against_the_swept_parameter(sweep):
    sweep_dir, _ = sweep
    (sweep_dir / "2" / ".hydra").mkdir(parents=True)  # a job still running: no report yet
    res = run([*AGGREGATE, str(sweep_dir)])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "not finished (no report yet): jobs 2" in res.stdout
    with (sweep_dir / "sweep.csv").open() as f:
        table = list(csv.DictReader(f))
    reports = {num: json.loads((sweep_dir / num / "val_report.json").read_text()) for num in ("0", "1")}
    assert [(r["job"], r["group_size"], r["budget"]) for r in table] == [
        (num, size, budget) for num, size in (("0", "2"), ("1", "4")) for budget in reports[num]["budgets"]]
    assert list(table[0])[:3] == ["job", "group_size", "budget"]  # the one override that differs between jobs
    for r in table:
        report = reports[r["job"]]
        assert float(r["accuracy"]) == report["budgets"][r["budget"]]["controller"]["accuracy"]
        assert float(r["rollouts_per_s"]) == report["timing"]["rollouts_per_s"] > 0
        assert float(r["train_wall_s"]) == report["timing"]["train_wall_s"] > 0
    md = (sweep_dir / "sweep.md").read_text().splitlines()
    assert md[0].startswith("| job | group_size | accuracy (violations) @ 0.4 |")
    assert [line.split("|")[2].strip() for line in md[2:4]] == ["2", "4"]
    assert (sweep_dir / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_aggregate_sweep_of_a_dir_without_jobs_stops_with_one_line(tmp_path):
    line = one_line(run([*AGGREGATE, str(tmp_path)]))
    assert line.startswith(f"aggregate_sweep: {tmp_path} holds no finished job") and "multirun" in line


def test_the_jobs_of_a_sweep_share_one_outcome_store(tiny_model_dir, tmp_path):
    """By default a multirun's jobs read and fill <sweep dir>/outcomes: two jobs that sample the same pairs (they
    differ only in ckpt_every), the second computes none and ends with the same controller."""
    res = run([sys.executable, "train.py", "-m", "ckpt_every=2,3", "model=hf", f"model.path={tiny_model_dir}",
               "steps=2", "val_every=2", "prompts_per_step=4", "group_size=2", "data.train_size=24",
               "data.val_size=8", "logger=none", "progress=false", "threads=1", "rollout.workers=1",
               f"hydra.sweep.dir={tmp_path}"])
    assert res.returncode == 0, res.stderr[-2000:]
    first, second = (json.loads((tmp_path / num / "val_report.json").read_text()) for num in ("0", "1"))
    assert (tmp_path / "outcomes" / "outcomes.sqlite").is_file()
    assert first["timing"]["outcomes_computed"] > 0 and second["timing"]["outcomes_computed"] == 0
    assert second["timing"]["outcomes_read"] > 0
    assert [b["controller"] for b in first["budgets"].values()] == [b["controller"] for b in second["budgets"].values()]
