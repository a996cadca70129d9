"""fixtures_eval.py — multiple-choice log-likelihoods from the peers (transformers + tokenizers), for eval --task.

Run by make_fixtures.py (or alone: .venv/bin/python tests/reference/fixtures_eval.py) from the repository root,
after fixtures_infer.py (it reads that script's models and tokenizer). Reads

  tests/fixtures/eval/task.jsonl          items written by hand: {"context", "choices", "label"} per line, chosen
                                          for the tokenisation's corners (trailing whitespace of several kinds,
                                          empty contexts, choices that merge with the context, multi-byte text,
                                          a context longer than the model's)

and writes tests/fixtures/eval/loglikelihoods.json: per model (gen_gqa, gen_mha of tests/fixtures/infer/) and
item, each choice's context and continuation token ids, its summed log-likelihood, its length in characters, and
the item's prediction and normalised prediction; acc and acc_norm over the items.

Tokenisation follows EleutherAI's lm-evaluation-harness (HFLM, its defaults), restated here since the harness is
not a dependency of this project:
  - `_encode_pair`: n = len(context) - len(context.rstrip()); the last n characters of the context move to the
    front of the continuation; whole = encode(context + continuation), ctx = encode(context),
    continuation = whole[len(ctx):]. encode is the tokenizer's, add_special_tokens=False (HFLM's default for
    causal models: add_bos_token False).
  - a context with no tokens is [prefix_token_id] (the tokenizer's BOS, else EOS); the harness does this for an
    empty context string and fails on a whitespace-only one, where we do the same as for an empty one.
  - `_loglikelihood_tokens`: the model reads (ctx + continuation)[-(max_length + 1):][:-1], max_length =
    config.max_position_embeddings; the log-likelihood is the sum of log_softmax over the continuation's tokens.
  - multiple_choice `process_results`: pred = argmax(lls), pred_norm = argmax(lls / len(choice)), len in
    characters (Python's len), numpy's argmax (the first of equal maxima).

Log-likelihoods are computed in float64 (make_fixtures.float64_copy: no float32 islands) and checked against the
stock float32 transformers forward. Argmaxes are only a fair comparison where they are not near-ties: the script
fails if the best and second-best (raw or normalised) of any item are closer than MIN_GAP.
"""

import json
import os
import sys

import torch
import transformers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, os.path.dirname(__file__))
from make_fixtures import float64_copy  # noqa: E402

OUT = os.path.join("tests", "fixtures", "eval")
MODELS = os.path.join("tests", "fixtures", "infer")
# our fp32 sums agree with float64 to ~1e-5 (the test's bound is 1e-4): a gap of 1e-3 cannot flip an argmax
MIN_GAP = 1e-3

CHECKS = []


def check(name, ok, detail=""):
    CHECKS.append((name, bool(ok)))
    print(f"  [{'ok' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}", flush=True)
    return bool(ok)


def encode_pair(tok, context, choice):
    """lm-evaluation-harness's _encode_pair (HFLM, add_special_tokens=False), plus the prefix token"""
    n = len(context) - len(context.rstrip())
    if n > 0:
        choice = context[-n:] + choice
        context = context[:-n]
    whole = tok.encode(context + choice, add_special_tokens=False)
    ctx = tok.encode(context, add_special_tokens=False)
    cont = whole[len(ctx):]
    if not ctx:
        ctx = [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
    return ctx, cont


def loglikelihood(model, ctx, cont, max_length):
    ids = (ctx + cont)[-(max_length + 1):]
    inp = torch.tensor([ids[:-1]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=inp).logits[0], dim=-1)
    n = len(cont)
    rows = logp[len(ids) - 1 - n:]      # the positions that predict the continuation's tokens
    return rows.gather(1, torch.tensor(cont)[:, None]).sum().item(), len(ids) > max_length


def first_argmax(v):
    return max(range(len(v)), key=lambda i: (v[i], -i))


def gap(v):
    s = sorted(v, reverse=True)
    return s[0] - s[1]


def main():
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}", flush=True)
    items = [json.loads(line) for line in open(os.path.join(OUT, "task.jsonl"), encoding="utf-8") if line.strip()]
    out = {"task": os.path.join(OUT, "task.jsonl"), "computation": "float64 (transformers LlamaForCausalLM, "
           "make_fixtures.float64_copy), lm-evaluation-harness tokenisation", "min_gap_required": MIN_GAP,
           "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__, "models": {}}
    for name in ("gen_gqa", "gen_mha"):
        print(f"\n== {name}", flush=True)
        path = os.path.join(MODELS, name)
        tok = PreTrainedTokenizerFast.from_pretrained(path)
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        m64 = float64_copy(model)
        max_length = model.config.max_position_embeddings
        rows, right, right_norm, worst_gap, stock_err, truncated = [], 0, 0, float("inf"), 0.0, 0
        for line, it in enumerate(items, 1):
            ctx_ids, cont_ids, lls = [], [], []
            for choice in it["choices"]:
                ctx, cont = encode_pair(tok, it["context"], choice)
                ll, cut = loglikelihood(m64, ctx, cont, max_length)
                ll32, _ = loglikelihood(model, ctx, cont, max_length)
                stock_err = max(stock_err, abs(ll32 - ll))
                truncated += cut
                ctx_ids.append(ctx)
                cont_ids.append(cont)
                lls.append(ll)
            chars = [len(c) for c in it["choices"]]
            norm = [ll / n for ll, n in zip(lls, chars)]
            pred, pred_norm = first_argmax(lls), first_argmax(norm)
            right += pred == it["label"]
            right_norm += pred_norm == it["label"]
            worst_gap = min(worst_gap, gap(lls), gap(norm))
            check(f"{name} line {line}: every choice has continuation tokens", all(cont_ids))
            rows.append({"line": line, "label": it["label"], "context_ids": ctx_ids, "continuation_ids": cont_ids,
                         "loglikelihoods": lls, "chars": chars, "pred": pred, "pred_norm": pred_norm})
        check(f"{name}: float64 agrees with the stock float32 forward", stock_err < 1e-4, f"max |diff| {stock_err:.2e}")
        check(f"{name}: no near-tie among the best two choices (raw or normalised), gap >= {MIN_GAP}",
              worst_gap >= MIN_GAP, f"smallest gap {worst_gap:.4f}")
        check(f"{name}: some sequences exceed the context and are truncated", truncated > 0, f"{truncated} sequences")
        out["models"][name] = {"max_length": max_length, "acc": right / len(items),
                               "acc_norm": right_norm / len(items), "items": rows}
        print(f"  acc {right}/{len(items)}, acc_norm {right_norm}/{len(items)}", flush=True)
    check("the contexts' tokens differ from the whole's prefix somewhere (a merge across the boundary)",
          any(r["context_ids"][k] + r["continuation_ids"][k] != tok.encode(items[r["line"] - 1]["context"] +
              items[r["line"] - 1]["choices"][k], add_special_tokens=False)
              for r in out["models"]["gen_gqa"]["items"] for k in range(len(r["loglikelihoods"]))
              if items[r["line"] - 1]["context"].strip()))
    path = os.path.join(OUT, "loglikelihoods.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path):,} bytes)", flush=True)
    failed = [c for c in CHECKS if not c[1]]
    print(f"fixtures_eval: {len(CHECKS) - len(failed)} checks passed, {len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
