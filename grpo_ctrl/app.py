"""The main job behind train.py (kept out of train.py so experiments and tests can call it)."""

from __future__ import annotations

import os
import random
import sys
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from grpo_ctrl.artifacts import atomic_write
from grpo_ctrl.build import build_data, build_vlm, inspect_model, open_store
from grpo_ctrl.checkpoint import CHECKPOINT, CheckpointError, architecture, check_architecture, read_checkpoint
from grpo_ctrl.config import ConfigError, validate
from grpo_ctrl.controller import build_controller
from grpo_ctrl.controller_file import save_controller
from grpo_ctrl.data import DataError
from grpo_ctrl.job import JobInfo
from grpo_ctrl.knobs import KnobError
from grpo_ctrl.latency import EstimatorError, make_latency_provider
from grpo_ctrl.latency.guard import LatencyGuard, load_guard
from grpo_ctrl.latency.providers import load_estimator
from grpo_ctrl.outcomes import StoreError
from grpo_ctrl.parallel import (
    DistributedContext,
    ParallelContext,
    dp_devices,
    export_slurm_environment,
    free_port,
    launcher_environment,
    make_replicas,
)
from grpo_ctrl.report import summary, write_report
from grpo_ctrl.reward import make_reward
from grpo_ctrl.rollout import PromptPool, RolloutEngine, Scoring, default_workers
from grpo_ctrl.tracking import NullTracker, Tracker
from grpo_ctrl.trainer import JointGRPOTrainer
from grpo_ctrl.vlm import ModelDir, ModelDirError
from grpo_ctrl.vlm.adapter import model_signature


def local_ranks(ctx: ParallelContext) -> int:
    """Ranks sharing this machine's cores."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def exit_on_config_error(cfg: DictConfig, world_size: int = 1) -> None:
    """Validate; on a bad config print one line and exit 2, before anything loads."""
    try:
        validate(cfg, world_size=world_size)
        if cfg.parallel.name == "dp":
            dp_devices(cfg.parallel.devices)
    except (ConfigError, RuntimeError) as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)


def preflight(cfg: DictConfig, run_dir: Path | None = None) -> ModelDir:
    """What the inputs alone show, before any weight loads and before anything in the run dir changes: the device,
    the data source and its train / val splits, the model directory, its family and knob space, the latency
    estimator the config asks for (it must be this model's), and the checkpoint a resume would read (it must fit
    this config's controller, knob space and model). One line and exit 2 on a problem."""
    try:
        check_device(cfg.model.device if cfg.model.device_map is None else "cpu")
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        data = build_data(cfg.data)
        check_data(data, cfg.data)
    except DataError as err:
        print(f"data error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        spec = inspect_model(cfg.model)
        if "estimator" in (cfg.latency.train, cfg.latency.val):
            load_estimator(cfg.latency, spec.path, model_signature(spec.config))
        if cfg.policy.guard:
            guard_of(cfg, spec.path, model_signature(spec.config), spec.knob_space)
    except (ModelDirError, KnobError, EstimatorError) as err:
        print(f"model error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        open_store(cfg.rollout, cfg.model, spec, data).close()
    except StoreError as err:
        print(f"store error: {err}", file=sys.stderr)
        sys.exit(2)
    if cfg.resume and run_dir is not None and (run_dir / CHECKPOINT).exists():
        try:
            check_architecture(run_dir / CHECKPOINT, read_checkpoint(run_dir / CHECKPOINT),
                               architecture(cfg.controller, spec.knob_space, model_signature(spec.config)))
        except CheckpointError as err:
            print(f"config error: {err}", file=sys.stderr)
            sys.exit(2)
    return spec


def guard_of(cfg: DictConfig, model_dir, signature: dict, space) -> LatencyGuard:
    """policy.guard's latency guard: policy.guard_estimator, else the run's estimator, at budgets.max_violation."""
    return load_guard(cfg.latency, model_dir, signature, space, cfg.budgets.max_violation, cfg.model.max_new_tokens,
                      cfg.policy.guard_estimator)


def check_device(device: str) -> None:
    kind = torch.device(device)
    if kind.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"model.device={device}: no CUDA device is visible here; use model.device=cpu")
        if kind.index is not None and kind.index >= count:
            raise ConfigError(f"model.device={device}: only {count} CUDA device(s) here (cuda:0..cuda:{count - 1})")


def check_data(data, data_cfg: DictConfig) -> None:
    """Open the splits training reads (a split checks its columns and first row when opened)."""
    for name in ("train", "val"):
        data.split(name, data_cfg.get(f"{name}_size"))


def run(cfg: DictConfig) -> None:
    exit_on_config_error(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    preflight(cfg, run_dir)
    job = JobInfo.from_hydra()
    if cfg.parallel.name == "ddp":
        run_ddp(cfg, run_dir, job)
    else:
        train(cfg, run_dir, ParallelContext(), job)


def run_ddp(cfg: DictConfig, run_dir: Path, job: JobInfo) -> None:
    """Under torchrun or SLURM, join the job as this rank; otherwise start `parallel.nproc` workers here."""
    launcher = launcher_environment()
    if launcher is None:
        nproc = cfg.parallel.nproc
        exit_on_config_error(cfg, world_size=nproc)
        port = free_port()
        container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        # Workers that raise bring the others down; the first error is re-raised here.
        mp.start_processes(_ddp_worker, args=(container, str(run_dir), job, nproc, port), nprocs=nproc,
                           start_method="spawn")
        return
    if launcher == "slurm":
        export_slurm_environment()
    _ddp_rank(cfg, run_dir, job)


def _ddp_worker(local_rank: int, container: dict, run_dir: str, job: JobInfo, nproc: int, port: int) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    _ddp_rank(OmegaConf.create(container), Path(run_dir), job)


def _ddp_rank(cfg: DictConfig, run_dir: Path, job: JobInfo) -> None:
    ctx = DistributedContext(cfg.parallel.backend, cfg.model.device)
    try:
        exit_on_config_error(cfg, world_size=ctx.world_size)
    except SystemExit:
        ctx.close()
        raise
    # Every rank writes under rank 0's run dir (each torchrun rank's Hydra may have picked its own).
    run_dir = Path(ctx.broadcast_object(str(run_dir)))
    try:
        train(cfg, run_dir, ctx, job)
    except Exception:
        # A launcher reports one rank's failure, which can be another's consequence (a collective that lost its
        # peer): our own workers' parent re-raises the first it notices, Hydra's submitit launcher returns task
        # 0's. Every rank prints its own error, so the cause is always shown (under Slurm: in that task's log).
        print(f"[rank {ctx.rank}] {traceback.format_exc()}", file=sys.stderr, flush=True)
        raise
    finally:
        ctx.close()


def train(cfg: DictConfig, run_dir: Path, ctx: ParallelContext, job: JobInfo = JobInfo()) -> dict:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    spec = inspect_model(cfg.model)
    data = build_data(cfg.data)
    store = open_store(cfg.rollout, cfg.model, spec, data)
    vlm = build_vlm(cfg.model, spec)
    replicas = make_replicas(vlm, dp_devices(cfg.parallel.devices)) if cfg.parallel.name == "dp" else ()
    engine = make_engine(cfg, vlm, store, replicas, local_ranks(ctx))
    try:
        return _train_with(cfg, run_dir, ctx, job, vlm, data, engine)
    finally:
        engine.close()


def make_engine(cfg: DictConfig, vlm, store, replicas=(), ranks_here: int = 1) -> RolloutEngine:
    """The rollout engine a job's `rollout` and `model` settings describe, over `store`."""
    workers = cfg.rollout.workers or (1 if replicas else default_workers(cfg.model.device, ranks_here))
    scoring = Scoring(cfg.data.metric, gold_prob=cfg.reward.gold_prob_weight > 0)
    return RolloutEngine(vlm, max_new_tokens=cfg.model.max_new_tokens, batch_size=cfg.rollout.batch_size,
                         store=store, replicas=replicas, workers=workers, scoring=scoring,
                         vision_cache_mb=cfg.rollout.vision_cache_mb)


def _train_with(cfg: DictConfig, run_dir: Path, ctx: ParallelContext, job: JobInfo, vlm, data,
                engine: RolloutEngine) -> dict:
    dim = vlm.feature_dim
    controller = build_controller(cfg.controller, vlm.knob_space, question_dim=dim, vision_dim=dim)
    train_latency = make_latency_provider(cfg.latency.train, vlm, cfg.latency)
    val_latency = make_latency_provider(cfg.latency.val, vlm, cfg.latency)
    train_pool = PromptPool(data.split("train", cfg.data.train_size), "train")
    val_pool = PromptPool(data.split("val", cfg.data.val_size), "val")
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    guard = guard_of(cfg, vlm.source, vlm.signature, vlm.knob_space) if cfg.policy.guard else None
    trainer = JointGRPOTrainer(cfg, engine, controller, train_latency, val_latency, make_reward(cfg.reward),
                               train_pool, val_pool, run_dir, ctx, guard=guard)
    resumed = trainer.start()
    if ctx.is_main:
        # Nothing of the run's own changes before this point, where its checkpoint (if any) is loaded: metrics.jsonl
        # is cut back to the checkpoint's step, config.yaml rewritten.
        trainer.tracker = Tracker(run_dir, cfg.logger, resolved, name=job.run_name(run_dir), start_step=trainer.step,
                                  wandb_run_id=trainer.wandb_run_id, group=job.sweep_dir)
        atomic_write(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        n_params = sum(p.numel() for p in controller.parameters())
        print(f"run dir: {run_dir}\ncontroller: {n_params} parameters; reference (full-knob) latency "
              f"{trainer.ref_ms:.2f} ms" + (f"; resumed at step {trainer.step}" if resumed else ""), flush=True)
    else:
        trainer.tracker = NullTracker()
    try:
        trainer.fit()
        report = trainer.final_report(val_latency)
        if ctx.is_main:
            saved = save_controller(run_dir, controller.state_dict(), vlm.knob_space, trainer.ref_ms,
                                    trainer.median_latency(vlm.knob_space.cheapest), resolved)
            report.update(latency_source=cfg.latency.val, overrides=list(job.overrides),
                          timing=trainer.timing_report())
            json_path, png_path = write_report(report, run_dir)
            print(summary(report))
            store = engine.store
            print(f"outcomes: {store.computed} computed, {store.read} read from the store "
                  f"({cfg.rollout.store or 'in memory'}; chunks of {cfg.rollout.batch_size})")
            print(f"outputs: {run_dir}\n  metrics: {run_dir / 'metrics.jsonl'}\n  controller: "
                  f"{saved}\n  report: {json_path}, {png_path}", flush=True)
        ctx.barrier()
        return report
    finally:
        trainer.tracker.finish()
        trainer.model = None  # drop the DDP wrapper before the process group goes away

