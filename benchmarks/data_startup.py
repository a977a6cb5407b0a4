"""Start-up cost of data=hf_vqa: toy datasets of 1,000 and 10,000 samples (format disk), each opened in a fresh
process: the time to open it, take split("train") and read the 16 samples of a training step, and the peak
resident memory. The 10k run should not hold 10x the images (the rows stay memory-mapped, only the 16 sampled
images are decoded): its RSS ratio to the 1k run should be near 1, well below 10.

Whole runs (train_steps=N, 0: off): `train.py data=hf_vqa data.train_size=null` for N steps on each dataset
(embedded default model, one thread, one rollout worker, one validation at the end over `val_size` samples), each
started from a spawner process of its own: its wall time and peak RSS (ru_maxrss of the finished run, plus the
peak private / mapped-file resident kB sampled from /proc while it runs). Target: the largest dataset's peak RSS
< 1.20x the smallest's.

    .venv/bin/python benchmarks/data_startup.py [sizes=[1000,10000]] [batch=16] [train_steps=30] [val_size=32]
        [train_override=[KEY=VALUE,...]]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from grpo_ctrl.cli import parse_key_values  # hydra + omegaconf: this spawner stays small (no torch)

ROOT = Path(__file__).resolve().parent.parent
MEAN_DECODED_BYTES = 80 * 80 * 3  # toy images are 40..120 px a side, RGB
PROGRAM = "benchmarks/data_startup.py"


@dataclass
class Args:
    sizes: list[int] = field(default_factory=lambda: [1000, 10000])  # samples of each toy dataset
    batch: int = 16  # samples read at start-up (one training step's)
    train_steps: int = 30  # also time whole train.py runs of this many steps on each dataset (0: off)
    val_size: int = 32  # validation samples of those runs
    # extra train.py overrides for those runs, e.g. [rollout.vision_cache_mb=64] (quote one that holds a list:
    # ["budgets.val=[0.5,1.0]"])
    train_override: list[str] = field(default_factory=list)
    # Internal: what this script passes to the processes it spawns (not for the command line).
    child: str | None = None  # measure the start-up of the dataset at this path
    train_child: list[str] | None = None  # [dataset path, run dir]: spawn one train.py run, report on it
    write: list[str] | None = None  # [path, train samples, validation samples]: write a toy dataset


def rss_kinds() -> dict[str, int]:
    """Current private (anonymous) and file-backed resident kB: touched pages of a memory-mapped Arrow file are
    file-backed (shared page cache the kernel can drop), decoded images are anonymous. Linux only."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines) if k in ("RssAnon", "RssFile")}


def child(path: str, batch: int) -> None:
    """One measurement, in a process of its own (ru_maxrss is a peak: it never goes down within a process)."""
    t0 = time.perf_counter()
    import datasets  # noqa: F401  (imported here so that its cost is told apart from the start-up's)
    import numpy as np

    from grpo_ctrl.data.hf import HFVQA

    t1 = time.perf_counter()
    rss_imported, kinds_imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rss_kinds()
    split = HFVQA(path).split("train")
    rows = np.random.default_rng(0).choice(len(split), size=batch, replace=False)
    pixels = sum(np.asarray(split[int(i)].image).size for i in rows)
    t2 = time.perf_counter()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    growth = {f"{k}_growth_kb": v - kinds_imported[k] for k, v in rss_kinds().items()}
    print(json.dumps({"import_s": t1 - t0, "startup_s": t2 - t1, "rss_imported_kb": rss_imported,
                      "rss_peak_kb": rss_peak, "samples": len(split), "pixels": pixels, **growth}))


def train_child(path: str, steps: int, val_size: int, run_dir: str, extra: list[str]) -> None:
    """Spawner of one training run: this process stays small (no heavy imports), waits for train.py and reads
    its peak RSS from RUSAGE_CHILDREN, which then holds that run alone."""
    cmd = [sys.executable, str(ROOT / "train.py"), "data=hf_vqa", f"data.path={path}", "data.train_size=null",
           f"data.val_size={val_size}", f"steps={steps}", f"val_every={steps}", f"ckpt_every={steps}",
           "logger=none", "progress=false", "threads=1", "rollout.workers=1", "budgets.val=[0.5,1.0]",
           f"hydra.run.dir={run_dir}", *extra]
    metrics = Path(run_dir) / "metrics.jsonl"
    t0 = time.perf_counter()
    with open(Path(run_dir).with_suffix(".log"), "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        peaks, first_step = {}, None
        while proc.poll() is None:  # sampled peaks (a spike between samples is missed; ru_maxrss is exact)
            for k, v in _proc_kinds(proc.pid).items():
                peaks[k] = max(peaks.get(k, 0), v)
            if first_step is None and metrics.exists() and metrics.stat().st_size:
                first_step = time.perf_counter() - t0
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"train.py exited with {proc.returncode}: see {Path(run_dir).with_suffix('.log')}\n"
                 + Path(run_dir).with_suffix(".log").read_text()[-3000:])
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    step_times = [r["train/step_time_s"] for r in lines if "train/step_time_s" in r]
    print(json.dumps({"wall_s": wall, "rss_peak_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                      "steps": len(step_times), "steps_s": sum(step_times), "first_step_s": first_step,
                      **{f"{k}_peak_kb": v for k, v in peaks.items()}}))


def _proc_kinds(pid: int) -> dict[str, int]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines) if k in ("RssAnon", "RssFile")}


def run(*args: str) -> str:
    """This script in a fresh process with `key=value` arguments; its stdout."""
    return subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True).stdout


def as_list(values: list) -> str:
    """A list as a `key=value` value: JSON, which YAML reads back (paths and overrides stay single strings)."""
    return json.dumps([str(v) for v in values])


def main() -> None:
    args = parse_key_values(Args, PROGRAM, f"python {PROGRAM} [key=value ...]")
    if args.child:
        return child(args.child, args.batch)
    if args.train_child:
        return train_child(args.train_child[0], args.train_steps, args.val_size, args.train_child[1],
                           args.train_override)
    if args.write:
        from grpo_ctrl.data.toy import write_toy_vqa

        sizes = {"train": int(args.write[1]), **({"validation": int(args.write[2])} if int(args.write[2]) else {})}
        return write_toy_vqa(args.write[0], sizes, format="disk")

    # This process only spawns: a child's ru_maxrss starts at the RSS of the process it was forked from.
    results, runs = {}, {}
    val_rows = args.val_size if args.train_steps else 0
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"toy_{n}"
            t0 = time.perf_counter()
            run(f"write={as_list([path, n, val_rows])}")
            written = time.perf_counter() - t0
            data_mb = sum(f.stat().st_size for f in path.rglob("*.arrow")) / 2**20
            r = results[n] = json.loads(run(f"child={path}", f"batch={args.batch}").strip().splitlines()[-1])
            growth = (r["rss_peak_kb"] - r["rss_imported_kb"]) / 1024
            print(f"{n:>6} samples: data {data_mb:6.1f} MB on disk ({n * MEAN_DECODED_BYTES / 2**20:6.0f} MB if all "
                  f"decoded), written in {written:5.1f} s | import {r['import_s']:.2f} s | start-up (open + split + "
                  f"{args.batch} samples) {r['startup_s'] * 1000:7.1f} ms | peak RSS {r['rss_peak_kb'] / 1024:6.1f} MB "
                  f"(+{growth:5.1f} MB over the imports{_kinds(r)})")
        if len(results) >= 2:
            (small, a), (large, b) = sorted(results.items())[0], sorted(results.items())[-1]
            grow_a = max(a["rss_peak_kb"] - a["rss_imported_kb"], 1)
            grow_b = max(b["rss_peak_kb"] - b["rss_imported_kb"], 1)
            print(f"{large}/{small} ({large // small}x the samples): start-up {b['startup_s'] / a['startup_s']:.2f}x, "
                  f"peak RSS {b['rss_peak_kb'] / a['rss_peak_kb']:.2f}x, RSS growth {grow_b / grow_a:.2f}x"
                  + (f" (private {b['RssAnon_growth_kb'] / max(a['RssAnon_growth_kb'], 1):.2f}x)" if _kinds(a) else "")
                  + f" (target: well below {large // small})")
        if args.train_steps:
            print(f"whole runs: train.py data=hf_vqa data.train_size=null data.val_size={args.val_size} "
                  f"steps={args.train_steps} threads=1 rollout.workers=1 {' '.join(args.train_override)}"
                  f"{' ' if args.train_override else ''}(embedded model), each in a fresh process:")
            for n in args.sizes:
                r = runs[n] = json.loads(run(f"train_child={as_list([Path(tmp) / f'toy_{n}', Path(tmp) / f'run_{n}'])}",
                                             f"train_steps={args.train_steps}", f"val_size={args.val_size}",
                                             f"train_override={as_list(args.train_override)}").strip().splitlines()[-1])
                first = f"{r['first_step_s']:.1f} s" if r["first_step_s"] is not None else "n/a"
                sampled = (f" (sampled peaks: {r['RssAnon_peak_kb'] / 1024:.1f} MB private, "
                           f"{r['RssFile_peak_kb'] / 1024:.1f} MB file-backed)" if "RssAnon_peak_kb" in r else "")
                print(f"{n:>6} samples: {r['steps']} step{'s' * (r['steps'] != 1)}, wall {r['wall_s']:6.1f} s "
                      f"(first step done at {first}, steps {r['steps_s']:.1f} s in all) | peak RSS "
                      f"{r['rss_peak_kb'] / 1024:7.1f} MB{sampled}")
    if len(runs) >= 2:
        (small, a), (large, b) = sorted(runs.items())[0], sorted(runs.items())[-1]
        ratio = b["rss_peak_kb"] / a["rss_peak_kb"]
        extra = (f" (sampled private {b['RssAnon_peak_kb'] / max(a['RssAnon_peak_kb'], 1):.2f}x, file-backed "
                 f"{b['RssFile_peak_kb'] / max(a['RssFile_peak_kb'], 1):.2f}x)" if "RssAnon_peak_kb" in a else "")
        print(f"whole runs {large}/{small} ({large // small}x the samples): peak RSS {ratio:.2f}x{extra}, wall "
              f"{b['wall_s'] / a['wall_s']:.2f}x (target: peak RSS < 1.20x: {'met' if ratio < 1.20 else 'MISSED'})")


def _kinds(r: dict) -> str:
    if "RssAnon_growth_kb" not in r:
        return ""
    return f": {r['RssAnon_growth_kb'] / 1024:.1f} private, {r['RssFile_growth_kb'] / 1024:.1f} mapped file"


if __name__ == "__main__":
    main()
