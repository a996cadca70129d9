"""The PyTorch side of bench_cpu: training tokens/s of transformers' LlamaForCausalLM on the CPU, fp32.

Same shape and thread count as ours; one step = forward with labels (mean cross-entropy) + backward +
torch.optim.AdamW (betas 0.9/0.95, weight decay 0.1). Prints `tokens_per_s: X` (wall clock) and
`tokens_per_cpu_s: Y` (per CPU second of the process: bench_cpu multiplies by the threads) for the best step.
"""
import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
for name, default in [("vocab", 8192), ("hidden", 512), ("layers", 4), ("heads", 8), ("kv-heads", 2), ("ffn", 1408),
                      ("batch", 4), ("seq", 256), ("threads", 2), ("steps", 3)]:
    p.add_argument("--" + name, type=int, default=default)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=a.heads,
                  num_key_value_heads=a.kv_heads, intermediate_size=a.ffn, max_position_embeddings=max(a.seq, 512),
                  rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
model = LlamaForCausalLM(cfg).float().train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
ids = torch.randint(0, a.vocab, (a.batch, a.seq))


def step():
    opt.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    opt.step()


step()  # warm-up
best, best_cpu = float("inf"), float("inf")
for _ in range(a.steps):
    t, c = time.perf_counter(), time.process_time()
    step()
    best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
print(f"attn_implementation: {model.config._attn_implementation}")
print(f"tokens_per_s: {a.batch * a.seq / best:.1f}")
print(f"tokens_per_cpu_s: {a.batch * a.seq / best_cpu:.1f}")
