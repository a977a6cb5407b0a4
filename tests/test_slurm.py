"""Against a real Slurm (`multirun_sweeps/local_slurm.sh start`), through Hydra's submitit launcher and the
`multirun_sweeps/launcher` presets: a sweep as a job array, a requeued or preempted job resuming exactly, DDP
across Slurm tasks, and a failing task ending its job.

Skipped when no Slurm controller answers, unless GRPO_CTRL_REQUIRE_SLURM=1 (CI), which makes that a failure."""

import json
import os
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slurm, pytest.mark.slow]  # every test launches processes


def _slurm_answers() -> bool:
    if shutil.which("scontrol") is None:
        return False
    return subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout.count("is UP") > 0


@pytest.fixture(scope="module", autouse=True)
def slurm():
    if not _slurm_answers():
        reason = "no Slurm controller answers `scontrol ping`; start one with multirun_sweeps/local_slurm.sh start"
        if os.environ.get("GRPO_CTRL_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def tiny(model_dir, *extra):
    return ["model=hf", f"model.path={model_dir}", "prompts_per_step=4", "group_size=4", "data.train_size=24",
            "data.val_size=8", "progress=false", "threads=1", "rollout.workers=2", *extra]


def job_name(sweep_dir) -> str:
    """A Slurm job name of the sweep's own, whatever else is queued."""
    return f"grpo-test-{zlib.crc32(str(sweep_dir).encode()):08x}"


def on_slurm(sweep_dir, launcher, *overrides, script="train.py"):
    """The command line of a sweep submitted through a launcher preset, 1 CPU per task."""
    return [sys.executable, script, "-m", "--config-dir", "multirun_sweeps", f"+launcher={launcher}",
            "hydra.launcher.cpus_per_task=1", f"hydra.launcher.name={job_name(sweep_dir)}",
            f"hydra.sweep.dir={sweep_dir}", *overrides]


def run(cmd, timeout=300):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def job_logs(sweep_dir, suffix="log.out") -> str:
    return "".join(p.read_text() for p in sorted((Path(sweep_dir) / ".submitit").rglob(f"*_{suffix}")))


def accounted_states(job_id: str, timeout: float = 60) -> list[str]:
    """The job's states from Slurm accounting once it has ended, each requeued run included (oldest first). The
    result reaches submitit before the job's process exits, and accounting a moment after that."""
    deadline = time.monotonic() + timeout
    while True:
        out = run(["sacct", "-n", "-X", "-D", "-P", "-j", job_id, "-o", "State"]).stdout
        states = [line.split()[0] for line in out.splitlines() if line.strip()]
        if states and states[-1] not in ("PENDING", "RUNNING", "COMPLETING") or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def job_id(sweep_dir) -> str:
    out = run(["squeue", "-h", "-o", "%i", f"--name={job_name(sweep_dir)}"]).stdout.split()
    assert len(out) == 1, out
    return out[0]


def weights(run_dir):
    return torch.load(Path(run_dir) / "controller.pt")["state_dict"]


def wandb_run_ids(run_dir) -> list[str]:
    return [p.name.rsplit("-", 1)[1] for p in sorted((Path(run_dir) / "wandb").glob("offline-run-*"))]


def test_a_sweep_is_a_job_array_with_its_own_dir_checkpoint_and_wandb_run_per_job(tiny_model_dir, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = tiny(tiny_model_dir, "group_size=2,4", "steps=3", "val_every=3", "ckpt_every=3", "logger=wandb",
                     "logger.mode=offline")
    res = run(on_slurm(sweep, "slurm", *overrides))
    assert res.returncode == 0, res.stderr[-3000:]
    for num, group_size in (("0", 2), ("1", 4)):
        job = sweep / num
        rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3]
        assert torch.load(job / "checkpoints" / "last.pt", weights_only=False)["step"] == 3
        assert f"group_size={group_size}" in json.loads((job / "val_report.json").read_text())["overrides"]
        assert len(wandb_run_ids(job)) == 1
    array = next((sweep / ".submitit").glob("*_0")).name.split("_")[0]  # <array id>_<task id>
    assert accounted_states(f"{array}_0") == accounted_states(f"{array}_1") == ["COMPLETED"]
    res = run([sys.executable, "experiments/aggregate_sweep.py", str(sweep)])
    assert res.returncode == 0, res.stderr[-2000:]
    assert [line.split(",")[1] for line in (sweep / "sweep.csv").read_text().splitlines()[1::5]] == ["2", "4"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    """The reference: the same training in one go, outside Slurm."""
    out = tmp_path_factory.mktemp("uninterrupted")
    res = run([sys.executable, "train.py", *tiny(tiny_model_dir, *INTERRUPTED), "logger=none",
               f"hydra.run.dir={out}"])
    assert res.returncode == 0, res.stderr[-2000:]
    return out


INTERRUPTED = ("steps=40", "val_every=20", "ckpt_every=1000")  # the only mid-run checkpoint: the one on the signal


@pytest.mark.parametrize("launcher,interrupt,signal_name", [
    # what `scontrol requeue` and preemption send; Slurm requeues the job
    ("slurm", ["scontrol", "requeue"], "SIGTERM"),
    # submitit's time-limit warning; submitit requeues the job
    ("slurm", ["scancel", "--signal=USR2"], "SIGUSR2"),
    # two tasks: both ranks stop at the same step, rank 0 checkpoints and requeues
    ("slurm_ddp", ["scancel", "--signal=USR2"], "SIGUSR2"),
], ids=["scontrol-requeue", "time-limit-warning", "time-limit-warning-ddp"])
def test_an_interrupted_job_is_requeued_and_ends_as_an_uninterrupted_run(tiny_model_dir, uninterrupted, tmp_path,
                                                                        launcher, interrupt, signal_name):
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(on_slurm(sweep, launcher, *tiny(tiny_model_dir, *INTERRUPTED), "logger=wandb",
                                     "logger.mode=offline"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics, deadline = sweep / "0" / "metrics.jsonl", time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    job = job_id(sweep)
    subprocess.run([*interrupt, job], check=True)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]

    logs = job_logs(sweep)
    stopped = int(logs.split(f"stopping on {signal_name} at step ")[1].split(";")[0])
    assert 5 <= stopped < 40 and f"resumed at step {stopped}" in logs
    assert accounted_states(job) == ["REQUEUED", "COMPLETED"]
    a, b = weights(uninterrupted), weights(sweep / "0")
    if launcher == "slurm":
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    else:  # two ranks sum their gradients in another order than one
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, 41))
    ids = wandb_run_ids(sweep / "0")
    assert len(ids) == 2 and len(set(ids)) == 1  # one wandb run, resumed


DDP = ("steps=3", "val_every=3", "ckpt_every=3", "data.val_size=10", "logger=none", "rollout.workers=1")


def test_ddp_across_two_slurm_tasks_completes_with_one_writer(tiny_model_dir, tmp_path):
    sweep = tmp_path / "sweep"
    res = run(on_slurm(sweep, "slurm_ddp", *tiny(tiny_model_dir, *DDP)))
    assert res.returncode == 0, res.stderr[-3000:]
    assert [json.loads(line)["step"] for line in (sweep / "0" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    report = json.loads((sweep / "0" / "val_report.json").read_text())
    for budget in report["budgets"].values():  # sharded over the two tasks, each val prompt counted once
        assert sum(budget["controller"]["knobs"].values()) == 10
    assert job_logs(sweep).count("outputs:") == 1


def test_a_failing_task_ends_the_job_with_its_error_within_60_s(tiny_model_dir, tmp_path):
    sweep = tmp_path / "sweep"
    start = time.monotonic()
    res = run(on_slurm(sweep, "slurm_ddp", *tiny(tiny_model_dir, *DDP), script="tests/helpers/failing_rank.py"),
              timeout=120)
    assert res.returncode != 0
    assert time.monotonic() - start < 60
    assert "injected failure on rank 1" in job_logs(sweep, "1_log.err")  # the failing task's own log
