"""Start-up cost of data=hf_vqa: toy datasets of 1,000 and 10,000 samples (format disk), each opened in a fresh
process: the time to open it, take split("train") and read the 16 samples of a training step, and the peak
resident memory. The 10k run should not hold 10x the images (the rows stay memory-mapped, only the 16 sampled
images are decoded): its RSS ratio to the 1k run should be near 1, well below 10.

    .venv/bin/python benchmarks/data_startup.py [--sizes 1000 10000] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEAN_DECODED_BYTES = 80 * 80 * 3  # toy images are 40..120 px a side, RGB


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


def run(*args: str) -> str:
    return subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--write", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.batch)
    if args.write:
        from grpo_ctrl.data.toy import write_toy_vqa

        return write_toy_vqa(args.write[0], {"train": int(args.write[1])}, format="disk")

    # This process only spawns: a child's ru_maxrss starts at the RSS of the process it was forked from.
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"toy_{n}"
            t0 = time.perf_counter()
            run("--write", str(path), str(n))
            written = time.perf_counter() - t0
            data_mb = sum(f.stat().st_size for f in path.rglob("*.arrow")) / 2**20
            r = results[n] = json.loads(run("--child", str(path), "--batch", str(args.batch)).strip().splitlines()[-1])
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


def _kinds(r: dict) -> str:
    if "RssAnon_growth_kb" not in r:
        return ""
    return f": {r['RssAnon_growth_kb'] / 1024:.1f} private, {r['RssFile_growth_kb'] / 1024:.1f} mapped file"


if __name__ == "__main__":
    main()
