"""Build the pieces a job needs from the validated config (model, knob space, data)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from grpo_ctrl.data import GridVQA, VQASource
from grpo_ctrl.fingerprint import model_dir_fingerprint
from grpo_ctrl.outcomes import OutcomeStore
from grpo_ctrl.vlm import ModelDir, VLMAdapter, inspect_model_dir
from grpo_ctrl.vlm.loading import load_inspected


def inspect_model(model_cfg: DictConfig) -> ModelDir:
    """The model directory `model_cfg` names, with its family and knob space, checked before weights load."""
    knobs = OmegaConf.to_container(model_cfg.get("knobs") or {})
    return inspect_model_dir(model_cfg.get("path"), knobs)  # no path: the embedded VLM (validate checks the pair)


def build_vlm(model_cfg: DictConfig, spec: ModelDir | None = None) -> VLMAdapter:
    spec = spec or inspect_model(model_cfg)
    device_map = model_cfg.get("device_map")
    vlm = load_inspected(spec, dtype=getattr(torch, model_cfg.dtype), device_map=device_map)
    if device_map is None:
        vlm.model.to(model_cfg.device)
    return vlm


def build_data(data_cfg: DictConfig) -> VQASource:
    """The data source `data_cfg` names (opening a dataset reads no image)."""
    if data_cfg.name == "grid_vqa":
        return GridVQA.from_config(data_cfg)
    if data_cfg.name == "hf_vqa":
        from grpo_ctrl.data.hf import HFVQA  # imports `datasets` only when used

        return HFVQA.from_config(data_cfg)
    raise ValueError(f"data.name={data_cfg.name!r} is unknown; use grid_vqa or hf_vqa")


def open_store(rollout_cfg: DictConfig, model_cfg: DictConfig, spec: ModelDir, data: VQASource) -> OutcomeStore:
    """The outcome store `rollout.store` names (in memory when null), bound to this model and data source: a store
    made for others is refused (StoreError, one line), before any weight loads."""
    if not rollout_cfg.get("store"):
        return OutcomeStore()
    device = "cuda" if model_cfg.get("device_map") else model_cfg.device
    binding = {"model": model_dir_fingerprint(spec.path, model_cfg.dtype, device), "data": data.fingerprint()}
    return OutcomeStore(rollout_cfg.store, binding)
