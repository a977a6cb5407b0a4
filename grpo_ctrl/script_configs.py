"""Typed schemas of the scripts in experiments/ (their conf/experiments/<script>.yaml names `<script>_schema`): a
mistyped key or a value of the wrong type stops at composition with one line, as train.py's do."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from grpo_ctrl.budget import MAX_VIOLATION
from grpo_ctrl.config import KnobSpaceConfig, LatencySource, ModelConfig, RolloutConfig, register_configs
from grpo_ctrl.data.source import DataSourceConfig
from grpo_ctrl.vlm.builder import EmbeddedVLMSize


@dataclass
class BlockImportanceConfig:
    """experiments/block_importance.py: leave-one-block-out accuracy drop on the val split."""

    model: ModelConfig = field(default_factory=ModelConfig)  # path null: the embedded VLM
    data: DataSourceConfig = MISSING
    samples: int = 1024
    threads: int = 2
    write_to_model: bool = True  # write block_importance.json into the model dir (the adapter reads it from there)
    overwrite_shipped: bool = False  # write_to_model never replaces the embedded VLM's shipped files unless true


@dataclass
class CalibrateLatencyConfig:
    """experiments/calibrate_latency.py: an existing latency estimator moved to this machine from a few requests."""

    model: ModelConfig = field(default_factory=ModelConfig)  # path null: the embedded VLM
    data: DataSourceConfig = MISSING
    estimator: str | None = None  # the estimator to calibrate (null: the model dir's latency_estimator.json)
    requests: int = 25  # timed requests the calibration is fitted on (>= 6)
    generated_tokens: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # forced output lengths, in turn
    repeats: int = 3  # timed runs of each request (median fitted; every run a residual score)
    warmup: int = 2  # untimed runs per knob setting first
    holdout: int = 100  # other requests timed alongside, for the held-out error before and after (0: none)
    threads: int = 1  # torch intra-op threads: those the calibrated estimator will be valid for
    max_violation: float = MAX_VIOLATION  # alpha of the coverage check of the calibrated upper latency
    seed: int = 0
    # Where the calibrated estimator goes (null: beside the original as latency_estimator.<device>-<threads>t.json,
    # or only in this run's output dir when the original is the embedded VLM's shipped one)
    output: str | None = None


@dataclass
class EvaluateConfig:
    """experiments/evaluate.py: held-out evaluation of a trained controller on the test split."""

    run_dir: str = MISSING  # a finished train.py run (its controller.pt names the model, data and knobs)
    # n evenly spaced from the cheapest setting's mean latency to the full model's, or a list of fractions of the
    # full model's latency (e.g. [0.4,0.55,0.7,0.85,1.0], the val budgets)
    budgets: Any = 8
    latency_source: LatencySource = LatencySource.measured  # measured | hooked (batch 1, interleaved) | estimator
    repeats: int = 9  # timed passes over the distinct requests (per-request median): few distinct ones, so cheap
    warmup: int = 1
    latency_threads: int = 1  # intra-op threads while timing (1: far steadier on a small shared VM)
    test_size: int | None = None  # null: the run's data.test_size
    val_size: int | None = None  # val prompts the lookup table is chosen on (null: the run's data.val_size)
    workers: int | None = None  # processes answering the grid (null: the run's rollout.workers, else one per core)
    store: str | None = None  # an outcome store dir (null: the run's rollout.store; in memory if it had none)
    fidelity_prompts: int = 128  # test prompts answered at batch 1 too: the store's batches' flip rate vs serving
    threads: int = 2
    # measured / hooked: warn where the run's estimator puts a setting's latency, as a fraction of the full
    # setting's, further than this from this machine's timings
    estimator_tolerance: float = 0.05
    seed: int = 0  # random-knobs baseline and bootstrap intervals
    max_violation: float | None = None  # alpha of the rule a policy meets a budget by (null: the run's budgets.*)
    # The controller's choices through a latency guard (grpo_ctrl/latency/guard.py; null: the run's policy.guard), from
    # an estimator with residual scores for this machine (null: the run's policy.guard_estimator, else its estimator)
    guard: bool | None = None
    guard_estimator: str | None = None


@dataclass
class EvaluateKnobsConfig:
    """experiments/evaluate_knobs.py: per-question-type accuracy and latency of every knob setting (test split)."""

    model: ModelConfig = field(default_factory=ModelConfig)  # path null: the embedded VLM
    data: DataSourceConfig = MISSING
    rollout: RolloutConfig = MISSING
    samples: int = 1200  # test questions scored per setting
    latency_repeats: int = 5  # batch-1 timings per distinct request (knobs, token counts); their median
    latency_threads: int = 1  # while timing
    oracle_budget: float = 0.5  # the per-request oracle against the best static setting at this fraction of full
    headroom_budgets: list[float] = field(default_factory=lambda: [0.4, 0.55, 0.7, 0.85, 1.0])  # fractions
    max_violation: float = MAX_VIOLATION  # a policy meets a budget when at most this share of requests run over


@dataclass
class PretrainTinyVLMConfig:
    """experiments/pretrain_tiny_vlm.py: elastic pretraining of the embedded VLM."""

    data: DataSourceConfig = MISSING
    seed: int = 0
    steps: int = 4000
    batch_size: int = 32  # images per step
    questions_per_image: int = 4  # grid_vqa: packed into one sequence, each masked to see only the image and itself
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    aux_weight: float = 0.5  # grid_vqa: vision tokens predict the colours under them (speeds up learning)
    max_words: int = 4000  # other data: the tokenizer keeps the training split's most frequent words
    p_full: float = 0.25  # fraction of steps trained at full knobs; the rest sample tier, top-k, block subset
    top_k_weights: list[float] | None = None  # how often each of knobs.top_ks is drawn on the other steps
    min_blocks: int = 2
    eval_every: int = 250
    eval_samples: int = 512
    ckpt_every: int = 250
    threads: int = 2
    export_dir: str | None = None  # where the final fp16 model goes (e.g. grpo_ctrl/assets/embedded_vlm)
    size: EmbeddedVLMSize = field(default_factory=EmbeddedVLMSize)
    knobs: KnobSpaceConfig = field(default_factory=lambda: KnobSpaceConfig(
        tiers={"low": 4, "medium": 2, "high": 1}, top_ks=[1, 2, 4], num_blocks=[2, 4, 6]))


@dataclass
class ProfileLatencyConfig:
    """experiments/profile_latency.py: hooked latency profile of every knob setting and the fitted estimator."""

    model: ModelConfig = field(default_factory=ModelConfig)  # path null: the embedded VLM
    data: DataSourceConfig = MISSING
    samples: int = 8  # test prompts, each timed at every knob setting and output length
    generated_tokens: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # forced output lengths
    repeats: int = 3  # timed passes over the whole sweep (each in a fresh random order); per-phase median
    warmup: int = 2  # untimed runs per knob setting before the first pass
    holdout_fraction: float = 0.25  # fraction of knob settings and of prompts held out of the accuracy fit
    seed: int = 0
    # torch intra-op threads, as measured validation times (an estimator is valid only for the threads it was
    # fitted with)
    threads: int = 1
    write_to_model: bool = True  # also write latency_estimator.json into the model dir (where the trainer reads it)
    overwrite_shipped: bool = False  # write_to_model never replaces the embedded VLM's shipped files unless true
    plot: bool = True


SCRIPT_SCHEMAS = {"block_importance": BlockImportanceConfig, "calibrate_latency": CalibrateLatencyConfig,
                  "evaluate": EvaluateConfig,
                  "evaluate_knobs": EvaluateKnobsConfig, "pretrain_tiny_vlm": PretrainTinyVLMConfig,
                  "profile_latency": ProfileLatencyConfig}


def register_script_configs() -> None:
    """train.py's schemas and groups, and each script's schema as `<script>_schema`."""
    register_configs()
    for script, node in SCRIPT_SCHEMAS.items():
        ConfigStore.instance().store(name=f"{script}_schema", node=node)
