"""Content fingerprints: what determines an outcome, hashed, so that stored outcomes are found again by any run,
rank or job that would compute the same bits, and never by one that would not.

A model is fingerprinted from its directory's files (before any weight loads) or, for a model built in memory,
from its weights and config; both add what the files do not say but the bits depend on: dtype, device kind and
the torch / transformers versions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import transformers

SAMPLED_ABOVE = 1 << 30  # bytes: larger weight files are fingerprinted from evenly spaced 1 MiB windows
WINDOW, WINDOWS = 1 << 20, 64


def digest(value) -> str:
    """A short stable hash of a JSON-able value (keys sorted)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def file_digest(path: Path) -> str:
    """Hash of a file's bytes. Files above SAMPLED_ABOVE (multi-GB weights) hash their size and 64 windows spread
    over the whole file, header included: a retrained or converted model changes nearly every window, and a
    30B model's fingerprint stays a second's work."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= SAMPLED_ABOVE:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
        else:
            h.update(str(size).encode())
            for i in range(WINDOWS):
                f.seek((size - WINDOW) * i // (WINDOWS - 1))
                h.update(f.read(WINDOW))
    return h.hexdigest()[:20]


def runtime(dtype: str, device: str) -> dict:
    """What besides the weights sets the bits: dtype, the device kind (the GPU's name), library versions."""
    kind = torch.device(device).type
    if kind == "cuda" and torch.cuda.is_available():
        kind = torch.cuda.get_device_name(torch.device(device))
    return {"dtype": str(dtype).removeprefix("torch."), "device": kind, "torch": torch.__version__,
            "transformers": transformers.__version__}


def model_dir_fingerprint(path: Path, dtype: str, device: str) -> dict:
    """The fingerprint of a model directory (every file: weights, config, processor, knob settings, block order)
    as loaded with `dtype` on `device`; read before any weight loads."""
    files = {p.relative_to(path).as_posix(): file_digest(p) for p in sorted(Path(path).rglob("*"))
             if p.is_file() and p.name != "latency_estimator.json"}  # the estimator does not change an outcome
    return {"files": digest(files), **runtime(dtype, device)}


@torch.no_grad()
def model_memory_fingerprint(model: torch.nn.Module, extra: dict, device: str) -> dict:
    """The fingerprint of a model built in memory: its weights and config (and `extra`: what the adapter adds)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    dtype = next(model.parameters()).dtype
    return {"weights": h.hexdigest()[:20], "config": digest(model.config.to_dict()), "extra": digest(extra),
            **runtime(str(dtype), device)}
