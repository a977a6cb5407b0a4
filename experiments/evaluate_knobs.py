"""Accuracy per question type and median latency for every knob setting, the targets of the embedded VLM,
and the "cheapest correct setting" histogram (the controller's headroom over any static setting).

    python experiments/evaluate_knobs.py [model.path=DIR] [samples=1200]
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from grpo_ctrl.artifacts import write_json
from grpo_ctrl.baselines import accuracy_by_type, cheapest_correct, headroom
from grpo_ctrl.build import build_data, build_vlm, inspect_model, open_store
from grpo_ctrl.cli import check_command_line, check_minimums
from grpo_ctrl.knob_grid import KnobGrid
from grpo_ctrl.latency import make_latency_provider
from grpo_ctrl.rollout import PromptPool, RolloutEngine, Scoring, default_workers
from grpo_ctrl.script_configs import register_script_configs


def monotone_violations(space, acc: dict, tolerance: float) -> list[str]:
    """Steps along one knob (others fixed) where accuracy falls by more than `tolerance`."""
    out = []
    axes = {"tier": space.tier_names, "top_k": space.top_ks, "num_blocks": space.num_blocks}
    for knobs in space.all():
        for axis, values in axes.items():
            i = values.index(getattr(knobs, axis))
            if i + 1 < len(values):
                nxt = type(knobs)(**{**knobs.__dict__, axis: values[i + 1]})
                if acc[nxt] < acc[knobs] - tolerance:
                    out.append(f"{knobs} -> {nxt}: {acc[knobs]:.3f} -> {acc[nxt]:.3f}")
    return out


def knob_bottlenecks(space, table: dict, types: list[str]) -> dict[str, dict]:
    """For each knob alone at its cheapest value (the others at full), the question type that loses most."""
    full = space.full
    cheapest = space.cheapest
    out = {}
    for axis in ("tier", "top_k", "num_blocks"):
        alone = replace(full, **{axis: getattr(cheapest, axis)})
        drops = {t: table[full][t] - table[alone][t] for t in types}
        worst = max(drops, key=drops.get) if drops else None
        out[axis] = {"setting": str(alone), "type": worst, "drop": drops.get(worst, 0.0)}
    return out


register_script_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="experiments/evaluate_knobs")
def main(cfg: DictConfig) -> None:
    check_minimums(cfg, {"samples": 1, "latency_repeats": 1,
                         "latency_threads": 1, "headroom_budgets": 0.01},
                   "evaluate_knobs.py")
    if not 0 < cfg.max_violation < 1:
        print(f"config error: evaluate_knobs.py: max_violation={cfg.max_violation} must be in (0, 1)", file=sys.stderr)
        sys.exit(2)
    spec, data = inspect_model(cfg.model), build_data(cfg.data)
    store = open_store(cfg.rollout, cfg.model, spec, data)  # refused before the model loads if it is another's
    vlm = build_vlm(cfg.model, spec)
    space = vlm.knob_space
    pool = PromptPool(data.split("test", cfg.samples), "test")
    prompts = list(pool)
    samples = [p.sample for p in prompts]
    engine = RolloutEngine(vlm, cfg.model.max_new_tokens, cfg.rollout.batch_size, store,
                           workers=cfg.rollout.workers or default_workers(cfg.model.device),
                           scoring=Scoring(cfg.data.metric))
    try:
        grid = KnobGrid.answer(engine, {"test": prompts})
    finally:
        engine.close_workers()
    print(f"outcomes: {store.computed} computed, {store.read} read from the store ({cfg.rollout.store or 'in memory'})")
    provider = make_latency_provider("measured", vlm, {"warmup": 1, "repeats": cfg.latency_repeats,
                                                       "threads": cfg.latency_threads})
    print(f"timing {grid.distinct_requests()} distinct requests (batch 1, {cfg.latency_repeats} repeats)", flush=True)
    profile = grid.profiles(provider)["test"]
    engine.close()
    settings, qtypes = list(profile.settings), [s.qtype for s in samples]
    latency = dict(zip(settings, profile.mean_latency_ms))
    table = {k: accuracy_by_type(profile.scores[i], qtypes) for i, k in enumerate(settings)}
    types = sorted(set(qtypes) - {""})  # "": no type column
    print(f"{'setting':<14}{'ms':>7}{'all':>7}" + "".join(f"{t:>10}" for t in types))
    for k in settings:
        row = "".join(f"{table[k][t]:>10.3f}" for t in types)
        print(f"{str(k):<14}{latency[k]:>7.2f}{table[k]['all']:>7.3f}{row}")
    acc = {k: v["all"] for k, v in table.items()}
    full, cheap = space.full, space.cheapest
    full_ms = float(np.median(profile.latency_ms[profile.index(full)]))
    se = float(np.sqrt(0.25 / len(samples)))
    violations = monotone_violations(space, acc, tolerance=2 * se)
    oracle = [settings[i] if i >= 0 else None for i in cheapest_correct(profile)]
    histogram = Counter(str(k) for k in oracle)
    by_qtype = {t: Counter(str(k) for k, s in zip(oracle, samples) if s.qtype == t).most_common(3) for t in types}
    binds = knob_bottlenecks(space, table, types)
    at_half = headroom(profile, qtypes, [full_ms * cfg.oracle_budget], cfg.max_violation)[0]
    fractions = list(cfg.headroom_budgets)
    rows = headroom(profile, qtypes, [f * full_ms for f in fractions], cfg.max_violation)
    room = [{"fraction": f, **row} for f, row in zip(fractions, rows)]
    targets = {
        "full_accuracy": acc[full], "full_accuracy>=0.9": acc[full] >= 0.9,
        "cheapest_accuracy": acc[cheap], "latency_ratio": latency[cheap] / latency[full],
        "knob_bottlenecks": binds, "every_knob_drops_a_type>=0.2": all(b["drop"] >= 0.2 for b in binds.values()),
        f"oracle_at_{cfg.oracle_budget}": at_half,
        "oracle_minus_best_static>=0.15": at_half["per_request_oracle"] - (at_half["best_static"] or 0.0) >= 0.15,
        "monotone_violations(>2se)": violations, "monotone": not violations,
    }
    print("\noracle cheapest correct setting (all types):", histogram.most_common(8))
    for t, common in by_qtype.items():
        print(f"  {t}: {common}")
    print("\ntargets:", json.dumps(targets, indent=2))
    print(f"\n{'budget':>7}{'ms':>8}{'best static':>14}{'':>14}{'by type':>9}{'oracle':>8}")
    for r in room:
        routed = "-" if r["type_routing"] is None else f"{r['type_routing']:.3f}"
        static = "-" if r["best_static"] is None else f"{r['best_static']:.3f}"
        print(f"{r['fraction']:>7g}{r['budget_ms']:>8.2f}{static:>14}{str(r['best_static_knobs']):>14}"
              f"{routed:>9}{r['per_request_oracle']:>8.3f}")
    report = {"samples": len(samples), "split": "test", "targets": targets, "headroom": room,
              "settings": [{"knobs": str(k), "tier": k.tier, "top_k": k.top_k, "num_blocks": k.num_blocks,
                            "latency_ms": latency[k], "accuracy": table[k]} for k in space.all()],
              "oracle_histogram": dict(histogram), "oracle_by_type": {t: dict(c) for t, c in by_qtype.items()}}
    out = Path(HydraConfig.get().runtime.output_dir) / "knob_report.json"
    write_json(out, report)
    print(f"report: {out}")


if __name__ == "__main__":
    check_command_line("experiments/evaluate_knobs")
    main()
