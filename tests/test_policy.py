"""The numpy serving policy decides exactly like the torch controller it was folded from."""

import numpy as np
import pytest
import torch

from grpo_ctrl.controller import TwoStageController
from grpo_ctrl.controller_file import FORMAT, ControllerFileError, read_controller, save_controller
from grpo_ctrl.knobs import KnobSpace
from grpo_ctrl.policy import GreedyPolicy

SPACE = KnobSpace({"low": 4, "medium": 2, "high": 1}, (1, 2, 4), (2, 4, 6))


def _trained_looking_controller(seed=0):
    torch.manual_seed(seed)
    c = TwoStageController(SPACE, question_dim=48, vision_dim=40, hidden=32, feature_dim=16)
    with torch.no_grad():  # spread the logits so argmaxes vary across inputs
        for p in c.parameters():
            p.mul_(3.0)
    return c.eval()


def test_greedy_policy_matches_the_module_on_random_requests():
    c = _trained_looking_controller()
    policy = GreedyPolicy(c)
    g = torch.Generator().manual_seed(1)
    n = 300
    b, q, v = torch.rand(n, generator=g) * 1.2, torch.randn(n, 48, generator=g), torch.randn(n, 40, generator=g)
    with torch.no_grad():
        request = c.encode(b, q)
        tiers = c.choose_tier(request)
        actions = c.choose_rest(request, v, tiers)
    got = []
    for i in range(n):
        first = policy.tier(float(b[i]), q[i].numpy())
        got.append((first.tier, *policy.rest(first, v[i].numpy())))
    got = np.array(got)
    assert len(set(got[:, 0])) > 1 and len(set(got[:, 2])) > 1  # the comparison covers several choices
    assert (got == actions.numpy()).mean() >= 0.995  # float32 rounding may flip a near-tie, nothing more


def test_decide_reads_vision_at_the_chosen_tier_and_returns_knobs():
    c = _trained_looking_controller(seed=2)
    policy = GreedyPolicy(c)
    q, feats = torch.randn(48), {t: torch.randn(40) for t in SPACE.tier_names}
    asked = []

    def vision_at(tier):
        asked.append(tier)
        return feats[tier].numpy()

    decision = policy.decide(0.5, q.numpy(), vision_at)
    knobs = decision.knobs
    with torch.no_grad():
        request = c.encode(torch.tensor([0.5]), q[None])
        tier = c.choose_tier(request)
        expected = c.to_knobs(c.choose_rest(request, feats[SPACE.tier_names[int(tier)]][None], tier))[0]
    assert asked == [knobs.tier] and knobs == expected and decision.guard is None


def test_interleaved_requests_decide_as_if_alone():
    policy = GreedyPolicy(_trained_looking_controller(seed=4))
    g = torch.Generator().manual_seed(5)
    requests = [(float(torch.rand(1, generator=g)), torch.randn(48, generator=g).numpy(),
                 torch.randn(40, generator=g).numpy()) for _ in range(20)]
    alone = [policy.rest(policy.tier(b, q), v) for b, q, v in requests]
    firsts = [policy.tier(b, q) for b, q, _ in requests]  # every stage 1 first, then every stage 2
    assert [policy.rest(f, v) for f, (_, _, v) in zip(firsts, requests)] == alone


def test_load_from_a_saved_controller_file(tmp_path):
    c = _trained_looking_controller(seed=3)
    path = tmp_path / "controller.pt"
    save_controller(tmp_path, c.state_dict(), SPACE, 20.0, 5.0,
                    {"controller": {"hidden": 32, "budget_frequencies": 8, "feature_dim": 16}})
    a, b = GreedyPolicy(c), GreedyPolicy.load(path)
    q = np.random.default_rng(0).standard_normal(48)
    assert a.tier(0.7, q).tier == b.tier(0.7, q).tier
    np.testing.assert_array_equal(a.question_w, b.question_w)


def test_controller_files_carry_a_format_and_newer_ones_are_refused_in_one_line(tmp_path):
    c = _trained_looking_controller(seed=3)
    path = save_controller(tmp_path, c.state_dict(), SPACE, 20.0, None, {"controller": {}})
    saved = read_controller(tmp_path)
    assert saved["format"] == FORMAT and saved["reference_latency_ms"] == 20.0
    legacy = {k: v for k, v in saved.items() if k != "format"}  # written before the format number: same fields
    torch.save(legacy, path)
    assert read_controller(path)["knob_space"] == SPACE.to_dict()
    torch.save({**saved, "format": FORMAT + 1}, path)
    with pytest.raises(ControllerFileError, match="newer than this grpo-ctrl reads") as err:
        read_controller(tmp_path)
    assert "\n" not in str(err.value)
