"""JointGRPOTrainer: samples knob settings per (prompt, budget) group, scores them, and updates the controller."""

from __future__ import annotations

import copy
import signal
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from grpo_ctrl.baselines import Profile, budget_comparison, evaluate_choice, policy_metrics, random_choice
from grpo_ctrl.budget import BudgetScale, warn_unreachable
from grpo_ctrl.checkpoint import CHECKPOINT, architecture, load_checkpoint, save_checkpoint
from grpo_ctrl.constraint import ViolationMultipliers
from grpo_ctrl.controller import TwoStageController
from grpo_ctrl.grpo import advantages, frac_zero_std, grpo_loss
from grpo_ctrl.knob_grid import KnobGrid, requests
from grpo_ctrl.knobs import Knobs
from grpo_ctrl.latency.estimator import EstimatorLatency
from grpo_ctrl.latency.guard import LatencyGuard
from grpo_ctrl.outcomes import Outcome
from grpo_ctrl.parallel import ParallelContext
from grpo_ctrl.policy import GreedyPolicy, greedy_decisions
from grpo_ctrl.preemption import StopSignals
from grpo_ctrl.reward import RewardFn, accuracy_signal
from grpo_ctrl.rollout import Prompt, RolloutEngine


def complexity(space, knobs: Sequence[Knobs]) -> np.ndarray:
    """Cost of a setting in [0, 1]: mean of its normalised knob indices (the seed reward's term)."""
    sizes = np.array([len(space.tier_names), len(space.top_ks), len(space.num_blocks)]) - 1
    idx = np.array([space.index(k) for k in knobs], dtype=float)
    return (idx / np.maximum(sizes, 1)).mean(axis=1)


KNOB_NAMES = ("tier", "top_k", "num_blocks")


def sum_by_name(ctx: ParallelContext, values: dict) -> dict[str, float]:
    """Each named value summed over ranks (one collective, in float64)."""
    names = list(values)
    summed = ctx.all_reduce_sum(torch.tensor([float(values[k]) for k in names], dtype=torch.float64))
    return dict(zip(names, summed.tolist()))


class JointGRPOTrainer:
    def __init__(self, cfg, engine: RolloutEngine, controller: TwoStageController, train_latency, val_latency,
                 reward: RewardFn, train_pool: Sequence[Prompt], val_pool: Sequence[Prompt], run_dir: Path,
                 ctx: ParallelContext | None = None, tracker=None, guard: LatencyGuard | None = None):
        self.cfg = cfg
        self.engine = engine
        self.space = engine.vlm.knob_space
        self.controller = controller
        self.ctx = ctx or ParallelContext()
        self.model = self.ctx.wrap(controller)
        self.opt = torch.optim.AdamW(controller.parameters(), lr=cfg.lr)
        self.ref = copy.deepcopy(controller).requires_grad_(False) if cfg.grpo.beta > 0 else None
        self.train_latency, self.val_latency = train_latency, val_latency
        self.reward = reward
        self.train_pool, self.val_pool = train_pool, val_pool  # lazy: a prompt is built when indexed
        self.run_dir = Path(run_dir)
        self.ckpt_path = self.run_dir / CHECKPOINT
        self.tracker = tracker
        self.step = 0
        # Over every segment of a resumed run: the loop's wall time, the steps' own time, rollouts done.
        self.timing = {"wall_s": 0.0, "step_s": 0.0, "rollouts": 0}
        self.wandb_run_id: str | None = None  # the run a resumed job logs to again (from the checkpoint)
        self.ref_ms: float | None = None  # set by start(): resumed, or measured
        self.scale: BudgetScale | None = None
        self.multipliers: ViolationMultipliers | None = None  # reward=constrained: set by start()
        self.guard = guard  # policy.guard: validation's decisions keep to what the guard says fits
        self.guard_ref_ms: float | None = None  # the guard estimator's full-setting latency (set by start())

    def start(self) -> bool:
        """Resume from the last checkpoint, or measure the reference latency; every rank calls it before fit().
        Warns once about val budgets below what the cheapest setting costs. True when resumed."""
        state = self.maybe_resume()
        resumed = state is not None
        if not resumed:
            self.ref_ms = self.ctx.broadcast_object(self.median_latency(self.space.full))
        self.scale = BudgetScale(self.cfg.budgets.unit, self.ref_ms)
        if self.cfg.reward.name == "constrained":  # bands over the training budgets, as fractions
            r, b = self.cfg.reward, self.cfg.budgets
            low, high = self.scale.fraction([b.train_min, b.train_max])
            self.multipliers = ViolationMultipliers(float(low), float(high), r.bands, b.max_violation, r.dual_lr,
                                                    r.initial_multiplier)
            if resumed and state.get("multipliers") is not None:
                self.multipliers.load_state_dict(state["multipliers"])
        if self.guard is not None:  # a budget fraction, to the guard, is of its own estimator's full latency
            self.guard_ref_ms = self.median_latency(self.space.full, EstimatorLatency(self.guard.estimator))
        if self.ctx.is_main:
            warn_unreachable(self.scale.ms(self.cfg.budgets.val), self.median_latency(self.space.cheapest),
                             "budgets.val")
        return resumed

    # ------------------------------------------------------------ budgets and latency
    def median_latency(self, knobs: Knobs, provider=None) -> float:
        """Median latency (ms) of `knobs` on typical requests from `provider`, by default the training one (at the
        full setting: the reference, the unit of fractional budgets)."""
        return float(np.median(self.latency(provider or self.train_latency, *self._reference_requests(knobs))))

    def served_violations(self, prompts: Sequence[Prompt], fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whether the policy as served (greedy) runs over each prompt's budget, and whether any setting meets that
        budget at all: what the dual step of constrained training measures. The constraint binds the policy that
        gets deployed; the sampled rollouts explore, and their violation rate can sit at alpha while the greedy
        choice runs over far more often (14 % at 0.55 of full on one seed)."""
        knobs = self.controller.to_knobs(self.decide(prompts, fractions)[3])
        budget = np.asarray(fractions, dtype=float) * self.ref_ms
        over = self.latency(self.train_latency, prompts, knobs, self.engine.run(prompts, knobs)) > budget
        return over, self.cheapest_latency(prompts) <= budget

    def cheapest_latency(self, prompts: Sequence[Prompt]) -> np.ndarray:
        """Each prompt's latency at the cheapest setting (training provider): below it no choice meets a budget."""
        knobs = [self.space.cheapest] * len(prompts)
        return self.latency(self.train_latency, prompts, knobs, self.engine.run(prompts, knobs))

    def _reference_requests(self, knobs: Knobs | None = None) -> tuple[list[Prompt], list[Knobs], list[Outcome]]:
        prompts = self.val_pool[:16]
        knobs = [knobs or self.space.full] * len(prompts)
        return prompts, knobs, self.engine.run(prompts, knobs)

    def latency(self, provider, prompts: Sequence[Prompt], knobs: Sequence[Knobs],
                outcomes: Sequence[Outcome]) -> np.ndarray:
        return np.asarray(provider.latency_ms(requests(self.engine.vlm, provider, list(zip(prompts, knobs, outcomes)))),
                          dtype=float)

    # ------------------------------------------------------------ policy helpers
    def decide(self, prompts: Sequence[Prompt], budgets: np.ndarray, u: torch.Tensor | None = None):
        """Knob settings for each (prompt, budget fraction); `u` (B, 3) uniforms sample, None is greedy."""
        c = self.controller
        b = torch.as_tensor(budgets, dtype=torch.float)
        q = self.engine.question_features(prompts)
        with torch.no_grad():
            request = c.encode(b, q)
            tiers = c.choose_tier(request, None if u is None else u[:, 0])
            v = self.engine.vision_features(prompts, [self.space.tier_names[t] for t in tiers.tolist()])
            actions = c.choose_rest(request, v, tiers, None if u is None else u[:, 1:])
        return b, q, v, actions

    # ------------------------------------------------------------ training
    def train_step(self, step: int) -> dict[str, float]:
        cfg, ctx, G = self.cfg, self.ctx, self.cfg.group_size
        start = time.perf_counter()
        # Every rank draws the same global batch and keeps its own contiguous block of whole groups.
        rng = np.random.default_rng([cfg.seed, step])
        idx = rng.choice(len(self.train_pool), size=cfg.prompts_per_step, replace=False)
        fractions = self.scale.fraction(rng.uniform(cfg.budgets.train_min, cfg.budgets.train_max,
                                                     size=cfg.prompts_per_step))
        uniforms = torch.from_numpy(rng.random((cfg.prompts_per_step, G, 3))).float()
        per_rank = cfg.prompts_per_step // ctx.world_size
        mine = slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)
        prompts = [p for p in [self.train_pool[int(i)] for i in idx[mine]] for _ in range(G)]  # built once each
        assert len(prompts) == per_rank * G, "a GRPO group must never be split across ranks"
        b, q, v, actions = self.decide(prompts, np.repeat(fractions[mine], G), uniforms[mine].reshape(-1, 3))
        knobs = self.controller.to_knobs(actions)
        outcomes = self.engine.run(prompts, knobs)
        acc = np.array([o.score for o in outcomes])
        lat = self.latency(self.train_latency, prompts, knobs, outcomes)
        if cfg.latency.train_noise_cv > 0:  # same draws whatever the rank layout, like the action uniforms
            noise = rng.standard_normal((cfg.prompts_per_step, G))[mine].reshape(-1)
            lat = lat * np.exp(np.sqrt(np.log1p(cfg.latency.train_noise_cv**2)) * noise)
        budget = np.asarray(b.numpy(), dtype=float) * self.ref_ms  # the budget the controller was told
        signal = accuracy_signal(acc, [o.gold_prob for o in outcomes], cfg.reward.gold_prob_weight)
        fraction = np.asarray(b.numpy(), dtype=float)
        price = self.multipliers.at(fraction) if self.multipliers is not None else None
        rewards = torch.as_tensor(self.reward(signal, lat, budget, complexity(self.space, knobs), price),
                                  dtype=torch.float)
        served = self.served_violations(prompts[::G], fractions[mine]) if self.multipliers is not None else None
        grouped = rewards.view(per_rank, G)
        batch_std = None
        if cfg.grpo.advantage == "batch":
            stats = torch.tensor([rewards.sum(), (rewards**2).sum(), rewards.numel()], dtype=torch.float64)
            s = ctx.all_reduce_sum(stats)
            batch_std = float((s[1] / s[2] - (s[0] / s[2]) ** 2).clamp(min=0).sqrt())
        adv = advantages(grouped, cfg.grpo.advantage, batch_std=batch_std).view(-1)
        with torch.no_grad():
            logp_old, _ = self.controller.log_prob(b, q, v, actions)
            logp_ref = self.ref.log_prob(b, q, v, actions)[0] if self.ref is not None else None
        for _ in range(cfg.grpo.num_iterations):
            logp, entropy = self.model(b, q, v, actions)
            parts = grpo_loss(logp, logp_old, adv, cfg.grpo.epsilon, entropy, cfg.grpo.entropy_coef, logp_ref,
                              cfg.grpo.beta)
            self.opt.zero_grad(set_to_none=True)
            parts.loss.backward()
            self.opt.step()
        # Logged values cross ranks as sums, then are divided by the summed count of what they are means over.
        n = float(len(prompts))
        entropy_sums = entropy.detach().sum(0)
        per_request = {"reward_mean": rewards.sum(), "reward_sq": (rewards**2).sum(), "accuracy": acc.sum(),
                       "latency_ms": lat.sum(), "violation_rate": (lat > budget).sum(), "loss": parts.loss.detach() * n,
                       "clip_frac": parts.clip_frac * n, "kl": parts.kl * n,
                       **{f"entropy_{knob}": entropy_sums[i] for i, knob in enumerate(KNOB_NAMES)}}
        per_group = {"frac_reward_zero_std": frac_zero_std(grouped) * per_rank}
        sums = sum_by_name(ctx, {**per_request, **per_group, "requests": n, "groups": per_rank})
        out = {f"train/{k}": sums[k] / sums["requests"] for k in per_request}
        out.update({f"train/{k}": sums[k] / sums["groups"] for k in per_group})
        out["train/reward_std"] = max(out.pop("train/reward_sq") - out["train/reward_mean"] ** 2, 0.0) ** 0.5
        if self.multipliers is not None:  # the dual step, after the rewards it priced
            over, feasible = served
            dual = self.multipliers.update(fractions[mine], over, ctx, feasible)
            out.update({f"train/{k}": v for k, v in dual.items()})
        out["train/step_time_s"] = time.perf_counter() - start
        return out

    # ------------------------------------------------------------ validation
    def greedy(self, policy: GreedyPolicy, prompts: Sequence[Prompt], budget: float) -> list[Knobs]:
        """The served decision (`greedy_decisions`) for each prompt at one val budget, guarded with policy.guard."""
        fraction = float(self.scale.fraction(budget))
        guard_ms = None
        if self.guard is not None:
            guard_ms = float(BudgetScale(self.cfg.budgets.unit, self.guard_ref_ms).ms(budget))
        return [d.knobs for d in greedy_decisions(policy, self.engine, prompts, fraction, self.guard, guard_ms)]

    def validate(self, provider=None) -> dict:
        """The greedy policy as served (`GreedyPolicy`, request by request) on the val prompts at every val budget;
        this rank's shard, gathered on all ranks.

        Every distinct (prompt, knobs) pair is timed once, all in one provider call, so a measuring provider
        interleaves them. With fractional budgets a measuring provider also times the reference (full-knob)
        requests in that same call: a budget fraction means a fraction of what the full model costs on this
        machine, measured alongside the requests it is compared with."""
        provider = provider or self.val_latency
        shard = self.ctx.shard(self.val_pool)
        chosen = {}
        policy = GreedyPolicy(self.controller)  # the serving path (grpo_ctrl.serve), request by request
        for value in self.cfg.budgets.val:
            knobs = self.greedy(policy, shard, value)
            chosen[value] = (knobs, self.engine.run(shard, knobs))
        pairs = {}
        for knobs, outcomes in chosen.values():
            for p, k, o in zip(shard, knobs, outcomes):
                pairs.setdefault((p.key, k), (p, k, o))
        todo = list(pairs.values())
        measure_reference = provider.needs_inputs and self.cfg.budgets.unit == "fraction"
        if measure_reference:
            todo += list(zip(*self._reference_requests()))
        lat = self.latency(provider, *zip(*todo)) if todo else np.zeros(0)
        measured = {key: t for key, t in zip(pairs, lat)}
        # Timed validation of a controller trained on the estimator: what the estimator says of the same requests
        # (the budgets the controller learnt), to tell its drift on this machine from the policy's own overshoot.
        compare = self.train_latency.name == "estimator" and provider.name != "estimator"
        estimated = dict(zip(pairs, self.latency(self.train_latency, *zip(*pairs.values())))) \
            if compare and pairs else {}
        ref_ms = self.ref_ms
        if measure_reference:
            ref_ms = float(np.median(np.concatenate(self.ctx.all_gather_objects(lat[len(pairs):]))))
        # Per val prompt, in val-pool order (for paired comparisons): its (knobs, score, latency, estimated latency or
        # None) at each budget.
        rows = self.ctx.unshard([[(str(knobs[i]), outcomes[i].score, measured[(p.key, knobs[i])],
                                   estimated.get((p.key, knobs[i])))
                                  for knobs, outcomes in chosen.values()] for i, p in enumerate(shard)])
        report = {}
        for j, value in enumerate(chosen):
            knobs, scores, lat, est = zip(*(row[j] for row in rows))
            budget = float(BudgetScale(self.cfg.budgets.unit, ref_ms).ms(value))
            metrics = policy_metrics(scores, lat, budget, self.cfg.budgets.max_violation)
            report[f"{value:g}"] = {
                "budget_ms": budget, "reference_ms": ref_ms,
                **{k: metrics[k] for k in ("accuracy", "latency_p50_ms", "latency_p90_ms", "violation_rate",
                                           "budgeted_accuracy")},
                "knobs": dict(Counter(knobs).most_common()), "n": len(scores),
            }
            if compare:  # the same requests against the same budget fraction of the estimator's reference
                est_budget = float(BudgetScale(self.cfg.budgets.unit, self.ref_ms).ms(value))
                report[f"{value:g}"]["estimated_violation_rate"] = float((np.array(est) > est_budget).mean())
        return report

    def final_report(self, provider=None) -> dict:
        """The validation report at the end of training: every knob setting on every val prompt, answered through
        the engine and timed in one provider call (`KnobGrid`), and the controller's choices read from that one
        profile, so the controller and the static baselines share one reference latency and one set of timings
        (`baselines.budget_comparison` per val budget). With fractional budgets a measuring provider's reference is
        the full setting's median on the val prompts; otherwise the training reference."""
        provider = provider or self.val_latency
        grid = KnobGrid.answer(self.engine, {"val": self.val_pool}, self.ctx)
        profile = grid.profiles(provider)["val"]
        reference = self.ref_ms
        if provider.needs_inputs and self.cfg.budgets.unit == "fraction":
            reference = float(np.median(profile.latency_ms[profile.index(self.space.full)]))
        scale = BudgetScale(self.cfg.budgets.unit, reference)
        # Timed validation of a controller trained on the estimator: the estimator's verdict on the same requests
        # against its own reference (the budgets the controller learnt), to tell its drift from the policy's.
        estimated = None
        if self.train_latency.name == "estimator" and provider.name != "estimator":
            estimated = Profile(profile.settings, profile.scores, grid.latency(self.train_latency)["val"],
                                profile.tier_order)
        rng = np.random.default_rng(self.cfg.seed)
        policy, shard = GreedyPolicy(self.controller), self.ctx.shard(self.val_pool)
        out = {"reference_latency_ms": reference, "max_violation": self.cfg.budgets.max_violation, "budgets": {}}
        if estimated is not None:
            out["estimator_reference_latency_ms"] = self.ref_ms
        for value in self.cfg.budgets.val:
            knobs = self.ctx.unshard(self.greedy(policy, shard, value))
            choice = np.array([profile.index(k) for k in knobs])
            budget = float(scale.ms(value))
            random = random_choice(len(profile.settings), len(choice), rng)
            b = out["budgets"][f"{value:g}"] = {"budget_ms": budget, **budget_comparison(
                profile, choice, budget, random, self.cfg.seed, self.cfg.budgets.max_violation)}
            if estimated is not None:
                b["controller"]["estimated_violation_rate"] = evaluate_choice(
                    estimated, choice, float(self.scale.ms(value))).violation_rate
        out["static_settings"] = [{"knobs": str(k), "accuracy": float(a), "mean_latency_ms": float(t)}
                                  for k, a, t in zip(profile.settings, profile.accuracy, profile.mean_latency_ms)]
        return out

    @staticmethod
    def flat_val_metrics(report: dict) -> dict[str, float]:
        out = {}
        for frac, m in report.items():
            for key in ("accuracy", "latency_p50_ms", "latency_p90_ms", "violation_rate", "budgeted_accuracy"):
                out[f"val/{key}@{frac}"] = m[key]
        out["val/accuracy"] = float(np.mean([m["accuracy"] for m in report.values()]))
        out["val/violation_rate"] = float(np.mean([m["violation_rate"] for m in report.values()]))
        return out

    # ------------------------------------------------------------ checkpoints
    def save(self) -> None:
        if self.ctx.is_main:
            save_checkpoint(self.ckpt_path, step=self.step, controller=self.controller.state_dict(),
                            optimizer=self.opt.state_dict(), ref_ms=self.ref_ms,
                            ref=self.ref.state_dict() if self.ref is not None else None,
                            architecture=architecture(self.cfg.controller, self.space, self.engine.vlm.signature),
                            timing=self.timing,
                            multipliers=self.multipliers.state_dict() if self.multipliers is not None else None,
                            wandb_run_id=self.tracker.wandb_run_id if self.tracker is not None else None)
        self.ctx.barrier()

    def maybe_resume(self) -> dict | None:
        """Load the last checkpoint when resuming (the controller, optimiser, reference latency, step); returns it."""
        if not (self.cfg.resume and self.ckpt_path.exists()):
            return None
        state = load_checkpoint(self.ckpt_path)
        self.controller.load_state_dict(state["controller"])
        self.opt.load_state_dict(state["optimizer"])
        if self.ref is not None and state["ref"] is not None:
            self.ref.load_state_dict(state["ref"])
        self.ref_ms = state["ref_ms"]
        self.step = state["step"]
        self.timing = state["timing"]
        self.wandb_run_id = state["wandb_run_id"]
        return state

    def timing_report(self) -> dict:
        """Wall and rollout figures; `outcomes_computed` / `outcomes_read`: this process's segment (a resumed run
        reads what the store kept)."""
        store = self.engine.store
        return {"train_wall_s": self.timing["wall_s"], "rollouts": self.timing["rollouts"],
                "rollouts_per_s": self.timing["rollouts"] / self.timing["step_s"] if self.timing["step_s"] else None,
                "outcomes_computed": store.computed, "outcomes_read": store.read}

    # ------------------------------------------------------------ loop
    def fit(self) -> dict:
        """Train to `cfg.steps`. A stop signal (preemption, requeue, time limit) ends the run at the next step
        boundary, after a checkpoint there (see `grpo_ctrl.preemption`)."""
        cfg = self.cfg
        bar = tqdm(total=cfg.steps, initial=self.step, desc="grpo", disable=not (cfg.progress and self.ctx.is_main),
                   dynamic_ncols=True)
        report = None
        with StopSignals() as stop:
            while self.step < cfg.steps:
                started = time.perf_counter()
                metrics = self.train_step(self.step)
                self.step += 1
                last = self.step == cfg.steps
                if self.step % cfg.val_every == 0 or last:
                    report = self.validate()
                    metrics.update(self.flat_val_metrics(report))
                if self.tracker is not None:
                    self.tracker.log(metrics, self.step)
                self.timing["wall_s"] += time.perf_counter() - started
                self.timing["step_s"] += metrics["train/step_time_s"]
                self.timing["rollouts"] += cfg.prompts_per_step * cfg.group_size
                stop_signal = self._agreed_stop_signal(stop)
                if self.step % cfg.ckpt_every == 0 or last or stop_signal:
                    self.save()
                if stop_signal:
                    bar.close()
                    if self.ctx.is_main:
                        print(f"stopping on {signal.Signals(stop_signal).name} at step {self.step}; checkpoint "
                              f"{self.ckpt_path} saved", flush=True)
                    stop.hand_over(stop_signal)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['train/reward_mean']:.3f}", acc=f"{metrics['train/accuracy']:.2f}",
                                viol=f"{metrics['train/violation_rate']:.2f}")
        bar.close()
        return report if report is not None else self.validate()

    def _agreed_stop_signal(self, stop: StopSignals) -> int:
        """The stop signal any rank has received (0: none), the same on every rank so that all stop together."""
        return max(self.ctx.all_gather_objects(stop.received or 0))
