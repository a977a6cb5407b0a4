"""Writing files: every artefact a job leaves (checkpoints, controller, reports, estimators, metrics rewrites) goes
through `atomic_write`, so a reader, a crash or a second writer never sees half a file."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, content: str | bytes | Callable[[Path], object]) -> Path:
    """Write `content` (text, bytes, or a function that writes the file at the path it is given) to a temporary
    file beside `path`, then rename it over `path`. The temporary name is unique to this call and keeps the
    suffix (writers such as `savefig` read the format from it), so two processes never share one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
    try:
        if isinstance(content, str):
            tmp.write_text(content)
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            content(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any, default: Callable[[Any], Any] | None = None) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, default=default))
