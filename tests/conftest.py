import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from grpo_ctrl.data import vocabulary
from grpo_ctrl.knobs import KnobSpace
from grpo_ctrl.vlm import VLMAdapter
from grpo_ctrl.vlm.builder import EmbeddedVLMSize, embedded_vlm
from grpo_ctrl.vlm.tokenizer import build_tokenizer

ROOT = Path(__file__).resolve().parent.parent
CONF = str(ROOT / "conf")

TINY = EmbeddedVLMSize(vision_hidden=32, vision_layers=1, text_hidden=64, text_layers=4, num_experts=4,
                       expert_hidden=32, heads=2, kv_heads=1)
TINY_SPACE = KnobSpace({"low": 4, "medium": 2, "high": 1}, (1, 2, 4), (2, 3, 4))


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture
def tiny_vlm() -> VLMAdapter:
    """A randomly initialised miniature of the embedded VLM (fast; knob mechanics only)."""
    torch.manual_seed(0)
    return embedded_vlm(build_tokenizer(vocabulary()), TINY, TINY_SPACE, [3, 1, 2])


def write_tiny_model_dir(path):
    """Save a tiny random VLM with a hand-made latency estimator: a complete model dir for train.py."""
    from grpo_ctrl.latency import LatencyEstimator

    torch.manual_seed(0)
    vlm = embedded_vlm(build_tokenizer(vocabulary()), TINY, TINY_SPACE, [3, 1, 2])
    vlm.save_pretrained(path)
    coef = {"vision": [0.5, 0.02, 0.0], "prefill": [1.0, 0.01, 0.01, 0.004, 0.2, 0.05, 0.0],
            "decode_step": [0.3, 0.3, 0.1, 0.0], "finish": [1.0, 0.1]}
    LatencyEstimator(coef).save(path / "latency_estimator.json")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny_vlm"))


def small_cfg(model_dir, *overrides):
    """A composed train.py config for a few fast steps on the model in `model_dir`."""
    from grpo_ctrl.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=[
            "model=hf", f"model.path={model_dir}", "steps=3", "val_every=3", "ckpt_every=1", "prompts_per_step=4",
            "group_size=4", "data.train_size=24", "data.val_size=8", "logger=none", "progress=false", "threads=1",
            "rollout.workers=1", *overrides])


def tiny_command(model_dir, run_dir, *extra):
    """A train.py command line for a few fast steps on the model in `model_dir`, writing to `run_dir`."""
    return [sys.executable, "train.py", "model=hf", f"model.path={model_dir}", "prompts_per_step=4", "group_size=4",
            "data.train_size=24", "data.val_size=8", "progress=false", "threads=1", f"hydra.run.dir={run_dir}", *extra]


def one_line(res: subprocess.CompletedProcess) -> str:
    """The single stderr line of a command that stopped on bad input with exit 2 (before anything loaded)."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(lines) == 1, res.stderr[-2000:]  # also: no "Loading weights" progress, nothing loaded
    return lines[0]
