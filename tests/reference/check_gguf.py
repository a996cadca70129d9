"""check_gguf.py — `deepseek convert --to gguf` against the peers: the gguf package reads our file back, llama.cpp
(llama-cpp-python) loads it, tokenizes as `deepseek tokenizer encode` does and decodes greedily as `deepseek generate`.

`make check-gguf` (part of `make bench`) runs it with the venv's python from the repository root. The model: a
random LlamaForCausalLM from transformers (DeepSeek's 102400 embedding rows, C 128, L 2, 4 query / 2 KV heads, FFN
256, weights N(0, 0.1²) and norm weights 1 + 0.1·N(0, 1), so that greedy choices are not near-ties) with the released
DeepSeek LLM tokenizer (`deepseek tokenizer import-gguf data/vocab/deepseek-llm.gguf`), saved with save_pretrained
under build/check_gguf/, then written by our binary as a model directory and a GGUF in f32, bf16 and q8_0.

Checks (one line each, PASS or FAIL; the exit status is non-zero if any FAILs):
  read-back   the gguf package's reader: metadata values, every tensor's name, shape and type; the values: f32 equal
              to the safetensors' after the q/k permutation, bf16 their round-to-nearest-even, q8_0 the blocks the
              gguf package's own Q8_0 quantiser makes
  tokenizer   llama.cpp's tokenize (parse_special, with and without BOS) equals `deepseek tokenizer encode` on texts
              in several scripts, digits, code and special tokens; the chat template is in the metadata
  greedy      llama.cpp's greedy tokens equal ours (`deepseek generate --temperature 0 --ids`) for NEW tokens after
              each of a few prompts. f32 must agree exactly. bf16 must agree, or part only at a near-tie (the two
              tokens the top two of transformers' fp32 logits on the same bf16 weights, within NEAR_TIE of their
              spread) that ours resolves as that reference does: llama.cpp rounds activations to bf16, ours keeps
              them fp32. q8_0 (ours q8_0 against llama.cpp's Q8_0, both quantising activations to int8 their own
              way) is reported, not required. Every parting prints the reference's verdict and margin.

  --new N (32)  --threads N (2)  --keep (reuse build/check_gguf's models)
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WORK = os.path.join(ROOT, "build", "check_gguf")
BIN = os.environ.get("DEEPSEEK_BIN", os.path.join(ROOT, "deepseek"))
VOCAB = 102400
FAILED = []
# llama.cpp's BF16 dot products round the activations to bf16 (relative 2^-9 per element; ours keep them fp32), which
# moves logits by a few thousandths of their spread: a top-2 gap under 2% of the logits' std is a near-tie it may flip
NEAR_TIE = 0.02


def check(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f": {detail}" if detail else ""), flush=True)
    if not ok:
        FAILED.append(name)


def run(args, stdin=None, threads=2):
    r = subprocess.run([BIN, *args], input=stdin, capture_output=True,
                       env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if r.returncode != 0:
        sys.exit(f"deepseek {' '.join(args[:3])} failed: {r.stderr.decode(errors='replace').strip()}")
    return r.stdout.decode()


# ------------------------------------------------------------------------------------------------ the model

def make_model(keep):
    hf = os.path.join(WORK, "hf")
    tok = os.path.join(WORK, "tokenizer.json")
    if not (keep and os.path.exists(tok)):
        run(["tokenizer", "import-gguf", os.path.join(ROOT, "data/vocab/deepseek-llm.gguf"), "--out", tok])
    if not (keep and os.path.exists(os.path.join(hf, "config.json"))):
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          rms_norm_eps=1e-6, rope_theta=10000.0, bos_token_id=100000, eos_token_id=100001,
                          tie_word_embeddings=False)
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).float()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim == 2:
                    p.normal_(0.0, 0.1)
                else:
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
        model.save_pretrained(hf)
        shutil.copy(tok, os.path.join(hf, "tokenizer.json"))
    dirs = {"f32": hf}
    for dt in ("bf16", "q8_0"):   # our model directories in the other dtypes (what `deepseek generate` runs)
        d = os.path.join(WORK, dt)
        if not (keep and os.path.exists(os.path.join(d, "config.json"))):
            run(["convert", "--model", hf, "--dtype", dt, "--out", d])
            shutil.copy(tok, os.path.join(d, "tokenizer.json"))
        dirs[dt] = d
    ggufs = {}
    for dt in ("f32", "bf16", "q8_0"):   # each from our model directory of that dtype: the very weights ours runs
        g = os.path.join(WORK, f"model-{dt}.gguf")
        run(["convert", "--model", dirs[dt], "--to", "gguf", "--dtype", dt, "--out", g])
        ggufs[dt] = g
    return hf, dirs, ggufs


# ------------------------------------------------------------------------------------------------ read-back

def permute(w, heads):   # Hugging Face's halves → llama.cpp's adjacent pairs, per head
    D = w.shape[0] // heads
    return w.reshape(heads, 2, D // 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf):
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    per = {"input_layernorm.weight": "attn_norm", "self_attn.q_proj.weight": "attn_q",
           "self_attn.k_proj.weight": "attn_k", "self_attn.v_proj.weight": "attn_v",
           "self_attn.o_proj.weight": "attn_output", "post_attention_layernorm.weight": "ffn_norm",
           "mlp.gate_proj.weight": "ffn_gate", "mlp.up_proj.weight": "ffn_up", "mlp.down_proj.weight": "ffn_down"}
    _, _, l, rest = hf.split(".", 3)
    return f"blk.{l}.{per[rest]}.weight"


def bf16_bits(x):   # round to nearest even, as torch does
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def check_read_back(hf, ggufs):
    import gguf
    from safetensors.numpy import load_file
    cfg = json.load(open(os.path.join(hf, "config.json")))
    src = load_file(os.path.join(hf, "model.safetensors"))
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    want_type = {"f32": gguf.GGMLQuantizationType.F32, "bf16": gguf.GGMLQuantizationType.BF16,
                 "q8_0": gguf.GGMLQuantizationType.Q8_0}
    want_ftype = {"f32": 0, "bf16": 32, "q8_0": 7}
    for dt, path in ggufs.items():
        r = gguf.GGUFReader(path)
        f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
        meta = {"general.architecture": "llama", "general.file_type": want_ftype[dt],
                "llama.block_count": cfg["num_hidden_layers"], "llama.embedding_length": cfg["hidden_size"],
                "llama.feed_forward_length": cfg["intermediate_size"], "llama.attention.head_count": H,
                "llama.attention.head_count_kv": KV, "llama.rope.dimension_count": cfg["hidden_size"] // H,
                "llama.context_length": cfg["max_position_embeddings"], "llama.vocab_size": VOCAB,
                "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "deepseek-llm",
                "tokenizer.ggml.bos_token_id": 100000, "tokenizer.ggml.eos_token_id": 100001,
                "tokenizer.ggml.add_bos_token": True}
        bad = [k for k, v in meta.items() if f.get(k) != v]
        bad += [k for k, v in (("llama.rope.freq_base", 10000.0), ("llama.attention.layer_norm_rms_epsilon", 1e-6))
                if not np.isclose(f.get(k, -1), v, rtol=1e-6)]
        if len(f.get("tokenizer.ggml.tokens", [])) != VOCAB:
            bad.append("tokenizer.ggml.tokens")
        check(f"read-back {dt}: metadata", not bad, f"{len(f)} keys" + (f"; wrong: {bad}" if bad else ""))
        tensors = {t.name: t for t in r.tensors}
        problems, n = [], 0
        for name, w in src.items():
            t = tensors.get(gguf_name(name))
            if t is None:
                problems.append(f"{name}: missing")
                continue
            n += 1
            if name.endswith("q_proj.weight"):
                w = permute(w, H)
            elif name.endswith("k_proj.weight"):
                w = permute(w, KV)
            tt = want_type[dt] if w.ndim == 2 else gguf.GGMLQuantizationType.F32
            if list(t.shape) != list(reversed(w.shape)) or t.tensor_type != tt:
                problems.append(f"{t.name}: {list(t.shape)} {t.tensor_type.name}")
                continue
            raw = np.asarray(t.data)
            if tt == gguf.GGMLQuantizationType.F32 and dt == "bf16":   # norms of the bf16 directory: rounded
                ok = np.array_equal(raw.reshape(w.shape).view(np.uint32), bf16_bits(w).astype(np.uint32) << 16)
            elif tt == gguf.GGMLQuantizationType.F32:
                ok = np.array_equal(raw.reshape(w.shape), w)
            elif tt == gguf.GGMLQuantizationType.BF16:
                ok = np.array_equal(raw.view(np.uint16).reshape(w.shape), bf16_bits(w))
            else:   # the gguf package's own Q8_0 quantiser on the same (permuted) weights
                ok = np.array_equal(raw.reshape(-1).view(np.uint8),
                                    gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0).reshape(-1).view(np.uint8))
            if not ok:
                problems.append(f"{t.name}: values differ")
        extra = set(tensors) - {gguf_name(k) for k in src}
        check(f"read-back {dt}: tensors", not problems and not extra and n == len(src),
              f"{n} tensors, names/shapes/types/values" + (f"; {problems[:4]} {sorted(extra)[:4]}" if problems or extra else ""))


# ------------------------------------------------------------------------------------------------ llama.cpp

TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "DeepSeek LLM: 2 trillion tokens, 67B parameters; 3.14159 × 10^5 = 314159.",
    "深度求索发布了开源大语言模型。今天天气很好，我们去公园散步吧！",
    "Привет, мир! Ελληνικά κείμενα. العربية نص. עברית. हिन्दी पाठ. 日本語のテキスト、カタカナ。한국어 텍스트.",
    "def f(x):\n    return x ** 2  # square\n\n\tindented\r\nline  with   spaces   ",
    "<｜begin▁of▁sentence｜>User: hi\n\nAssistant: hello<｜end▁of▁sentence｜>",
    "ü ö ä ß é è emoji 🙂👍🏽 and 1234567890 digits",
]


def check_tokenizer(dirs, ggufs):
    import llama_cpp
    llm = llama_cpp.Llama(model_path=ggufs["f32"], n_ctx=64, vocab_only=True, verbose=False)
    tok = os.path.join(dirs["f32"], "tokenizer.json")
    same = 0
    for i, text in enumerate(TEXTS):
        for bos in (False, True):
            ours = [int(x) for x in run(["tokenizer", "encode", "--tokenizer", tok] + (["--bos"] if bos else []),
                                        stdin=text.encode()).split()]
            theirs = llm.tokenize(text.encode(), add_bos=bos, special=True)
            if ours == theirs:
                same += 1
            else:
                k = next((j for j, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
                print(f"      text {i} (bos {bos}): first difference at {k}: ours {ours[k:k + 5]} llama.cpp {theirs[k:k + 5]}")
    check("tokenizer: llama.cpp tokenizes as deepseek tokenizer encode", same == 2 * len(TEXTS),
          f"{same}/{2 * len(TEXTS)} texts identical")
    tmpl = llm.metadata.get("tokenizer.chat_template", "")
    check("tokenizer: chat template in the metadata", "Assistant:" in tmpl and "bos_token" in tmpl, f"{len(tmpl)} chars")
    del llm


def greedy_llama_cpp(path, prompt, n_new, threads):
    import llama_cpp
    llm = llama_cpp.Llama(model_path=path, n_ctx=len(prompt) + n_new + 8, n_threads=threads,
                          n_threads_batch=threads, n_batch=max(len(prompt), 32), verbose=False)
    V = llm.n_vocab()
    out = []
    llm.eval(prompt)
    for i in range(n_new):
        tok = int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(V,))))
        out.append(tok)
        if i + 1 < n_new:
            llm.eval([tok])
    del llm
    return out


def reference_logits(hf, dt, ids, cache={}):
    """transformers' last-position logits in float32 on the weights as DT stores them (bf16: rounded; q8_0: the
    Q8_0 blocks dequantised) — the exact computation that both engines approximate at a divergence."""
    import torch
    if dt not in cache:
        import gguf
        from transformers import LlamaForCausalLM
        model = LlamaForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
        with torch.no_grad():
            for p in model.parameters():
                if dt == "bf16":   # (our bf16 directory rounds the norms too)
                    p.copy_(p.to(torch.bfloat16).float())
                elif p.ndim == 2 and dt == "q8_0":
                    q = gguf.quants.quantize(p.numpy(), gguf.GGMLQuantizationType.Q8_0)
                    p.copy_(torch.from_numpy(gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(p.shape)))
        cache[dt] = model
    with torch.inference_mode():
        return cache[dt](torch.tensor([ids])).logits[0, -1].double().numpy()


def check_greedy(dirs, ggufs, n_new, threads):
    rng = np.random.default_rng(1)
    prompts = [[100000] + rng.integers(0, 100000, 15).tolist() for _ in range(3)]
    prompts.append([int(x) for x in run(["tokenizer", "encode", "--tokenizer", os.path.join(dirs["f32"], "tokenizer.json"),
                                         "--bos"], stdin="The King James Bible: In the beginning".encode()).split()])
    for dt in ("f32", "bf16", "q8_0"):
        firsts, explained = [], True
        for p in prompts:
            ours = [int(x) for x in run(["generate", "--model", dirs[dt], "--prompt-ids", " ".join(map(str, p)), "-n",
                                         str(n_new), "--temperature", "0", "--ids", "--threads", str(threads)],
                                        threads=threads).split()]
            theirs = greedy_llama_cpp(ggufs[dt], p, n_new, threads)
            j = next((j for j, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            firsts.append(j)
            if j < n_new:   # where they part: which one the exact computation picks, and by how much
                lg = reference_logits(dirs["f32"], dt, p + ours[:j])
                top = np.sort(lg)[::-1]
                # a near-tie that ours resolves as the exact computation does: the two tokens are its top two, within
                # NEAR_TIE of the logits' spread
                explained &= (int(np.argmax(lg)) == ours[j] and lg[theirs[j]] == top[1]
                              and top[0] - top[1] < NEAR_TIE * lg.std())
                print(f"      {dt} prompt {len(firsts) - 1}: step {j}: ours {ours[j]} llama.cpp {theirs[j]}; fp32 reference picks "
                      f"{int(np.argmax(lg))}, logit(ours) - logit(llama.cpp) = {lg[ours[j]] - lg[theirs[j]]:+.5f} "
                      f"(top-2 gap {top[0] - top[1]:.5f}, logits' std {lg.std():.3f})", flush=True)
        agree = sum(firsts)
        detail = f"{agree}/{n_new * len(prompts)} tokens before the first difference (per prompt: {firsts})"
        if dt == "q8_0":
            print(f"INFO  greedy q8_0 (ours q8_0 vs llama.cpp Q8_0): {detail}", flush=True)
        elif dt == "f32":
            check("greedy f32: llama.cpp's tokens equal ours", all(f == n_new for f in firsts), detail)
        else:
            same = all(f == n_new for f in firsts)
            check("greedy bf16: llama.cpp's tokens equal ours" + ("" if same else ", or part at a near-tie that ours "
                  "resolves as the fp32 reference does"), same or explained, detail)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    os.makedirs(WORK, exist_ok=True)
    from importlib.metadata import version
    print(f"gguf {version('gguf')}, llama-cpp-python {version('llama-cpp-python')}, transformers {version('transformers')}",
          flush=True)
    hf, dirs, ggufs = make_model(a.keep)
    check_read_back(hf, ggufs)
    check_tokenizer(dirs, ggufs)
    check_greedy(dirs, ggufs, a.new, a.threads)
    print(f"check_gguf: {'all checks passed' if not FAILED else f'{len(FAILED)} failed: ' + ', '.join(FAILED)}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
