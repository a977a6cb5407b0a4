"""Serving form of a trained `TwoStageController`: greedy batch-1 decisions in numpy.

Every layer before a GELU is linear, so the budget and question projections fold into the first layer of
each stage and the vision projection into stage 2's: a decision is two small matrix-vector products per
stage instead of ~25 torch modules and ops (each of which costs a few microseconds of dispatch at batch 1).
Its argmax is the module's (same weights, float32 rounding aside).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from grpo_ctrl.controller import TwoStageController
from grpo_ctrl.knobs import Knobs, KnobSpace


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


class Stage1(NamedTuple):
    """Stage 1's decision and what stage 2 of the same request reuses."""

    tier: int
    pre2: np.ndarray  # stage 2's pre-activation from the budget and the question


class Decision(NamedTuple):
    knobs: Knobs
    # With a latency guard: kept (the controller's own choice fits), moved (its best setting that fits replaced
    # it) or fallback (nothing fits: the cheapest setting). None without a guard.
    guard: str | None = None


class GreedyPolicy:
    """`tier(budget, question)` before the vision encoder, `rest(stage1, vision)` after it. Stateless: a request's
    stage-1 result travels with it, so concurrent requests cannot mix."""

    def __init__(self, controller: TwoStageController):
        c = controller
        f = c.budget.proj.out_features

        def w(linear):  # fold in float64, serve in float32
            return linear.weight.detach().double().cpu().numpy(), linear.bias.detach().double().cpu().numpy()

        wb, bb = w(c.budget.proj)
        wq, bq = w(c.question)
        wv, bv = w(c.vision)
        w1, b1 = w(c.stage1[0])
        w2, b2 = w(c.stage2[0])
        n_t = c.n_tiers
        w1b, w1q = w1[:, :f], w1[:, f:]
        w2b, w2q, w2v, w2t = w2[:, :f], w2[:, f:2 * f], w2[:, 2 * f:3 * f], w2[:, 3 * f:3 * f + n_t]
        self.hidden = w1.shape[0]
        # Pre-activations of both stages from the budget encoding and the question, computed at stage 1.
        self.budget_w = np.vstack([w1b @ wb, w2b @ wb]).astype(np.float32)
        self.question_w = np.vstack([w1q @ wq, w2q @ wq]).astype(np.float32)
        self.bias = np.concatenate([w1b @ bb + w1q @ bq + b1, w2b @ bb + w2q @ bq + w2v @ bv + b2]).astype(np.float32)
        self.vision_w = (w2v @ wv).astype(np.float32)
        self.tier_w = np.ascontiguousarray(w2t.T).astype(np.float32)  # (tiers, H): one row per chosen tier
        self.out1_w, self.out1_b = (a.astype(np.float32) for a in w(c.stage1[2]))
        self.out2_w, self.out2_b = (a.astype(np.float32) for a in w(c.stage2[2]))
        self.freqs = c.budget.freqs.double().cpu().numpy()
        self.n_k = c.n_k
        self.space: KnobSpace = c.space

    def tier(self, budget: float, question, allowed: np.ndarray | None = None) -> Stage1:
        """Stage 1: the tier index for a budget fraction and a question feature (H,); the best of the `allowed`
        tiers (bool, (tiers,)) when given."""
        angles = budget * self.freqs
        enc = np.concatenate([[budget], np.sin(angles), np.cos(angles)]).astype(np.float32)
        pre = self.budget_w @ enc + self.question_w @ np.asarray(question, dtype=np.float32) + self.bias
        h = self.hidden
        logits = self.out1_w @ _gelu_tanh(pre[:h]) + self.out1_b
        return Stage1(int(np.argmax(logits if allowed is None else np.where(allowed, logits, -np.inf))), pre[h:])

    def rest(self, stage1: Stage1, vision, allowed: np.ndarray | None = None) -> tuple[int, int]:
        """Stage 2: (top_k index, num_blocks index) from the pooled vision feature (H,) at the chosen tier; the best
        `allowed` pair (bool, (top_ks, num_blocks)) by the sum of the two heads' logits when given."""
        pre = stage1.pre2 + self.vision_w @ np.asarray(vision, dtype=np.float32) + self.tier_w[stage1.tier]
        logits = self.out2_w @ _gelu_tanh(pre) + self.out2_b
        k, b = logits[: self.n_k], logits[self.n_k:]
        if allowed is None:  # the heads are independent: the best pair is each head's best
            return int(np.argmax(k)), int(np.argmax(b))
        joint = np.where(allowed, k[:, None] + b[None, :], -np.inf)
        return tuple(int(i) for i in np.unravel_index(np.argmax(joint), joint.shape))

    def decide(self, budget: float, question, vision_at_tier, allowed: np.ndarray | None = None) -> Decision:
        """Both stages; `vision_at_tier(tier_name)` returns the pooled vision feature once the tier is known.

        `allowed` (bool, (tiers, top_ks, num_blocks), from `LatencyGuard.allowed`) restricts the choice to the
        settings that fit: the controller's best of them, or the cheapest setting when none fits."""
        if allowed is None:
            first = self.tier(budget, question)
            k, b = self.rest(first, vision_at_tier(self.space.tier_names[first.tier]))
            return Decision(self.space.from_index(first.tier, k, b))
        if not allowed.any():
            vision_at_tier(self.space.tier_names[0])  # what generation runs on
            return Decision(self.space.cheapest, "fallback")
        first = self.tier(budget, question, allowed.any(axis=(1, 2)))
        vision = vision_at_tier(self.space.tier_names[first.tier])
        k, b = self.rest(first, vision, allowed[first.tier])
        free = self.tier(budget, question)
        kept = free.tier == first.tier and self.rest(first, vision) == (k, b)
        return Decision(self.space.from_index(first.tier, k, b), "kept" if kept else "moved")

    @classmethod
    def load(cls, path: str | Path) -> GreedyPolicy:
        """From a run's `controller.pt` (state dict, knob space and config, as train.py writes it)."""
        from grpo_ctrl.controller_file import read_controller

        return cls.from_saved(read_controller(path))

    @classmethod
    def from_saved(cls, saved: dict) -> GreedyPolicy:
        """From the contents of a `controller.pt`."""
        from omegaconf import OmegaConf

        from grpo_ctrl.controller import build_controller

        state = saved["state_dict"]
        controller = build_controller(OmegaConf.create(saved["config"]["controller"]), KnobSpace(**saved["knob_space"]),
                                      state["question.weight"].shape[1], state["vision.weight"].shape[1])
        controller.load_state_dict(state)
        return cls(controller)


def greedy_decisions(policy: GreedyPolicy, engine, prompts, fraction: float, guard=None,
                     budget_ms: float | None = None) -> list[Decision]:
    """The served decision for each prompt at one budget fraction, from a `RolloutEngine`'s cached question and
    vision features (what validation and the held-out evaluation score); with a `LatencyGuard`, restricted to the
    settings whose upper latency fits `budget_ms`."""
    questions = engine.question_features(prompts).numpy()
    out = []
    for p, q in zip(prompts, questions):
        allowed = None if guard is None else guard.allowed(budget_ms, engine.token_counts(p))
        out.append(policy.decide(fraction, q, lambda tier, p=p: engine.vision_features([p], [tier])[0].numpy(),
                                 allowed))
    return out
