"""One clock for every latency in the project: wall time, with the device's queued work finished."""

from __future__ import annotations

import time

import torch


def now(device: torch.device | str | None = None) -> float:
    """Seconds from `time.perf_counter`, after the device's queued work has finished."""
    if _is_cuda(device):
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


class Timeline:
    """Timestamps taken inside one measured call without stalling it.

    On CPU a stamp is `time.perf_counter()`. On CUDA it is an event recorded on the current stream: it marks when
    the GPU reaches that point of the queued work, and nothing synchronises until `seconds()` reads the stamps
    (a synchronize per stamp would stop the CPU from queueing ahead and slow the call down). `start()` waits for
    earlier work, so the first stamp marks the call's start on both clocks.
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = device
        self.cuda = _is_cuda(device)
        self._origin = None

    def stamp(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> None:
        now(self.device)
        self._origin = self.stamp()

    def seconds(self, stamp) -> float:
        """Seconds from `start()` to `stamp` (on CUDA: synchronises once on the stamp)."""
        if self._origin is None:
            raise RuntimeError("Timeline.seconds() before start()")
        if not self.cuda:
            return stamp - self._origin
        stamp.synchronize()
        return self._origin.elapsed_time(stamp) / 1000.0
