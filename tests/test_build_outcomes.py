"""experiments/build_outcomes.py: a store built ahead, in shards, is what training reads (it computes nothing), a
rerun of a finished shard computes nothing, and bad input is one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import one_line, tiny_command

pytestmark = pytest.mark.slow  # every test launches processes

ROOT = Path(__file__).resolve().parent.parent
DATA = ("data.train_size=12", "data.val_size=8")


def build(model_dir, store, *extra):
    return subprocess.run([sys.executable, "experiments/build_outcomes.py", "model=hf", f"model.path={model_dir}",
                           f"rollout.store={store}", "rollout.batch_size=4", "rollout.workers=1", "threads=1",
                           "progress=false", *DATA, *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_a_store_built_in_shards_is_all_training_needs(tiny_model_dir, tmp_path):
    store = tmp_path / "store"
    for extra in (("build.num_shards=2", "build.shard=0"), ("build.num_shards=2", "build.shard=1"),
                  ("build.split=val",)):
        res = build(tiny_model_dir, store, f"hydra.run.dir={tmp_path / 'b'}", *extra)
        assert res.returncode == 0, res.stderr[-2000:]
    again = build(tiny_model_dir, store, f"hydra.run.dir={tmp_path / 'b'}", "build.num_shards=2", "build.shard=1")
    assert "0 outcomes computed" in again.stdout
    res = subprocess.run(tiny_command(tiny_model_dir, tmp_path / "run", "steps=3", "val_every=3", "logger=none",
                                      *DATA, "rollout.batch_size=4", "rollout.workers=1", f"rollout.store={store}"),
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    timing = json.loads((tmp_path / "run" / "val_report.json").read_text())["timing"]
    assert timing["outcomes_computed"] == 0 and timing["outcomes_read"] > 0


def test_bad_build_input_is_one_line(tiny_model_dir, tmp_path):
    line = one_line(build(tiny_model_dir, tmp_path / "s", "build.settings=[high/k9/b1]"))
    assert line.startswith("build_outcomes: build.settings ['high/k9/b1'] are not in the knob space")
    line = one_line(subprocess.run([sys.executable, "experiments/build_outcomes.py"], cwd=ROOT, capture_output=True,
                                    text=True, timeout=120))
    assert "needs rollout.store=DIR" in line


def test_train_refuses_a_store_of_another_dataset_in_one_line(tiny_model_dir, tmp_path):
    store = tmp_path / "store"
    assert build(tiny_model_dir, store, f"hydra.run.dir={tmp_path / 'b'}", "build.split=val").returncode == 0
    res = subprocess.run(tiny_command(tiny_model_dir, tmp_path / "run", "logger=none", "data.seed=1",
                                      f"rollout.store={store}"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    line = one_line(res)  # before the model loads: nothing else printed
    assert line.startswith(f"store error: rollout.store={store} holds outcomes of another data (differs in: seed)")
    assert not (tmp_path / "run" / "checkpoints").exists()
