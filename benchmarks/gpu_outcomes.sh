#!/usr/bin/env bash
# Batch-1 vs chunked rollouts on a random-weight Qwen3-VL-MoE of 0.65 B parameters (benchmarks/gpu_outcomes.py),
# bf16 on CUDA when there is a GPU; key=value arguments go to gpu_outcomes.py. Run from anywhere; a few minutes on one GPU.
#   bash benchmarks/gpu_outcomes.sh                 # GPU machine, defaults (64 prompts x 3 settings, batch 32)
#   bash benchmarks/gpu_outcomes.sh tiny=true       # CPU smoke test (< 30 s)
# Python: .venv if present; else a python3 whose torch sees CUDA (a lent GPU machine reaches no registry: missing
# packages, e.g. rapidfuzz or a newer transformers, travel as wheels in .whl/, installed here with --no-index);
# else a new .venv (--system-site-packages, so a system torch is used; torch==2.13.0 otherwise) with the project.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
elif python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    PY=python3
    if [[ -d .whl ]] && compgen -G '.whl/*.whl' >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site:$PYTHONPATH
    fi
else
    python3 -m venv --system-site-packages .venv
    .venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/pip install -q torch==2.13.0
    .venv/bin/pip install -q -e .
    PY=.venv/bin/python
fi
if ! $PY -c 'import grpo_ctrl.rollout, grpo_ctrl.vlm.tiny' 2>/tmp/gpu_outcomes_import.log; then
    tail -3 /tmp/gpu_outcomes_import.log
    echo "$PY cannot import the project (above); carry the missing packages as wheels in .whl/" >&2
    exit 1
fi
if command -v nvidia-smi >/dev/null; then
    echo "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
fi
$PY -c 'import torch, transformers; print("python", __import__("sys").version.split()[0], "torch", torch.__version__,
    "transformers", transformers.__version__, "cuda", torch.cuda.is_available())'
exec $PY benchmarks/gpu_outcomes.py "$@"
