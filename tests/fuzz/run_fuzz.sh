#!/usr/bin/env bash
# make fuzz: runs the two libFuzzer targets (ASan + UBSan) for SECONDS each and reports executions and crashes.
#   build/fuzz/fuzz_tokenizer_json   the tokenizer.json loader (seeds: tests/fixtures/tokenizer/variant_*.json)
#   build/fuzz/fuzz_encode_decode    encode → decode round trip (a small trained tokenizer and DeepSeek's)
set -uo pipefail
SECONDS_EACH=${1:-60}
BIN=${DEEPSEEK_BIN:-./deepseek}
D=build/fuzz
mkdir -p "$D/corpus_json" "$D/corpus_text"
cp tests/fixtures/tokenizer/variant_*.json "$D/corpus_json/" 2>/dev/null
printf 'Hello world' > "$D/corpus_text/hello"
head -c 4000 data/multilingual_test.txt > "$D/corpus_text/multi"
printf '\xff\xfe\xc3(\xe2\x82 \xf0\x9f\x98' > "$D/corpus_text/invalid"
"$BIN" tokenizer import-gguf data/vocab/deepseek-llm.gguf --out "$D/deepseek-llm.json" 2>/dev/null
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
run() {   # name, extra flags...
    local name=$1; shift
    "$D/$name" -max_total_time="$SECONDS_EACH" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 "$@" > "$D/$name.log" 2>&1
    local rc=$?
    local runs
    runs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$D/$name.log" | tail -1)
    if [ $rc -eq 0 ]; then echo "$name: ${runs:-finished}, 0 crashes"
    else echo "$name: FAILED (rc $rc), see $D/$name.log"; grep -E "ERROR|SUMMARY|==[0-9]+==" "$D/$name.log" | head -5; status=1; fi
}
run fuzz_tokenizer_json -max_len=40000 "$D/corpus_json"
FUZZ_TOKENIZERS="tests/fixtures/tokenizer/variant_merges_as_strings.json:$D/deepseek-llm.json" \
    run fuzz_encode_decode -max_len=4096 "$D/corpus_text"
exit $status
