#!/usr/bin/env bash
# tests/sweep.sh — `make sweep`: the paper's scaling-law study (deepseek sweep run) on the default corpus, sized for a
# 2-core machine (about 20 minutes): the King James Bible (Debian bible-kjv) → a 4096-token BPE tokenizer and shards →
# hparams (a 5 × 5 grid of batch size × learning rate at 1e10, 3e10, 1e11 and 3e11 FLOPs), isoflop (5 shapes per
# budget), the check run at 9e11 FLOPs → SWEEP/report.md and the pictures in SWEEP/plots/.
# Environment: SWEEP_OUT (build/sweep), THREADS (2), SWEEP_FLAGS (more `deepseek sweep run` flags, for a first run:
# e.g. "--budgets 1e11,3e11,1e12,3e12 --grid 7x7" on a bigger machine). Interrupted? Run it again: it continues.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${SWEEP_OUT:-build/sweep}"
THREADS="${THREADS:-2}"
BIN="${DEEPSEEK_BIN:-./deepseek}"
DEEPSEEK_BIN="$BIN" data/prepare_default.sh "$OUT"   # OUT/kjv.txt, OUT/data/ (as make demo's)
echo "== the sweep (Ctrl-C stops after a checkpoint; run again to continue)"
start=$(date +%s)
# shellcheck disable=SC2086
$BIN sweep run --data "$OUT/data" --out "$OUT/study" --threads "$THREADS" ${SWEEP_FLAGS:-} | tee -a "$OUT/sweep.log"
echo "  wall time of this invocation: $(( $(date +%s) - start )) s"
echo "  report: $OUT/study/report.md   pictures: $OUT/study/plots/*.png   results: $OUT/study/results.jsonl"
