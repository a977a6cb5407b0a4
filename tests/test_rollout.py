"""Rollout engine: an outcome is the request's own (alone, mixed, after a cache reset, on a replica or a worker
process: the same bits), it equals one-by-one generate(), and the gold-answer probability is the model's."""

import copy
import random

import pytest
import torch

from grpo_ctrl.data import GridVQA
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.rollout import Prompt, RolloutEngine
from grpo_ctrl.vlm import load_vlm


@pytest.fixture
def prompts():
    return [Prompt(("val", i), s) for i, s in enumerate(GridVQA().split("val", 6))]


def _run(engine, pairs):
    return engine.run([p for p, _ in pairs], [k for _, k in pairs])


@pytest.mark.parametrize("source", ["built", "loaded"])
def test_an_outcome_does_not_depend_on_what_else_is_computed(tiny_vlm, tiny_model_dir, source):
    """Every field, gold probability included, bit for bit. Batched rows fail this on CPU (MKL kernels change
    with the row count, padding changes attention widths, expert row counts depend on the neighbours); a loaded
    model's replicas fail it if the loaded weights are memory-mapped at another alignment than the copies'."""
    if source == "loaded":
        tiny_vlm = load_vlm(tiny_model_dir)
    data = GridVQA()
    pool = [Prompt(("train", i), data.sample("train", i)) for i in range(16)]
    rng = random.Random(0)
    pairs = [(p, rng.choice(tiny_vlm.knob_space.all())) for p in pool for _ in range(3)]
    pairs += [(p, Knobs("high", 4, 4)) for p in pool]  # one setting shared by many prompts: a full batch of old
    alone = [_run(RolloutEngine(tiny_vlm), [pair])[0] for pair in pairs]

    mixed = RolloutEngine(tiny_vlm)
    shuffled = rng.sample(pairs, len(pairs))
    by_pair = dict(zip([(p.key, k) for p, k in shuffled], _run(mixed, shuffled)))
    assert [by_pair[(p.key, k)] for p, k in pairs] == alone

    mixed._outcomes.clear()  # what a resume starts from: no memo, but vision tokens cached from other batches
    assert _run(mixed, pairs) == alone

    replicas = RolloutEngine(tiny_vlm, replicas=[tiny_vlm, copy.deepcopy(tiny_vlm)], memoize=False)
    assert _run(replicas, pairs) == alone

    workers = RolloutEngine(tiny_vlm, workers=2)
    try:
        assert _run(workers, pairs) == alone
    finally:
        workers.close()


def test_outcomes_do_not_depend_on_the_run_s_thread_count(tiny_vlm, prompts):
    pairs = [(p, Knobs("high", 4, 4)) for p in prompts]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = _run(RolloutEngine(tiny_vlm), pairs)
        torch.set_num_threads(1)
        one = _run(RolloutEngine(tiny_vlm), pairs)
    finally:
        torch.set_num_threads(before)
    assert two == one


@pytest.mark.parametrize("knobs", [Knobs("low", 1, 2), Knobs("high", 4, 4)])
def test_outcomes_match_one_by_one_generate(tiny_vlm, prompts, knobs):
    outcomes = RolloutEngine(tiny_vlm).run(prompts, [knobs] * len(prompts))
    for p, o in zip(prompts, outcomes):
        gen = tiny_vlm.answer([p.sample.image], [p.sample.question], knobs, return_first_logits=True)
        probs = gen.first_logits.softmax(dim=-1)[0]
        assert o.answer == gen.answers[0]
        assert o.generated_tokens == gen.num_generated[0]
        assert o.gold_prob == pytest.approx(float(probs[tiny_vlm.answer_first_token(p.sample.answer)]), abs=1e-4)
        if o.score == 1.0:  # greedy picked the gold answer: its probability is the top one
            assert o.gold_prob == pytest.approx(float(probs.max()), abs=1e-4)


def test_first_logits_are_the_greedy_first_token(tiny_vlm, prompts):
    s = [p.sample for p in prompts]
    gen = tiny_vlm.answer([x.image for x in s], [x.question for x in s], Knobs("medium", 2, 3),
                          return_first_logits=True)
    assert gen.first_logits.shape == (len(s), tiny_vlm.model.config.text_config.vocab_size)
    assert torch.equal(gen.first_logits.argmax(dim=-1), gen.new_tokens[:, 0])
    assert tiny_vlm.answer([s[0].image], [s[0].question], Knobs("medium", 2, 3)).first_logits is None
