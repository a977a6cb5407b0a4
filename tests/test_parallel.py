"""parallel=ddp / dp: equivalence with one rank, self-launch, sharding, failure handling, multirun dirs."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from grpo_ctrl.parallel import ParallelContext

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TORCHRUN = str(Path(PY).with_name("torchrun"))


def overrides(model_dir, *extra):
    return ["model=hf", f"model.path={model_dir}", "steps=3", "val_every=3", "ckpt_every=3", "prompts_per_step=4",
            "group_size=4", "data.train_size=24", "data.val_size=10", "logger=none", "progress=false", "threads=1",
            "rollout.workers=1", *extra]


def run(cmd, timeout=240):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def weights(run_dir):
    return torch.load(Path(run_dir) / "controller.pt")["state_dict"]


@pytest.fixture(scope="module")
def single_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    res = run([PY, "train.py", *overrides(tiny_model_dir), f"hydra.run.dir={out}"])
    assert res.returncode == 0, res.stderr[-2000:]
    return out


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_rank_with_the_same_global_batch(tiny_model_dir, single_run, tmp_path):
    res = run([TORCHRUN, "--standalone", "--nproc_per_node=2", "train.py", "parallel=ddp",
               *overrides(tiny_model_dir), f"hydra.run.dir={tmp_path}"])
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = weights(single_run), weights(tmp_path)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    report = json.loads((tmp_path / "val_report.json").read_text())
    for budget in report["budgets"].values():  # sharded eval: each of the 10 val prompts counted once
        assert sum(budget["controller"]["knobs"].values()) == 10
    # the static settings are sharded too, and the gathered shards are put back in prompt order: the static
    # baselines, their cross-fitted accuracy (halves by prompt position) and the per-prompt comparison with the
    # controller are the one-rank run's
    single = json.loads((single_run / "val_report.json").read_text())
    assert report["static_settings"] == single["static_settings"]
    for frac, budget in report["budgets"].items():
        assert budget["best_static"] == single["budgets"][frac]["best_static"]


@pytest.mark.slow
def test_self_launched_ddp_writes_one_run_dir_from_rank_0(tiny_model_dir, single_run, tmp_path):
    res = run([PY, "train.py", "parallel=ddp", "parallel.nproc=2", *overrides(tiny_model_dir),
               f"hydra.run.dir={tmp_path}"])
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = weights(single_run), weights(tmp_path)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # logged once (rank 0), not once per rank
    assert res.stdout.count("outputs:") == 1


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["self", "torchrun"])
def test_a_failing_rank_brings_the_job_down_with_its_error(tiny_model_dir, tmp_path, launcher):
    helper = str(ROOT / "tests" / "helpers" / "failing_rank.py")
    prefix = [PY, helper, "parallel.nproc=2"] if launcher == "self" else [TORCHRUN, "--standalone",
                                                                        "--nproc_per_node=2", helper]
    start = time.monotonic()
    res = run([*prefix, "parallel=ddp", *overrides(tiny_model_dir), f"hydra.run.dir={tmp_path}"], timeout=120)
    assert res.returncode != 0
    assert time.monotonic() - start < 60
    assert "injected failure on rank 1" in res.stdout + res.stderr


@pytest.mark.slow
def test_multirun_with_ddp_keeps_one_dir_and_one_wandb_run_per_job(tiny_model_dir, tmp_path):
    args = [a for a in overrides(tiny_model_dir) if not a.startswith(("group_size", "logger"))]
    res = run([PY, "train.py", "-m", "parallel=ddp", "parallel.nproc=2", "group_size=2,4", *args, "logger=wandb",
               "logger.mode=offline", f"hydra.sweep.dir={tmp_path}"], timeout=400)
    assert res.returncode == 0, res.stderr[-2000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and p.name != "outcomes")  # the jobs' shared store
    assert [p.name for p in jobs] == ["0", "1"]
    for job in jobs:
        assert (job / "controller.pt").is_file()
        assert len(list((job / "wandb").glob("offline-run-*"))) == 1


def test_eval_shards_are_disjoint_and_cover_every_sample_once():
    items = list(range(11))
    shards = [ParallelContext(rank=r, world_size=3).shard(items) for r in range(3)]
    assert sorted(x for s in shards for x in s) == items


def test_each_rank_expands_whole_groups_of_its_own_prompts(tiny_model_dir):
    """Rank r of N gets a contiguous block of the step's prompts, each repeated group_size times in a row."""
    from conftest import small_cfg

    from grpo_ctrl.app import build_data, build_vlm
    from grpo_ctrl.controller import build_controller
    from grpo_ctrl.latency import make_latency_provider
    from grpo_ctrl.reward import make_reward
    from grpo_ctrl.rollout import Prompt, RolloutEngine
    from grpo_ctrl.trainer import JointGRPOTrainer

    cfg = small_cfg(tiny_model_dir, "prompts_per_step=4", "group_size=3")
    vlm, data = build_vlm(cfg.model), build_data(cfg.data)
    seen = {}
    for rank in (0, 1):
        engine = RolloutEngine(vlm)
        calls = []
        original = engine.run
        engine.run = lambda prompts, knobs, calls=calls, original=original: calls.append(prompts) or original(
            prompts, knobs)
        pool = [Prompt(("train", i), data.sample("train", i)) for i in range(24)]
        trainer = JointGRPOTrainer(cfg, engine, build_controller(cfg.controller, vlm.knob_space, 64, 64),
                                   make_latency_provider("estimator", vlm, cfg.latency),
                                   make_latency_provider("estimator", vlm, cfg.latency), make_reward(cfg.reward),
                                   pool, pool[:4], Path("/tmp/unused"), ParallelContext(rank=rank, world_size=2))
        trainer.start()
        calls.clear()
        trainer.train_step(0)
        keys = [p.key for p in calls[0]]
        assert len(keys) == 2 * 3 and all(keys[i] == keys[i - i % 3] for i in range(6))
        seen[rank] = set(keys)
    assert not seen[0] & seen[1]


class MirroredRanks(ParallelContext):
    """One rank of several, in one process: every other rank's share looks like this one's."""

    def all_gather_objects(self, obj) -> list:
        return [obj] * self.world_size


def test_the_knob_grid_answers_only_this_ranks_share_of_the_prompts(tiny_model_dir):
    from conftest import small_cfg

    from grpo_ctrl.app import build_data, build_vlm
    from grpo_ctrl.knob_grid import KnobGrid
    from grpo_ctrl.rollout import Prompt, RolloutEngine

    cfg = small_cfg(tiny_model_dir)
    vlm, data = build_vlm(cfg.model), build_data(cfg.data)
    engine, asked = RolloutEngine(vlm), set()
    original = engine.run
    engine.run = lambda prompts, knobs: asked.update(p.key for p in prompts) or original(prompts, knobs)
    val = [Prompt(("val", i), data.sample("val", i)) for i in range(6)]
    grid = KnobGrid.answer(engine, {"val": val}, MirroredRanks(1, 2))
    assert asked == {p.key for p in val[1::2]}
    assert all(len(row) == 6 for row in grid.outcomes["val"].values()) and len(grid.outcomes["val"]) == 27


@pytest.mark.slow
def test_dp_with_cpu_replicas_matches_single(tiny_model_dir, single_run, tmp_path):
    res = run([PY, "train.py", "parallel=dp", "parallel.devices=[cpu,cpu]", *overrides(tiny_model_dir),
               f"hydra.run.dir={tmp_path}"])
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = weights(single_run), weights(tmp_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_dp_without_two_gpus_stops_with_one_line(tiny_model_dir, tmp_path):
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has >= 2 GPUs")
    res = run([PY, "train.py", "parallel=dp", *overrides(tiny_model_dir), f"hydra.run.dir={tmp_path}"])
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("config error: parallel=dp needs >= 2 CUDA devices")
