#!/usr/bin/env bash
# Tokenizer speed, side by side with Hugging Face tokenizers in the same run (same tokenizer.json, same text):
#   encode: MB/s on one thread over >= 4 MB of mixed text (the King James Bible + data/multilingual_test.txt),
#           ours (deepseek tokenizer bench) vs HF Tokenizer.encode on the same string, and the ratio; the ids
#           of both are compared (count + FNV-1a 64).
#   train:  a 32k vocabulary on ~10 MB of text, 2 threads, ours vs HF BpeTrainer.
# Run from the repository root (make bench-tokenizer). Needs ./deepseek and .venv (make fixtures sets it up).
set -euo pipefail
BIN=${DEEPSEEK_BIN:-./deepseek}
PY=${PYTHON_VENV:-.venv/bin/python}
DIR=build/bench-tokenizer
mkdir -p "$DIR"
PIN1=""; PIN2=""
if command -v taskset >/dev/null; then PIN1="taskset -c 0"; PIN2="taskset -c 0,1"; fi

# the texts (the Bible is regenerated, never stored in the repository)
: > "$DIR/mixed.txt"
if command -v bible >/dev/null; then COLUMNS=80 bible "Gen1:1-Rev22:21" > "$DIR/bible.txt"; else : > "$DIR/bible.txt"; echo "(bible-kjv not installed: multilingual text only)"; fi
cat "$DIR/bible.txt" >> "$DIR/mixed.txt"
while [ "$(stat -c %s "$DIR/mixed.txt")" -lt 4500000 ]; do cat data/multilingual_test.txt >> "$DIR/mixed.txt"; done
cp "$DIR/mixed.txt" "$DIR/train10.txt"
cat "$DIR/bible.txt" >> "$DIR/train10.txt"
while [ "$(stat -c %s "$DIR/train10.txt")" -lt 10000000 ]; do cat data/multilingual_test.txt >> "$DIR/train10.txt"; done

"$BIN" tokenizer import-gguf data/vocab/deepseek-llm.gguf --out "$DIR/deepseek-llm.json" 2>/dev/null

echo "== encode, one thread: $(stat -c %s "$DIR/mixed.txt") bytes of mixed text, DeepSeek LLM tokenizer.json"
OURS=$(OMP_NUM_THREADS=1 $PIN1 "$BIN" tokenizer bench --tokenizer "$DIR/deepseek-llm.json" --input "$DIR/mixed.txt" --repeat 3)
echo "ours: $OURS"
HF=$(RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false $PIN1 "$PY" - "$DIR/deepseek-llm.json" "$DIR/mixed.txt" <<'PYEOF'
import sys, time
import tokenizers
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
text = open(sys.argv[2], encoding="utf-8", newline="").read()
nbytes = len(text.encode("utf-8"))
best = 1e30
for _ in range(2):
    t0 = time.perf_counter(); ids = tok.encode(text, add_special_tokens=False).ids; best = min(best, time.perf_counter() - t0)
h = 0xCBF29CE484222325
for i in ids:
    for b in i.to_bytes(4, "little"): h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
lines = text.splitlines(keepends=True)
t0 = time.perf_counter(); n = sum(len(e.ids) for e in tok.encode_batch(lines, add_special_tokens=False)); tl = time.perf_counter() - t0
print(f"tokens {len(ids)} fnv {h:016x} encode_s {best:.4f} encode_MBps {nbytes / best / 1e6:.2f} lines_MBps {nbytes / tl / 1e6:.2f} version {tokenizers.__version__}")
PYEOF
)
echo "HF:   $HF"
field() { echo "$1" | tr ' ' '\n' | awk -v k="$2" 'prev == k { print; exit } { prev = $0 }'; }
O=$(field "$OURS" encode_MBps); H=$(field "$HF" encode_MBps); HL=$(field "$HF" lines_MBps)
SAME=$([ "$(field "$OURS" fnv)" = "$(field "$HF" fnv)" ] && [ "$(field "$OURS" tokens)" = "$(field "$HF" tokens)" ] && echo "identical ids" || echo "IDS DIFFER")
printf "encode: ours %s MB/s, HF tokenizers %s MB/s (whole text as one string) -> ratio %.2fx; HF line by line (encode_batch, 1 thread) %s MB/s -> ratio %.2fx; %s\n" \
    "$O" "$H" "$(echo "$O / $H" | bc -l)" "$HL" "$(echo "$O / $HL" | bc -l)" "$SAME"

echo "== train: 32k vocabulary on $(stat -c %s "$DIR/train10.txt") bytes, 2 threads"
T0=$(date +%s.%N)
OMP_NUM_THREADS=2 $PIN2 "$BIN" tokenizer train --input "$DIR/train10.txt" --vocab-size 32000 --out "$DIR/ours32k.json" --quiet
T1=$(date +%s.%N)
RAYON_NUM_THREADS=2 $PIN2 "$PY" - "$DIR/train10.txt" "$DIR/deepseek-llm.json" "$DIR/hf32k.json" <<'PYEOF'
import sys, time
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
ds = Tokenizer.from_file(sys.argv[2])
t = Tokenizer(models.BPE()); t.pre_tokenizer = ds.pre_tokenizer
tr = trainers.BpeTrainer(vocab_size=32000, min_frequency=0, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                         special_tokens=["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"])
t.train([sys.argv[1]], tr)
t.save(sys.argv[3])
PYEOF
T2=$(date +%s.%N)
SAMEM=$("$PY" -c "
import json,sys
a=json.load(open('$DIR/ours32k.json'))['model']['merges']; b=json.load(open('$DIR/hf32k.json'))['model']['merges']
b=[m if isinstance(m,list) else m.split(' ') for m in b]
print('identical merges (%d)' % len(a) if a==b else 'MERGES DIFFER (%d vs %d)' % (len(a), len(b)))")
printf "train: ours %.1f s, HF BpeTrainer %.1f s (including reading and pre-tokenizing) -> %.2fx; %s\n" \
    "$(echo "$T1 - $T0" | bc -l)" "$(echo "$T2 - $T1" | bc -l)" "$(echo "($T2 - $T1) / ($T1 - $T0)" | bc -l)" "$SAMEM"
