#!/usr/bin/env bash
# gpu_check.sh — the whole GPU validation and benchmark in one script (make gpu-check), ≤ 8 minutes on one H100/H200:
#   0. preflight: the third-party packages (tests/gpu_deps.sh unpack: the .debs carried in .gpu-debs/, NCCL from the
#      image), then each header and library the build needs, probed with the compiler; fallbacks: without NCCL a
#      one-GPU build (make NCCL=0), without a working MPI a build without it (MPI=0), without doctest no test binary
#   1. builds ./deepseek, the test binary and build/bench/bench_gpu for sm_90 (GPU_ARCH=sm_80 etc. to change), make -j<cores>
#   2. the CUDA tests in two processes: the kernels and the model against their CPU twins, then the subcommands
#      (train, generate, sft, dpo with --device cuda against --device cpu); every case of a process that failed,
#      crashed or hung and did not pass runs again alone with CUDA_LAUNCH_BLOCKING=1, so one crash hides no other
#      and an asynchronous error is reported at the launch that caused it
#   3. compute-sanitizer (looked for on PATH, in CUDA_HOME and /usr/local/cuda*/, /opt/nvidia): memcheck on a short
#      training step and a few decode steps, memcheck and racecheck on the attention and decode tests
#   4. benchmarks (tests/bench/bench_gpu.cpp): training tokens/s, achieved TFLOP/s and MFU for ~124M and ~350M shapes,
#      batch-1 decode tokens/s for a ~1.1B shape beside its memory-bandwidth bound, the memory of the 7B shape's
#      inference model (weights, KV cache, activations); PyTorch on the same shapes when it is installed with CUDA
#   5. the summary, $OUT/gpu_check_summary.txt, beside the whole log, $OUT/gpu_check.log (build/gpu_check/ when
#      OUT is unset); written from the start, rewritten after every step and completed by the EXIT trap, so a crash
#      or a kill still leaves one
# Without a GPU it prints "no CUDA device" and exits 0.
#
#   bash tests/gpu_check.sh --dry-run   on any machine: everything that needs no device — the preflight with its
#                                       fallbacks, the build (the Makefile's sm_80 + sm_90 unless GPU_ARCH is set; the
#                                       binary must hold sm_90 code), the test binary's CUDA case lists, the summary —
#                                       and each device step recorded as skipped. CI runs it.
#
# Time: one overall deadline, GPU_CHECK_BUDGET (450 s: the whole run ends within 8 minutes); every step runs under
# `timeout`, its limit cut to what is left; a step with under 20 s left is skipped and says so in the summary. Every
# step runs line-buffered (stdbuf -oL -eL) with doctest's per-case durations, so the lines before a hang or a
# segfault are in the log.
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
DRY=0
case "${1:-}" in
    --dry-run) DRY=1 ;;
    "") ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: bash tests/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
if [ "$DRY" = 0 ] && { ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q "GPU"; }; then
    echo "no CUDA device"
    exit 0
fi

OUTDIR="${OUT:-build/gpu_check}"
mkdir -p "$OUTDIR" build
LOG="$OUTDIR/gpu_check.log"
SUMMARY="$OUTDIR/gpu_check_summary.txt"
ARCH="${GPU_ARCH:-sm_90}"
[ "$DRY" = 1 ] && [ -z "${GPU_ARCH:-}" ] && ARCH=""   # the dry run builds the Makefile's own architectures
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
        echo "gpu-check$([ "$DRY" = 1 ] && echo " --dry-run") summary ($(date -u +%Y-%m-%dT%H:%MZ), $(elapsed) s of a ${BUDGET} s budget${1:+, $1})"
        if [ "$DRY" = 1 ]; then echo "device: none needed (dry run: every step that needs a GPU is recorded as skipped)"
        else echo "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"; fi
        echo "nvcc: $(nvcc --version 2>/dev/null | tail -1)"
        for r in ${results[@]+"${results[@]}"}; do echo "$r"; done
        [ -n "$current" ] && echo "RUN   $current (started at $current_t0 s; unfinished when this was written)"
        echo "MFU = tokens/s × (6·N_matmul + 12·L·H·D·T) / ${PEAK} TFLOP/s; decode bound = ${HBM} TB/s / bytes per token"
        grep -aE "^(train|decode|prefill|torch |preflight|\[doctest\] test cases|[0-9]+ passed|[0-9]+\.[0-9]+ s: )|error:|ERROR:|Segmentation|Aborted|ERROR SUMMARY" "$LOG" | head -200 || true
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
    if [ "$DRY" = 1 ] && [ "${NEEDS_GPU:-1}" = 1 ]; then
        say "==== $name: skipped (dry run): $*"
        results+=("SKIP  $name (dry run: needs a GPU)"); write_summary; return 0
    fi
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

if [ "$DRY" = 1 ]; then say "gpu-check --dry-run: the preflight, the build and the summary; no GPU is used"
else say "gpu-check: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"; fi
say "host: $(uname -m), $JOBS cores, $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
for t in nvcc g++ make objcopy cuobjdump compute-sanitizer stdbuf mpicxx mpirun python3; do
    say "  $t: $(command -v "$t" || echo "not found")"
done
write_summary
NEEDS_GPU=0   # the steps until the tests need no device (the dry run runs them too)

# 0. preflight: the packages the build needs (nlohmann-json, doctest, Oniguruma, NCCL's link name), and the CUDA
#    libraries; then each probed with the compiler, with a fallback where there is one
if command -v nvcc >/dev/null 2>&1; then
    : "${CUDA_HOME:=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")}"
    export CUDA_HOME
    say "nvcc: $(nvcc --version | tail -1), CUDA_HOME=$CUDA_HOME"
fi
if step "packages (tests/gpu_deps.sh unpack)" 60 bash tests/gpu_deps.sh unpack build/gpu-deps && [ -f build/gpu-deps/env.sh ]; then
    . build/gpu-deps/env.sh
fi
[ -n "${CUDA_HOME:-}" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$CUDA_HOME/lib64"
CXX_PROBE="${CXX:-g++}"
probe_header() {   # probe_header HEADER [flags...]: the preprocessor finds it (CPATH from env.sh included)
    local h="$1"; shift
    printf '#include <%s>\nint main() { return 0; }\n' "$h" | "$CXX_PROBE" -std=c++17 -E -x c++ - "$@" -o /dev/null 2>/dev/null
}
probe_lib() {      # probe_lib NAME [flags...]: the linker finds -lNAME (LIBRARY_PATH from env.sh included)
    local l="$1"; shift
    printf 'int main() { return 0; }\n' | "$CXX_PROBE" -x c++ - "$@" -l"$l" -o "$STEPDIR/probe" 2>/dev/null
}
preflight() { say "preflight: $1"; results+=("$2  preflight: $1"); write_summary; }
MAKEVARS=()
HAVE_TESTS=1
CUDA_INC=(); [ -n "${CUDA_HOME:-}" ] && CUDA_INC=(-I"$CUDA_HOME/include")
CUDA_LIB=(); [ -n "${CUDA_HOME:-}" ] && CUDA_LIB=(-L"$CUDA_HOME/lib64")
deps_ok=1
for h in nlohmann/json.hpp oniguruma.h; do
    if probe_header "$h"; then preflight "<$h> found" "OK  "; else preflight "<$h> missing: nothing can be built" "FAIL"; deps_ok=0; status=1; fi
done
if probe_lib onig; then preflight "-lonig found" "OK  "; else preflight "-lonig missing: nothing can be linked" "FAIL"; deps_ok=0; status=1; fi
if probe_header doctest/doctest.h; then preflight "<doctest/doctest.h> found" "OK  "
else preflight "<doctest/doctest.h> missing: fallback: no test binary (the tests are skipped; the benchmarks run)" "WARN"; HAVE_TESTS=0; fi
for l in cudart cublas cublasLt; do
    probe_lib "$l" "${CUDA_LIB[@]}" || { preflight "-l$l missing (CUDA_HOME=${CUDA_HOME:-unset}): the CUDA link will fail" "FAIL"; deps_ok=0; status=1; }
done
if probe_header nccl.h "${CUDA_INC[@]}" && probe_lib nccl "${CUDA_LIB[@]}"; then preflight "NCCL (nccl.h, -lnccl) found" "OK  "
else preflight "NCCL missing: fallback: a one-GPU build without it (make NCCL=0)" "WARN"; MAKEVARS+=(NCCL=0); fi
MPI_SHOW="$(mpicxx --showme:incdirs 2>/dev/null || true)"
if ! command -v mpicxx >/dev/null 2>&1; then preflight "no mpicxx: a build without MPI (one process per run)" "WARN"
elif probe_header mpi.h $(for d in $MPI_SHOW; do echo "-I$d"; done); then preflight "MPI (mpicxx, mpi.h) found" "OK  "
else preflight "mpicxx without a usable mpi.h: fallback: a build without MPI (MPI=0)" "WARN"; MAKEVARS+=(MPI=0); fi

# the sm_NN architectures of the cubins in a binary, space-separated ("" when they cannot be listed)
fatbin_archs() {
    if command -v cuobjdump >/dev/null 2>&1; then
        cuobjdump --list-elf "$1" 2>/dev/null | grep -o 'sm_[0-9]*' | sort -u | tr '\n' ' '; return
    fi
    command -v objcopy >/dev/null 2>&1 && command -v python3 >/dev/null 2>&1 || return 0
    objcopy -O binary --only-section=.nv_fatbin "$1" "$STEPDIR/fatbin" 2>/dev/null || return 0
    python3 - "$STEPDIR/fatbin" <<'EOF'
import struct, sys
b = open(sys.argv[1], "rb").read()
pos, archs = 0, set()
while pos + 16 <= len(b):   # fatbin headers: magic 0xBA55ED50, version, header size, size; then entries
    magic, _, hsz, fsz = struct.unpack_from("<IHHQ", b, pos)
    if magic != 0xBA55ED50:
        pos += 8
        continue
    e, end = pos + hsz, pos + hsz + fsz
    while e + 32 <= end:    # entry: kind (1 PTX, 2 cubin), _, header size, payload size, ..., arch at +28
        kind, _, ehs, size = struct.unpack_from("<HHIQ", b, e)
        if kind == 2:
            archs.add(struct.unpack_from("<I", b, e + 28)[0])
        e += ehs + size
    pos = end
print(" ".join("sm_%d" % a for a in sorted(archs)))
EOF
}

# 1. build for this GPU: only the three binaries (the objects rebuild when CUDA_ARCHS changes: build/cuda/.archs)
TARGETS=(build/cuda/deepseek build/bench/bench_gpu)
[ "$HAVE_TESTS" = 1 ] && TARGETS+=(build/cuda/test_deepseek)
ARCHVAR=()
DEFAULT_ARCHS="sm_80 + sm_90, the Makefile default"
[ -n "$ARCH" ] && ARCHVAR=(CUDA_ARCHS="-gencode arch=compute_${ARCH#sm_},code=$ARCH")
if ! command -v nvcc >/dev/null 2>&1; then
    say "error: nvcc is neither on PATH nor in /usr/local/cuda/bin"
    results+=("FAIL  build (no nvcc)"); status=1
elif [ "$deps_ok" != 1 ]; then
    results+=("FAIL  build (the preflight found a dependency missing, above)"); status=1
elif step "build (nvcc, ${ARCH:-$DEFAULT_ARCHS}, make -j$JOBS${MAKEVARS[*]:+ ${MAKEVARS[*]}})" 240 \
        make -j"$JOBS" ${ARCHVAR[@]+"${ARCHVAR[@]}"} ${MAKEVARS[@]+"${MAKEVARS[@]}"} "${TARGETS[@]}"; then
    cp build/cuda/deepseek deepseek.tmp && mv -f deepseek.tmp ./deepseek && built=1
    # the binary holds code for the GPU it is meant for (sm_90 by default): the architectures of the cubins in its
    # .nv_fatbin section (cuobjdump --list-elf where the image has it; else the fatbin's own headers, read by python3)
    want="${ARCH:-sm_90}"
    have="$(fatbin_archs build/cuda/deepseek)"
    if [ -z "$have" ]; then
        results+=("SKIP  $want code check (neither cuobjdump nor objcopy + python3 could list the cubins)")
    elif grep -qw "$want" <<< "$have"; then
        say "build: build/cuda/deepseek holds code for: $have"
        results+=("PASS  build/cuda/deepseek holds $want code ($have)")
    else
        say "error: build/cuda/deepseek holds no $want code (only: $have)"
        results+=("FAIL  build/cuda/deepseek holds no $want code (only: $have)"); status=1; built=0
    fi
    write_summary
else
    say "build failed; every later step is skipped"
fi
if [ "$built" != 1 ]; then
    for s in "CUDA tests" "compute-sanitizer" "benchmarks" "pytorch peer"; do results+=("SKIP  $s (no build)"); done
    exit 1   # the EXIT trap writes the summary
fi

# 2. the GPU tests, in two processes: kernels and model (vs their CPU twins, trajectory, decode, determinism), then the
#    subcommands on --device cuda vs cpu. The rest of the suite needs no GPU and is CI's job (FULL_SUITE=1 to run it too).
TEST=(env DEEPSEEK_BIN=./deepseek OMP_NUM_THREADS="$JOBS" ./build/cuda/test_deepseek)
CLI_CASES="CUDA train*,CUDA generate*,CUDA sft*,CUDA data-parallel*"
# list_cases FILTER...: the test binary's case names for doctest filters (no device needed)
list_cases() { timeout 30 "${TEST[@]}" "$@" -ltc 2>/dev/null | grep -v '^\[doctest\]' | grep -v '^=*$' | sed '/^$/d'; }
# cases_failed LOG_OFFSET: the cases whose doctest header is followed by an ERROR before the next case's header
cases_failed() {
    tail -c +$(($1 + 1)) "$LOG" | awk '/^TEST CASE:  /{c=substr($0, 13)} /(ERROR|FATAL ERROR): /{if (c != "" && !(c in seen)) {seen[c]=1; print c}}'
}
# test_group NAME LIMIT FILTER...: one process; when it fails, crashes or hangs, each case that did not pass again alone
test_group() {
    local name="$1" limit="$2"; shift 2
    local at; at=$(stat -c %s "$LOG")
    mapfile -t cases < <(list_cases "$@")
    say "$name: ${#cases[@]} test cases"
    if [ "${#cases[@]}" -eq 0 ]; then say "error: no test case matches $*"; results+=("FAIL  $name (no test case matches)"); status=1; return; fi
    [ "$DRY" = 1 ] && { results+=("PASS  $name: ${#cases[@]} cases listed"); }
    step "$name" "$limit" "${TEST[@]}" "$@" --duration=true
    local rc=$?
    [ "$rc" -eq 0 ] || [ "$DRY" = 1 ] && return
    # passed = finished ("N s: name" from --duration) and not failed
    local finished failed
    finished="$(tail -c +$((at + 1)) "$LOG" | sed -n 's/^[0-9][0-9]*\.[0-9]* s: //p')"
    failed="$(cases_failed "$at")"
    say "$name: the process ended with status $rc; each case that did not pass again alone, with CUDA_LAUNCH_BLOCKING=1"
    local i=0 c
    for c in "${cases[@]}"; do
        i=$((i + 1))
        grep -Fxq -- "$c" <<< "$finished" && ! grep -Fxq -- "$c" <<< "$failed" && continue
        step "$name $i/${#cases[@]} alone: ${c:0:60}" 45 env CUDA_LAUNCH_BLOCKING=1 "${TEST[@]}" --duration=true \
            -tc="$(printf '%s' "$c" | sed 's/\\/\\\\/g; s/,/\\,/g')"
    done
}
if [ "$HAVE_TESTS" = 1 ]; then
    NEEDS_GPU=1
    test_group "CUDA kernel and model tests" 120 -tc="CUDA*" -tce="$CLI_CASES"
    test_group "CUDA command-line tests" 120 -tc="$CLI_CASES"
else
    results+=("SKIP  CUDA tests (no doctest: no test binary)")
fi
NEEDS_GPU=1
# NCCL across every GPU of the machine, one rank per GPU (with one GPU the run above was already a 1-rank NCCL run)
NGPU=$( [ "$DRY" = 1 ] && echo 0 || nvidia-smi -L | grep -c "GPU")
if [ "$NGPU" -gt 1 ] && [ "$HAVE_TESTS" = 1 ] && command -v mpirun >/dev/null 2>&1; then
    step "NCCL across $NGPU GPUs" 90 env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
        mpirun --oversubscribe --bind-to none -np "$NGPU" ./build/cuda/test_deepseek -tc="CUDA NCCL*"
fi
if [ "${FULL_SUITE:-0}" = 1 ] && [ "$HAVE_TESTS" = 1 ]; then
    step "whole suite" 240 "${TEST[@]}"
fi

# 3. compute-sanitizer: wherever the image keeps it
SAN="$(command -v compute-sanitizer || true)"
if [ -z "$SAN" ]; then
    for f in "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" /usr/local/cuda*/bin/compute-sanitizer \
             /usr/local/cuda*/compute-sanitizer/compute-sanitizer /opt/nvidia/*/compute-sanitizer/compute-sanitizer \
             /opt/nvidia/*/bin/compute-sanitizer; do
        [ -x "$f" ] && { SAN="$f"; break; }
    done
fi
if [ -n "$SAN" ]; then
    say "compute-sanitizer: $SAN"
    step "compute-sanitizer memcheck: a training step and decode" 60 "$SAN" --tool memcheck --error-exitcode 1 \
        ./build/bench/bench_gpu --shape tiny --batch 2 --seq 40 --steps 1 --warmup 0 --decode 3
    if [ "$HAVE_TESTS" = 1 ]; then
        for tool in memcheck racecheck; do
            step "compute-sanitizer $tool: attention and decode tests" 60 "$SAN" --tool "$tool" --error-exitcode 1 \
                "${TEST[@]}" -tc="CUDA flash attention*,CUDA decode attention*,CUDA batch-1 decoding*"
        done
    fi
else
    skip "compute-sanitizer" "not found on PATH, in CUDA_HOME, /usr/local/cuda* or /opt/nvidia"
fi

# 4. benchmarks
step "train 124m" 60 ./build/bench/bench_gpu --shape 124m --batch 16 --seq 1024 --steps 20 --peak-tflops "$PEAK"
step "train 350m" 60 ./build/bench/bench_gpu --shape 350m --batch 8 --seq 1024 --steps 10 --peak-tflops "$PEAK"
step "train 350m recompute" 60 ./build/bench/bench_gpu --shape 350m --batch 8 --seq 1024 --steps 10 --recompute --peak-tflops "$PEAK"
step "decode 1b" 60 ./build/bench/bench_gpu --shape 1b --steps 0 --decode 256 --hbm-tbs "$HBM"
# the released 7B's shape: the inference-only model's memory (bf16 weights, a 4096-position KV cache) and its decode
step "inference 7b" 90 ./build/bench/bench_gpu --shape deepseek-llm-7b --steps 0 --decode 64 --hbm-tbs "$HBM"
# the peer last, and only while the budget allows it ~90 s
PY=""
if [ "$DRY" = 0 ]; then
    for p in /opt/torch/.venv/bin/python3 python3; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
            PY="$p"; break
        fi
    done
fi
if [ "$DRY" = 1 ]; then
    step "pytorch peer" 120 python3 tests/bench/gpu_torch.py --peak-tflops "$PEAK"
elif [ -z "$PY" ]; then
    skip "pytorch peer" "no torch with CUDA"
elif [ $((BUDGET - $(elapsed))) -lt 90 ]; then
    skip "pytorch peer" "time budget"
else
    step "pytorch peer" 120 "$PY" tests/bench/gpu_torch.py --peak-tflops "$PEAK"
fi

# 5. summary (the EXIT trap)
exit $status
