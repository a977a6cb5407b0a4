"""grpo-ctrl main job: train a GRPO controller that picks the VLM's knobs per request and latency budget.

    python train.py                                   # embedded default, estimator latency
    python train.py latency=measured parallel=ddp     # measured validation latency, DDP
    python train.py -m group_size=4,8,16              # Hydra multirun sweep
"""

import hydra
from omegaconf import DictConfig
from transformers.utils import logging as hf_logging

from grpo_ctrl.cli import check_command_line
from grpo_ctrl.config import register_configs

register_configs()
hf_logging.disable_progress_bar()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from grpo_ctrl.app import run

    run(cfg)


if __name__ == "__main__":
    check_command_line("config")
    main()
