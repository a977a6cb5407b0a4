"""A pinned trajectory: four steps on the embedded default give these rewards, accuracies, losses and weights.

Equivalence tests (resume, ranks, dp) compare two runs of today's code, so a change that moves both sides passes
them; this test catches it. The pinned numbers are what the code computed when they were last pinned. Answers
are discrete (accuracy is exact); rewards, the loss and the weights are float32 sums whose order the CPU's vector
width may change, so they are compared to 1e-5 relative.

To re-pin DELIBERATELY (a change that is meant to move training: the reward, the GRPO loss, sampling, the
optimiser, the embedded model or its data): run `python -m pytest tests/test_trajectory.py`, copy the
`PINNED = ...` block the failure prints over the one below, and say in the commit message what moved and why.
"""

import json

import pytest
import torch
from conftest import CONF
from hydra import compose, initialize_config_dir

from grpo_ctrl.app import train
from grpo_ctrl.config import register_configs
from grpo_ctrl.parallel import ParallelContext

PINNED = {
    "reward_mean": [0.6045046448707581, 0.11185120046138763, -0.07342702150344849, 0.8399509787559509],
    "loss": [-0.18568769097328186, -0.18134963512420654, -0.18836668133735657, -0.189532071352005],
    "accuracy": [0.5625, 0.75, 0.625, 1.0],
    "weight_sum": 13.874986067927239,
    "weight_abs_sum": 1202.3148395375283,
}


def trajectory(run_dir) -> dict:
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "steps=4", "val_every=4", "ckpt_every=4", "prompts_per_step=4", "group_size=4", "data.train_size=24",
            "data.val_size=8", "budgets.val=[0.5]", "logger=none", "progress=false", "threads=1", "rollout.workers=1"])
    train(cfg, run_dir, ParallelContext())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    weights = torch.load(run_dir / "controller.pt")["state_dict"]
    flat = torch.cat([w.double().flatten() for w in weights.values()])
    return {"reward_mean": [r["train/reward_mean"] for r in rows], "loss": [r["train/loss"] for r in rows],
            "accuracy": [r["train/accuracy"] for r in rows], "weight_sum": float(flat.sum()),
            "weight_abs_sum": float(flat.abs().sum())}


def test_four_steps_of_the_default_run_follow_the_pinned_trajectory(tmp_path):
    got = trajectory(tmp_path)
    pasteable = "PINNED = " + json.dumps(got, indent=4).replace("\n}", ",\n}")
    assert got["accuracy"] == PINNED["accuracy"], pasteable
    for key in ("reward_mean", "loss", "weight_sum", "weight_abs_sum"):
        assert got[key] == pytest.approx(PINNED[key], rel=1e-5, abs=1e-7), pasteable
