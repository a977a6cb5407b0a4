"""The embedded default shipped in the package: loads offline, carries its tokenizer, block order and
latency estimator, and its knobs move accuracy the way the task is built to."""

import json

import numpy as np
import pytest

from grpo_ctrl.baselines import accuracy_by_type
from grpo_ctrl.data import GridVQA
from grpo_ctrl.data.synthetic import DEFAULT_MIX
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.latency import LatencyEstimator
from grpo_ctrl.rollout import PromptPool, RolloutEngine
from grpo_ctrl.vlm import EMBEDDED_DIR, load_vlm


@pytest.fixture(scope="module")
def embedded():
    return load_vlm()


@pytest.fixture(scope="module")
def engine(embedded):
    return RolloutEngine(embedded, batch_size=16)


@pytest.fixture(scope="module")
def test_prompts():
    return list(PromptPool(GridVQA().split("test", 240), "test"))


@pytest.fixture(scope="module")
def test_questions(test_prompts):
    return [p.sample for p in test_prompts]


def scores(engine, prompts, knobs) -> np.ndarray:
    return np.array([o.score for o in engine.run(prompts, [knobs] * len(prompts))])


def test_shipped_files_are_complete_and_small():
    names = {p.name for p in EMBEDDED_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "grpo_ctrl.json", "block_importance.json",
            "latency_estimator.json"} <= names
    assert (EMBEDDED_DIR / "model.safetensors").stat().st_size <= 25_000_000
    recipe = json.loads((EMBEDDED_DIR / "grpo_ctrl.json").read_text())["recipe"]
    assert recipe["script"] == "experiments/pretrain_tiny_vlm.py" and "seed" in recipe


def test_block_order_comes_from_the_importance_file(embedded):
    order = json.loads((EMBEDDED_DIR / "block_importance.json").read_text())["drop_order"]
    assert embedded.block_drop_order == order and 0 not in order


def test_full_knobs_answer_well_and_cheapest_knobs_lose_accuracy(embedded, engine, test_prompts):
    full = scores(engine, test_prompts, embedded.knob_space.full)
    cheap = scores(engine, test_prompts, embedded.knob_space.cheapest)
    assert full.mean() >= 0.9
    assert cheap.mean() <= full.mean() - 0.2


@pytest.mark.parametrize("qtype, needed, cheaper, drop", [
    ("cell", Knobs("high", 4, 6), Knobs("medium", 4, 6), 0.4),  # a mosaic cell: 2x2 pooling mixes four colours
    ("square", Knobs("medium", 4, 6), Knobs("low", 4, 6), 0.1),  # a 2x2 square survives 2x2 pooling, not 4x4
    ("code", Knobs("high", 4, 6), Knobs("high", 4, 2), 0.15),  # a quadrant's colour, then a table lookup: depth
    ("chain", Knobs("high", 4, 6), Knobs("high", 4, 2), 0.15),  # a pointer chase of 2-4 hops: depth
])
def test_each_type_needs_its_knob(engine, test_prompts, qtype, needed, cheaper, drop):
    questions = [p for p in test_prompts if p.sample.qtype == qtype]
    assert len(questions) >= 20
    with_knob, without = (scores(engine, questions, k).mean() for k in (needed, cheaper))
    assert with_knob >= without + drop


def test_shipped_estimator_predicts_more_latency_for_more_work():
    est = LatencyEstimator.load(EMBEDDED_DIR / "latency_estimator.json")
    cheap = est.predict_total(4, 12, 2, 1, 2)
    full = est.predict_total(64, 72, 2, 4, 6)
    assert 0 < cheap < full


def test_per_type_table_has_every_type(engine, test_prompts, test_questions):
    table = accuracy_by_type(scores(engine, test_prompts, Knobs("high", 4, 6)), [q.qtype for q in test_questions])
    assert {"all"} | {t for t, w in DEFAULT_MIX.items() if w > 0} == table.keys()
    assert np.isfinite(list(table.values())).all()
