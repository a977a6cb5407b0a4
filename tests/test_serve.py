"""Serving a trained run: the same knobs and answers validation gives for the same requests, one request at a
time under concurrency, and one-line errors for bad run dirs, budgets and command lines."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import small_cfg
from PIL import Image

from grpo_ctrl.app import train
from grpo_ctrl.build import build_data
from grpo_ctrl.parallel import ParallelContext
from grpo_ctrl.rollout import PromptPool, RolloutEngine
from grpo_ctrl.serve import ServeError, Server

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = (0.4, 0.7, 1.0)


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = small_cfg(tiny_model_dir, "steps=4", "val_every=4", "data.val_size=12", f"budgets.val={list(BUDGETS)}")
    report = train(cfg, out, ParallelContext())
    return out, cfg, report


@pytest.fixture(scope="module")
def server(run):
    return Server.from_run_dir(run[0])


def test_served_knobs_and_answers_are_validations(run, server):
    out, cfg, report = run
    val = PromptPool(build_data(cfg.data).split("val", cfg.data.val_size), "val")
    engine = RolloutEngine(server.vlm, max_new_tokens=cfg.model.max_new_tokens)
    for budget, row in zip(BUDGETS, report["budgets"].values()):
        served = [server.generate(p.sample.image, p.sample.question, budget_fraction=budget) for p in val]
        assert dict(Counter(str(s.knobs) for s in served)) == row["controller"]["knobs"]
        outcomes = engine.run(list(val), [s.knobs for s in served])
        assert [s.answer for s in served] == [o.answer for o in outcomes]
        assert all(s.decision_ms > 0 and s.latency_ms > s.decision_ms for s in served)


def test_ms_and_fraction_budgets_are_the_same_request(server, run):
    sample = build_data(run[1].data).split("val", 1)[0]
    ref = server.scale.reference_ms
    a = server.generate(sample.image, sample.question, budget_fraction=0.6)
    b = server.generate(sample.image, sample.question, budget_ms=0.6 * ref)
    assert (a.knobs, a.answer, a.budget_ms) == (b.knobs, b.answer, pytest.approx(b.budget_ms))


def test_concurrent_requests_answer_as_if_alone(server, run):
    samples = build_data(run[1].data).split("val", 6)[:]
    alone = [server.generate(s.image, s.question, budget_fraction=f) for s, f in zip(samples, (0.4, 1.0) * 3)]
    results = [None] * len(samples)

    def ask(i):
        s = samples[i]
        results[i] = server.generate(s.image, s.question, budget_fraction=(0.4, 1.0)[i % 2])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(samples))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [(r.knobs, r.answer) for r in results] == [(r.knobs, r.answer) for r in alone]


@pytest.mark.parametrize("kwargs", [{}, {"budget_ms": 5.0, "budget_fraction": 0.5}, {"budget_ms": -1.0}])
def test_bad_budgets_are_one_line(server, kwargs):
    with pytest.raises(ServeError) as err:
        server.generate(Image.new("RGB", (64, 64)), "what colour is cell r0c0", **kwargs)
    assert "\n" not in str(err.value)


def test_a_budget_below_the_cheapest_setting_warns_once(run):
    fresh = Server.from_run_dir(run[0])
    image = Image.new("RGB", (64, 64))
    with pytest.warns(UserWarning, match="below the cheapest"):
        fresh.generate(image, "what colour is cell r0c0", budget_ms=1e-3)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.generate(image, "what colour is cell r0c0", budget_ms=1e-3)  # told once


@pytest.mark.parametrize("make,message", [
    (lambda d: d / "nowhere", "is not a directory"),
    (lambda d: d, "controller.pt does not exist"),
    (lambda d: (d / "controller.pt").write_bytes(b"not a checkpoint") and d, "cannot be read"),
    (lambda d: torch.save({"state_dict": {}}, d / "controller.pt") or d, "lacks"),
])
def test_bad_run_dirs_are_one_line(tmp_path, make, message):
    with pytest.raises(ServeError, match=message) as err:
        Server.from_run_dir(make(tmp_path))
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_command_line(run, tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    cmd = [sys.executable, "-m", "grpo_ctrl.serve", f"run_dir={run[0]}", f"image={image}",
           "question=what colour is cell r1c1"]
    ok = subprocess.run([*cmd, "budget_fraction=0.8"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    served = json.loads(ok.stdout.strip().splitlines()[-1])
    assert {"answer", "knobs", "budget_ms", "latency_ms", "decision_ms"} <= served.keys()
    missing = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "exactly one of budget_ms" in missing.stderr


@pytest.mark.slow
def test_a_second_evaluation_reads_the_whole_grid_from_the_store(run, tmp_path):
    """evaluate.py's grid over a shared outcome store: the first pass computes it, the next makes no model call."""
    def evaluate(name):
        res = subprocess.run([sys.executable, "experiments/evaluate.py", f"run_dir={run[0]}",
                              "latency_source=estimator", "budgets=2", "test_size=6", "val_size=4", "workers=1",
                              "threads=1", "fidelity_prompts=2",
                              f"store={tmp_path / 'store'}", f"hydra.run.dir={tmp_path / name}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        return json.loads((tmp_path / name / "evaluation.json").read_text())

    first, second = evaluate("first"), evaluate("second")
    settings = 27
    assert first["outcomes"]["computed"] >= settings * 10 and second["outcomes"] == {"computed": 0,
                                                                                     "read": settings * 10}
    assert first["fidelity"]["pairs"] == settings * 2 and 0 <= first["fidelity"]["score_flip_rate"] <= 1
    assert [b["policies"] for b in first["budgets"]] == [b["policies"] for b in second["budgets"]]


@pytest.mark.slow
def test_evaluate_fills_every_column_on_the_test_split(run, tmp_path):
    out = tmp_path / "evaluation"
    res = subprocess.run([sys.executable, "experiments/evaluate.py", f"run_dir={run[0]}", "latency_source=estimator",
                          "budgets=3", "test_size=10", "val_size=8", "workers=1", "threads=1",
                          f"hydra.run.dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((out / "evaluation.json").read_text())
    assert result["test_prompts"] == 10 and len(result["budgets"]) == 3
    for b in result["budgets"]:
        assert set(b["policies"]) == {"controller", "lut", "oracle_static", "per_request_oracle", "random", "full"}
        ctrl = b["policies"]["controller"]
        for key in ("accuracy", "violation_rate", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "mean_tier"):
            assert ctrl[key] is not None
    for suffix in ("csv", "md", "png"):
        assert (out / f"evaluation.{suffix}").stat().st_size > 0
    bad = subprocess.run([sys.executable, "experiments/evaluate.py", f"run_dir={tmp_path / 'none'}",
                          f"hydra.run.dir={tmp_path / 'bad'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("evaluate: ") and "\n" not in bad.stderr.strip()


def test_guarded_serving_keeps_what_fits_falls_back_otherwise_and_says_so(run, server, tiny_model_dir, tmp_path):
    from grpo_ctrl.latency.estimator import LatencyEstimator
    from grpo_ctrl.latency.guard import LatencyGuard

    est = LatencyEstimator.load(tiny_model_dir / "latency_estimator.json")
    est.scores = {"any": [1.0] * 40}  # the estimator's prediction is its upper latency
    space = server.vlm.knob_space
    guarded = Server(server.vlm, server.policy, server.scale, server.max_new_tokens,
                     guard=LatencyGuard(est, space, 0.05, server.max_new_tokens))
    sample = build_data(run[1].data).split("val", 1)[0]
    tight = guarded.generate(sample.image, sample.question, budget_ms=1e-6)
    assert tight.knobs == space.cheapest and tight.to_dict()["guard"] == "fallback" and tight.answer
    loose = guarded.generate(sample.image, sample.question, budget_ms=1e9)
    plain = server.generate(sample.image, sample.question, budget_ms=1e9)
    assert (loose.guard, loose.knobs, loose.answer) == ("kept", plain.knobs, plain.answer)
    assert "guard" not in plain.to_dict()
    # the run's own estimator carries no residual scores: asking for the guard is one line naming the fix
    with pytest.raises(ServeError, match=r"carries 0 residual scores.*calibrate_latency.py"):
        Server.from_run_dir(run[0], guard=True)
    est.save(tmp_path / "scored.json")
    assert Server.from_run_dir(run[0], guard=True, guard_estimator=str(tmp_path / "scored.json")).guard is not None
