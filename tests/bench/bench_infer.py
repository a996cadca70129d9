"""bench_infer.py — generation speed of ./deepseek beside llama.cpp (llama-cpp-python) and transformers, in one run.

`make bench-infer` (part of `make bench`) runs it with the venv's python from the repository root. For each model:
random weights in LLaMA shapes (llama2.c's 15M and 110M: V 32000; each also in bf16 and in q8_0),
written once under build/bench_infer/ by transformers (save_pretrained) with a 32000-token vocabulary made from
DeepSeek's (bench_tokenizer() below), and converted to GGUF for llama.cpp by our own `deepseek convert --to gguf`
(f32, bf16, and q8_0 beside our `convert --dtype q8_0` model: the "-q8" rows). The same prompt of PROMPT token ids is prefilled, then NEW tokens are
decoded greedily one at a time, by each engine with the same thread count. Printed: prefill and decode tokens/s
and the ratios ours / peer. Nothing is asserted: the numbers are for reading (the machine is shared, so they
are noisy; the ratios come from runs made back to back). Printed first: the CPU (model, SIMD features, caches) and
the memory read bandwidth measured here (build/bench/bench_mem, the same thread count); beside each decode figure,
the share of its bound, bandwidth / bytes read per token (tests/bench/bench_machine.py: every matrix as stored, the
KV cache at the mean decode position). A model that fits the last-level cache can pass that bound.

  --threads N (2)  --prompt N (128)  --new N (128)  --models 15m,15m-bf16,15m-q8,110m,110m-bf16,110m-q8  --repeat R (2: best of R)
  --engines deepseek,deepseek-huge,deepseek-kv16,llama.cpp,transformers
      (deepseek-huge: ours with --huge-pages; deepseek-kv16: ours with --kv-cache f16, the KV cache's format in
      llama.cpp's default, where ours by default keeps transformers' fp32)
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_machine  # noqa: E402  cpu_description, read_bandwidth, decode_bytes

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WORK = os.path.join(ROOT, "build", "bench_infer")
BIN = os.environ.get("DEEPSEEK_BIN", os.path.join(ROOT, "deepseek"))

# llama2.c's shapes: stories15M (dim 288, 6 layers, 6 heads, ffn 768) and stories110M (768, 12, 12, 2048), V 32000
SHAPES = {
    "15m": dict(hidden_size=288, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6,
                intermediate_size=768, dtype="float32"),
    "110m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                 intermediate_size=2048, dtype="float32"),
    "15m-bf16": dict(hidden_size=288, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6,
                     intermediate_size=768, dtype="bfloat16"),
    "110m-bf16": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                      intermediate_size=2048, dtype="bfloat16"),
}
# q8_0 rows: our `convert --dtype q8_0` of the f32 model beside llama.cpp's Q8_0 GGUF of the same weights (both the
# same blocks: ours are what `convert --to gguf --dtype q8_0` copies); transformers has no q8_0 and sits these out
Q8_MODELS = {"15m-q8": "15m", "110m-q8": "110m"}
VOCAB, CONTEXT = 32000, 1024


# ------------------------------------------------------------------------------------------------ models

def make_hf_model(name, spec):
    """A random LlamaForCausalLM (normal(0, 0.02)) saved with save_pretrained, once."""
    path = os.path.join(WORK, name)
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    spec = dict(spec)
    dtype = getattr(torch, spec.pop("dtype"))
    cfg = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=CONTEXT, tie_word_embeddings=False,
                      rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, **spec)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(dtype)
    model.save_pretrained(path)
    return path


def bench_tokenizer():
    """The bench models' vocabulary, V 32000, made here from what the repository holds (nothing downloaded): the
    released DeepSeek LLM vocabulary (`deepseek tokenizer import-gguf data/vocab/deepseek-llm.gguf`) cut to its first
    31998 tokens and the merges whose two parts and result all stay inside them (DeepSeek's ids follow its merge
    order, so every kept token is still reachable), with its BOS and EOS at ids 31998 and 31999 and its pre-tokenizer.
    The 13 added byte tokens (ids 100002-100014, bytes that never occur in UTF-8) are left out."""
    path = os.path.join(WORK, "tokenizer-32000.json")
    if os.path.exists(path):
        return path
    full = os.path.join(WORK, "deepseek-llm.json")
    r = subprocess.run([BIN, "tokenizer", "import-gguf", os.path.join(ROOT, "data/vocab/deepseek-llm.gguf"), "--out", full],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"deepseek tokenizer import-gguf failed: {r.stderr.strip()}")
    t = json.load(open(full, encoding="utf-8"))
    n = VOCAB - 2
    vocab = {s: i for s, i in t["model"]["vocab"].items() if i < n}
    merges = []
    for m in t["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    t["model"]["vocab"], t["model"]["merges"] = vocab, merges
    special = {100000: n, 100001: n + 1}   # BOS, EOS
    t["added_tokens"] = [dict(a, id=special[a["id"]]) for a in t["added_tokens"] if a["id"] in special]
    pp = t.get("post_processor")
    if pp and pp.get("special_tokens"):
        for v in pp["special_tokens"].values():
            v["ids"] = [special[i] for i in v["ids"]]
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(t, f, ensure_ascii=False)
    os.replace(path + ".tmp", path)
    return path


def gguf_convert(model_dir, out_path, dtype):
    """Our exporter: `deepseek convert --model DIR --to gguf --dtype DTYPE` (the q/k permutation for llama.cpp's
    llama architecture, the vocabulary from DIR/tokenizer.json)."""
    r = subprocess.run([BIN, "convert", "--model", model_dir, "--to", "gguf", "--dtype", dtype, "--out", out_path],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"deepseek convert --to gguf failed: {r.stderr.strip()}")


def our_q8_model(name, base):
    """Our q8_0 model directory (`deepseek convert --dtype q8_0`) of the f32 model BASE, once."""
    path = os.path.join(WORK, name)
    if not os.path.exists(os.path.join(path, "config.json")):
        r = subprocess.run([BIN, "convert", "--model", base, "--dtype", "q8_0", "--out", path], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"deepseek convert --dtype q8_0 failed: {r.stderr.strip()}")
    return path


# ------------------------------------------------------------------------------------------------ engines

def kv_bytes(engine):
    """Bytes per element of the engine's KV cache: llama.cpp's default and ours with --kv-cache f16 keep fp16."""
    return 2 if engine in ("deepseek-kv16", "llama.cpp") else 4


def run_ours(path, prompt, n_new, threads, extra=()):
    ids = " ".join(map(str, prompt))
    cmd = [BIN, "generate", "--model", path, "--prompt-ids", ids, "-n", str(n_new), "--temperature", "0", "--ids",
           "--threads", str(threads), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if r.returncode != 0:
        sys.exit(f"deepseek failed: {r.stderr.strip()}")
    m = re.search(r"prompt (\d+) tokens \((\d+) prefilled\) at ([\d.]+) tokens/s \| generated (\d+) tokens at "
                  r"([\d.]+) tokens/s", r.stderr)
    if not m:
        sys.exit(f"cannot parse deepseek's timings: {r.stderr.strip()[-400:]}")
    return float(m.group(3)), float(m.group(5)), [int(x) for x in r.stdout.split()]


def run_llama_cpp(gguf_path, prompt, n_new, threads):
    import llama_cpp
    llm = llama_cpp.Llama(model_path=gguf_path, n_ctx=len(prompt) + n_new + 8, n_threads=threads,
                          n_threads_batch=threads, n_batch=max(len(prompt), 32), verbose=False, logits_all=False)
    llm.reset()
    V = llm.n_vocab()

    def last_logits():  # the logits of the last token of the last batch (llama.cpp's own buffer)
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(V,))

    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    out = []
    tok = int(np.argmax(last_logits()))  # greedy from the prefill's logits
    t2 = time.perf_counter()
    for i in range(n_new):
        out.append(tok)
        if i + 1 == n_new:
            break
        llm.eval([tok])
        tok = int(np.argmax(last_logits()))
    t3 = time.perf_counter()
    del llm
    return len(prompt) / (t1 - t0), (n_new - 1) / (t3 - t2), out


def run_transformers(path, prompt, n_new, threads):
    import torch
    from transformers import LlamaForCausalLM
    torch.set_num_threads(threads)
    model = LlamaForCausalLM.from_pretrained(path, dtype="auto").eval()
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        t0 = time.perf_counter()
        o = model(ids, use_cache=True)
        t1 = time.perf_counter()
        past, tok, out = o.past_key_values, int(o.logits[0, -1].argmax()), []
        t2 = time.perf_counter()
        for i in range(n_new):
            out.append(tok)
            if i + 1 == n_new:
                break
            o = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
            past, tok = o.past_key_values, int(o.logits[0, -1].argmax())
        t3 = time.perf_counter()
    return len(prompt) / (t1 - t0), (n_new - 1) / (t3 - t2), out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--models", default="15m,15m-bf16,15m-q8,110m,110m-bf16,110m-q8")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--engines", default="deepseek,deepseek-huge,deepseek-kv16,llama.cpp,transformers")
    a = ap.parse_args()
    os.makedirs(WORK, exist_ok=True)
    engines = a.engines.split(",")
    try:
        import llama_cpp
        print(f"llama-cpp-python {llama_cpp.__version__}", flush=True)
    except ImportError:
        print("llama-cpp-python is not installed (pip install llama-cpp-python): skipping llama.cpp", flush=True)
        engines = [e for e in engines if e != "llama.cpp"]
    import torch
    import transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}; {a.threads} threads, prompt "
          f"{a.prompt} tokens, {a.new} new tokens, best of {a.repeat}", flush=True)
    print(f"CPU: {bench_machine.cpu_description()}", flush=True)
    bw = bench_machine.read_bandwidth(a.threads)
    print(f"memory read bandwidth, {a.threads} threads: " + (f"{bw:.1f} GB/s" if bw else "not measured (make build/bench/bench_mem)"),
          flush=True)
    rng = np.random.default_rng(0)
    prompt = [1] + rng.integers(259, VOCAB, a.prompt - 1).tolist()
    rows = []
    tokenizer = bench_tokenizer()
    for name in a.models.split(","):
        if name not in SHAPES and name not in Q8_MODELS:
            sys.exit(f"unknown model '{name}' (known: {', '.join(list(SHAPES) + list(Q8_MODELS))})")
        base = Q8_MODELS.get(name, name)
        path = make_hf_model(base, SHAPES[base])
        if not os.path.exists(os.path.join(path, "tokenizer.json")):
            shutil.copy(tokenizer, os.path.join(path, "tokenizer.json"))
        dtype = "q8_0" if name in Q8_MODELS else "bf16" if SHAPES[base]["dtype"] == "bfloat16" else "f32"
        if name in Q8_MODELS:
            path = our_q8_model(name, path)
            if not os.path.exists(os.path.join(path, "tokenizer.json")):
                shutil.copy(tokenizer, os.path.join(path, "tokenizer.json"))
        gg = os.path.join(WORK, name + ".gguf")   # written each run by the binary under test
        if "llama.cpp" in engines:
            gguf_convert(path, gg, dtype)
        res, outs = {}, {}
        for rep in range(a.repeat):
            for e in engines:  # interleaved, so a noisy moment hits every engine alike
                if e == "transformers" and name in Q8_MODELS:
                    continue
                if e == "deepseek":
                    r = run_ours(path, prompt, a.new, a.threads)
                elif e == "deepseek-huge":   # ours with --huge-pages (weights read into huge pages, not mapped)
                    r = run_ours(path, prompt, a.new, a.threads, ["--huge-pages"])
                elif e == "deepseek-kv16":   # ours with an fp16 KV cache (llama.cpp's default format)
                    r = run_ours(path, prompt, a.new, a.threads, ["--kv-cache", "f16"])
                elif e == "llama.cpp":
                    r = run_llama_cpp(gg, prompt, a.new, a.threads)
                else:
                    r = run_transformers(path, prompt, a.new, a.threads)
                best = res.get(e, (0, 0))
                res[e] = (max(best[0], r[0]), max(best[1], r[1]))
                outs[e] = r[2]
                print(f"  {name:10s} {e:13s} prefill {r[0]:8.1f} tok/s   decode {r[1]:7.1f} tok/s", flush=True)
        agree = {e: next((i for i, (x, y) in enumerate(zip(outs[e], outs["deepseek"])) if x != y), len(outs[e]))
                 for e in outs if not e.startswith("deepseek")} if "deepseek" in outs else {}
        pos = a.prompt + a.new // 2
        nbytes = {e: bench_machine.decode_bytes(path, pos, kv_bytes(e)) for e in res}
        rows.append((name, res, agree, nbytes))

    # ours/peer for our default (weights memory-mapped, fp32 KV cache), then each variant of ours that ran, after a bar
    print("\n| model | engine | prefill tok/s | decode tok/s | decode / bound | ours/peer prefill | ours/peer decode | same greedy tokens |")
    print("|---|---|---|---|---|---|---|---|")
    variants = [e for e in ("deepseek", "deepseek-huge", "deepseek-kv16") if any(e in r[1] for r in rows)]
    for name, res, agree, nbytes in rows:
        ours = [res[v] for v in variants if v in res]
        for e, (pf, dc) in res.items():
            if e.startswith("deepseek") or "deepseek" not in res:
                ratio = "— | —"
            else:
                ratio = " / ".join(f"{o[0] / pf:.2f}×" for o in ours) + " | " + " / ".join(f"{o[1] / dc:.2f}×" for o in ours)
            same = f"first {agree[e]}" if e in agree else "—"
            bound = bw * 1e9 / nbytes[e] if bw else None
            of_bound = f"{dc / bound:.0%} of {bound:.0f}" if bound else "—"
            print(f"| {name} | {e} | {pf:.1f} | {dc:.1f} | {of_bound} | {ratio} | {same} |")
    for name, _, _, nbytes in rows:
        for kv, nb in sorted({kv_bytes(e): nbytes[e] for e in nbytes}.items(), reverse=True):
            print(f"({name}, KV cache fp{8 * kv}: {nb / 1e6:.1f} MB read per decoded token" +
                  (f", bound {bw * 1e9 / nb:.0f} tokens/s at {bw:.1f} GB/s)" if bw else ")"))
    if len(variants) > 1:
        print("(ratios: " + " / ".join({"deepseek": "ours default", "deepseek-huge": "ours --huge-pages",
                                         "deepseek-kv16": "ours --kv-cache f16"}[v] for v in variants) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
