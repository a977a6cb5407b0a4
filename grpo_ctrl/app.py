"""The main job behind train.py (kept out of train.py so experiments and tests can call it)."""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

from grpo_ctrl.config import ConfigError, validate


def run(cfg: DictConfig) -> None:
    try:
        validate(cfg)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    print(OmegaConf.to_yaml(cfg))
