"""Bad input as a new user types it: one line (what, where, how to fix) and exit status 2 before any weights
load, and the shipped model's files left alone."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import one_line

from grpo_ctrl.vlm import EMBEDDED_DIR

pytestmark = pytest.mark.slow  # every test launches processes

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ["train.py", "steps=1", "logger=none"]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args,message", [
    ([*TRAIN, "parallel=ddp", "parallel.nproc=0"], "config error: parallel.nproc=0 must be >= 1"),
    ([*TRAIN, "latency=measured", "latency.repeats=0"], "config error: latency.repeats=0 must be >= 1"),
    ([*TRAIN, "latency=measured", "latency.warmup=-1"], "config error: latency.warmup=-1 must be >= 0"),
    ([*TRAIN, "model.knobs.top_ks=[1,99]"], "model error: knobs.top_k [1, 99] exceed the model's 8 experts"),
    ([*TRAIN, "model.knobs.num_blocks=[2,99]"], "model error: knobs.num_blocks [2, 99] exceed the model's 6 blocks"),
    ([*TRAIN, "group_sise=4"], "group_sise is not a config key (did you mean group_size?)"),
    ([*TRAIN, "lr=abc"], "config error: lr=abc: Value 'abc' of type 'str' could not be converted to Float"),
    ([*TRAIN, "latency=wallclock"], "latency=wallclock is not an option of latency; use one of"),
    ([*TRAIN, "-m", "group_size=4,x"], "config error: group_size=x"),
    ([*TRAIN, "data.chain_hops=[2,7]"], "data error: data.chain_hops=[2, 7]: use hop counts from 1 to 6"),
    (["experiments/profile_latency.py", "repeats=0"], "profile_latency.py: repeats=0 must be >= 1"),
    (["experiments/profile_latency.py", "samples=0"], "profile_latency.py: samples=0 must be >= 1"),
    (["experiments/profile_latency.py", "generated_tokens=[0,2]"], "generated_tokens=[0, 2] must be >= 1"),
    (["experiments/profile_latency.py", "sampels=3"], "sampels is not a config key (did you mean samples?)"),
    (["experiments/profile_latency.py", "model=hf"], "model is a group of keys here, not a value"),
    (["experiments/calibrate_latency.py", "requests=3"], "calibrate_latency.py: requests=3 must be >= 6"),
    (["experiments/calibrate_latency.py", "max_violation=1.5"], "max_violation=1.5 must be in (0, 1)"),
    (["experiments/evaluate_knobs.py", "samples=0"], "evaluate_knobs.py: samples=0 must be >= 1"),
    (["experiments/block_importance.py", "samples=0"], "block_importance.py: samples=0 must be >= 1"),
    (["experiments/evaluate.py", "run_dir=/nowhere"], "evaluate: run_dir=/nowhere is not a directory"),
])
def test_bad_command_lines_stop_with_one_line(args, message, tmp_path):
    assert message in one_line(_run(args, tmp_path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(tmp_path):
    assert "model.device=cuda: no CUDA device is visible here" in one_line(_run([*TRAIN, "model.device=cuda"],
                                                                                 tmp_path))


def test_a_corrupt_checkpoint_stops_before_the_model_loads(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"half a checkpoint")
    line = one_line(_run(TRAIN, tmp_path))
    assert "is unreadable" in line and "resume=false" in line
    assert checkpoint.read_bytes() == b"half a checkpoint"  # left for the user to look at


def test_an_estimator_with_negative_coefficients_is_refused(tmp_path):
    saved = json.loads((EMBEDDED_DIR / "latency_estimator.json").read_text())
    saved["coef"]["prefill"][1] = -5.0
    bad = tmp_path / "estimator.json"
    bad.write_text(json.dumps(saved))
    line = one_line(_run([*TRAIN, f"latency.estimator_path={bad}"], tmp_path))
    assert "negative coefficients" in line and "profile_latency.py" in line


def test_block_importance_leaves_the_shipped_file_alone(tmp_path):
    shipped = EMBEDDED_DIR / "block_importance.json"
    before = hashlib.sha256(shipped.read_bytes()).hexdigest()
    res = _run(["experiments/block_importance.py", "samples=4"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "not replacing the shipped" in res.stdout
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == before
    assert json.loads((tmp_path / "run" / "block_importance.json").read_text())["samples"] == 4
