"""Every script in benchmarks/ (*.py, *.sh) runs from the repo root with tiny arguments: it exits with status 0 and
prints something. A script without an entry in TINY fails, so no benchmark rots unnoticed after an API change; an
entry whose script is gone fails too."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = sorted(p.name for pattern in ("*.py", "*.sh") for p in BENCHMARKS.glob(pattern))

# Tiny key=value arguments per script: seconds each on 2 CPU cores, one intra-op thread where a script takes threads.
TINY = {
    "controller_overhead.py": ["iters=20", "threads=1"],
    "data_startup.py": ["sizes=[16,32]", "batch=4", "train_steps=1", "val_size=4"],
    "ddp_scaling.py": ["prompts=2", "group=1", "rounds=1"],
    "families.py": ["pairs=2", "new_tokens=2", "threads=1", "families=[qwen3_vl_moe]", "profile_samples=2",
                    "profile_repeats=1"],
    "gpu_check.sh": [],  # skips without CUDA; QUICK=1 (below) keeps it short on a GPU
    "gpu_outcomes.py": ["tiny=true"],
    "gpu_outcomes.sh": ["tiny=true"],
    "knob_latency.py": ["requests=1", "repeats=1", "samples=1", "threads=1"],
    "latency_transfer.py": ["threads=[1,1]", "samples=3", "heldout_prompts=1", "requests=6", "repeats=1",
                            "warmup=0"],
    "latency_overhead.py": ["pairs=20", "warmup=0", "new_tokens=2", "threads=1"],
    "rollout_throughput.py": ["prompts=4", "settings=2", "workers=2", "batch_size=4"],
    "serve_overhead.py": ["requests=2", "threads=1"],
}


def test_no_stale_entries():
    assert not set(TINY) - set(SCRIPTS), f"TINY names scripts that are not in benchmarks/: {set(TINY) - set(SCRIPTS)}"


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_runs_tiny(name, tmp_path):
    if name not in TINY:
        pytest.fail(f"benchmarks/{name} has no tiny arguments: add an entry for it to TINY in tests/test_benchmarks.py "
                    "(arguments that make it run in seconds on a CPU; add options to the script if it has none)")
    cmd = ["bash"] if name.endswith(".sh") else [sys.executable]
    # The shell scripts read their Python and output dir from the environment; outputs stay out of the checkout.
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "QUICK": "1"}
    res = subprocess.run([*cmd, str(BENCHMARKS / name), *TINY[name]], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    tail = f"stdout:\n{res.stdout[-2000:]}\nstderr:\n{res.stderr[-3000:]}"
    assert res.returncode == 0, f"benchmarks/{name} {' '.join(TINY[name])}: exit {res.returncode}\n{tail}"
    assert res.stdout.strip(), f"benchmarks/{name} printed nothing\n{tail}"
