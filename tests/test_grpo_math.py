"""GRPO advantages, loss and rewards checked against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from grpo_ctrl.grpo import advantages, frac_zero_std, grpo_loss
from grpo_ctrl.reward import accuracy_signal, default_reward, seed_reward


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    adv = advantages(r, "group", eps=0.0 + 1e-12)
    # group 1: mean 0.5, population std 0.5 -> +-1; group 2: all equal -> 0
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-6)
    assert torch.all(adv[1] == 0)
    assert frac_zero_std(r) == 0.5


def test_batch_and_none_advantages_by_hand():
    r = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    # centred: [[-1, 1], [0, 0]]; std of all rewards [1,3,0,0]: mean 1, var (0+4+1+1)/4 = 1.5
    assert torch.allclose(advantages(r, "none"), torch.tensor([[-1.0, 1.0], [0.0, 0.0]]))
    expected = torch.tensor([[-1.0, 1.0], [0.0, 0.0]]) / math.sqrt(1.5)
    assert torch.allclose(advantages(r, "batch", eps=0.0), expected, atol=1e-6)
    assert torch.allclose(advantages(r, "batch", eps=0.0, batch_std=2.0), expected * math.sqrt(1.5) / 2.0)
    with pytest.raises(ValueError, match="grpo.advantage"):
        advantages(r, "rank")


def test_batch_advantages_keep_a_dense_tie_break_small():
    # Group 1: every setting answered right, gold-answer probabilities differ in the third decimal.
    # Group 2: one setting answered wrong. Group std blows the tie-break up to the size of a wrong answer;
    # batch std keeps it ~100x smaller (why `batch` is the default once reward.gold_prob_weight > 0).
    r = torch.tensor([[0.999, 0.998], [1.0, 0.0]])
    group, batch = advantages(r, "group"), advantages(r, "batch")
    assert torch.allclose(group[0].abs(), group[1].abs(), rtol=0.01)
    assert batch[0].abs().max() < batch[1].abs().max() / 100
    assert torch.equal(torch.sign(batch), torch.sign(group))


def test_clipped_surrogate_by_hand():
    logp_old = torch.log(torch.tensor([0.5, 0.5, 0.5]))
    logp = torch.log(torch.tensor([0.8, 0.3, 0.55]))  # ratios 1.6, 0.6, 1.1
    adv = torch.tensor([1.0, -1.0, 2.0])
    parts = grpo_loss(logp, logp_old, adv, epsilon=0.2)
    # min(1.6*1, 1.2*1) = 1.2 ; min(0.6*-1, 0.8*-1) = -0.8 ; min(1.1*2, 1.1*2) = 2.2
    assert parts.surrogate.item() == pytest.approx(-(1.2 - 0.8 + 2.2) / 3, abs=1e-6)
    assert parts.clip_frac.item() == pytest.approx(2 / 3)


def test_kl_and_entropy_terms_by_hand():
    logp = torch.log(torch.tensor([0.5, 0.25]))
    ref = torch.log(torch.tensor([0.25, 0.25]))
    entropy = torch.tensor([[0.1, 0.2, 0.3], [0.0, 0.0, 0.6]])
    parts = grpo_loss(logp, logp, torch.zeros(2), 0.2, entropy, entropy_coef=0.5, logp_ref=ref, beta=2.0)
    d = torch.log(torch.tensor([0.5, 1.0]))  # ref - logp
    kl = (torch.exp(d) - d - 1).mean()
    assert parts.kl.item() == pytest.approx(kl.item(), abs=1e-6)
    assert parts.entropy.item() == pytest.approx(0.6)
    assert parts.loss.item() == pytest.approx(2.0 * kl.item() - 0.5 * 0.6, abs=1e-6)


def test_gradient_moves_probability_toward_positive_advantage():
    logits = torch.zeros(2, requires_grad=True)
    logp_all = torch.log_softmax(logits, -1)
    actions = torch.tensor([0, 1])
    logp = logp_all[actions]
    grpo_loss(logp, logp.detach(), torch.tensor([1.0, -1.0])).loss.backward()
    assert logits.grad[0] < 0 < logits.grad[1]  # descent raises logit 0


def test_default_reward_by_hand():
    r = default_reward([1, 1, 0], [50, 120, 80], [100, 100, 100], violation_penalty=2.0, latency_cost=0.1)
    assert np.allclose(r, [1 - 0.05, 1 - 2 * 0.2 - 0.12, 0 - 0.08])


def test_seed_reward_by_hand():
    a, lat, b, c = 1.0, 50.0, 100.0, 0.5
    expected = 1.0 - 0.5 / (1 + math.exp(-10 * (0.5 - 1))) - 0 - 0.05 * 0.5 + 0.1 * (1 - 0.5)
    assert seed_reward([a], [lat], [b], [c])[0] == pytest.approx(expected)
    over = seed_reward([1.0], [150.0], [100.0], [0.0])[0]
    assert over == pytest.approx(1.0 - 0.5 / (1 + math.exp(-5)) - 10 * 0.25)


def test_violation_cost_is_a_step_at_the_budget():
    r = default_reward([1, 1], [100, 100.5], [100, 100], violation_penalty=0.0, violation_cost=0.7)
    assert np.allclose(r, [1.0, 0.3])


def test_accuracy_signal_mixes_score_and_gold_probability():
    assert list(accuracy_signal([1, 0, 1], [0.9, 0.4, 0.6], 0.0)) == [1, 0, 1]
    assert accuracy_signal([1, 0, 1], [0.9, 0.4, 0.6], 0.25) == pytest.approx([0.975, 0.1, 0.9])
    # two right answers are told apart by how sure the model was
    right_sure, right_unsure = accuracy_signal([1, 1], [0.99, 0.6], 0.3)
    assert right_sure > right_unsure


def test_spend_bonus_prefers_using_the_budget_and_stops_at_it():
    r = default_reward([1, 1, 1], [40, 90, 110], [100, 100, 100], violation_penalty=2.0, spend_bonus=0.1)
    assert np.allclose(r, [1 + 0.04, 1 + 0.09, 1 + 0.1 - 2 * 0.1])
    assert r[1] > r[0] > r[2]  # more of the budget is better, over it is not
