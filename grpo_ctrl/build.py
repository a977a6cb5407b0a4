"""Build the pieces a job needs from the validated config (model, knob space, data)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from grpo_ctrl.data import GridVQA
from grpo_ctrl.knobs import KnobSpace
from grpo_ctrl.vlm.adaptive import AdaptiveVLM


def build_vlm(model_cfg: DictConfig) -> AdaptiveVLM:
    vlm = AdaptiveVLM.from_pretrained(model_cfg.path, dtype=getattr(torch, model_cfg.dtype))
    knobs = model_cfg.get("knobs") or {}
    saved = vlm.knob_space
    if any(knobs.get(k) is not None for k in ("tiers", "top_ks", "num_blocks")):
        space = KnobSpace(tiers=dict(knobs.tiers) if knobs.get("tiers") is not None else saved.tiers,
                          top_ks=tuple(knobs.top_ks) if knobs.get("top_ks") is not None else saved.top_ks,
                          num_blocks=tuple(knobs.num_blocks) if knobs.get("num_blocks") is not None
                          else saved.num_blocks)
        vlm.set_knob_space(space)
    vlm.model.to(model_cfg.device)
    return vlm


def build_data(data_cfg: DictConfig) -> GridVQA:
    if data_cfg.name != "grid_vqa":
        raise ValueError(f"data.name={data_cfg.name!r} is unknown; use grid_vqa")
    return GridVQA(seed=data_cfg.seed, mix=dict(data_cfg.mix))
