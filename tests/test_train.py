"""End-to-end training on a tiny model: smoke run, outputs, metrics keys, exact resume."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_cfg

from grpo_ctrl.app import train
from grpo_ctrl.config import register_configs
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.parallel import ParallelContext
from grpo_ctrl.report import summary
from grpo_ctrl.trainer import JointGRPOTrainer

register_configs()

TRAIN_KEYS = {"train/reward_mean", "train/reward_std", "train/accuracy", "train/latency_ms", "train/violation_rate",
              "train/frac_reward_zero_std", "train/loss", "train/clip_frac", "train/kl", "train/entropy_tier",
              "train/entropy_top_k", "train/entropy_num_blocks", "train/step_time_s"}


def test_smoke_training_writes_every_output(tiny_model_dir, tmp_path):
    report = train(small_cfg(tiny_model_dir), tmp_path, ParallelContext())
    for name in ("config.yaml", "metrics.jsonl", "controller.pt", "val_report.json", "val_report.png",
                 "checkpoints/last.pt"):
        assert (tmp_path / name).is_file(), name
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(TRAIN_KEYS <= r.keys() for r in rows)
    assert {"val/accuracy", "val/violation_rate", "val/accuracy@0.4", "val/latency_p90_ms@1"} <= rows[-1].keys()
    assert set(report["budgets"]) == {"0.4", "0.55", "0.7", "0.85", "1"}
    for b in report["budgets"].values():
        assert {"controller", "best_static", "random"} <= b.keys()
        assert sum(b["controller"]["knobs"].values()) == 8  # every val prompt counted once per budget
        if b["best_static"]:  # the paired gap pairs each prompt's answers, so it averages to the accuracy gap
            gap = b["best_static"]["controller_minus_static"]["diff"]
            assert gap == pytest.approx(b["controller"]["accuracy"] - b["best_static"]["accuracy"])
    assert len(report["static_settings"]) == 27


def test_resume_after_interruption_is_bit_identical(tiny_model_dir, tmp_path, monkeypatch):
    cfg = small_cfg(tiny_model_dir, "steps=4", "val_every=2", "ckpt_every=2")
    train(cfg, tmp_path / "straight", ParallelContext())

    original = JointGRPOTrainer.train_step

    def crash_at_step_3(self, step):
        if step == 2:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, step)

    monkeypatch.setattr(JointGRPOTrainer, "train_step", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "resumed", ParallelContext())
    monkeypatch.setattr(JointGRPOTrainer, "train_step", original)
    train(cfg, tmp_path / "resumed", ParallelContext())

    a = torch.load(tmp_path / "straight" / "controller.pt")["state_dict"]
    b = torch.load(tmp_path / "resumed" / "controller.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_bad_config_exits_before_loading_anything(tmp_path, capsys):
    from grpo_ctrl.app import run

    with pytest.raises(SystemExit) as exit_info:
        run(small_cfg(tmp_path / "does-not-exist", "group_size=1"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("config error: group_size=1") and "\n" not in err


def test_measured_validation_budgets_are_fractions_of_the_measured_full_latency(tiny_model_dir, tmp_path,
                                                                                monkeypatch):
    from grpo_ctrl.latency import EstimatorLatency, MeasuredLatency

    def fake_latency(full_ms, other_ms):
        def latency_ms(self, requests):
            return np.array([full_ms if r.knobs == Knobs("high", 4, 4) else other_ms for r in requests])
        return latency_ms

    # The "machine" runs full knobs in 100 ms, anything else in 30 ms; the estimator says 200 and 100 (0.5 of full).
    monkeypatch.setattr(MeasuredLatency, "latency_ms", fake_latency(100.0, 30.0))
    monkeypatch.setattr(EstimatorLatency, "latency_ms", fake_latency(200.0, 100.0))
    report = train(small_cfg(tiny_model_dir, "latency=measured", "steps=1", "val_every=1"), tmp_path,
                   ParallelContext())
    assert report["reference_latency_ms"] == 100.0  # the report's one reference: full, measured with the rest
    assert report["estimator_reference_latency_ms"] == 200.0  # training's unit, for the estimator's verdict
    for frac, b in report["budgets"].items():
        assert b["budget_ms"] == pytest.approx(float(frac) * 100.0)
        n = sum(b["controller"]["knobs"].values())
        full_share = b["controller"]["knobs"].get("high/k4/b4", 0) / n
        assert b["controller"]["violation_rate"] == pytest.approx(full_share if float(frac) < 1 else 0.0)
        # by the estimator every setting is over 0.4 of full; from 0.55 up the same requests as measured are over
        estimated = 1.0 if float(frac) < 0.5 else b["controller"]["violation_rate"]
        assert b["controller"]["estimated_violation_rate"] == pytest.approx(estimated)
    assert "(est)" in summary(report)


@pytest.mark.parametrize("weight", [0.0, 0.4])
def test_reward_sees_the_gold_probability_mix(tiny_model_dir, weight):
    from grpo_ctrl.build import build_data, build_vlm
    from grpo_ctrl.controller import build_controller
    from grpo_ctrl.latency import make_latency_provider
    from grpo_ctrl.rollout import Prompt, RolloutEngine

    cfg = small_cfg(tiny_model_dir, f"reward.gold_prob_weight={weight}")
    vlm, data = build_vlm(cfg.model), build_data(cfg.data)
    engine, seen = RolloutEngine(vlm), {}
    pool = [Prompt(("train", i), data.sample("train", i)) for i in range(24)]
    est = make_latency_provider("estimator", vlm, cfg.latency)

    def reward(accuracy, latency, budget, complexity, price=None):
        seen["accuracy"] = torch.as_tensor(accuracy)
        return seen["accuracy"]

    trainer = JointGRPOTrainer(cfg, engine, build_controller(cfg.controller, vlm.knob_space, 64, 64), est, est,
                               reward, pool, pool[:4], Path("/tmp/unused"), ParallelContext())
    trainer.start()
    original = engine.run
    engine.run = lambda prompts, knobs: seen.setdefault("outcomes", original(prompts, knobs))
    trainer.train_step(0)
    score = torch.tensor([o.score for o in seen["outcomes"]], dtype=torch.float64)
    gold = torch.tensor([o.gold_prob for o in seen["outcomes"]], dtype=torch.float64)
    assert ((gold >= 0) & (gold <= 1)).all()
    assert torch.allclose(seen["accuracy"], (1 - weight) * score + weight * gold)


def wait_until_gone(pids, timeout: float) -> bool:
    """Whether every process of `pids` has exited (or is a zombie) within `timeout` seconds."""
    def alive(pid):
        stat = Path(f"/proc/{pid}/stat")
        return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"

    deadline = time.monotonic() + timeout
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(map(alive, pids))


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_the_same_command_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    """kill -9 loses the steps after the last checkpoint, and the rollout workers leave too; rerunning in the same
    run dir redoes the steps with the same outcomes (rollout workers on, as by default), so the controller is the
    uninterrupted run's bit for bit."""
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "train.py", "model=hf", f"model.path={tiny_model_dir}", "steps=30", "val_every=15",
           "ckpt_every=10",
           "prompts_per_step=4", "group_size=4", "data.train_size=24", "data.val_size=8", "logger=none",
           "progress=false", "threads=1", "rollout.workers=2"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    res = subprocess.run([*cmd, f"hydra.run.dir={straight}"], cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]

    proc = subprocess.Popen([*cmd, f"hydra.run.dir={killed}"], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics, deadline = killed / "metrics.jsonl", time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 13:
            workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert len(workers) >= 2 and wait_until_gone(workers, timeout=10)
    logged = len(metrics.read_text().splitlines())
    assert torch.load(killed / "checkpoints" / "last.pt", weights_only=False)["step"] == 10 < logged < 30

    res = subprocess.run([*cmd, f"hydra.run.dir={killed}"], cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed at step 10" in res.stdout
    a = torch.load(straight / "controller.pt")["state_dict"]
    b = torch.load(killed / "controller.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, 31))


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    from grpo_ctrl.tracking import Tracker

    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"ste')
    Tracker(tmp_path, start_step=2).finish()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
