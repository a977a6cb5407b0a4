"""Metrics tracking: always a local metrics.jsonl; wandb (online/offline/disabled) on rank 0 only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from grpo_ctrl.artifacts import atomic_write


class Tracker:
    """Writes one JSON line per `log` call; mirrors it to wandb when configured. `finish()` per job.

    `start_step`: the step the run continues from (0: a fresh start); lines logged after it are dropped.
    `wandb_run_id`: the wandb run to log to again (a resumed job's), else a new one; `group` gathers a sweep's
    runs (its multirun dir)."""

    def __init__(self, run_dir: Path, logger_cfg=None, config: dict | None = None, name: str | None = None,
                 start_step: int = 0, wandb_run_id: str | None = None, group: str | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        self._file = self.path.open("a")
        self._wandb = None
        self.wandb_run_id: str | None = None  # kept for the checkpoint even if the backend stops later
        if logger_cfg is not None and logger_cfg.name == "wandb" and logger_cfg.mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            os.environ["WANDB_DIR"] = str(run_dir)
            import wandb

            self._wandb = wandb.init(project=logger_cfg.project, entity=logger_cfg.entity, mode=logger_cfg.mode,
                                     dir=str(run_dir), config=config, name=name, group=group,
                                     tags=list(logger_cfg.tags), id=wandb_run_id, resume="allow",
                                     reinit="finish_previous")
            self.wandb_run_id = self._wandb.id
            print(f"wandb: {logger_cfg.mode} run {self.wandb_run_id} named {self._wandb.name!r}"
                  + (f" in group {group!r}" if group else ""), flush=True)

    def _truncate_after(self, step: int) -> None:
        """Drop lines logged after `step` (the checkpoint's, on resume) so each step appears once, and a last line
        torn by a kill (which only a step after the checkpoint can have written)."""
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
        atomic_write(self.path, "".join(line + "\n" for line in keep))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        row = {"step": step, **metrics}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._wandb is not None:
            try:
                self._wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
            except Exception as err:  # noqa: BLE001 - the mirror failing must not end the run (see _lost_wandb)
                self._lost_wandb(err)

    def _lost_wandb(self, err: Exception) -> None:
        """wandb failed, typically because its backend process is gone: Slurm sends SIGTERM to every process of a
        job step it requeues or preempts (also right after submitit's own requeue, while this run is finishing),
        and wandb then raises ConnectionResetError or MailboxClosedError, by timing. The run goes on with
        metrics.jsonl, which has every step anyway; a resumed job logs to the same wandb run again."""
        print(f"wandb: stopped mirroring ({type(err).__name__}: {err}); logging to {self.path} only", flush=True)
        self._wandb = None

    def finish(self) -> None:
        self._file.close()
        if self._wandb is not None:
            try:
                self._wandb.finish()
            except Exception as err:  # noqa: BLE001 - as in log
                self._lost_wandb(err)
            self._wandb = None


class NullTracker:
    """What every rank but 0 gets."""

    wandb_run_id = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def finish(self) -> None:
        pass
