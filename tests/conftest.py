import pytest
import torch

from grpo_ctrl.data import vocabulary
from grpo_ctrl.knobs import KnobSpace
from grpo_ctrl.vlm import VLMAdapter
from grpo_ctrl.vlm.builder import EmbeddedVLMSize, embedded_vlm
from grpo_ctrl.vlm.tokenizer import build_tokenizer

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
