"""Leave-one-block-out accuracy drop on the val split -> block_importance.json (the drop order of knob 3).

    python experiments/block_importance.py [model.path=DIR] [samples=1024]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from grpo_ctrl.artifacts import write_json
from grpo_ctrl.build import build_data, build_vlm
from grpo_ctrl.cli import check_command_line, check_minimums
from grpo_ctrl.script_configs import register_script_configs
from grpo_ctrl.vlm import VLMAdapter
from grpo_ctrl.vlm.adapter import IMPORTANCE_FILE
from grpo_ctrl.vlm.evaluation import first_token_correct
from grpo_ctrl.vlm.loading import write_to_model_dir


def block_importance(vlm: VLMAdapter, samples) -> dict:
    full = vlm.knob_space.full
    n = vlm.num_blocks_total
    base = float(first_token_correct(vlm, samples, full).mean())
    drops = {}
    for block in vlm.block_drop_order:  # every block that may be dropped
        keep = [i for i in range(n) if i != block]
        drops[block] = base - float(first_token_correct(vlm, samples, full, keep).mean())
    # Least important first; ties drop the later block first.
    order = sorted(drops, key=lambda b: (drops[b], -b))
    return {"baseline_accuracy": base, "accuracy_drop": drops, "drop_order": order, "samples": len(samples),
            "split": "val", "knobs": f"{full.tier}/k{full.top_k}, all other blocks"}


register_script_configs()


def check_report(report: dict, vlm: VLMAdapter) -> None:
    """A drop order the adapter can use, from finite accuracies; else one line and exit 2 (nothing written)."""
    values = [report["baseline_accuracy"], *report["accuracy_drop"].values()]
    if not all(math.isfinite(v) for v in values) or sorted(report["drop_order"]) != sorted(vlm.block_drop_order):
        print(f"block_importance.py: the measured accuracies are not usable ({report['baseline_accuracy']=}); "
              "nothing written", file=sys.stderr)
        sys.exit(2)


@hydra.main(version_base="1.3", config_path="../conf", config_name="experiments/block_importance")
def main(cfg: DictConfig) -> None:
    check_minimums(cfg, {"samples": 1, "threads": 1}, "block_importance.py")
    torch.set_num_threads(cfg.threads)
    vlm = build_vlm(cfg.model)
    model_dir = vlm.source
    report = block_importance(vlm, build_data(cfg.data).split("val", cfg.samples)[:])
    for block, drop in report["accuracy_drop"].items():
        print(f"block {block}: accuracy drop {drop:+.3f}")
    print(f"drop order (least important first): {report['drop_order']}")
    check_report(report, vlm)  # before anything is written
    out = Path(HydraConfig.get().runtime.output_dir) / IMPORTANCE_FILE
    write_json(out, report)
    if cfg.write_to_model:
        write_to_model_dir(model_dir, IMPORTANCE_FILE, lambda path: write_json(path, report), cfg.overwrite_shipped)


if __name__ == "__main__":
    check_command_line("experiments/block_importance")
    main()
