"""Atomic, resumable checkpoints: controller, optimizer, RNG states and step, and the architecture they fit."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from grpo_ctrl.artifacts import atomic_write


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(path: Path, **state: Any) -> None:
    atomic_write(path, lambda tmp: torch.save({**state, "rng": rng_state()}, tmp))


CHECKPOINT = Path("checkpoints") / "last.pt"  # under the run dir


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (one line naming the fix)."""


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}); delete it or set "
                              "resume=false to start over") from None
    if not isinstance(state, dict) or not {"rng", "step", "architecture"} <= state.keys():
        raise CheckpointError(f"checkpoint {path} is not a grpo-ctrl checkpoint (or one from before architectures "
                              "were saved); delete it or set resume=false to start over")
    return state


def architecture(controller_cfg, knob_space, model_signature: dict) -> dict[str, dict]:
    """What a checkpoint resumes only with, keyed like the config where it can be: the model it learned to drive
    (`grpo_ctrl.vlm.adapter.model_signature`), the knob values its heads index, and the controller's shape. A
    different model is named first: it changes the others too."""
    return {"model": dict(model_signature), "model.knobs": knob_space.to_dict(),
            "controller": OmegaConf.to_container(controller_cfg)}


def check_architecture(path: Path, state: dict[str, Any], current: dict[str, dict]) -> None:
    """Raise CheckpointError naming the first setting in which the checkpoint's architecture and this run's
    differ."""
    saved = state["architecture"]
    for section in current:
        old_section = saved.get(section, {})
        for key in dict.fromkeys([*current[section], *old_section]):
            old, new = old_section.get(key), current[section].get(key)
            if old != new:
                raise CheckpointError(f"checkpoint {path} was trained with {section}.{key}={old}, this run has "
                                      f"{section}.{key}={new}; resume with the same setting, or start over with "
                                      "resume=false or another run dir")


def load_checkpoint(path: Path) -> dict[str, Any]:
    state = read_checkpoint(path)
    set_rng_state(state["rng"])
    return state
