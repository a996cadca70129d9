#!/usr/bin/env bash
# align_recipe.sh — the DeepSeek LLM recipe at toy scale on a CPU: pre-train → SFT → DPO → eval, with the numbers.
#
#   bash data/align_recipe.sh [OUT]        (default OUT = out/recipe; run from the repository root after `make`)
#
# Stages (each one `deepseek` command; sizes are environment variables, defaults = the README's measured run):
#   1. data       data/make_align_data.py: synthetic conversations with checkable answers, preference pairs, and the
#                 training problems as plain prose (pretrain.txt) — fixed seed
#   2. tokenizer  byte-level BPE on pretrain.txt (vocabulary 512 asked; it stops at ~336 on this small corpus)
#   3. pre-train  a 148k-parameter Llama/DeepSeek model (C 64, 2 layers, 4 heads / 2 KV heads, context 128) on the
#                 prose for PRETRAIN_STEPS steps of 2048 tokens, cosine schedule
#   4. SFT        SFT_N conversations, SFT_EPOCHS epochs, lr SFT_LR (the paper's 1e-5 is for 7B: a 148k model needs more)
#   5. DPO        DPO_N pairs (correct vs wrong, concise vs repetitive), 1 epoch, β 0.1, lr DPO_LR, reference = SFT
#   6. eval       base, SFT and DPO on the same held-out conversations (exact match, repetition ratio) and held-out
#                 pairs (log-prob accuracy; reward accuracy/margin against the SFT reference); bits per byte on val
# Set BASE=DIR to skip stages 2-3 and start from an existing base model directory (with its tokenizer.json).
set -euo pipefail
OUT=${1:-out/recipe}
BIN=${DEEPSEEK:-./deepseek}
THREADS=${THREADS:-2}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-210}   # the measured run: step 210 of a 300-step cosine run (stopped for time)
SFT_N=${SFT_N:-2000}; SFT_EPOCHS=${SFT_EPOCHS:-1}; SFT_LR=${SFT_LR:-2e-3}
DPO_N=${DPO_N:-800}; DPO_LR=${DPO_LR:-1e-4}   # 5e-4 over-optimised: replies lost their EOS (README)
EVAL_N=${EVAL_N:-200}
mkdir -p "$OUT"
cp "$BIN" "$OUT/deepseek-bin"            # a private copy: rebuilding ./deepseek mid-run cannot disturb it
D="$OUT/deepseek-bin"
T0=$(date +%s)
stamp() { echo "== $1 ($(( $(date +%s) - T0 ))s)"; }

stamp "data"
python3 data/make_align_data.py --out "$OUT/data"
head -n "$SFT_N" "$OUT/data/sft_train.jsonl" > "$OUT/data/sft_subset.jsonl"
head -n "$DPO_N" "$OUT/data/dpo_train.jsonl" > "$OUT/data/dpo_subset.jsonl"

if [ -z "${BASE:-}" ]; then
    stamp "tokenizer + shards"
    "$D" tokenizer train --input "$OUT/data/pretrain.txt" --vocab-size 512 --out "$OUT/tokenizer.json" --quiet
    "$D" data prepare --input "$OUT/data/pretrain.txt" --tokenizer "$OUT/tokenizer.json" --out "$OUT/shards"
    cat > "$OUT/base_config.json" <<'EOF'
{"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":384,"hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,"intermediate_size":192,"max_position_embeddings":128,"rms_norm_eps":1e-6,"rope_theta":10000.0,"bos_token_id":334,"eos_token_id":335,"tie_word_embeddings":false,"hidden_act":"silu"}
EOF
    "$D" convert --config "$OUT/base_config.json" --out "$OUT/init"
    cp "$OUT/tokenizer.json" "$OUT/init/"
    stamp "pre-train"
    "$D" train --model "$OUT/init" --data "$OUT/shards" --out "$OUT/pretrain" --steps "$PRETRAIN_STEPS" --batch-tokens 2048 \
        --seq-len 128 --lr 3e-3 --lr-schedule cosine --eval-every 100 --save-every 100 --threads "$THREADS" --overwrite
    BASE="$OUT/pretrain/final"
fi

stamp "SFT"
"$D" sft --model "$BASE" --data "$OUT/data/sft_subset.jsonl" --val "$OUT/data/sft_heldout.jsonl" --out "$OUT/sft" \
    --epochs "$SFT_EPOCHS" --batch 16 --lr "$SFT_LR" --log-every 25 --threads "$THREADS" --overwrite
stamp "DPO"
"$D" dpo --model "$OUT/sft/final" --data "$OUT/data/dpo_subset.jsonl" --val "$OUT/data/dpo_heldout.jsonl" --out "$OUT/dpo" \
    --batch 8 --lr "$DPO_LR" --log-every 25 --threads "$THREADS" --overwrite

for stage in base sft dpo; do
    case $stage in base) M="$BASE";; sft) M="$OUT/sft/final";; dpo) M="$OUT/dpo/final";; esac
    stamp "eval $stage"
    "$D" eval --model "$M" --data "$OUT/data/sft_heldout.jsonl" --pairs "$OUT/data/dpo_heldout.jsonl" \
        --ref "$OUT/sft/final" --limit "$EVAL_N" --max-new-tokens 48 --show 2 --threads "$THREADS" --json "$OUT/eval_$stage.json"
done
stamp "done"
python3 - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
print(f"\n| model | exact match | repetition ratio | unfinished | log-prob acc. (pairs) | reward acc. vs SFT | reward margin |")
print("|---|---|---|---|---|---|---|")
for s in ("base", "sft", "dpo"):
    j = json.load(open(f"{out}/eval_{s}.json"))
    print(f"| {s} | {j['exact_match']:.3f} | {j['repetition_ratio']:.3f} | {j['unfinished']} | {j['logp_accuracy']:.3f} "
          f"| {j['reward_accuracy']:.3f} | {j['reward_margin']:.3f} |")
EOF
