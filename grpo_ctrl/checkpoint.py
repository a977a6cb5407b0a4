"""Atomic, resumable checkpoints: controller, optimizer, RNG states and step."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(path: Path, **state: Any) -> None:
    """Write to a temporary file and rename, so a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({**state, "rng": rng_state()}, tmp)
    os.replace(tmp, path)


CHECKPOINT = Path("checkpoints") / "last.pt"  # under the run dir


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (one line naming the fix)."""


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}); delete it or set "
                              "resume=false to start over") from None
    if not isinstance(state, dict) or "rng" not in state or "step" not in state:
        raise CheckpointError(f"checkpoint {path} is not a grpo-ctrl checkpoint; delete it or set resume=false to "
                              "start over")
    return state


def load_checkpoint(path: Path) -> dict[str, Any]:
    state = read_checkpoint(path)
    set_rng_state(state["rng"])
    return state
