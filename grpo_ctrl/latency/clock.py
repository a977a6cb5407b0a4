"""One clock for every latency in the project: wall time, synchronised on GPU before each read."""

from __future__ import annotations

import time

import torch


def now(device: torch.device | str | None = None) -> float:
    """Seconds from `time.perf_counter`, after the device's queued work has finished."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
