"""Aggregate a Hydra multirun (`python train.py -m ...`, any launcher) into one table: each job's final validation
metrics per budget against the swept parameters, plus its training wall time and rollouts/s.

    python experiments/aggregate_sweep.py multirun/<date>/<time> [--out DIR]   # -> sweep.csv, sweep.md, sweep.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpo_ctrl.sweep_report import SweepError, write_sweep_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("multirun_dir", type=Path, help="the sweep's dir: <multirun dir>/<job number>/val_report.json")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the multirun dir)")
    args = parser.parse_args(argv)
    try:
        paths, unfinished = write_sweep_report(args.multirun_dir, args.out)
    except SweepError as err:
        print(f"aggregate_sweep: {err}", file=sys.stderr)
        sys.exit(2)
    if unfinished:
        print(f"not finished (no report yet): jobs {', '.join(map(str, unfinished))}", flush=True)
    print(paths["md"].read_text())
    print(f"outputs: {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    main()
