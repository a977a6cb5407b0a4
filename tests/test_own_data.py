"""A user's own data end to end, through the command lines the README gives: a dataset on disk that is not the
grid task (images of varied sizes, multi-word answers, several annotators) -> pretrain a small elastic VLM on it
-> block importance -> latency estimator -> train.py -> its validation report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_ctrl.data.toy import write_toy_vqa

pytestmark = pytest.mark.slow  # every test launches processes

ROOT = Path(__file__).resolve().parent.parent
DATA = ["data=hf_vqa", "data.train_size=null", "data.val_size=8"]
SMALL_MODEL = ["size.image_size=32", "size.patch_size=8", "size.vision_hidden=32", "size.vision_layers=1",
               "size.text_hidden=64", "size.text_layers=4", "size.num_experts=4", "size.expert_hidden=32",
               "size.heads=2", "size.kv_heads=1", "knobs.num_blocks=[2,3,4]"]


def _run(script: str, *overrides: str) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, script, *overrides], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{script} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


def test_pretrain_then_train_on_a_dataset_on_disk(tmp_path):
    data = write_toy_vqa(tmp_path / "toy", sizes={"train": 48, "validation": 16, "test": 16})
    model = tmp_path / "model"
    data_args = [*DATA, f"data.path={data}"]
    pre = _run("experiments/pretrain_tiny_vlm.py", *data_args, *SMALL_MODEL, "steps=6", "batch_size=8",
               "eval_every=6", "eval_samples=8", "warmup_steps=2", f"export_dir={model}",
               f"hydra.run.dir={tmp_path / 'pretrain'}")
    assert "vocabulary" in pre.stdout and (model / "grpo_ctrl.json").exists()
    saved_words = json.loads((model / "tokenizer.json").read_text())["model"]["vocab"]
    assert "circle" in saved_words and "shapes" in saved_words  # words of the training split, not grid-VQA's

    _run("experiments/block_importance.py", *data_args, f"model.path={model}", "samples=8",
         f"hydra.run.dir={tmp_path / 'importance'}")
    _run("experiments/profile_latency.py", *data_args, f"model.path={model}", "samples=2", "generated_tokens=[1,3]",
         "repeats=1", "warmup=1", "plot=false", f"hydra.run.dir={tmp_path / 'profile'}")
    assert (model / "block_importance.json").exists() and (model / "latency_estimator.json").exists()

    run = tmp_path / "train"
    _run("train.py", "model=hf", f"model.path={model}", *data_args, "model.max_new_tokens=4", "steps=4",
         "val_every=4", "ckpt_every=4", "prompts_per_step=2", "group_size=2", "logger=none", "progress=false",
         "budgets.val=[0.5,1.0]", "rollout.workers=1", f"hydra.run.dir={run}")
    report = json.loads((run / "val_report.json").read_text())
    assert len(report["budgets"]) == 2
    assert all(0 <= b["controller"]["accuracy"] <= 1 for b in report["budgets"].values())
    config = (run / "config.yaml").read_text()
    assert "metric: vqa" in config and "name: hf_vqa" in config


@pytest.mark.parametrize("override,message", [
    ("data.fields.question=prompt", "data.fields.question='prompt' is not a column"),
    ("data.splits.val=dev", "data.splits.val='dev' is not a split"),
])
def test_train_py_stops_on_a_bad_field_mapping_before_the_model_loads(tmp_path, override, message):
    data = write_toy_vqa(tmp_path / "toy", sizes={"train": 4, "validation": 2})
    res = subprocess.run([sys.executable, "train.py", "data=hf_vqa", f"data.path={data}", override,
                          "model=hf", f"model.path={tmp_path / 'no_model_here'}", "logger=none",
                          f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("data error: ") and message in lines[0]
