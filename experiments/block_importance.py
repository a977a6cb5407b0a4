"""Leave-one-block-out accuracy drop on the val split -> block_importance.json (the drop order of knob 3).

    python experiments/block_importance.py [model_path=DIR] [samples=1024]
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from grpo_ctrl.data import GridVQA
from grpo_ctrl.vlm.adaptive import EMBEDDED_DIR, IMPORTANCE_FILE, AdaptiveVLM
from grpo_ctrl.vlm.evaluation import first_token_correct


def block_importance(vlm: AdaptiveVLM, samples) -> dict:
    pool = vlm.knob_space.tiers[vlm.knob_space.full.tier]
    top_k = max(vlm.knob_space.top_ks)
    n = vlm.num_blocks_total
    base = float(first_token_correct(vlm, samples, pool, top_k, range(n)).mean())
    drops = {}
    for block in range(1, n):
        keep = [i for i in range(n) if i != block]
        drops[block] = base - float(first_token_correct(vlm, samples, pool, top_k, keep).mean())
    # Least important first; ties drop the later block first.
    order = sorted(drops, key=lambda b: (drops[b], -b))
    return {"baseline_accuracy": base, "accuracy_drop": drops, "drop_order": order, "samples": len(samples),
            "split": "val", "knobs": f"pool {pool}, top-k {top_k}, all other blocks"}


@hydra.main(version_base="1.3", config_path="../conf/experiments", config_name="block_importance")
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.threads)
    model_dir = Path(cfg.model_path) if cfg.model_path else EMBEDDED_DIR
    vlm = AdaptiveVLM.from_pretrained(model_dir)
    report = block_importance(vlm, GridVQA(seed=cfg.data_seed).split("val", cfg.samples))
    for block, drop in report["accuracy_drop"].items():
        print(f"block {block}: accuracy drop {drop:+.3f}")
    print(f"drop order (least important first): {report['drop_order']}")
    out = Path(HydraConfig.get().runtime.output_dir) / IMPORTANCE_FILE
    out.write_text(json.dumps(report, indent=2))
    if cfg.write_to_model:
        (model_dir / IMPORTANCE_FILE).write_text(json.dumps(report, indent=2))
        print(f"wrote {model_dir / IMPORTANCE_FILE}")


if __name__ == "__main__":
    main()
