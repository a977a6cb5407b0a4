"""torch's intra-op CPU threads for a block of work (rollouts compute on one; timing picks its own count)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to `threads` inside the block (None: unchanged). On a small machine,
    timing with fewer threads than cores leaves a core for the OS and the Python loop: with every core in one
    parallel region, one preempted thread stalls the whole op (2-core VM, embedded VLM: the spread of a
    request's median-of-5 latency is CV ~10% at 2 threads, ~3% at 1)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
