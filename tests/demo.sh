#!/usr/bin/env bash
# tests/demo.sh — the README's main command (`make demo`): the DeepSeek LLM pre-training recipe, small, on a CPU.
#
#   King James Bible (Debian bible-kjv, rendered at run time)  →  a 4096-token byte-level BPE tokenizer trained on
#   the training split  →  train/val token shards  →  the `tiny` DeepSeek shape (1.8M parameters, GQA) trained with
#   AdamW and the multi-step schedule, batch size and learning rate from the paper's scaling laws for the run's
#   compute C = M·D  →  validation bits per byte, greedy samples, checkpoints, metrics and a loss-curve PNG.
#
# About ten minutes on two cores at ~8k tokens/s. Environment: DEMO_OUT (build/demo), THREADS (2),
# DEMO_COMPUTE (2.5e13 FLOPs: ~4M tokens for the tiny shape's M = 6.3e6). Interrupted (Ctrl-C)? Run it again:
# it resumes from the newest checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${DEMO_OUT:-build/demo}"
THREADS="${THREADS:-2}"
COMPUTE="${DEMO_COMPUTE:-2.5e13}"
BIN="${DEEPSEEK_BIN:-./deepseek}"
DEEPSEEK_BIN="$BIN" data/prepare_default.sh "$OUT"   # OUT/kjv.txt, OUT/data/
echo "== pre-training (Ctrl-C checkpoints and stops; run again to resume)"
if [ -d "$OUT/run" ] && [ ! -d "$OUT/run/final" ] && ls -d "$OUT"/run/step_* >/dev/null 2>&1; then
    $BIN train --resume "$OUT/run" --threads "$THREADS" | tee -a "$OUT/train.log"
else
    rm -rf "$OUT/run"
    $BIN plan --compute "$COMPUTE" --seq-len 256 --vocab-size 4096
    $BIN train --preset tiny --data "$OUT/data" --out "$OUT/run" --compute "$COMPUTE" --seq-len 256 \
        --eval-every 50 --eval-windows 64 --save-every 100 --keep 2 --sample-tokens 48 --threads "$THREADS" | tee "$OUT/train.log"
fi
[ -d "$OUT/run/final" ] || exit 0   # stopped by a signal: the checkpoint is written, nothing to summarise yet
echo
echo "== outputs"
echo "  model (Hugging Face directory + optimizer/trainer state): $OUT/run/final"
echo "  loss curve:   $OUT/run/loss.png"
echo "  metrics:      $OUT/run/metrics.jsonl"
echo "  training log: $OUT/train.log (samples on the 'sample:' lines)"
grep "validation bits per byte" "$OUT/train.log" | tail -1 | sed 's/^/  /'
grep "^sample:" "$OUT/train.log" | tail -1 | sed 's/^/  last /'
