"""Fill an outcome store ahead of time: every knob setting (or `build.settings`) over a split, chunk by chunk in the
rollout plan's composition, so that training, sweeps and evaluation read instead of compute. Resumable (what the
store holds is skipped) and shardable: job `build.shard` of `build.num_shards` takes every num_shards-th chunk.

    python experiments/build_outcomes.py rollout.store=DIR [build.split=train] [data.train_size=2048]
    python experiments/build_outcomes.py -m rollout.store=DIR build.num_shards=4 build.shard=0,1,2,3 \\
        --config-dir multirun_sweeps +launcher=slurm        # a Slurm job array, one shard per task

The store must be the one training reads (`rollout.store`), and model / data / reward / rollout.batch_size the
training run's: they decide what an outcome is. Lazy filling during training stays the default.
"""

from __future__ import annotations

import sys
import time

import hydra
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from grpo_ctrl.app import make_engine
from grpo_ctrl.build import build_data, build_vlm, inspect_model, open_store
from grpo_ctrl.cli import check_command_line
from grpo_ctrl.config import ConfigError, register_configs, validate
from grpo_ctrl.data import SPLITS, DataError
from grpo_ctrl.knobs import KnobError, KnobSpace
from grpo_ctrl.outcomes import StoreError
from grpo_ctrl.rollout import PromptPool
from grpo_ctrl.vlm import ModelDirError

register_configs()


def settings_of(space: KnobSpace, names) -> list:
    """The knob settings `build.settings` names (as printed: high/k4/b6), or all of them."""
    if not names:
        return space.all()
    by_name = {str(k): k for k in space.all()}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise KnobError(f"build.settings {unknown} are not in the knob space; use names like {space.full}")
    return [by_name[n] for n in names]


def check(cfg: DictConfig) -> None:
    validate(cfg)
    b = cfg.build
    if not cfg.rollout.store:
        raise ConfigError("build_outcomes.py needs rollout.store=DIR: the store the training runs will read")
    if b.split not in SPLITS:
        raise ConfigError(f"build.split={b.split!r} is unknown; use one of {list(SPLITS)}")
    if not 0 <= b.shard < b.num_shards:
        raise ConfigError(f"build.shard={b.shard}, build.num_shards={b.num_shards}: need 0 <= shard < num_shards")


@hydra.main(version_base="1.3", config_path="../conf", config_name="experiments/build_outcomes")
def main(cfg: DictConfig) -> None:
    started = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    try:
        check(cfg)
        spec, data = inspect_model(cfg.model), build_data(cfg.data)
        split = data.split(cfg.build.split, cfg.data.get(f"{cfg.build.split}_size"))
        settings = settings_of(spec.knob_space, cfg.build.settings)
        store = open_store(cfg.rollout, cfg.model, spec, data)
    except (ConfigError, DataError, ModelDirError, KnobError, StoreError) as err:
        print(f"build_outcomes: {err}", file=sys.stderr)
        sys.exit(2)
    engine = make_engine(cfg, build_vlm(cfg.model, spec), store)
    pool = PromptPool(split, cfg.build.split)
    size = engine.batch_size
    starts = list(range(0, len(pool), size))[cfg.build.shard::cfg.build.num_shards]
    try:
        for start in tqdm(starts, desc=f"chunks of {size} x {len(settings)} settings", disable=not cfg.progress):
            chunk = pool[start:start + size]
            engine.question_features(chunk)
            for tier in spec.knob_space.tier_names:  # what the controller's second stage reads
                engine.vision_features(chunk, [tier] * len(chunk))
            # Every setting of one chunk in one call: worker processes take one setting each.
            engine.run([p for _ in settings for p in chunk], [k for k in settings for _ in chunk])
    finally:
        engine.close()
    print(f"{cfg.build.split} split, shard {cfg.build.shard}/{cfg.build.num_shards}: {len(starts)} chunks x "
          f"{len(settings)} settings; {store.computed} outcomes computed, {store.read} already in "
          f"{cfg.rollout.store}, {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    check_command_line("experiments/build_outcomes")
    main()
