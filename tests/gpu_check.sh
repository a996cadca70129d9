#!/usr/bin/env bash
# gpu_check.sh — the whole GPU validation and benchmark in one script (make gpu-check), ≤ 8 minutes on one H200:
#   1. builds ./deepseek, the test binary and build/bench/bench_gpu for sm_90 (GPU_ARCH=sm_80 etc. to change)
#   2. runs the CUDA tests: every kernel and the model against the CPU backend, and the subcommands (train with a
#      checkpoint resumed on the CPU, generate, sft, dpo) with --device cuda against --device cpu
#   3. compute-sanitizer memcheck + racecheck on a short training step and a few decode steps (when installed)
#   4. benchmarks (tests/bench/bench_gpu.cpp): training tokens/s and MFU for ~124M and ~350M shapes, batch-1 decode
#      tokens/s for a ~1.1B shape beside its memory-bandwidth bound; PyTorch on the same shapes when it is installed
#      with CUDA
#   5. writes a summary to $OUT/gpu_check_summary.txt (or build/gpu_check/ when OUT is unset)
# Without a GPU it prints "no CUDA device" and exits 0.
#
# MFU = tokens/s × (6·N_matmul + 12·L·H·D·T) / 989 TFLOP/s (H100/H200 SXM dense bf16; PEAK_TFLOPS to change);
# N_matmul = parameters in matmuls (all but the embedding table). Decode bound = HBM_TBS (4.8 TB/s, H200) divided
# by the bytes read per token (bf16 weights + KV cache).
set -u
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q "GPU"; then
    echo "no CUDA device"
    exit 0
fi
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi
if ! command -v nvcc >/dev/null 2>&1; then
    echo "error: a CUDA device is present but nvcc is not on PATH"
    exit 1
fi

OUTDIR="${OUT:-build/gpu_check}"
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
SUMMARY="$OUTDIR/gpu_check_summary.txt"
ARCH="${GPU_ARCH:-sm_90}"
PEAK="${PEAK_TFLOPS:-989}"
HBM="${HBM_TBS:-4.8}"
JOBS="$(nproc 2>/dev/null || echo 4)"
START=$(date +%s)
status=0
: > "$LOG"
say() { echo "$@" | tee -a "$LOG"; }
# run NAME TIMEOUT CMD...: runs with a time limit, logs everything, records pass/fail in the summary
results=()
run() {
    local name="$1" limit="$2"; shift 2
    say ""
    say "==== $name ($(($(date +%s) - START)) s elapsed): $*"
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 0 ]; then results+=("PASS  $name"); else results+=("FAIL  $name (exit $rc)"); status=1; fi
    return "$rc"
}

say "gpu-check: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
say "nvcc: $(nvcc --version | tail -1)"

# 1. build for this GPU (a separate object directory is not needed: -B rebuilds with the arch flags)
run "build (nvcc, $ARCH)" 240 make -B -j"$JOBS" CUDA_ARCHS="-gencode arch=compute_${ARCH#sm_},code=$ARCH" \
    build/cuda/deepseek build/cuda/test_deepseek build/bench/bench_gpu || { echo "build failed; see $LOG"; exit 1; }
cp build/cuda/deepseek ./deepseek

# 2. the GPU tests (kernels vs CPU twins, model vs CPU, trajectory, decode, determinism, and the subcommands on
#    --device cuda vs cpu); the rest of the suite needs no GPU and is CI's job (FULL_SUITE=1 to run it here too)
run "CUDA tests" 210 env DEEPSEEK_BIN=./deepseek OMP_NUM_THREADS="$JOBS" ./build/cuda/test_deepseek -tc="CUDA*"
# NCCL across every GPU of the machine, one rank per GPU (with one GPU the run above was already a 1-rank NCCL run)
NGPU=$(nvidia-smi -L | grep -c "GPU")
if [ "$NGPU" -gt 1 ] && command -v mpirun >/dev/null 2>&1; then
    run "NCCL across $NGPU GPUs" 120 env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
        mpirun --oversubscribe --bind-to none -np "$NGPU" ./build/cuda/test_deepseek -tc="CUDA NCCL*"
fi
if [ "${FULL_SUITE:-0}" = 1 ]; then
    run "whole suite" 240 env DEEPSEEK_BIN=./deepseek OMP_NUM_THREADS="$JOBS" ./build/cuda/test_deepseek
fi

# 3. compute-sanitizer on a short step (tiny shape) and a few decode steps
SAN="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
if [ -n "$SAN" ]; then
    for tool in memcheck racecheck; do
        run "compute-sanitizer $tool" 90 "$SAN" --tool "$tool" --error-exitcode 1 \
            ./build/bench/bench_gpu --shape tiny --batch 2 --seq 40 --steps 1 --warmup 0 --decode 3
    done
else
    say "compute-sanitizer: not installed, skipped"
    results+=("SKIP  compute-sanitizer (not installed)")
fi

# 4. benchmarks
run "train 124m" 90 ./build/bench/bench_gpu --shape 124m --batch 16 --seq 1024 --steps 20 --peak-tflops "$PEAK"
run "train 350m" 120 ./build/bench/bench_gpu --shape 350m --batch 8 --seq 1024 --steps 10 --peak-tflops "$PEAK"
run "train 350m recompute" 120 ./build/bench/bench_gpu --shape 350m --batch 8 --seq 1024 --steps 10 --recompute --peak-tflops "$PEAK"
run "decode 1b" 90 ./build/bench/bench_gpu --shape 1b --steps 0 --decode 256 --hbm-tbs "$HBM"
# the peer last, and only while the 8-minute budget allows (it needs ~1-2 minutes)
if [ $(($(date +%s) - START)) -gt 360 ]; then
    say "pytorch: skipped to stay within 8 minutes"
    results+=("SKIP  pytorch peer (time budget)")
elif python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    run "pytorch peer" 150 python3 tests/bench/gpu_torch.py --peak-tflops "$PEAK"
else
    say "pytorch: not installed with CUDA here, peer side skipped"
    results+=("SKIP  pytorch peer (no torch with CUDA)")
fi

# 5. summary
{
    echo "gpu-check summary ($(date -u +%Y-%m-%dT%H:%MZ), $(($(date +%s) - START)) s)"
    echo "device: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
    for r in "${results[@]}"; do echo "$r"; done
    echo "MFU = tokens/s × (6·N_matmul + 12·L·H·D·T) / ${PEAK} TFLOP/s; decode bound = ${HBM} TB/s / bytes per token"
    grep -E "^(train|decode|torch |\[doctest\] test cases|[0-9]+ passed)" "$LOG" || true
} > "$SUMMARY"
say ""
cat "$SUMMARY"
echo "log: $LOG"
exit $status
