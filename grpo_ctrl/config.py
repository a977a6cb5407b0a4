"""Typed config schema (Hydra ConfigStore) and the invariants checked before anything loads.

Hydra rejects unknown keys and wrong types through the schema; `validate` checks the relations between
values and raises `ConfigError` with one line naming the key and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from grpo_ctrl.budget import MAX_VIOLATION, Unit
from grpo_ctrl.data.hf import HFVQAConfig
from grpo_ctrl.data.source import DataSourceConfig
from grpo_ctrl.data.synthetic import QUESTION_TYPES, GridVQAConfig
from grpo_ctrl.grpo import Advantage
from grpo_ctrl.parallel import DDPConfig, DPConfig, ParallelConfig, SingleConfig
from grpo_ctrl.reward import ConstrainedRewardConfig, DefaultRewardConfig, RewardConfig, SeedRewardConfig


class ConfigError(ValueError):
    """An invalid combination of config values."""


class DType(StrEnum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class LatencySource(StrEnum):
    estimator = "estimator"  # the fitted estimator (fast, batched)
    measured = "measured"  # end-to-end generate() at batch 1
    hooked = "hooked"  # forward hooks timing vision / prefill / decode in one generate()


class Statistic(StrEnum):
    median = "median"
    min = "min"  # the least-interfered run (noisy shared machines)


class WandbMode(StrEnum):
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class KnobSpaceConfig:
    """Restrict or change the knob values; each null entry keeps the model's values (grpo_ctrl.json, else derived
    from the model)."""

    # Tier name -> value, cheapest first (llava: grid pooling factor, 1 = every patch; qwen3_vl_moe: pixels per
    # image). Typed Any so that `model.knobs.tiers={low:4,high:1}` replaces null on the command line (a typed
    # dict node only merges into an existing dict); `validate` checks it.
    tiers: Any = None
    top_ks: list[int] | None = None
    num_blocks: list[int] | None = None


@dataclass
class ModelConfig:
    name: str = "embedded"  # embedded (shipped in the package) | hf (any supported model directory)
    path: str | None = None  # hf: a directory as transformers saves it (config.json, weights, processor files)
    knobs: KnobSpaceConfig = field(default_factory=KnobSpaceConfig)
    dtype: DType = DType.float32
    device: str = "cpu"  # cpu | cuda | cuda:N
    device_map: str | None = None  # e.g. auto: spread a model larger than one GPU (needs accelerate); then
    #                               `device` is not used
    max_new_tokens: int = 2  # one-word answer + EOS


@dataclass
class BudgetConfig:
    unit: Unit = Unit.fraction  # fraction (of the full-knob latency of a typical request) | ms
    train_min: float = 0.35  # training budgets are drawn uniformly from [train_min, train_max]
    train_max: float = 1.05
    val: list[float] = field(default_factory=lambda: [0.4, 0.55, 0.7, 0.85, 1.0])
    # alpha: a policy meets a budget when at most this share of its requests take longer (every report's rule)
    max_violation: float = MAX_VIOLATION


@dataclass
class ControllerConfig:
    hidden: int = 64
    budget_frequencies: int = 8  # sinusoidal budget encoding
    feature_dim: int = 32  # question / vision features are projected to this size


@dataclass
class LatencyConfig:
    train: LatencySource = LatencySource.estimator  # behind the training reward: estimator | measured
    val: LatencySource = LatencySource.estimator  # behind validation: estimator | measured | hooked
    estimator_path: str | None = None  # null: <model dir>/latency_estimator.json
    train_noise_cv: float = 0.0  # training reward sees latency x lognormal noise of this CV (real latency jitters)
    warmup: int = 1  # measured / hooked: untimed runs before timing
    repeats: int = 3  # measured / hooked: timed runs per request (summarised by `statistic`)
    threads: int | None = None  # measured / hooked: intra-op threads while timing (null: the run's `threads`)
    statistic: Statistic = Statistic.median  # measured / hooked: a request's latency over its repeats


@dataclass
class PolicyConfig:
    """The served decision, in validation (and what evaluation and serving default to)."""

    # Only settings whose calibrated (1 - budgets.max_violation) upper latency fits the budget, the cheapest when none
    # does (grpo_ctrl/latency/guard.py); needs an estimator with residual scores (experiments/calibrate_latency.py)
    guard: bool = False
    guard_estimator: str | None = None  # that estimator (null: latency.estimator_path, else the model's)


@dataclass
class LoggerConfig:
    name: str = "wandb"  # wandb | none
    mode: WandbMode = WandbMode.offline
    project: str = "grpo-ctrl"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class GRPOConfig:
    # group | batch | none. batch: a group whose settings are all right differs only by tiny dense terms
    # (gold-answer probability), and dividing by that group's own std would blow those up to +-1.
    advantage: Advantage = Advantage.batch
    epsilon: float = 0.2  # PPO-style clip range
    num_iterations: int = 2  # optimisation passes over each rollout batch
    beta: float = 0.0  # KL to the frozen initial controller
    entropy_coef: float = 0.05


@dataclass
class RolloutConfig:
    """How outcomes are computed and kept (grpo_ctrl/rollout.py, grpo_ctrl/outcomes.py)."""

    batch_size: int = 16  # rows per chunk of the fixed plan (a split in source order, one knob setting); 1: batch 1
    # A directory: outcomes and features on disk, shared by runs, ranks and sweep jobs. Default: the jobs of a
    # multirun share <sweep dir>/outcomes; a single run keeps them in memory.
    store: str | None = "${sweep_store:}"
    workers: int | None = None  # processes computing chunks; null: one per CPU core (1 on a GPU, with dp)
    # Memory for encoded (chunk, tier) inputs and vision tokens (LRU): most of the embedded default's training split,
    # and a large dataset's memory flat (a 10k-sample hf_vqa run's peak RSS 1.16x a 1k one's at 96 MB, 1.19x at 128)
    vision_cache_mb: float = 96


@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    data: DataSourceConfig = MISSING
    controller: ControllerConfig = MISSING
    reward: RewardConfig = MISSING
    latency: LatencyConfig = MISSING
    parallel: ParallelConfig = MISSING
    logger: LoggerConfig = MISSING
    rollout: RolloutConfig = MISSING
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    budgets: BudgetConfig = field(default_factory=BudgetConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    group_size: int = 8  # knob settings sampled per (prompt, budget)
    prompts_per_step: int = 16  # (prompt, budget) pairs per optimiser step, over all ranks
    lr: float = 1e-3
    steps: int = 2000
    val_every: int = 500
    ckpt_every: int = 250
    seed: int = 0
    resume: bool = True  # continue from <run dir>/checkpoints/last.pt when it exists
    threads: int = 2  # torch intra-op threads per process (rollouts always run on one: see grpo_ctrl/rollout.py)
    progress: bool = True


@dataclass
class BuildConfig:
    """experiments/build_outcomes.py: which pairs to compute, and this job's share of them."""

    split: str = "train"  # train | val | test
    settings: list[str] | None = None  # knob settings as printed (e.g. high/k4/b6); null: every one
    shard: int = 0  # this job's share: chunks shard, shard + num_shards, ... (a Slurm array: -m build.shard=0,1,2)
    num_shards: int = 1


@dataclass
class BuildOutcomesConfig(TrainConfig):
    build: BuildConfig = field(default_factory=BuildConfig)


# Each group option's schema, by group: `conf/<group>/<option>.yaml` names `<option>_schema` in its defaults.
GROUP_SCHEMAS = {
    "model": {"embedded": ModelConfig, "hf": ModelConfig},
    "data": {"grid_vqa": GridVQAConfig, "hf_vqa": HFVQAConfig},
    "controller": {"default": ControllerConfig},
    "reward": {"constrained": ConstrainedRewardConfig, "default": DefaultRewardConfig, "seed": SeedRewardConfig},
    "latency": {"estimator": LatencyConfig, "measured": LatencyConfig, "hooked": LatencyConfig},
    "parallel": {"single": SingleConfig, "dp": DPConfig, "ddp": DDPConfig},
    "logger": {"wandb": LoggerConfig, "none": LoggerConfig},
    "rollout": {"default": RolloutConfig},
}


def run_stamp() -> str:
    """Run-dir name: microsecond time, or the torchrun job id so that every rank of one job agrees."""
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    return f"torchrun-{job[:12]}" if job else datetime.now().strftime("%H-%M-%S-%f")


def sweep_store() -> str | None:
    """<sweep dir>/outcomes in a Hydra multirun (every job of the sweep reads and fills it), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return os.path.abspath(os.path.join(HydraConfig.get().sweep.dir, "outcomes"))


def register_configs() -> None:
    if not OmegaConf.has_resolver("run_stamp"):
        OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True)
    if not OmegaConf.has_resolver("sweep_store"):
        OmegaConf.register_new_resolver("sweep_store", sweep_store)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="build_outcomes_schema", node=BuildOutcomesConfig)
    for group, options in GROUP_SCHEMAS.items():
        for option, node in options.items():
            cs.store(group=group, name=f"{option}_schema", node=node)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate_data(data: DictConfig | Any) -> None:
    for split in ("train", "val", "test"):
        size = data[f"{split}_size"]
        _require(size is None or size >= 1, f"data.{split}_size={size} must be >= 1 (or null: the whole split)")
        _require(size is not None or data.name != "grid_vqa",
                 f"data.{split}_size=null with data=grid_vqa: the generator is unbounded; give a size")
    if data.name == "grid_vqa":
        unknown = set(data.mix) - set(QUESTION_TYPES)
        _require(not unknown, f"data.mix has unknown question types {sorted(unknown)}; use {list(QUESTION_TYPES)}")
    else:
        _require(bool(data.path), "data=hf_vqa needs data.path=DIR: a `save_to_disk` dir, an imagefolder, or the "
                 "base dir of data.data_files")


def validate_rollout(rollout: DictConfig | Any) -> None:
    _require(rollout.workers is None or rollout.workers >= 1,
             f"rollout.workers={rollout.workers} must be >= 1, or null for one per CPU core")
    _require(rollout.batch_size >= 1, f"rollout.batch_size={rollout.batch_size} must be >= 1 (1: batch-1 rollouts)")
    _require(rollout.vision_cache_mb > 0, f"rollout.vision_cache_mb={rollout.vision_cache_mb} must be > 0")


def validate(cfg: DictConfig | Any, world_size: int = 1) -> None:
    """Check relations between values; one clear line per problem (the first one found)."""
    for group, options in GROUP_SCHEMAS.items():
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            continue
        own = [o for o, schema in options.items() if OmegaConf.get_type(node) is schema]
        name = node.get("name")
        _require(name is None or name in options and (len(own) != 1 or own == [name]),
                 f"{group}.name={name}: the {group} option sets it; choose the option with {group}=<"
                 f"{'|'.join(options)}>")
    _require(cfg.latency.train != LatencySource.hooked,
             "latency.train=hooked: hooked timing is for validation; train on latency.train=estimator or measured")
    _require(cfg.group_size >= 2, f"group_size={cfg.group_size}: GRPO needs >= 2 samples per group to compare; "
             "set group_size=2 or more")
    _require(cfg.prompts_per_step >= 1, f"prompts_per_step={cfg.prompts_per_step} must be >= 1")
    _require(cfg.prompts_per_step % world_size == 0,
             f"prompts_per_step={cfg.prompts_per_step} is not divisible by the {world_size} ranks; groups never "
             f"split across ranks, so use a multiple of {world_size}")
    for key in ("steps", "val_every", "ckpt_every", "threads", "model.max_new_tokens", "grpo.num_iterations",
                "controller.hidden"):
        _require(OmegaConf.select(cfg, key) >= 1, f"{key}={OmegaConf.select(cfg, key)} must be >= 1")
    validate_data(cfg.data)
    _require(cfg.lr > 0, f"lr={cfg.lr} must be > 0")
    _require(0 <= cfg.reward.gold_prob_weight <= 1,
             f"reward.gold_prob_weight={cfg.reward.gold_prob_weight} must be in [0, 1] (0: exact answer score only)")
    _require(cfg.latency.repeats >= 1, f"latency.repeats={cfg.latency.repeats} must be >= 1 (timed runs per request)")
    _require(cfg.latency.warmup >= 0, f"latency.warmup={cfg.latency.warmup} must be >= 0 (untimed runs first)")
    if cfg.parallel.name == "ddp":
        _require(cfg.parallel.nproc >= 1, f"parallel.nproc={cfg.parallel.nproc} must be >= 1 (worker processes)")
        _require(cfg.parallel.backend != "nccl" or cfg.model.device.startswith("cuda"),
                 f"parallel.backend=nccl needs model.device=cuda (got {cfg.model.device}); use parallel.backend=auto")
    _require(cfg.latency.threads is None or cfg.latency.threads >= 1,
             f"latency.threads={cfg.latency.threads} must be >= 1, or null to time with the run's threads")
    validate_rollout(cfg.rollout)
    if cfg.reward.name == "constrained":
        _require(cfg.reward.bands >= 1, f"reward.bands={cfg.reward.bands} must be >= 1")
        _require(cfg.reward.dual_lr >= 0 and cfg.reward.initial_multiplier >= 0,
                 f"reward.dual_lr={cfg.reward.dual_lr}, reward.initial_multiplier={cfg.reward.initial_multiplier}: "
                 "both must be >= 0")
    _require(cfg.parallel.name != "dp" or (cfg.rollout.workers or 1) == 1,
             f"rollout.workers={cfg.rollout.workers} with parallel=dp: dp replicas answer the rollouts; drop "
             "rollout.workers")
    _require(cfg.latency.train_noise_cv >= 0, f"latency.train_noise_cv={cfg.latency.train_noise_cv} must be >= 0")
    _require(cfg.grpo.epsilon > 0, f"grpo.epsilon={cfg.grpo.epsilon} must be > 0")
    b = cfg.budgets
    _require(0 < b.train_min <= b.train_max, f"budgets.train_min={b.train_min}, budgets.train_max={b.train_max}: "
             "need 0 < train_min <= train_max")
    _require(len(b.val) >= 1 and all(v > 0 for v in b.val), f"budgets.val={list(b.val)}: list one or more budgets > 0")
    _require(0 < b.max_violation < 1, f"budgets.max_violation={b.max_violation} must be in (0, 1): the share of "
             "requests a policy may run over its budget (e.g. 0.05)")
    _require(cfg.model.name != "hf" or bool(cfg.model.path),
             "model=hf needs model.path=DIR: a model directory as transformers saves it (config.json, weights, "
             "processor files)")
    _require(cfg.model.name != "embedded" or not cfg.model.path,
             f"model.path={cfg.model.path} with model=embedded (the shipped VLM); use model=hf model.path=DIR")
    knobs = cfg.model.knobs
    if knobs.tiers is not None:
        _require(isinstance(knobs.tiers, Mapping) and len(knobs.tiers) >= 1
                 and all(isinstance(p, int) and p >= 1 for p in knobs.tiers.values()),
                 f"model.knobs.tiers={dict(knobs.tiers)}: map each tier name to a value >= 1 (cheapest first)")
    for key in ("top_ks", "num_blocks"):
        values = knobs[key]
        if values is not None:
            _require(len(values) >= 1 and all(v >= 1 for v in values),
                     f"model.knobs.{key}={list(values)}: list one or more values >= 1")
    if cfg.parallel.name == "dp":
        _require(len(cfg.parallel.devices) != 1, "parallel.devices lists one device; dp needs >= 2 (or [] for auto)")
