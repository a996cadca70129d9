"""bench_train.py — training tokens/s of `deepseek train` and of the same training loop in PyTorch, side by side.

`make bench-train` (part of `make bench`) runs it from the repository root with the pinned venv. Both sides train
the same model (the `tiny` preset by default, written by `./deepseek convert` and loaded into transformers'
LlamaForCausalLM with from_pretrained), fp32 on the CPU with the same thread count, on the same random token
stream, with the same step: forward + mean cross-entropy + backward over the batch, clip_grad_norm_(1.0),
AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only) and the multi-step LR schedule.
Ours is the real command (data loader, clipping, logging included); tokens/s per step is read from its progress
lines. The machine may be shared, so rounds alternate ours and PyTorch and we report the median and best of the
steps after the first of each round, and the ratio ours / PyTorch (> 1: we are faster).

    .venv/bin/python tests/bench/bench_train.py [--preset tiny] [--threads 2] [--batch 8] [--seq-len 256]
                                                [--steps 6] [--rounds 2]
"""
import argparse
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import time

import numpy as np
import torch
from transformers import LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--bin", default=os.environ.get("DEEPSEEK_BIN", "./deepseek"))
p.add_argument("--preset", default="tiny")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--batch", type=int, default=8, help="sequences per step")
p.add_argument("--seq-len", type=int, default=256)
p.add_argument("--steps", type=int, default=6)
p.add_argument("--rounds", type=int, default=2)
p.add_argument("--out", default="build/bench_train")
a = p.parse_args()

shutil.rmtree(a.out, ignore_errors=True)
os.makedirs(a.out)
model_dir, data_dir = os.path.join(a.out, "model"), os.path.join(a.out, "data")
subprocess.run([a.bin, "convert", "--preset", a.preset, "--out", model_dir, "--seed", "1"], check=True,
               stdout=subprocess.DEVNULL)
V = json.load(open(os.path.join(model_dir, "config.json")))["vocab_size"]

# the same random token stream for both: our shard format (256 × int32 header, uint32 tokens)
n_tokens = a.batch * a.seq_len * (a.steps + 2) * 2 + 1
rng = np.random.default_rng(0)
tokens = rng.integers(0, V, size=n_tokens, dtype=np.uint32)
os.makedirs(data_dir)
header = np.zeros(256, dtype=np.int32)
header[:5] = [20240102, 1, V, n_tokens & 0xFFFFFFFF, n_tokens >> 32]
with open(os.path.join(data_dir, "train.bin"), "wb") as f:
    f.write(header.tobytes())
    f.write(tokens.tobytes())
json.dump({"vocab_size": V, "train": {"file": "train.bin", "tokens": n_tokens, "bytes": 4 * n_tokens}},
          open(os.path.join(data_dir, "data.json"), "w"))


def ours():
    run = os.path.join(a.out, "run")
    shutil.rmtree(run, ignore_errors=True)
    cmd = [a.bin, "train", "--model", model_dir, "--data", data_dir, "--out", run, "--steps", str(a.steps + 1),
           "--seq-len", str(a.seq_len), "--batch-tokens", str(a.batch * a.seq_len), "--micro-batch", str(a.batch),
           "--lr", "1e-3", "--eval-every", "0", "--save-every", "0", "--threads", str(a.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    rates = [float(m) for m in re.findall(r"^step \d+/\d+ \| .*? \| ([0-9.]+) tok/s", out, re.M)]
    return rates[1:]  # the first step warms up allocations


def peer():
    torch.set_num_threads(a.threads)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    total = a.steps + 1
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 0.8 * total else (0.316 if s < 0.9 * total else 0.1))
    T, B = a.seq_len, a.batch
    data = torch.from_numpy(tokens.astype(np.int64))
    rates = []
    for step in range(total):
        t0 = time.perf_counter()
        idx = torch.arange(B) * T + step * B * T
        x = torch.stack([data[i:i + T] for i in idx.tolist()])
        y = torch.stack([data[i + 1:i + T + 1] for i in idx.tolist()])
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        rates.append(B * T / (time.perf_counter() - t0))
    return rates[1:]


print(f"bench_train: preset {a.preset}, batch {a.batch} × {a.seq_len} tokens, {a.threads} thread(s), "
      f"{a.steps} timed steps × {a.rounds} rounds; torch {torch.__version__}", flush=True)
r_ours, r_peer = [], []
for r in range(a.rounds):
    o, q = ours(), peer()
    r_ours += o
    r_peer += q
    print(f"  round {r + 1}: ours median {statistics.median(o):.0f} tok/s, PyTorch median {statistics.median(q):.0f} tok/s",
          flush=True)
mo, mp = statistics.median(r_ours), statistics.median(r_peer)
print(f"training tokens/s ours:    median {mo:.0f}, best {max(r_ours):.0f}")
print(f"training tokens/s PyTorch: median {mp:.0f}, best {max(r_peer):.0f}")
print(f"ratio ours/PyTorch: median {mo / mp:.2f}, best {max(r_ours) / max(r_peer):.2f}")
