"""Held-out evaluation of a trained controller on the TEST split (never used for training or for choosing
baselines), at budgets from the cheapest setting's latency to the full model's.

Every knob setting answers every test and val request (the exhaustive grid, read from the run's outcome store where
it holds them; the count computed vs read is printed); each (request, setting) pair gets a batch-1 latency,
measured or hooked in interleaved passes (or estimated). Latency depends on a request's work
signature (knobs, image / prompt / generated token counts), not on its pixels, so each distinct signature is
timed once per pass on one of its requests and the time goes to all of them. The policies per budget: the
controller (as served: `GreedyPolicy`), the static lookup table (the best setting per budget chosen on val),
the oracle static setting (chosen on test), the per-request oracle (the best any controller can do), random
knobs and the full model. Outputs JSON, CSV, markdown and a Pareto PNG (`grpo_ctrl.baselines`).

Fidelity: the grid comes from the store's batched chunks, serving answers at batch 1. The share of (prompt, setting)
pairs whose score differs between the two is measured on the first `fidelity_prompts` test prompts (`flip_rate`).

    python experiments/evaluate.py run_dir=outputs/<date>/<time> [latency_source=measured] [budgets=8]
    python experiments/evaluate.py run_dir=... budgets=[0.4,0.55,0.7,0.85,1.0]   # fractions of the full model
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from grpo_ctrl.app import make_engine
from grpo_ctrl.baselines import Profile, budget_points, evaluate_budgets
from grpo_ctrl.budget import MAX_VIOLATION
from grpo_ctrl.build import build_data, inspect_model, open_store
from grpo_ctrl.cli import check_command_line, check_minimums
from grpo_ctrl.config import RolloutConfig
from grpo_ctrl.controller_file import ControllerFileError, read_controller
from grpo_ctrl.knob_grid import KnobGrid
from grpo_ctrl.latency import EstimatorError, make_latency_provider
from grpo_ctrl.latency.estimator import CALIBRATE_COMMAND, REFIT_COMMAND, fraction_drift
from grpo_ctrl.latency.experiment import LatencyExperiment
from grpo_ctrl.outcomes import StoreError
from grpo_ctrl.policy import greedy_decisions
from grpo_ctrl.report import write_outputs
from grpo_ctrl.rollout import PromptPool, RolloutEngine
from grpo_ctrl.script_configs import register_script_configs
from grpo_ctrl.serve import ServeError, Server


def flip_rate(engine: RolloutEngine, prompts, grid: KnobGrid) -> dict:
    """Share of (prompt, setting) pairs whose score (and answer) differs between `grid` (the store's chunks) and
    batch-1 generation of the same requests, as serving runs them."""
    alone = RolloutEngine(engine.vlm, engine.max_new_tokens, batch_size=1, workers=engine.workers,
                          scoring=engine.scoring)
    try:
        single = KnobGrid.answer(alone, {"test": prompts}, settings=grid.settings).outcomes["test"]
    finally:
        alone.close()
    pairs = [(a, b) for k in grid.settings for a, b in zip(grid.outcomes["test"][k], single[k])]
    return {"pairs": len(pairs), "score_flip_rate": float(np.mean([a.score != b.score for a, b in pairs])),
            "answer_flip_rate": float(np.mean([a.answer != b.answer for a, b in pairs]))}


def controller_choices(server: Server, engine: RolloutEngine, prompts, settings, budgets_ms, reference_ms) -> dict:
    """Setting index the controller picks for each test prompt at each budget (the serving decision path, with the
    server's guard), and how often the guard kept, moved or replaced its choice by the cheapest setting."""
    index = {k: i for i, k in enumerate(settings)}
    choices, guard = {}, {}
    for budget in budgets_ms:
        decisions = greedy_decisions(server.policy, engine, prompts, budget / reference_ms, server.guard, budget)
        choices[budget] = np.array([index[d.knobs] for d in decisions])
        if server.guard is not None:
            guard[f"{budget:g}"] = dict(Counter(d.guard for d in decisions))
    return choices, guard


def estimator_drift(run_cfg, vlm, grid: KnobGrid, test: Profile, tolerance: float, cfg_threads: int) -> dict | None:
    """The run's estimator against this machine's timings of the test grid (`fraction_drift`); a warning line when
    a setting's fraction of full is off by more than `tolerance`. None when the run has no estimator."""
    try:
        provider = make_latency_provider("estimator", vlm, run_cfg.latency)
    except EstimatorError:
        return None
    settings = list(test.settings)
    estimated = grid.latency(provider)["test"]
    drift = fraction_drift(settings, test.latency_ms, estimated, settings.index(vlm.knob_space.full))
    worst = drift["worst"]
    model = f" model.path={run_cfg.model.path}" if run_cfg.model.get("path") else ""
    if drift["max_abs_drift"] > tolerance:
        print(f"evaluate: warning: the run's latency estimator is off on this machine by {drift['max_abs_drift']:.3f} "
              f"of the full latency ({worst['knobs']}: {worst['estimated_fraction']:.3f} estimated, "
              f"{worst['measured_fraction']:.3f} measured); the controller budgets by the estimator's fractions, "
              f"so expect violations or unused budget: calibrate it to this machine from ~25 requests with "
              f"`{CALIBRATE_COMMAND}{model} threads={cfg_threads}` and evaluate or serve with guard=true "
              f"guard_estimator=<the file it writes>, or re-fit it with `{REFIT_COMMAND}` and re-train",
              file=sys.stderr, flush=True)
    return drift


def check(cfg: DictConfig) -> None:
    sizes = {k: 1 for k in ("test_size", "val_size", "workers") if cfg[k] is not None}
    if cfg.max_violation is not None and not 0 < cfg.max_violation < 1:
        raise ServeError(f"max_violation={cfg.max_violation} must be in (0, 1): the share of requests a policy may "
                         "run over its budget")
    budgets = {"budgets": 0.01} if OmegaConf.is_list(cfg.budgets) else {"budgets": 2}
    check_minimums(cfg, {**budgets, "repeats": 1, "warmup": 0, "threads": 1, "latency_threads": 1,
                         "estimator_tolerance": 0, "fidelity_prompts": 0, **sizes},
                   "evaluate.py")


register_script_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="experiments/evaluate")
def main(cfg: DictConfig) -> None:
    started = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    try:
        check(cfg)
        saved = read_controller(cfg.run_dir)
        policy = saved["config"].get("policy") or {}
        guard = cfg.guard if cfg.guard is not None else bool(policy.get("guard", False))
        server = Server.from_saved(saved, guard=guard,
                                   guard_estimator=cfg.guard_estimator or policy.get("guard_estimator"))
    except (ServeError, ControllerFileError) as err:
        print(f"evaluate: {err}", file=sys.stderr)
        sys.exit(2)
    run_cfg = OmegaConf.create(saved["config"])
    vlm, space = server.vlm, server.vlm.knob_space
    data = build_data(run_cfg.data)
    sizes = {"test": cfg.test_size or run_cfg.data.test_size, "val": cfg.val_size or run_cfg.data.val_size}
    pools = {name: list(PromptPool(data.split(name, n), name)) for name, n in sizes.items()}
    # The run's rollout settings (its store, batch plan and scoring), so that the grid reads what training computed.
    run_cfg.rollout = OmegaConf.merge(OmegaConf.structured(RolloutConfig), run_cfg.get("rollout") or {},
                                      {k: cfg[k] for k in ("store", "workers") if cfg[k] is not None})
    try:
        store = open_store(run_cfg.rollout, run_cfg.model, inspect_model(run_cfg.model), data)
    except StoreError as err:
        print(f"evaluate: {err}", file=sys.stderr)
        sys.exit(2)
    engine = make_engine(run_cfg, vlm, store)
    try:
        grid = KnobGrid.answer(engine, pools)
        print(f"grid: {len(grid.settings)} settings x {sum(map(len, pools.values()))} prompts in "
              f"{time.perf_counter() - started:.0f} s: {store.computed} outcomes computed, {store.read} read from "
              f"the store ({run_cfg.rollout.store or 'in memory'})", flush=True)
        fidelity = flip_rate(engine, pools["test"][: cfg.fidelity_prompts], grid)
        print(f"fidelity: {fidelity['score_flip_rate']:.2%} of {fidelity['pairs']} (prompt, setting) pairs score "
              f"differently at batch 1 than in the store's batches of {run_cfg.rollout.batch_size} "
              f"({fidelity['answer_flip_rate']:.2%} answer differently)", flush=True)
    finally:
        engine.close_workers()
    latency_cfg = OmegaConf.merge(run_cfg.latency, {"warmup": cfg.warmup, "repeats": cfg.repeats,
                                                    "threads": cfg.latency_threads})
    provider = make_latency_provider(cfg.latency_source, vlm, latency_cfg, experiment=LatencyExperiment(vlm=vlm))
    timed = time.perf_counter()
    profiles = grid.profiles(provider)
    print(f"latency: {grid.distinct_requests()} distinct requests ({provider.name}) in "
          f"{time.perf_counter() - timed:.0f} s", flush=True)
    settings = list(grid.settings)
    test = profiles["test"]
    full_ms = float(np.median(test.latency_ms[settings.index(space.full)]))
    # A budget fraction is a fraction of what the full model costs here (measured alongside), as in validation.
    reference = server.scale.reference_ms if cfg.latency_source == "estimator" else full_ms
    low = float(test.mean_latency_ms[settings.index(space.cheapest)])
    asked = OmegaConf.to_object(cfg.budgets) if OmegaConf.is_list(cfg.budgets) else int(cfg.budgets)
    budgets = budget_points(asked, low, float(test.mean_latency_ms.max()), reference)
    choices, guard_actions = controller_choices(server, engine, pools["test"], settings, budgets, reference)
    engine.close()
    alpha = cfg.max_violation if cfg.max_violation is not None else run_cfg.budgets.get("max_violation", MAX_VIOLATION)
    result = evaluate_budgets(test, profiles["val"], budgets, choices, full=space.full, seed=cfg.seed, alpha=alpha)
    if cfg.latency_source != "estimator":
        result["estimator_drift"] = estimator_drift(run_cfg, vlm, grid, test, cfg.estimator_tolerance,
                                                   cfg.latency_threads)
    if server.guard is not None:
        result["guard"] = {"alpha": server.guard.alpha, "actions": guard_actions}
    result.update(run_dir=str(cfg.run_dir), latency_source=cfg.latency_source, reference_ms=reference,
                  max_violation=alpha, fidelity=fidelity, outcomes={"computed": store.computed, "read": store.read},
                  test_prompts=len(pools["test"]), val_prompts=len(pools["val"]),
                  wall_s=time.perf_counter() - started)
    paths = write_outputs(result, Path(HydraConfig.get().runtime.output_dir))
    print(paths["md"].read_text())
    print(f"outputs: {', '.join(str(p) for p in paths.values())}\nwall time {result['wall_s']:.0f} s")


if __name__ == "__main__":
    check_command_line("experiments/evaluate")
    main()
