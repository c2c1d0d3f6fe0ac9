#!/usr/bin/env bash
# Issue 24's GPU checks as one prepared run, for a session that is lent a GPU for a few minutes (run it from the
# repository root; every step has its own time limit and writes its JSON and log under $OUT, so a step that fails
# or runs out of time costs only itself):
#   1. the protocol in fp32 as configured (cuDNN autotuning on, as every run on a GPU), per-task img/s;
#   2. the same with train.deterministic=true (autotuning off): if the uneven per-task throughput of stop 39
#      (README, "On a GPU") is autotuning of new batch shapes, the per-task figures even out here;
#   3. the protocol in fp16 with the gradient scaler (train.precision: fp16), and the bare fp16 step;
#   4. with two GPUs or more: cilearn's one all-reduce per step against DistributedDataParallel over NCCL.
# Usage (a GPU machine; CILEARN_DATA must hold cifar10-jpeg/):
#   CILEARN_DATA=/path/to/data OUT=/path/to/out bash benchmarks/gpu_checks.sh
# A dry run on a CPU (what the tests do): DEVICE=cpu EXTRA="--set train.iterations=2 --steps 2" ...
set -u
OUT=${OUT:-gpu_checks}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}
STEP_SECONDS=${STEP_SECONDS:-240}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
: > "$OUT/summary.txt"

step() {  # step NAME COMMAND...: run it under the time limit, log its output, note its exit status
    local name=$1
    shift
    local began=$SECONDS
    timeout "$STEP_SECONDS" "$@" > "$OUT/$name.log" 2>&1
    local status=$?
    echo "$name: exit $status, $((SECONDS - began)) s" | tee -a "$OUT/summary.txt"
}

bench() {  # bench NAME OVERRIDES...: the speed protocol on $DEVICE, its JSON in $OUT/NAME.json
    local name=$1
    shift
    # shellcheck disable=SC2086  # EXTRA holds several arguments
    step "$name" "$PYTHON" -m cilearn bench --protocol --device "$DEVICE" --json "$OUT/$name.json" "$@" $EXTRA
}

(nvidia-smi || true) > "$OUT/nvidia-smi.txt" 2>&1
"$PYTHON" -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.device_count())" \
    > "$OUT/torch.txt" 2>&1

bench fp32 --set train.precision=fp32
bench fp32_deterministic --set train.precision=fp32 --set train.deterministic=true
bench fp16 --set train.precision=fp16

gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$DEVICE" = cuda ] && [ "${gpus:-0}" -ge 2 ]; then
    step torchrun_nccl torchrun --standalone --nproc_per_node 2 benchmarks/torchrun_bench.py --device cuda
else
    echo "torchrun_nccl: skipped ($gpus GPU(s) on $DEVICE; it needs 2)" | tee -a "$OUT/summary.txt"
fi
