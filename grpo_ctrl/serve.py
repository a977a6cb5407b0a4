"""Serve a trained controller: a request (image, question, budget) -> knobs -> the VLM's answer.

    server = Server.from_run_dir("outputs/<date>/<time>")
    served = server.generate(image, question, budget_ms=12.0)      # or budget_fraction=0.6
    python -m grpo_ctrl.serve run_dir=DIR image=photo.png question="what colour is the cell r2c3" budget_ms=12

Stage 1 (the tier) is decided from the budget and the question before the vision encoder runs; stage 2 (top-k,
blocks) from the vision features at that tier, which generation then reuses: the path validation takes
(`GreedyPolicy`, `VLMAdapter.encode_vision`, `VLMAdapter.generate`). Knobs are applied to the one model in
place, so a `Server` answers one request at a time: concurrent callers are serialised by a lock. With a latency
guard (`guard=true`, grpo_ctrl/latency/guard.py) the decision keeps to the settings whose calibrated upper latency
fits the budget, and the served result says whether the controller's choice was kept, moved or replaced by the
cheapest setting.
"""

from __future__ import annotations

import json
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import MISSING, OmegaConf
from PIL import Image

from grpo_ctrl.budget import MAX_VIOLATION, BudgetError, BudgetScale, warn_unreachable
from grpo_ctrl.cli import parse_key_values
from grpo_ctrl.controller_file import ControllerFileError, read_controller
from grpo_ctrl.data import extract_answer
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.latency.clock import now
from grpo_ctrl.latency.estimator import EstimatorError
from grpo_ctrl.latency.guard import LatencyGuard, load_guard, token_counts
from grpo_ctrl.policy import GreedyPolicy
from grpo_ctrl.vlm import VLMAdapter


class ServeError(ValueError):
    """A run dir or request that cannot be served (one line: what, where, how to fix)."""


@dataclass(frozen=True)
class Served:
    answer: str
    knobs: Knobs
    budget_ms: float
    latency_ms: float  # the request end to end: controller, vision encoder, generate()
    decision_ms: float  # the controller's share: question features, both stages, the pooled vision feature
    guard: str | None = None  # with a latency guard: kept | moved | fallback (`policy.Decision`)

    @property
    def within_budget(self) -> bool:
        return self.latency_ms <= self.budget_ms

    def to_dict(self) -> dict:
        return {"answer": self.answer, "knobs": str(self.knobs), "budget_ms": self.budget_ms,
                "latency_ms": self.latency_ms, "decision_ms": self.decision_ms, "within_budget": self.within_budget,
                **({"guard": self.guard} if self.guard is not None else {})}


class Server:
    def __init__(self, vlm: VLMAdapter, policy: GreedyPolicy, scale: BudgetScale, max_new_tokens: int = 2,
                 cheapest_ms: float | None = None, guard: LatencyGuard | None = None):
        if policy.space != vlm.knob_space:
            raise ServeError(f"the controller's knob space {policy.space} is not the model's {vlm.knob_space}")
        self.vlm, self.policy, self.scale = vlm, policy, scale
        self.max_new_tokens = max_new_tokens
        self.cheapest_ms = cheapest_ms
        self.guard = guard
        self._lock = threading.Lock()
        self._warned = False

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, device: str | None = None, guard: bool = False,
                     guard_estimator: str | None = None) -> Server:
        """The controller, knob space, reference latency and model of a train.py run dir; with `guard`, a latency
        guard at the run's budgets.max_violation from `guard_estimator` (a file) or else the run's estimator."""
        try:
            saved = read_controller(run_dir)
        except ControllerFileError as err:
            raise ServeError(str(err)) from None
        return cls.from_saved(saved, device, guard, guard_estimator)

    @classmethod
    def from_saved(cls, saved: dict, device: str | None = None, guard: bool = False,
                   guard_estimator: str | None = None) -> Server:
        """From the contents of a run's controller.pt (`read_controller`)."""
        from grpo_ctrl.build import build_vlm  # the model as the run's config built it

        model_cfg = OmegaConf.create(saved["config"]["model"])
        if device is not None:
            model_cfg.device = device
        vlm = build_vlm(model_cfg)
        policy = GreedyPolicy.from_saved(saved)
        guarded = None
        if guard:
            run = OmegaConf.create(saved["config"])
            alpha = run.get("budgets", {}).get("max_violation", MAX_VIOLATION)
            try:
                guarded = load_guard(run.get("latency"), vlm.source, vlm.signature, vlm.knob_space, alpha,
                                     model_cfg.max_new_tokens, guard_estimator)
            except EstimatorError as err:
                raise ServeError(str(err)) from None
        return cls(vlm, policy, BudgetScale("ms", saved["reference_latency_ms"]), model_cfg.max_new_tokens,
                   saved.get("cheapest_latency_ms"), guarded)

    def generate(self, image, question: str, budget_ms: float | None = None,
                 budget_fraction: float | None = None) -> Served:
        """Answer one request within a budget given in ms or as a fraction of the full model's latency."""
        try:
            budget, fraction = self.scale.of_request(budget_ms, budget_fraction)
        except BudgetError as err:
            raise ServeError(str(err)) from None
        if self.cheapest_ms is not None and not self._warned:
            self._warned = warn_unreachable([budget], self.cheapest_ms, "serve")
        vlm = self.vlm
        device = vlm.model.device
        encoded = {}

        def vision_at(tier: str):  # between the two stages: the processor and the vision encoder at that tier
            begin = now(device)
            inputs = {k: v.to(device) for k, v in vlm.inputs([image], [question], tier).items()}
            encoded.update(inputs=inputs, vision=vlm.encode_vision(inputs, tier), ms=now(device) - begin)
            return vlm.vision_summary(encoded["vision"][0]).numpy()

        with self._lock, torch.no_grad():
            start = now(device)
            allowed = None if self.guard is None else self.guard.allowed(budget, token_counts(vlm, image, question))
            decision = self.policy.decide(fraction, vlm.question_features([question])[0].numpy(), vision_at, allowed)
            knobs = decision.knobs
            decided = now(device) - start - encoded["ms"]
            gen = vlm.generate(vlm.text_inputs(encoded["inputs"]), knobs, max_new_tokens=self.max_new_tokens,
                               vision=encoded["vision"])
            latency = now(device) - start
        return Served(extract_answer(gen.answers[0]), knobs, budget, latency * 1000, decided * 1000, decision.guard)


@dataclass
class ServeConfig:
    run_dir: str = MISSING
    image: str = MISSING
    question: str = MISSING
    budget_ms: float | None = None
    budget_fraction: float | None = None
    device: str | None = None  # null: the run's model.device
    threads: int = 1  # torch intra-op threads (1: steadier latency on a busy small machine)
    # Only settings whose calibrated (1 - budgets.max_violation) upper latency fits the budget (the cheapest when
    # none does); the result says which (guard: kept | moved | fallback)
    guard: bool = False
    guard_estimator: str | None = None  # an estimator with residual scores for this machine (null: the run's)


USAGE = ("python -m grpo_ctrl.serve run_dir=DIR image=FILE question=TEXT budget_ms=MS (or budget_fraction=F) "
         "[device=cuda] [threads=1] [guard=true [guard_estimator=FILE]]")


def main(argv: list[str]) -> int:
    cfg = parse_key_values(ServeConfig, "serve", USAGE, argv)  # the question is taken verbatim
    if cfg.threads < 1:
        print(f"serve: threads={cfg.threads} must be >= 1; usage: {USAGE}", file=sys.stderr)
        return 2
    torch.set_num_threads(cfg.threads)
    try:
        image = _open_image(cfg.image)
        try:  # the budget's form is checked before the model loads
            BudgetScale("ms", 1.0).of_request(cfg.budget_ms, cfg.budget_fraction)
        except BudgetError as err:
            raise ServeError(str(err)) from None
        server = Server.from_run_dir(cfg.run_dir, cfg.device, cfg.guard, cfg.guard_estimator)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            served = server.generate(image, cfg.question, cfg.budget_ms, cfg.budget_fraction)
    except ServeError as err:
        print(f"serve: {err}", file=sys.stderr)
        return 2
    print(json.dumps(served.to_dict()))
    return 0


def _open_image(path: str) -> Image.Image:
    try:
        return Image.open(path).convert("RGB")
    except (OSError, ValueError) as err:
        raise ServeError(f"image={path} cannot be read as an image ({type(err).__name__}); give an image file") \
            from None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

