"""Where a run sits among Hydra's jobs: its command-line overrides and, for a sweep's job, the sweep."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class JobInfo:
    overrides: tuple[str, ...] = ()  # this job's command-line overrides (a sweep's job: with its swept values)
    sweep_dir: str | None = None  # a sweep's job: the multirun dir holding every job of the sweep
    name: str | None = None  # a sweep's job: its overrides as one name (Hydra's `override_dirname`)

    @classmethod
    def from_hydra(cls) -> JobInfo:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get()
        if hydra.mode != RunMode.MULTIRUN:
            return cls(overrides=tuple(hydra.overrides.task))
        return cls(overrides=tuple(hydra.overrides.task), sweep_dir=str(hydra.sweep.dir),
                   name=hydra.job.override_dirname or None)

    def run_name(self, run_dir: Path) -> str:
        """The name wandb shows: a sweep's job by its overrides, any other run by its dir."""
        return self.name or Path(run_dir).name
