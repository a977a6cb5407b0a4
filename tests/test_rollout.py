"""Rollouts in a fixed chunk plan over the outcome store: a pair's outcome does not depend on how it was reached
(alone, mixed, after a reset, on a replica, a worker or a second process, from another sampling order), batch 1
equals one-by-one generate(), and the store is shared, crash-safe and refuses what is not its own."""

import copy
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from grpo_ctrl.data import GridVQA
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.outcomes import DB_FILE, OutcomeStore, StoreError
from grpo_ctrl.rollout import PromptPool, RolloutEngine
from grpo_ctrl.vlm import load_vlm

ROOT = Path(__file__).resolve().parent.parent
BINDING = {"model": {"weights": "m"}, "data": {"seed": 0}}


@pytest.fixture
def pool():
    return PromptPool(GridVQA().split("train", 20), "train")


def _run(engine, pairs):
    return engine.run([p for p, _ in pairs], [k for _, k in pairs])


def _pairs(vlm, pool, seed=0):
    rng = random.Random(seed)
    pairs = [(p, rng.choice(vlm.knob_space.all())) for p in pool for _ in range(2)]
    return pairs + [(p, Knobs("high", 4, 4)) for p in pool]  # one setting shared by many prompts


@pytest.mark.parametrize("source", ["built", "loaded"])
def test_a_pair_is_the_same_however_it_is_reached(tiny_vlm, tiny_model_dir, pool, source):
    """Every field, gold probability included, bit for bit: the chunk a pair is computed in is fixed by the data, so
    the order pairs are asked in, a reset store, replicas and worker processes cannot change it. (A loaded model's
    replicas would fail this if its weights were memory-mapped at another alignment than the copies'.)"""
    if source == "loaded":
        tiny_vlm = load_vlm(tiny_model_dir)
    pairs = _pairs(tiny_vlm, pool)
    alone = [_run(RolloutEngine(tiny_vlm, batch_size=8), [pair])[0] for pair in pairs[:: len(pairs) // 6]]
    reference = _run(RolloutEngine(tiny_vlm, batch_size=8), pairs)
    assert alone == reference[:: len(pairs) // 6]

    shuffled = random.Random(1).sample(range(len(pairs)), len(pairs))
    mixed = _run(RolloutEngine(tiny_vlm, batch_size=8), [pairs[i] for i in shuffled])
    assert [mixed[shuffled.index(i)] for i in range(len(pairs))] == reference

    replicas = RolloutEngine(tiny_vlm, batch_size=8, replicas=[tiny_vlm, copy.deepcopy(tiny_vlm)])
    assert _run(replicas, pairs) == reference

    workers = RolloutEngine(tiny_vlm, batch_size=8, workers=2)
    try:
        assert _run(workers, pairs) == reference
    finally:
        workers.close()


def test_a_needed_pair_computes_its_whole_chunk_once(tiny_vlm, pool):
    engine = RolloutEngine(tiny_vlm, batch_size=8)
    knobs = Knobs("medium", 2, 3)
    engine.run([pool[9]], [knobs])
    assert engine.store.computed == 8  # prompts 8..15: the chunk of prompt 9
    engine.run([pool[i] for i in range(8, 16)], [knobs] * 8)
    assert engine.store.computed == 8
    engine.run([pool[19]], [knobs])
    assert engine.store.computed == 12  # the last chunk holds what is left: 16..19


def test_outcomes_do_not_depend_on_the_run_s_thread_count(tiny_vlm, pool):
    pairs = [(p, Knobs("high", 4, 4)) for p in pool]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = _run(RolloutEngine(tiny_vlm, batch_size=8), pairs)
        torch.set_num_threads(1)
        one = _run(RolloutEngine(tiny_vlm, batch_size=8), pairs)
    finally:
        torch.set_num_threads(before)
    assert two == one


@pytest.mark.parametrize("knobs", [Knobs("low", 1, 2), Knobs("high", 4, 4)])
def test_batch_one_outcomes_match_one_by_one_generate(tiny_vlm, pool, knobs):
    prompts = list(pool)[:6]
    outcomes = RolloutEngine(tiny_vlm, batch_size=1).run(prompts, [knobs] * len(prompts))
    for p, o in zip(prompts, outcomes):
        gen = tiny_vlm.answer([p.sample.image], [p.sample.question], knobs, return_first_logits=True)
        probs = gen.first_logits.softmax(dim=-1)[0]
        assert o.answer == gen.answers[0]
        assert o.generated_tokens == gen.num_generated[0]
        assert o.prompt_tokens == tiny_vlm.inputs([p.sample.image], [p.sample.question], knobs.tier)[
            "input_ids"].shape[1]
        assert o.gold_prob == pytest.approx(float(probs[tiny_vlm.answer_first_token(p.sample.answer)]), abs=1e-4)
        if o.score == 1.0:  # greedy picked the gold answer: its probability is the top one
            assert o.gold_prob == pytest.approx(float(probs.max()), abs=1e-4)


def test_batched_rows_count_their_own_tokens_and_agree_with_batch_one(tiny_vlm, pool):
    """Token counts come from each row's mask, not the padded width; answers agree with batch 1 (near-ties of a
    random model aside: the share that differs is what evaluate.py reports as the flip rate)."""
    knobs = Knobs("medium", 2, 4)
    prompts = list(pool)
    batched = RolloutEngine(tiny_vlm, batch_size=16).run(prompts, [knobs] * len(prompts))
    single = RolloutEngine(tiny_vlm, batch_size=1).run(prompts, [knobs] * len(prompts))
    assert len({o.prompt_tokens for o in single}) > 1  # the rows really are of different lengths
    assert [(o.prompt_tokens, o.image_tokens, o.generated_tokens) for o in batched] == \
        [(o.prompt_tokens, o.image_tokens, o.generated_tokens) for o in single]
    assert sum(a.answer == b.answer for a, b in zip(batched, single)) >= 0.9 * len(prompts)
    assert all(abs(a.gold_prob - b.gold_prob) < 1e-3 for a, b in zip(batched, single))


def test_features_are_stored_per_sample_and_tier(tiny_vlm, pool):
    engine = RolloutEngine(tiny_vlm, batch_size=8)
    prompts = list(pool)[:10]
    q = engine.question_features(prompts)
    v = engine.vision_features(prompts, ["low"] * 5 + ["high"] * 5)
    fresh = RolloutEngine(tiny_vlm, batch_size=8, store=engine.store)
    fresh._encoded.clear()
    assert torch.equal(fresh.question_features(prompts), q)
    assert torch.equal(fresh.vision_features(prompts, ["low"] * 5 + ["high"] * 5), v)
    assert not fresh._encoded  # read from the store: nothing encoded again
    assert not torch.equal(v[0], engine.vision_features(prompts[:1], ["high"])[0])


def test_a_disk_store_is_shared_by_a_second_engine_and_process(tiny_vlm, pool, tmp_path):
    pairs = _pairs(tiny_vlm, pool)
    first = RolloutEngine(tiny_vlm, batch_size=8, store=OutcomeStore(tmp_path, BINDING))
    reference = _run(first, pairs)
    first.close()
    second = RolloutEngine(tiny_vlm, batch_size=8, store=OutcomeStore(tmp_path, BINDING))
    assert _run(second, pairs) == reference
    assert second.store.computed == 0 and second.store.read == len({(p.key, k) for p, k in pairs})


def test_a_store_of_another_model_or_dataset_is_refused_in_one_line(tmp_path):
    OutcomeStore(tmp_path, BINDING).close()
    for name, other in (("model", {"weights": "other"}), ("data", {"seed": 1})):
        with pytest.raises(StoreError) as err:
            OutcomeStore(tmp_path, {**BINDING, name: other})
        assert f"another {name}" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        OutcomeStore(tmp_path / "file", BINDING)


FILL = """
import sys, torch
sys.path.insert(0, "tests")
from conftest import TINY, TINY_SPACE
from grpo_ctrl.data import GridVQA, vocabulary
from grpo_ctrl.outcomes import OutcomeStore
from grpo_ctrl.rollout import PromptPool, RolloutEngine
from grpo_ctrl.vlm.builder import embedded_vlm
from grpo_ctrl.vlm.tokenizer import build_tokenizer
torch.set_num_threads(1)
torch.manual_seed(0)
vlm = embedded_vlm(build_tokenizer(vocabulary()), TINY, TINY_SPACE, [3, 1, 2])
store = OutcomeStore(sys.argv[1], {"model": {"weights": "m"}, "data": {"seed": 0}})
engine = RolloutEngine(vlm, batch_size=4, store=store)
pool = PromptPool(GridVQA().split("train", 24), "train")
settings = vlm.knob_space.all()
order = settings if sys.argv[2] == "forward" else settings[::-1]
for k in order:
    outcomes = engine.run(list(pool), [k] * len(pool))
    print(k, *[o.answer for o in outcomes], flush=True)
"""


def _fill(store_dir, order):
    return subprocess.Popen([sys.executable, "-c", FILL, str(store_dir), order], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _rows(store_dir):
    with sqlite3.connect(Path(store_dir) / DB_FILE) as db:
        return sorted(db.execute("SELECT * FROM outcomes").fetchall())


@pytest.mark.slow
def test_two_processes_fill_one_store_at_once_and_agree(tmp_path):
    procs = [_fill(tmp_path, "forward"), _fill(tmp_path, "backward")]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    answers = [sorted(o[0].splitlines()) for o in outs]
    assert answers[0] == answers[1]  # both read the same bits for every pair
    rows = _rows(tmp_path)
    assert len(rows) == 24 * 27 and len({r[:3] for r in rows}) == len(rows)


@pytest.mark.slow
def test_kill_9_while_writing_leaves_a_store_a_rerun_completes(tmp_path):
    proc = _fill(tmp_path, "forward")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill it once some chunks are in and more are being written
        line = proc.stdout.readline()
        if line.count(" ") > 3:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _rows(tmp_path)
    assert 0 < len(partial) < 24 * 27 and len(partial) % 4 == 0  # whole chunks only
    rerun = _fill(tmp_path, "forward")
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-2000:]
    with sqlite3.connect(Path(tmp_path) / DB_FILE) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = _rows(tmp_path)
    assert len(rows) == 24 * 27 and set(partial) <= set(rows)
