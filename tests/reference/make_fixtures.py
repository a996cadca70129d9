"""make_fixtures.py — the committed test fixtures, made by the peers (PyTorch + transformers).

`make fixtures` runs this with the pinned venv (tests/reference/requirements.txt), from the repository root.
It writes, deterministically (fixed seeds, one CPU thread):

  tests/fixtures/model_gqa/, model_mha/    two tiny random LlamaForCausalLM checkpoints (save_pretrained, f32)
  tests/fixtures/model_*_ref.safetensors   input_ids, targets, logits, loss and the gradient of every parameter
  tests/fixtures/saved_by_deepseek/        a model written by OUR binary (`./deepseek convert`, f32)
  tests/fixtures/saved_by_deepseek_ref.safetensors
                                           input_ids + logits for it, and metadata recording whether
                                           transformers loaded it strictly and whether our bf16 save rounds
                                           exactly like torch's fp32 -> bf16 (round to nearest even)

then runs every tests/reference/fixtures_*.py with the same python, so later fixture scripts slot in by name.
Every check is printed in a summary; the script exits non-zero if any fails.

What it is not: a test of our code's numbers. It only writes what the peers compute; the C++ tests compare.

Reference numbers are computed in float64 on a double copy of the saved float32 weights, then cast to float32.
model.double() alone is not float64 all the way: transformers' Llama keeps three float32 islands meant for
half precision (RMSNorm's `.to(float32)`, RoPE's cos/sin table, eager attention's softmax dtype). For the
reference we replace RMSNorm and RoPE forwards by the same formulas without the float32 round trip and use
SDPA attention (float64 throughout on CPU); a check confirms the result still agrees with the stock float32
transformers forward.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np
import torch
import torch.nn.functional as F
import safetensors
import transformers
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join("tests", "fixtures")
DEEPSEEK_BIN = os.environ.get("DEEPSEEK_BIN", "./deepseek")
B, T = 2, 13

# ------------------------------------------------------------------------------------------------
# model configurations (Hugging Face names); the two differ in every dimension, GQA vs MHA, eps and rope_theta

MODELS = {
    "model_gqa": dict(vocab_size=257, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                      num_key_value_heads=2, head_dim=8, intermediate_size=100, max_position_embeddings=64,
                      rms_norm_eps=1e-6, rope_theta=10000.0, seed=1001),
    "model_mha": dict(vocab_size=211, hidden_size=40, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, head_dim=10, intermediate_size=72, max_position_embeddings=64,
                      rms_norm_eps=1e-5, rope_theta=500000.0, seed=2002),
}
INIT_STD = 0.1  # larger than transformers' 0.02 so logits and gradients are far from trivial

# ------------------------------------------------------------------------------------------------
# the summary: every check is one line, failures make the exit status non-zero

CHECKS = []  # (name, ok, detail)


def check(name, ok, detail=""):
    CHECKS.append((name, bool(ok), detail))
    print(f"  [{'ok' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}", flush=True)
    return bool(ok)


def save_fixture(tensors, path, metadata):
    """safetensors.torch.save_file, made byte-reproducible: safetensors stores __metadata__ in a hash map,
    so its key order changes from run to run; rewrite the header with the keys sorted (offsets unchanged)."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=metadata)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the header is space-padded to a multiple of 8 bytes
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + data)
    wrote(path)


def wrote(path):
    print(f"wrote {path} ({os.path.getsize(path):,} bytes)", flush=True)


def wrote_dir(path):
    for name in sorted(os.listdir(path)):
        wrote(os.path.join(path, name))


# ------------------------------------------------------------------------------------------------
# float64 reference forward: the same formulas as transformers' Llama, without its float32 islands

def rmsnorm_forward_fp64(self, x):
    # LlamaRMSNorm.forward: weight * x / sqrt(mean(x^2) + eps), here in the input's dtype
    variance = x.pow(2).mean(-1, keepdim=True)
    return self.weight * (x * torch.rsqrt(variance + self.variance_epsilon))


def rope_forward_fp64(self, x, position_ids):
    # LlamaRotaryEmbedding default rope: inv_freq[i] = theta^(-2i/d), angle = pos * inv_freq, halves concatenated
    cfg = self.config
    theta = cfg.rope_parameters["rope_theta"]
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = position_ids[..., None].to(torch.float64) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def float64_copy(model):
    """A float64 copy of `model` (same weights, exactly) whose forward is float64 throughout."""
    cfg = LlamaConfig.from_dict(model.config.to_dict())
    m = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float64)
    m.load_state_dict({k: v.to(torch.float64) for k, v in model.state_dict().items()}, strict=True)
    assert m.config.rope_parameters["rope_type"] == "default"
    patched = {"LlamaRMSNorm": 0, "LlamaRotaryEmbedding": 0}
    for mod in m.modules():
        if type(mod).__name__ == "LlamaRMSNorm":
            mod.forward = types.MethodType(rmsnorm_forward_fp64, mod)
        elif type(mod).__name__ == "LlamaRotaryEmbedding":
            mod.forward = types.MethodType(rope_forward_fp64, mod)
        else:
            continue
        patched[type(mod).__name__] += 1
    # two norms per layer + the final one, one shared rotary table: if transformers moves these, fail loudly
    assert patched == {"LlamaRMSNorm": 2 * cfg.num_hidden_layers + 1, "LlamaRotaryEmbedding": 1}, patched
    return m.eval()


def rel_err(a, b):
    """max |a - b| / max |b|: error relative to the tensor's scale."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def reference_pass(model, input_ids, targets=None):
    """Logits (and loss + gradient of every parameter if targets given), float64 computed, float32 returned."""
    m = float64_copy(model)
    logits = m(input_ids=input_ids.long()).logits  # [B, T, V], causal, no attention mask
    out = {"logits": logits.detach().float().contiguous()}
    if targets is not None:
        V = logits.shape[-1]
        loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1).long(), ignore_index=-1)
        loss.backward()
        out["loss"] = loss.detach().float().reshape(1)
        for name, p in m.named_parameters():
            out["grad." + name] = p.grad.detach().float().contiguous()
    # the patched float64 pass must still be transformers' model: compare with its stock float32 pass
    # (worst scale-relative error over logits and every gradient; float32 rounding puts it near 1e-6)
    model.eval().zero_grad(set_to_none=True)
    stock = model(input_ids=input_ids.long()).logits
    err = rel_err(stock.detach(), out["logits"])
    if targets is not None:
        F.cross_entropy(stock.reshape(-1, V), targets.reshape(-1).long(), ignore_index=-1).backward()
        for name, p in model.named_parameters():
            err = max(err, rel_err(p.grad, out["grad." + name]))
        model.zero_grad(set_to_none=True)
    out["_stock_err"] = err
    return out


# ------------------------------------------------------------------------------------------------
# part 1 + 2: random checkpoints saved by transformers, with logits / loss / gradients

def make_config(spec):
    return LlamaConfig(
        vocab_size=spec["vocab_size"], hidden_size=spec["hidden_size"],
        num_hidden_layers=spec["num_hidden_layers"], num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"], head_dim=spec["head_dim"],
        intermediate_size=spec["intermediate_size"], max_position_embeddings=spec["max_position_embeddings"],
        rms_norm_eps=spec["rms_norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": spec["rope_theta"]},
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, hidden_act="silu",
    )


def init_weights(model, gen):
    # matrices (embeddings, projections, lm_head) ~ N(0, 0.1^2); RMSNorm weights 1 + 0.1 N(0, 1), so that the
    # norm-weight gradient path is exercised (with weights of exactly 1 a transposed gradient could hide)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.ndim == 1:
                p.copy_(1.0 + INIT_STD * noise)
            else:
                p.copy_(INIT_STD * noise)


def make_batch(vocab, gen):
    input_ids = torch.randint(0, vocab, (B, T), generator=gen, dtype=torch.int64)
    targets = torch.empty_like(input_ids)
    targets[:, :-1] = input_ids[:, 1:]
    targets[:, -1] = torch.randint(0, vocab, (B,), generator=gen, dtype=torch.int64)
    # masked (ignore_index -1): row 0 position 0 and one in the middle; row 1 a contiguous run of 3 and one more
    for b, t in [(0, 0), (0, 7), (1, 4), (1, 5), (1, 6), (1, 10)]:
        targets[b, t] = -1
    return input_ids.to(torch.int32), targets.to(torch.int32)


def load_strict(path, **kw):
    """from_pretrained, with the loading info reduced to a list of problems (empty: strict)."""
    model, info = LlamaForCausalLM.from_pretrained(path, output_loading_info=True, **kw)
    problems = [f"{k}: {sorted(map(str, v))}" for k, v in info.items() if v]
    return model, problems


def state_equal_to_file(model, path):
    """Every tensor of the safetensors file equals the loaded parameter bitwise (same dtype, shape, bits)."""
    file = load_file(path)
    sd = model.state_dict()
    bad = []
    if set(file) != set(sd):
        bad.append(f"keys differ: only in file {sorted(set(file) - set(sd))}, only in model {sorted(set(sd) - set(file))}")
    for k in sorted(set(file) & set(sd)):
        a, b = file[k], sd[k]
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a.view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8)):
            bad.append(f"{k} ({a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)})")
    return bad


def make_model_fixture(name, spec):
    print(f"\n== {name}", flush=True)
    torch.manual_seed(spec["seed"])
    gen = torch.Generator().manual_seed(spec["seed"])
    model = LlamaForCausalLM(make_config(spec)).float()
    init_weights(model, gen)
    out_dir = os.path.join(FIXTURES, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    wrote_dir(out_dir)

    # the reference is computed from what is on disk, loaded back the way any user would load it
    loaded, problems = load_strict(out_dir, dtype=torch.float32)
    check(f"{name}: transformers reloads it strictly", not problems, "; ".join(problems))
    bad = state_equal_to_file(loaded, os.path.join(out_dir, "model.safetensors"))
    check(f"{name}: reloaded tensors equal the file bitwise", not bad, "; ".join(bad[:3]))

    input_ids, targets = make_batch(spec["vocab_size"], gen)
    ref = reference_pass(loaded, input_ids, targets)
    stock_err = ref.pop("_stock_err")
    check(f"{name}: float64 reference agrees with stock float32 transformers", stock_err < 1e-5,
          f"worst rel err over logits and gradients {stock_err:.2e}")
    n_params = sum(1 for _ in loaded.named_parameters())
    n_grads = sum(1 for k in ref if k.startswith("grad."))
    check(f"{name}: a gradient for every parameter", n_grads == n_params, f"{n_grads}/{n_params}")
    zero = [k for k, v in ref.items() if k.startswith("grad.") and v.abs().max() == 0]
    check(f"{name}: no gradient is all zero", not zero, ", ".join(zero))
    n_masked = int((targets == -1).sum())
    print(f"  loss {ref['loss'].item():.6f} over {B * T - n_masked} targets ({n_masked} masked), "
          f"logits std {ref['logits'].std().item():.3f}", flush=True)

    tensors = {"input_ids": input_ids.contiguous(), "targets": targets.contiguous(), **ref}
    path = os.path.join(FIXTURES, f"{name}_ref.safetensors")
    save_fixture(tensors, path, metadata={"torch": torch.__version__.split("+")[0],
                                           "transformers": transformers.__version__,
                                           "compute": "float64, cast to float32"})


# ------------------------------------------------------------------------------------------------
# part 3: models written by our binary, read back by transformers

def run_convert(out_dir, dtype):
    cmd = [DEEPSEEK_BIN, "convert", "--config", os.path.join(FIXTURES, "model_gqa", "config.json"),
           "--out", out_dir, "--seed", "3", "--init-std", "0.1", "--dtype", dtype]
    print("  $ " + " ".join(cmd), flush=True)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{type(e).__name__}: {e}"
    if r.returncode != 0:
        return f"exit {r.returncode}: {(r.stderr or r.stdout).strip()[-500:]}"
    for f in ("config.json", "model.safetensors"):
        if not os.path.exists(os.path.join(out_dir, f)):
            return f"{f} not written"
    return None


def config_matches(path, spec):
    """The config our binary wrote says the same model as the one it was given."""
    cfg = LlamaConfig.from_pretrained(path)
    got = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
               num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
               head_dim=cfg.head_dim, intermediate_size=cfg.intermediate_size,
               max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
               rope_theta=cfg.rope_parameters["rope_theta"])
    diff = [f"{k} {got[k]} != {spec[k]}" for k in got if got[k] != spec[k]]
    if cfg.tie_word_embeddings:
        diff.append("tie_word_embeddings true")
    if cfg.hidden_act != "silu":
        diff.append(f"hidden_act {cfg.hidden_act}")
    return diff


def bf16_rounding(path, f32):
    """'exact' if every tensor of the bf16 file is f32_tensor.to(torch.bfloat16) bitwise, else what differs."""
    if f32 is None:
        return "not checked: no f32 save to compare with"
    try:
        bf16 = load_file(path)
    except Exception as e:
        return f"{type(e).__name__}: {e}"[:2000]
    bad = []
    if set(bf16) != set(f32):
        bad.append(f"keys differ from the f32 save: {sorted(set(bf16) ^ set(f32))}")
    for k in sorted(set(bf16) & set(f32)):
        got, want = bf16[k], f32[k].to(torch.bfloat16)
        if got.dtype != torch.bfloat16 or got.shape != want.shape:
            bad.append(f"{k}: {got.dtype} {tuple(got.shape)}, want bfloat16 {tuple(want.shape)}")
            continue
        g, w = got.reshape(-1).view(torch.int16), want.reshape(-1).view(torch.int16)
        diff = (g != w).nonzero()
        if len(diff):
            i = int(diff[0])
            x = f32[k].reshape(-1)[i].item()
            bad.append(f"{k}: {len(diff)}/{g.numel()} differ, e.g. f32 {x!r} ({np.float32(x).view(np.uint32):#010x})"
                       f" -> {int(g[i]) & 0xffff:#06x}, torch {int(w[i]) & 0xffff:#06x}")
    if not bad:
        return "exact"
    return f"{len(bad)} of {len(bf16)} tensors differ: " + "; ".join(bad[:3])


def make_roundtrip_fixture():
    print("\n== saved_by_deepseek (./deepseek convert -> transformers)", flush=True)
    spec = MODELS["model_gqa"]
    out_dir = os.path.join(FIXTURES, "saved_by_deepseek")
    shutil.rmtree(out_dir, ignore_errors=True)
    meta = {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
            "compute": "float64, cast to float32"}
    gen = torch.Generator().manual_seed(3003)
    input_ids = torch.randint(0, spec["vocab_size"], (B, T), generator=gen, dtype=torch.int64).to(torch.int32)
    tensors = {"input_ids": input_ids}

    # f32: strict load, bitwise equal, and the reference logits
    err = run_convert(out_dir, "f32")
    f32 = None
    if not check("convert --dtype f32 runs", err is None, err or ""):
        meta["strict_load"] = f"convert failed: {err}"
    else:
        wrote_dir(out_dir)
        diff = config_matches(out_dir, spec)
        check("saved_by_deepseek: config.json describes model_gqa", not diff, "; ".join(diff))
        try:
            f32 = load_file(os.path.join(out_dir, "model.safetensors"))
            model, problems = load_strict(out_dir, dtype="auto")
            bad = state_equal_to_file(model, os.path.join(out_dir, "model.safetensors"))
            meta["strict_load"] = "ok" if not problems and not bad else "; ".join(problems + bad)[:2000]
        except Exception as e:  # mismatched shapes and malformed files raise
            model, meta["strict_load"] = None, f"{type(e).__name__}: {e}"[:2000]
        check("saved_by_deepseek: transformers loads it strictly, tensors equal bitwise",
              meta["strict_load"] == "ok", "" if meta["strict_load"] == "ok" else meta["strict_load"])
        if model is not None:
            check("saved_by_deepseek: all tensors float32", all(v.dtype == torch.float32 for v in f32.values()),
                  ", ".join(sorted({str(v.dtype) for v in f32.values()})))
            # the median, not each: an init may scale some matrices (e.g. residual projections by 1/sqrt(2L))
            stds = sorted(v.std().item() for v in f32.values() if v.ndim == 2)
            check("saved_by_deepseek: matrices drawn with --init-std 0.1", 0.09 < stds[len(stds) // 2] < 0.11
                  and stds[0] > 0, f"std {stds[0]:.4f}..{stds[-1]:.4f}, median {stds[len(stds) // 2]:.4f}")
            ref = reference_pass(model.float(), input_ids)
            stock_err = ref.pop("_stock_err")
            check("saved_by_deepseek: float64 reference agrees with stock float32 transformers",
                  stock_err < 1e-5, f"logits rel err {stock_err:.2e}")
            tensors.update(ref)

    # bf16: each tensor is torch's round-to-nearest-even of the f32 save, and transformers loads it
    tmp = tempfile.mkdtemp(prefix="deepseek_bf16_")
    try:
        err = run_convert(tmp, "bf16")
        if not check("convert --dtype bf16 runs", err is None, err or ""):
            meta["bf16_rounding"] = meta["bf16_strict_load"] = f"convert failed: {err}"
        else:
            meta["bf16_rounding"] = bf16_rounding(os.path.join(tmp, "model.safetensors"), f32)
            check("saved_by_deepseek: bf16 save == torch fp32->bf16 (round to nearest even), bitwise",
                  meta["bf16_rounding"] == "exact", "" if meta["bf16_rounding"] == "exact" else meta["bf16_rounding"])
            try:
                model, problems = load_strict(tmp, dtype="auto")
                problems += state_equal_to_file(model, os.path.join(tmp, "model.safetensors"))
            except Exception as e:
                problems = [f"{type(e).__name__}: {e}"]
            meta["bf16_strict_load"] = "ok" if not problems else "; ".join(problems)[:2000]
            check("saved_by_deepseek (bf16): transformers loads it strictly, tensors equal bitwise",
                  not problems, "; ".join(problems[:3]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    path = os.path.join(FIXTURES, "saved_by_deepseek_ref.safetensors")
    save_fixture(tensors, path, metadata=meta)
    print("  metadata " + json.dumps(meta), flush=True)


# ------------------------------------------------------------------------------------------------
# further fixture scripts: tests/reference/fixtures_*.py, each run with this python from the repo root

def run_other_scripts():
    # by name, except fixtures_eval.py last: it reads the models fixtures_infer.py writes
    scripts = sorted(glob.glob(os.path.join("tests", "reference", "fixtures_*.py")))
    for script in sorted(scripts, key=lambda s: os.path.basename(s) == "fixtures_eval.py"):
        print(f"\n== {script}", flush=True)
        r = subprocess.run([sys.executable, script])
        check(f"{script} succeeds", r.returncode == 0, f"exit {r.returncode}" if r.returncode else "")


def main():
    os.chdir(ROOT)
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)  # one summation order, so reruns write the same bytes
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"safetensors {safetensors.__version__}, numpy {np.__version__}", flush=True)
    os.makedirs(FIXTURES, exist_ok=True)
    for name, spec in MODELS.items():
        make_model_fixture(name, spec)
    if "--no-roundtrip" in sys.argv[1:]:
        print("\n(skipping saved_by_deepseek: --no-roundtrip)")
    else:
        make_roundtrip_fixture()
    run_other_scripts()

    failed = [c for c in CHECKS if not c[1]]
    print(f"\n== summary: {len(CHECKS) - len(failed)} checks passed, {len(failed)} failed")
    for name, ok, detail in CHECKS:
        print(f"  [{'ok' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
