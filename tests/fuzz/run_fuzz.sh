#!/usr/bin/env bash
# make fuzz: runs every libFuzzer harness (build/fuzz/fuzz_*, ASan + UBSan) for SECONDS each, FUZZ_JOBS (2) at a
# time, each on a scratch copy of its seed corpus (tests/fuzz/corpus/NAME; the committed corpus never grows), and
# prints per harness the executions, the coverage (libFuzzer's cov: edges and ft: features) and what it found.
# Exits non-zero if any harness found anything: a crash or sanitizer report (crash-*), a leak (leak-*), an input
# that ran past FUZZ_TIMEOUT seconds (timeout-*) or past FUZZ_RSS_MB of memory (oom-*). Those files are left in
# build/fuzz/run/NAME/, and `build/fuzz/fuzz_NAME FILE` replays one.
#   FUZZ_ONLY="config shard"   run only these harnesses (names without fuzz_)
# Everything read comes from the repository (fixtures, corpus, dictionaries, data/vocab/deepseek-llm.gguf); the
# harnesses' own files go to a directory under $TMPDIR (default /dev/shm), removed at the end.
set -uo pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH=${1:-60}
JOBS=${FUZZ_JOBS:-2}
TIMEOUT=${FUZZ_TIMEOUT:-10}
RSS_MB=${FUZZ_RSS_MB:-2048}
B=build/fuzz
RUN=$B/run
rm -rf "$RUN"
mkdir -p "$RUN"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export OMP_NUM_THREADS=1
# the harnesses' private directories, in one directory removed at the end (a crashing harness cannot remove its own)
base=${TMPDIR:-/dev/shm}
[ -w "$base" ] || base=/tmp
TMPDIR=$(mktemp -d "$base/deepseek-fuzz-run.XXXXXX") || exit 1
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT

# name → extra libFuzzer flags. tests/fuzz/dict/NAME.dict is the dictionary; for the JSON inputs (all but args,
# gguf, shard) it is merged with json.dict
declare -A EXTRA=(
    [tokenizer_json]="-max_len=40000"
    [encode_decode]="-max_len=4096"
    [shard]="-max_len=8192"
    [safetensors]="-max_len=8192"
    [gguf]="-max_len=16384"
)
export FUZZ_TOKENIZERS="tests/fixtures/tokenizer/variant_merges_as_strings.json:data/vocab/deepseek-llm.gguf"

names=()
for bin in "$B"/fuzz_*; do
    [ -x "$bin" ] || continue
    n=${bin##*/fuzz_}
    if [ -n "${FUZZ_ONLY:-}" ] && [[ " $FUZZ_ONLY " != *" $n "* ]]; then continue; fi
    names+=("$n")
done
[ ${#names[@]} -gt 0 ] || { echo "run_fuzz.sh: no harnesses in $B (make fuzz-build)"; exit 1; }

fuzz_one() {   # NAME: fuzzes it, leaves $RUN/NAME.log, $RUN/NAME/ (artifacts) and $RUN/NAME.corpus/
    local n=$1 d=$RUN/$1 c=$RUN/$1.corpus
    mkdir -p "$d" "$c"
    [ -d "tests/fuzz/corpus/$n" ] && cp tests/fuzz/corpus/"$n"/* "$c"/
    [ "$n" = tokenizer_json ] && cp tests/fixtures/tokenizer/variant_*.json "$c"/
    local dict=()
    if [ -f "tests/fuzz/dict/$n.dict" ]; then
        if [[ " args gguf shard " == *" $n "* ]]; then cp "tests/fuzz/dict/$n.dict" "$RUN/$n.dict"
        else cat tests/fuzz/dict/json.dict "tests/fuzz/dict/$n.dict" > "$RUN/$n.dict"; fi
        dict=(-dict="$RUN/$n.dict")
    fi
    # shellcheck disable=SC2086
    "$B/fuzz_$n" -max_total_time="$SECONDS_EACH" -timeout="$TIMEOUT" -rss_limit_mb="$RSS_MB" -print_final_stats=1 -print_funcs=0 \
        -close_fd_mask=3 -artifact_prefix="$d/" "${dict[@]}" ${EXTRA[$n]:-} "$c" > "$RUN/$n.log" 2>&1
    echo $? > "$RUN/$n.rc"
}

echo "fuzzing ${#names[@]} harnesses for ${SECONDS_EACH} s each, $JOBS at a time (logs: $RUN/NAME.log)"
running=0
for n in "${names[@]}"; do
    if [ "$running" -ge "$JOBS" ]; then wait -n; running=$((running - 1)); fi
    fuzz_one "$n" &
    running=$((running + 1))
done
wait

status=0
for n in "${names[@]}"; do
    log=$RUN/$n.log
    rc=$(cat "$RUN/$n.rc" 2>/dev/null || echo "?")
    runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    [ -z "$runs" ] && runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
    found=$(find "$RUN/$n" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | sort)
    if [ -z "$found" ] && [ "$rc" = 0 ]; then
        printf '%-20s %9s runs  %-22s  nothing found\n' "$n" "${runs:-?}" "${cov:-cov: ?}"
    else
        status=1
        printf '%-20s %9s runs  %-22s  FOUND (rc %s), see %s\n' "$n" "${runs:-?}" "${cov:-cov: ?}" "$rc" "$log"
        grep -E '^==[0-9]+==ERROR|^SUMMARY|runtime error|^==[0-9]+== ERROR: libFuzzer|ALARM|out-of-memory' "$log" | grep -v 'SUMMARY: libFuzzer: deadly signal' | sort -u | head -6 | sed 's/^/    /'
        for f in $found; do echo "    $f   (replay: $B/fuzz_$n $f)"; done
    fi
done
exit $status
