#!/usr/bin/env bash
# Short checks of the CUDA paths on one GPU, run from the repo root; prints every number, writes under $OUT:
#   1. hooked vs plain generate() overhead (clock reads synchronise the device);
#   2. latency profile of the knob grid -> estimator fit -> held-out accuracy (experiments/profile_latency.py);
#   3. train.py with parallel=ddp (two ranks sharing the GPU), the estimator fitted in 2, and measured validation.
#
#   OUT=outputs/gpu_check bash benchmarks/gpu_check.sh          # DEVICE=cpu QUICK=1 for a fast dry run
set -uo pipefail
OUT=${OUT:-outputs/gpu_check}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
# A clean skip only when torch says there is no GPU (a torch that fails to import still fails below).
if [[ $DEVICE == cuda* ]] && { $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"; [[ $? == 3 ]]; }
then
    echo "gpu_check.sh: skipped, torch.cuda.is_available() is false (DEVICE=cpu QUICK=1 runs the checks on the CPU)"
    exit 0
fi
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [[ ${QUICK:-0} == 1 ]]; then
    PAIRS=20 PROFILE="samples=2 generated_tokens=[1,2] repeats=1 warmup=0 plot=false" STEPS=2 VAL=16
else
    PAIRS=30 PROFILE="samples=8 repeats=5" STEPS=150 VAL=96
fi
status=0
step() {  # step NAME SECONDS CMD...: run with a time limit, keep going on failure, remember it
    local name=$1 limit=$2; shift 2
    echo "=== $name: $*"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    [[ $rc == 0 ]] || status=1
}

[[ $DEVICE == cuda* ]] && nvidia-smi -L
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
step overhead 60 $PY benchmarks/latency_overhead.py device="$DEVICE" pairs="$PAIRS"
# shellcheck disable=SC2086  # PROFILE is a list of overrides
step profile 240 $PY experiments/profile_latency.py model.device="$DEVICE" threads=4 write_to_model=false \
    $PROFILE hydra.run.dir="$OUT/profile"
step train 200 $PY train.py model.device="$DEVICE" parallel=ddp parallel.nproc=2 logger=none latency=measured \
    latency.estimator_path="$OUT/profile/latency_estimator.json" steps="$STEPS" val_every="$STEPS" \
    data.val_size="$VAL" hydra.run.dir="$OUT/train"
exit $status
