"""bench_infer.py — generation speed of ./deepseek beside llama.cpp (llama-cpp-python) and transformers, in one run.

`make bench-infer` (part of `make bench`) runs it with the venv's python from the repository root. For each model:
random weights in LLaMA shapes (llama2.c's 15M and 110M: V 32000; the 110M also in bf16), written once under
build/bench_infer/ by transformers (save_pretrained) and converted to GGUF by gguf_convert() below (our own small
converter on the gguf package's writer). The same prompt of PROMPT token ids is prefilled, then NEW tokens are
decoded greedily one at a time, by each engine with the same thread count. Printed: prefill and decode tokens/s
and the ratios ours / peer. Nothing is asserted: the numbers are for reading (the machine is shared, so they
are noisy; the ratios come from runs made back to back). Printed first: the CPU (model, SIMD features, caches) and
the memory read bandwidth measured here (build/bench/bench_mem, the same thread count); beside each decode figure,
the share of its bound, bandwidth / bytes read per token (tests/bench/bench_machine.py: every matrix as stored, the
KV cache at the mean decode position). A model that fits the last-level cache can pass that bound.

  --threads N (2)  --prompt N (128)  --new N (128)  --models 15m,110m,110m-bf16  --repeat R (2: best of R)
  --engines deepseek,deepseek-huge,llama.cpp,transformers   (deepseek-huge: ours with --huge-pages)
"""

import argparse
import json
import os
import re
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
    "110m-bf16": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                      intermediate_size=2048, dtype="bfloat16"),
}
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


def gguf_convert(hf_dir, out_path):
    """config.json + model.safetensors → a llama-architecture GGUF. llama.cpp's llama arch applies RoPE to adjacent
    pairs, Hugging Face's to the two halves of a head, so q_proj/k_proj rows are permuted: within each head, row
    i of the first half goes to 2i, row i of the second half to 2i+1. The vocabulary is a placeholder (SentencePiece
    style: <unk> <s> </s>, 256 byte tokens, then fillers) since the benchmark feeds token ids."""
    import gguf
    from safetensors import safe_open
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    C, L, H = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    KV, F, V = cfg["num_key_value_heads"], cfg["intermediate_size"], cfg["vocab_size"]
    D = C // H
    bf16 = cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    w = gguf.GGUFWriter(out_path, "llama")
    w.add_name(os.path.basename(hf_dir))
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(C)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_rope_dimension_count(D)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    rope = cfg.get("rope_parameters", {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
    w.add_rope_freq_base(rope)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if bf16 else gguf.LlamaFileType.ALL_F32)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"▁t{i}" for i in range(V - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (V - 259)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(V - 259)])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def permute(x, heads):  # [heads*D, C]: halves layout → adjacent pairs layout
        return x.reshape(heads, 2, D // 2, x.shape[1]).swapaxes(1, 2).reshape(x.shape)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
                 "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
                 "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
                 "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
                 "mlp.down_proj.weight": "ffn_down.weight"}
    for l in range(L):
        for k, v in per_layer.items():
            names[f"model.layers.{l}.{k}"] = f"blk.{l}.{v}"
    with safe_open(os.path.join(hf_dir, "model.safetensors"), "np" if not bf16 else "pt") as f:
        for hf_name, gg_name in names.items():
            t = f.get_tensor(hf_name)
            if bf16:  # numpy has no bf16: carry the raw 16-bit patterns
                import torch
                t = t.view(torch.int16).numpy().view(np.uint16)
            else:
                t = np.ascontiguousarray(t, dtype=np.float32)
            if hf_name.endswith("q_proj.weight"):
                t = permute(t, H)
            elif hf_name.endswith("k_proj.weight"):
                t = permute(t, KV)
            t = np.ascontiguousarray(t)
            if t.ndim == 1:  # norms stay f32
                t = t.astype(np.float32) if not bf16 else (t.astype(np.uint32) << 16).view(np.float32)
                w.add_tensor(gg_name, t)
            elif bf16:
                w.add_tensor(gg_name, t, raw_shape=t.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)
            else:
                w.add_tensor(gg_name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ------------------------------------------------------------------------------------------------ engines

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
    ap.add_argument("--models", default="15m,110m,110m-bf16")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--engines", default="deepseek,deepseek-huge,llama.cpp,transformers")
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
    for name in a.models.split(","):
        path = make_hf_model(name, SHAPES[name])
        gg = path + ".gguf"
        if "llama.cpp" in engines and not os.path.exists(gg):
            gguf_convert(path, gg + ".tmp")
            os.replace(gg + ".tmp", gg)
        res, outs = {}, {}
        for rep in range(a.repeat):
            for e in engines:  # interleaved, so a noisy moment hits every engine alike
                if e == "deepseek":
                    r = run_ours(path, prompt, a.new, a.threads)
                elif e == "deepseek-huge":   # ours with --huge-pages (weights read into huge pages, not mapped)
                    r = run_ours(path, prompt, a.new, a.threads, ["--huge-pages"])
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
        rows.append((name, res, agree, bench_machine.decode_bytes(path, a.prompt + a.new // 2)))

    # ours/peer for our default (weights memory-mapped, as llama.cpp's default) and, after the bar, --huge-pages
    print("\n| model | engine | prefill tok/s | decode tok/s | decode / bound | ours/peer prefill | ours/peer decode | same greedy tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for name, res, agree, nbytes in rows:
        bound = bw * 1e9 / nbytes if bw else None
        ours, huge = res.get("deepseek"), res.get("deepseek-huge")
        for e, (pf, dc) in res.items():
            if e.startswith("deepseek") or not ours:
                ratio = "— | —"
            else:
                ratio = f"{ours[0] / pf:.2f}× | {ours[1] / dc:.2f}×"
                if huge:
                    ratio = f"{ours[0] / pf:.2f}× / {huge[0] / pf:.2f}× | {ours[1] / dc:.2f}× / {huge[1] / dc:.2f}×"
            same = f"first {agree[e]}" if e in agree else "—"
            of_bound = f"{dc / bound:.0%} of {bound:.0f}" if bound else "—"
            print(f"| {name} | {e} | {pf:.1f} | {dc:.1f} | {of_bound} | {ratio} | {same} |")
    for name, _, _, nbytes in rows:
        print(f"({name}: {nbytes / 1e6:.1f} MB read per decoded token" + (f", bound {bw * 1e9 / nbytes:.0f} tokens/s at "
              f"{bw:.1f} GB/s)" if bw else ")"))
    if any(r[1].get("deepseek-huge") for r in rows):
        print("(ratios: ours default / ours --huge-pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
