#!/usr/bin/env bash
# gpu_check.sh — the whole GPU validation and benchmark in one script (make gpu-check), ≤ 8 minutes on one H200:
#   0. the third-party packages: tests/gpu_deps.sh unpack (the .debs carried in .gpu-debs/, NCCL from the image)
#   1. builds ./deepseek, the test binary and build/bench/bench_gpu for sm_90 (GPU_ARCH=sm_80 etc. to change), make -j<cores>
#   2. runs the CUDA tests: every kernel and the model against the CPU backend, and the subcommands (train with a
#      checkpoint resumed on the CPU, generate, sft, dpo) with --device cuda against --device cpu; when that process
#      crashes or hangs, each test case again in its own process, so one crash does not hide the others
#   3. compute-sanitizer memcheck + racecheck on a short training step and a few decode steps (when installed)
#   4. benchmarks (tests/bench/bench_gpu.cpp): training tokens/s and MFU for ~124M and ~350M shapes, batch-1 decode tokens/s for a ~1.1B shape
#      beside its memory-bandwidth bound; PyTorch on the same shapes when it is installed with CUDA
#   5. the summary, $OUT/gpu_check_summary.txt, beside the whole log, $OUT/gpu_check.log (build/gpu_check/ when
#      OUT is unset); the summary is rewritten after every step, so a crash or a kill still leaves one
# Without a GPU it prints "no CUDA device" and exits 0.
#
# Time: every step runs under `timeout`, its limit cut to what is left of GPU_CHECK_BUDGET (450 s: the whole run
# ends within 8 minutes); a step with under 20 s left is skipped and says so in the summary. Every step runs
# line-buffered (stdbuf -oL -eL), so the lines before a hang or a segfault are in the log.
#
# MFU = tokens/s × (6·N_matmul + 12·L·H·D·T) / 989 TFLOP/s (H100/H200 SXM dense bf16; PEAK_TFLOPS to change);
# N_matmul = parameters in matmuls (all but the embedding table). Decode bound = HBM_TBS (4.8 TB/s, H200) divided
# by the bytes read per token (bf16 weights + KV cache).
set -u
cd "$(dirname "$0")/.." || exit 1

# nvidia-smi is usually on PATH; nvcc and compute-sanitizer often only in /usr/local/cuda/bin
for d in /usr/local/cuda/bin /usr/bin; do
    case ":$PATH:" in *":$d:"*) ;; *) [ -d "$d" ] && PATH="$PATH:$d" ;; esac
done
export PATH
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q "GPU"; then
    echo "no CUDA device"
    exit 0
fi

OUTDIR="${OUT:-build/gpu_check}"
mkdir -p "$OUTDIR" build
LOG="$OUTDIR/gpu_check.log"
SUMMARY="$OUTDIR/gpu_check_summary.txt"
ARCH="${GPU_ARCH:-sm_90}"
PEAK="${PEAK_TFLOPS:-989}"
HBM="${HBM_TBS:-4.8}"
BUDGET="${GPU_CHECK_BUDGET:-450}"
JOBS="$(nproc 2>/dev/null || echo 4)"
LOG_MAX=$((15 * 1024 * 1024))   # what comes back from $OUT is at most 16 MiB a file
START=$(date +%s)
status=0
built=0
results=()
: > "$LOG"
elapsed() { echo $(($(date +%s) - START)); }
say() { echo "$@" | tee -a "$LOG"; }
STDBUF=()
command -v stdbuf >/dev/null 2>&1 && STDBUF=(stdbuf -oL -eL)
export PYTHONUNBUFFERED=1

write_summary() {
    {
        echo "gpu-check summary ($(date -u +%Y-%m-%dT%H:%MZ), $(elapsed) s of a ${BUDGET} s budget${1:+, $1})"
        echo "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
        echo "nvcc: $(nvcc --version 2>/dev/null | tail -1)"
        for r in ${results[@]+"${results[@]}"}; do echo "$r"; done
        [ -n "$current" ] && echo "RUN   $current (started at $current_t0 s; unfinished when this was written)"
        echo "MFU = tokens/s × (6·N_matmul + 12·L·H·D·T) / ${PEAK} TFLOP/s; decode bound = ${HBM} TB/s / bytes per token"
        grep -aE "^(train|decode|torch |\[doctest\] test cases|[0-9]+ passed|[0-9]+\.[0-9]+ s: )|error:|ERROR:|Segmentation|Aborted|ERROR SUMMARY" "$LOG" | head -200 || true
    } > "$SUMMARY.tmp" 2>/dev/null && mv -f "$SUMMARY.tmp" "$SUMMARY"
}
# the log stays under 16 MiB: its first 5 and last 9 MiB when it grows past 15
trim_log() {
    local size; size=$(stat -c %s "$LOG" 2>/dev/null || echo 0)
    [ "$size" -gt "$LOG_MAX" ] || return 0
    { head -c $((5 * 1024 * 1024)) "$LOG"; printf '\n... [gpu-check: %d bytes of the log dropped here] ...\n' $((size - 14 * 1024 * 1024))
      tail -c $((9 * 1024 * 1024)) "$LOG"; } > "$LOG.tmp" && mv -f "$LOG.tmp" "$LOG"
}
finished=0
current="" current_t0=0
finish() {
    [ "$finished" = 1 ] && return
    finished=1
    trim_log
    write_summary "$@"
    echo "" | tee -a "$LOG"
    cat "$SUMMARY" | tee -a "$LOG"
    echo "log: $LOG  summary: $SUMMARY"
}
STEPDIR="build/gpu_check.run"   # the running step's pid and exit status
mkdir -p "$STEPDIR"
on_signal() {
    local p; p=$(cat "$STEPDIR/pid" 2>/dev/null || true)
    [ -n "$p" ] && kill -TERM "$p" 2>/dev/null
    finish "stopped by SIG$1${current:+ during: $current}"
    exit "$2"
}
trap 'on_signal TERM 143' TERM
trap 'on_signal INT 130' INT
trap 'on_signal HUP 129' HUP
trap 'finish' EXIT

# step NAME LIMIT CMD...: runs CMD line-buffered under a time limit (cut to what is left of the budget), logs its
# output (at most 4000 lines of 1000 characters a step), records PASS/FAIL/SKIP; returns CMD's exit status
step() {
    local name="$1" limit="$2"; shift 2
    local left=$((BUDGET - $(elapsed)))
    if [ "$left" -lt 20 ]; then
        say ""; say "==== $name: skipped, $(elapsed) s of the ${BUDGET} s budget used"
        results+=("SKIP  $name (time budget)"); write_summary; return 125
    fi
    [ "$limit" -gt $((left - 5)) ] && limit=$((left - 5))
    say ""
    say "==== $name ($(elapsed) s elapsed, limit $limit s): $*"
    local t0; t0=$(date +%s)
    current="$name" current_t0=$(elapsed)
    write_summary
    # in the background, so that a TERM to this script is handled at once (bash defers traps while it waits on a
    # foreground pipeline) and the trap can stop the step: timeout runs in its own process group, which a signal
    # to this script's group does not reach, and passes the TERM on to everything the step started
    rm -f "$STEPDIR/pid" "$STEPDIR/rc"
    { timeout -k 10 "$limit" ${STDBUF[@]+"${STDBUF[@]}"} "$@" 2>&1 </dev/null &
      echo $! > "$STEPDIR/pid"; wait $!; echo $? > "$STEPDIR/rc"; } | awk -v cap=4000 '
        NR <= cap { print substr($0, 1, 1000); fflush(); next }
        NR == cap + 1 { print "... [gpu-check: the rest of the output of this step dropped]"; fflush() }' | tee -a "$LOG" &
    wait $!
    local rc; rc=$(cat "$STEPDIR/rc" 2>/dev/null || echo 137)
    rm -f "$STEPDIR/pid"
    local dt=$(($(date +%s) - t0))
    current=""
    if [ "$rc" -eq 0 ]; then results+=("PASS  $name (${dt} s)")
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then results+=("FAIL  $name (timed out after ${dt} s)"); status=1
    elif [ "$rc" -gt 128 ]; then results+=("FAIL  $name (killed by signal $((rc - 128)) after ${dt} s)"); status=1
    else results+=("FAIL  $name (exit $rc, ${dt} s)"); status=1; fi
    trim_log
    write_summary
    return "$rc"
}
skip() { say "$1: skipped ($2)"; results+=("SKIP  $1 ($2)"); write_summary; }

say "gpu-check: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
say "host: $(uname -m), $JOBS cores, $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
for t in nvcc g++ make objcopy compute-sanitizer stdbuf mpicxx python3; do
    say "  $t: $(command -v "$t" || echo "not found")"
done
write_summary

# 0. the packages the build needs (nlohmann-json, doctest, Oniguruma, NCCL's link name), and the CUDA libraries
if command -v nvcc >/dev/null 2>&1; then
    : "${CUDA_HOME:=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")}"
    export CUDA_HOME
    say "nvcc: $(nvcc --version | tail -1), CUDA_HOME=$CUDA_HOME"
fi
if step "packages (tests/gpu_deps.sh unpack)" 60 bash tests/gpu_deps.sh unpack build/gpu-deps && [ -f build/gpu-deps/env.sh ]; then
    . build/gpu-deps/env.sh
fi
[ -n "${CUDA_HOME:-}" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$CUDA_HOME/lib64"

# 1. build for this GPU: only the three binaries; -B when build/cuda was last built for another arch (or never)
ARCHS="-gencode arch=compute_${ARCH#sm_},code=$ARCH"
if ! command -v nvcc >/dev/null 2>&1; then
    say "error: a CUDA device is present but nvcc is neither on PATH nor in /usr/local/cuda/bin"
    results+=("FAIL  build (no nvcc)"); status=1
else
    B=(-B)
    [ -f build/cuda/.archs ] && [ "$(cat build/cuda/.archs)" = "$ARCHS" ] && B=()
    if step "build (nvcc, $ARCH, make -j$JOBS)" 240 make ${B[@]+"${B[@]}"} -j"$JOBS" CUDA_ARCHS="$ARCHS" \
        build/cuda/deepseek build/cuda/test_deepseek build/bench/bench_gpu; then
        echo "$ARCHS" > build/cuda/.archs
        cp build/cuda/deepseek deepseek.tmp && mv -f deepseek.tmp ./deepseek && built=1
    else
        rm -f build/cuda/.archs
        say "build failed; every later step is skipped"
    fi
fi
if [ "$built" != 1 ]; then
    for s in "CUDA tests" "compute-sanitizer" "benchmarks" "pytorch peer"; do results+=("SKIP  $s (no build)"); done
    exit 1   # the EXIT trap writes the summary
fi

# 2. the GPU tests (kernels vs CPU twins, model vs CPU, trajectory, decode, determinism, and the subcommands on
#    --device cuda vs cpu); the rest of the suite needs no GPU and is CI's job (FULL_SUITE=1 to run it here too)
TEST=(env DEEPSEEK_BIN=./deepseek OMP_NUM_THREADS="$JOBS" ./build/cuda/test_deepseek)
# --duration=true: doctest names each test case as it starts ("TEST CASE:  ...") and as it ends ("0.12 s: ..."),
# so the log shows the case that was running at a crash or a hang
log_at=$(stat -c %s "$LOG")
step "CUDA tests" 150 "${TEST[@]}" -tc="CUDA*" --duration=true
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -gt 128 ]; then
    # a crash or a hang: each test case that did not finish, again in its own process, so one crash hides no other
    # (doctest filters: '\,' is a literal comma)
    finished_cases="$(tail -c +$((log_at + 1)) "$LOG" | sed -n 's/^[0-9][0-9]*\.[0-9]* s: //p')"
    mapfile -t cases < <(timeout 30 "${TEST[@]}" -tc="CUDA*" -ltc 2>/dev/null | grep -v '^\[doctest\]' | grep -v '^=*$' | sed '/^$/d')
    say "CUDA tests: the process ended abnormally (status $rc); of ${#cases[@]} test cases, each that did not finish again alone"
    i=0
    for c in ${cases[@]+"${cases[@]}"}; do
        i=$((i + 1))
        grep -Fxq -- "$c" <<< "$finished_cases" && continue
        step "CUDA test $i/${#cases[@]}: ${c:0:70}" 60 "${TEST[@]}" --duration=true \
            -tc="$(printf '%s' "$c" | sed 's/\\/\\\\/g; s/,/\\,/g')"
    done
fi
# NCCL across every GPU of the machine, one rank per GPU (with one GPU the run above was already a 1-rank NCCL run)
NGPU=$(nvidia-smi -L | grep -c "GPU")
if [ "$NGPU" -gt 1 ] && command -v mpirun >/dev/null 2>&1; then
    step "NCCL across $NGPU GPUs" 90 env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
        mpirun --oversubscribe --bind-to none -np "$NGPU" ./build/cuda/test_deepseek -tc="CUDA NCCL*"
fi
if [ "${FULL_SUITE:-0}" = 1 ]; then
    step "whole suite" 240 "${TEST[@]}"
fi

# 3. compute-sanitizer on a short step (tiny shape) and a few decode steps
SAN="$(command -v compute-sanitizer || true)"
[ -z "$SAN" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/compute-sanitizer" ] && SAN="$CUDA_HOME/bin/compute-sanitizer"
if [ -n "$SAN" ]; then
    for tool in memcheck racecheck; do
        step "compute-sanitizer $tool" 60 "$SAN" --tool "$tool" --error-exitcode 1 \
            ./build/bench/bench_gpu --shape tiny --batch 2 --seq 40 --steps 1 --warmup 0 --decode 3
    done
else
    skip "compute-sanitizer" "not installed"
fi

# 4. benchmarks
step "train 124m" 60 ./build/bench/bench_gpu --shape 124m --batch 16 --seq 1024 --steps 20 --peak-tflops "$PEAK"
step "train 350m" 60 ./build/bench/bench_gpu --shape 350m --batch 8 --seq 1024 --steps 10 --peak-tflops "$PEAK"
step "train 350m recompute" 60 ./build/bench/bench_gpu --shape 350m --batch 8 --seq 1024 --steps 10 --recompute --peak-tflops "$PEAK"
step "decode 1b" 60 ./build/bench/bench_gpu --shape 1b --steps 0 --decode 256 --hbm-tbs "$HBM"
# the peer last, and only while the budget allows it ~90 s
PY=""
for p in /opt/torch/.venv/bin/python3 python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        PY="$p"; break
    fi
done
if [ -z "$PY" ]; then
    skip "pytorch peer" "no torch with CUDA"
elif [ $((BUDGET - $(elapsed))) -lt 90 ]; then
    skip "pytorch peer" "time budget"
else
    step "pytorch peer" 120 "$PY" tests/bench/gpu_torch.py --peak-tflops "$PEAK"
fi

# 5. summary (the EXIT trap)
exit $status
