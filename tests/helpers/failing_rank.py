"""train.py with rank 1 raising at its first step: a test helper for the no-hang guarantee.

The patch is made at module level, for our own spawned workers (they re-import this main module), and again in
the task function, which Hydra's submitit launcher pickles by value into every Slurm task.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from grpo_ctrl.config import register_configs  # noqa: E402
from grpo_ctrl.trainer import JointGRPOTrainer  # noqa: E402

_original = JointGRPOTrainer.train_step


def _fail_on_rank_1(self, step):
    if os.environ.get("RANK") == "1":
        raise RuntimeError("injected failure on rank 1")
    return _original(self, step)


JointGRPOTrainer.train_step = _fail_on_rank_1
register_configs()


@hydra.main(version_base="1.3", config_path=str(ROOT / "conf"), config_name="config")
def main(cfg: DictConfig) -> None:
    from grpo_ctrl.app import run

    JointGRPOTrainer.train_step = _fail_on_rank_1
    run(cfg)


if __name__ == "__main__":
    main()
