"""Resume hardening: a stop signal checkpoints at the next step boundary; a torn metrics line is dropped; a
checkpoint of another architecture is refused with one line before the model loads, leaving the run alone."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import one_line, small_cfg, tiny_command

from grpo_ctrl.app import train
from grpo_ctrl.parallel import ParallelContext

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # every test launches processes


def weights(run_dir):
    return torch.load(Path(run_dir) / "controller.pt")["state_dict"]


def test_sigterm_checkpoints_at_the_next_step_and_the_same_command_ends_as_an_uninterrupted_run(tiny_model_dir,
                                                                                               tmp_path):
    """No checkpoint is due before the end (ckpt_every=1000): the one the run resumes from is the signal's. The
    rollout workers (2) ignore the signal, as they must when Slurm signals every process of a job."""
    args = ("steps=30", "val_every=15", "ckpt_every=1000", "rollout.workers=2")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    res = subprocess.run(tiny_command(tiny_model_dir, straight, *args, "logger=none"), cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]

    cmd = tiny_command(tiny_model_dir, stopped, *args, "logger=wandb", "logger.mode=offline")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = stopped / "metrics.jsonl", time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    step = torch.load(stopped / "checkpoints" / "last.pt", weights_only=False)["step"]
    assert f"stopping on SIGTERM at step {step};" in out and 5 <= step < 30
    assert len(metrics.read_text().splitlines()) == step  # it stopped right there

    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resumed at step {step}" in res.stdout
    a, b = weights(straight), weights(stopped)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, 31))
    runs = sorted(p.name.rsplit("-", 1)[1] for p in (stopped / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len(set(runs)) == 1  # the resumed job logs to the same wandb run


def test_a_torn_last_metrics_line_does_not_stop_the_resume(tiny_model_dir, tmp_path):
    """A kill in the middle of a write leaves half a line after the last checkpoint's steps."""
    train(small_cfg(tiny_model_dir, "steps=2", "ckpt_every=2", "val_every=2"), tmp_path, ParallelContext())
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "train/rew')
    train(small_cfg(tiny_model_dir, "steps=4", "ckpt_every=2", "val_every=2"), tmp_path, ParallelContext())
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    res = subprocess.run(tiny_command(tiny_model_dir, run_dir, "steps=2", "val_every=2", "logger=none",
                                      "rollout.workers=1"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return run_dir


@pytest.mark.parametrize("change,difference", [
    (["controller.hidden=32"], "controller.hidden=64, this run has controller.hidden=32"),
    (["model.knobs.top_ks=[1,2]"], "model.knobs.top_ks=[1, 2, 4], this run has model.knobs.top_ks=[1, 2]"),
    (["model=embedded", "model.path=null"], "model.layers=4, this run has model.layers=6"),  # another model
])
def test_a_checkpoint_of_another_architecture_is_refused_and_the_run_left_alone(tiny_model_dir, trained_run, change,
                                                                                difference):
    files = ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "controller.pt", "val_report.json")
    before = {name: (trained_run / name).read_bytes() for name in files}
    res = subprocess.run(tiny_command(tiny_model_dir, trained_run, "steps=4", "logger=none", *change), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    line = one_line(res)  # exit 2, one line, and nothing loaded
    assert line.startswith("config error: checkpoint ") and difference in line and "resume=false" in line
    assert {name: (trained_run / name).read_bytes() for name in files} == before


KILL_THE_WANDB_BACKEND = """
import os, sys, time
from pathlib import Path

from omegaconf import OmegaConf

from grpo_ctrl.tracking import Tracker

def children():
    return set(Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split())

before = children()
tracker = Tracker(sys.argv[1], OmegaConf.create({"name": "wandb", "mode": "offline", "project": "test",
                                                 "entity": None, "tags": []}))
tracker.log({"a": 1.0}, step=1)
backend = children() - before
assert backend
for pid in backend:
    os.kill(int(pid), int(sys.argv[2]))
time.sleep(1)
for step in (2, 3):
    tracker.log({"a": float(step)}, step=step)
tracker.finish()
"""


def test_the_run_goes_on_when_slurms_sigterm_kills_the_wandb_backend(tmp_path):
    """Slurm signals every process of a job step it requeues, wandb's backend process included (run in a process
    of its own: wandb keeps a dead backend for the rest of the process)."""
    res = subprocess.run([sys.executable, "-c", KILL_THE_WANDB_BACKEND, str(tmp_path), str(int(signal.SIGTERM))],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert res.stdout.count("wandb: stopped mirroring") == 1
