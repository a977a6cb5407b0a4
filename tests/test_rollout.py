"""Rollout engine: batched outcomes equal one-by-one generate(); the gold-answer probability is the model's."""

import pytest
import torch

from grpo_ctrl.data import GridVQA
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.rollout import Prompt, RolloutEngine


@pytest.fixture
def prompts():
    return [Prompt(("val", i), s) for i, s in enumerate(GridVQA().split("val", 6))]


@pytest.mark.parametrize("knobs", [Knobs("low", 1, 2), Knobs("high", 4, 4)])
def test_batched_outcomes_match_one_by_one_generate(tiny_vlm, prompts, knobs):
    outcomes = RolloutEngine(tiny_vlm, batch_size=4).run(prompts, [knobs] * len(prompts))
    for p, o in zip(prompts, outcomes):
        gen = tiny_vlm.answer([p.sample.image], [p.sample.question], knobs, return_first_logits=True)
        probs = gen.first_logits.softmax(dim=-1)[0]
        assert o.answer == gen.answers[0]
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
