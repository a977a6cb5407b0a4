"""`controller.pt`, what a training run delivers: the controller's weights, its knob space, the reference latency
its budget fractions are of, and the run's config. Written atomically with a format number; read by
`read_controller` alone (serving, the held-out evaluation and `GreedyPolicy.load`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from grpo_ctrl.artifacts import atomic_write
from grpo_ctrl.knobs import KnobSpace

CONTROLLER_FILE = "controller.pt"
FORMAT = 1  # files written before the format number existed hold the same fields: read as format 0
FIELDS = ("state_dict", "knob_space", "reference_latency_ms", "config")


class ControllerFileError(ValueError):
    """A controller.pt (or run dir) that cannot be used (one line: what, where, how to fix)."""


def save_controller(run_dir: str | Path, state_dict: dict, knob_space: KnobSpace, reference_latency_ms: float,
                    cheapest_latency_ms: float | None, config: dict[str, Any]) -> Path:
    saved = {"format": FORMAT, "state_dict": state_dict, "knob_space": knob_space.to_dict(),
             "reference_latency_ms": reference_latency_ms, "cheapest_latency_ms": cheapest_latency_ms,
             "config": config}
    return atomic_write(Path(run_dir) / CONTROLLER_FILE, lambda tmp: torch.save(saved, tmp))


def read_controller(where: str | Path) -> dict:
    """The contents of `controller.pt` in the run dir `where` (or of the file `where`), checked."""
    where = Path(where)
    path = where if where.is_file() or where.suffix == ".pt" else where / CONTROLLER_FILE
    if not path.parent.is_dir():
        raise ControllerFileError(f"run_dir={path.parent} is not a directory; give the output dir of a finished "
                                  "train.py run")
    if not path.is_file():
        raise ControllerFileError(f"{path} does not exist: the run has not finished (train.py writes it at the end); "
                                  "give a finished run's dir")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one line
        raise ControllerFileError(f"{path} cannot be read ({type(err).__name__}); re-run train.py to write it") \
            from None
    if not isinstance(saved, dict) or (missing := [k for k in FIELDS if k not in saved]):
        raise ControllerFileError(f"{path} lacks {missing if isinstance(saved, dict) else list(FIELDS)}: not a "
                                  "controller train.py wrote; re-run train.py")
    if saved.get("format", 0) > FORMAT:
        raise ControllerFileError(f"{path} has format {saved['format']}, newer than this grpo-ctrl reads ({FORMAT}); "
                                  "upgrade grpo-ctrl")
    return saved
