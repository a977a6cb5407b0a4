import torch

from grpo_ctrl.controller import TwoStageController
from grpo_ctrl.grpo import grpo_loss
from grpo_ctrl.knobs import Knobs, KnobSpace

SPACE = KnobSpace({"low": 4, "medium": 2, "high": 1}, (1, 2, 4), (2, 4, 6))


def _controller():
    torch.manual_seed(0)
    return TwoStageController(SPACE, question_dim=256, vision_dim=256)


def _inputs(n=6):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, generator=g), torch.randn(n, 256, generator=g), torch.randn(n, 256, generator=g)


def test_controller_is_small():
    assert sum(p.numel() for p in _controller().parameters()) <= 1_000_000


def test_every_head_and_encoder_receives_gradient():
    c = _controller()
    b, q, v = _inputs()
    request = c.encode(b, q)
    tiers = c.choose_tier(request, torch.rand(6))
    actions = c.choose_rest(request, v, tiers, torch.rand(6, 2))
    logp, entropy = c(b, q, v, actions)
    grpo_loss(logp, logp.detach(), torch.randn(6), entropy=entropy, entropy_coef=0.01).loss.backward()
    for name, p in c.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # stage-2 heads are separate slices of the last layer: both must get gradient
    last = c.stage2[-1].weight.grad
    assert last[: c.n_k].abs().sum() > 0 and last[c.n_k:].abs().sum() > 0


def test_inverse_cdf_sampling_follows_the_policy():
    c = _controller()
    b, q, _ = _inputs(1)
    probs = c.stage1_logits(c.encode(b, q)).softmax(-1)[0]
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    tiers = c.choose_tier(c.encode(b.expand(20000), q.expand(20000, -1)), u)
    freq = torch.bincount(tiers, minlength=3).float() / 20000
    assert torch.allclose(freq, probs.detach(), atol=0.02)


def test_greedy_is_argmax_and_actions_map_to_knobs():
    c = _controller()
    b, q, v = _inputs()
    request = c.encode(b, q)
    tiers = c.choose_tier(request)
    assert torch.equal(tiers, c.stage1_logits(request).argmax(-1))
    knobs = c.to_knobs(c.choose_rest(request, v, tiers))
    assert all(isinstance(k, Knobs) and SPACE.validate(k) for k in knobs)


def test_log_prob_is_sum_of_three_heads():
    c = _controller()
    b, q, v = _inputs(4)
    actions = torch.tensor([[0, 0, 0], [1, 2, 1], [2, 1, 2], [0, 2, 2]])
    logp, entropy = c.log_prob(b, q, v, actions)
    request = c.encode(b, q)
    t = c.stage1_logits(request).log_softmax(-1)
    k, n = (x.log_softmax(-1) for x in c.stage2_logits(request, v, actions[:, 0]))
    rows = torch.arange(4)
    expected = t[rows, actions[:, 0]] + k[rows, actions[:, 1]] + n[rows, actions[:, 2]]
    assert torch.allclose(logp, expected, atol=1e-6) and entropy.shape == (4, 3)
