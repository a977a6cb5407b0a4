"""Build the pieces a job needs from the validated config (model, knob space, data)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from grpo_ctrl.data import GridVQA
from grpo_ctrl.knobs import KnobSpace
from grpo_ctrl.vlm.adaptive import AdaptiveVLM


def build_vlm(model_cfg: DictConfig) -> AdaptiveVLM:
    vlm = AdaptiveVLM.from_pretrained(model_cfg.path, dtype=getattr(torch, model_cfg.dtype))
    knobs = OmegaConf.to_container(model_cfg.get("knobs") or {})
    overrides = {key: value for key, value in knobs.items() if value is not None}
    if overrides:  # each null entry keeps the values saved with the model
        vlm.set_knob_space(KnobSpace(**{**vlm.knob_space.to_dict(), **overrides}))
    vlm.model.to(model_cfg.device)
    return vlm


def build_data(data_cfg: DictConfig) -> GridVQA:
    if data_cfg.name != "grid_vqa":
        raise ValueError(f"data.name={data_cfg.name!r} is unknown; use grid_vqa")
    return GridVQA(seed=data_cfg.seed, mix=dict(data_cfg.mix))
