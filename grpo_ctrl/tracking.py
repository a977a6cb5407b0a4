"""Metrics tracking: always a local metrics.jsonl; wandb (online/offline/disabled) on rank 0 only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Tracker:
    """Writes one JSON line per `log` call; mirrors it to wandb when configured. `finish()` per job."""

    def __init__(self, run_dir: Path, logger_cfg=None, config: dict | None = None, name: str | None = None,
                 resume_step: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._truncate_after(resume_step)
        self._file = self.path.open("a")
        self._wandb = None
        if logger_cfg is not None and logger_cfg.name == "wandb" and logger_cfg.mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            os.environ["WANDB_DIR"] = str(run_dir)
            import wandb

            self._wandb = wandb.init(project=logger_cfg.project, entity=logger_cfg.entity, mode=logger_cfg.mode,
                                     dir=str(run_dir), config=config, name=name, tags=list(logger_cfg.tags),
                                     reinit="finish_previous")

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so each step appears once (and a last line torn by a
        kill, which only a step after the checkpoint can have written)."""
        if not self.path.exists():
            return
        keep = []
        for line in filter(None, self.path.read_text().splitlines()):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            if row.get("step", 0) <= step:
                keep.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        row = {"step": step, **metrics}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def finish(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


class NullTracker:
    """What every rank but 0 gets."""

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def finish(self) -> None:
        pass
