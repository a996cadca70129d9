"""The PyTorch peer for tests/gpu_check.sh: the same shapes as tests/bench/bench_gpu.cpp, trained the usual PyTorch way
(fp32 parameters under bf16 autocast, F.scaled_dot_product_attention, fused AdamW) and decoded at batch 1 with a
KV cache. Prints lines in the same format, with the same FLOPs formula and peak, so the two sit side by side.
"""
import argparse
import time

import torch
import torch.nn.functional as F

SHAPES = {  # name: (vocab, hidden, layers, heads, kv_heads, intermediate) — as bench_shape() in tests/bench/bench_gpu.cpp
    "124m": (32000, 768, 12, 12, 12, 2048),
    "350m": (32000, 1024, 24, 16, 16, 2816),
    "1b": (32000, 2048, 22, 32, 4, 5632),
}


class Llama(torch.nn.Module):
    def __init__(self, V, C, L, H, KV, Fd, T):
        super().__init__()
        self.H, self.KV, self.D = H, KV, C // H
        self.embed = torch.nn.Embedding(V, C)
        lin = lambda i, o: torch.nn.Linear(i, o, bias=False)
        self.layers = torch.nn.ModuleList()
        for _ in range(L):
            m = torch.nn.Module()
            m.ln1, m.ln2 = torch.nn.RMSNorm(C, eps=1e-6), torch.nn.RMSNorm(C, eps=1e-6)
            m.q, m.k, m.v, m.o = lin(C, H * self.D), lin(C, KV * self.D), lin(C, KV * self.D), lin(H * self.D, C)
            m.gate, m.up, m.down = lin(C, Fd), lin(C, Fd), lin(Fd, C)
            self.layers.append(m)
        self.norm, self.lm_head = torch.nn.RMSNorm(C, eps=1e-6), lin(C, V)
        inv = 1.0 / (10000.0 ** (torch.arange(0, self.D, 2).float() / self.D))
        ang = torch.outer(torch.arange(T).float(), inv)
        self.register_buffer("cos", torch.cat([ang, ang], -1).cos(), persistent=False)
        self.register_buffer("sin", torch.cat([ang, ang], -1).sin(), persistent=False)

    def rope(self, x, pos):  # x [B, h, T, D]
        c, s = self.cos[pos], self.sin[pos]
        x1, x2 = x.chunk(2, -1)
        return x * c + torch.cat([-x2, x1], -1) * s

    def forward(self, idx, pos0=0, cache=None):
        B, T = idx.shape
        pos = torch.arange(pos0, pos0 + T, device=idx.device)
        x = self.embed(idx)
        for i, m in enumerate(self.layers):
            h = m.ln1(x)
            q = self.rope(m.q(h).view(B, T, self.H, self.D).transpose(1, 2), pos)
            k = self.rope(m.k(h).view(B, T, self.KV, self.D).transpose(1, 2), pos)
            v = m.v(h).view(B, T, self.KV, self.D).transpose(1, 2)
            if cache is not None:
                cache[i][0][:, :, pos0:pos0 + T] = k
                cache[i][1][:, :, pos0:pos0 + T] = v
                k, v = cache[i][0][:, :, :pos0 + T], cache[i][1][:, :, :pos0 + T]
            y = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None, enable_gqa=self.KV != self.H)
            x = x + m.o(y.transpose(1, 2).reshape(B, T, -1))
            h = m.ln2(x)
            x = x + m.down(F.silu(m.gate(h)) * m.up(h))
        return self.lm_head(self.norm(x))


def flops_per_token(V, C, L, H, KV, Fd, T):
    D = C // H
    n_matmul = L * (C * H * D * 2 + 2 * C * KV * D + 3 * C * Fd) + V * C
    return 6 * n_matmul + 12 * L * H * D * T, n_matmul


def train(name, B, T, steps, peak):
    V, C, L, H, KV, Fd = SHAPES[name]
    with torch.device("cuda"):  # initialise on the GPU: seconds, not a minute, for 1B parameters
        model = Llama(V, C, L, H, KV, Fd, T)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    fpt, n_matmul = flops_per_token(V, C, L, H, KV, Fd, T)
    for it in range(3 + steps):
        if it == 3:
            torch.cuda.synchronize()
            t0 = time.time()
        x = torch.randint(0, V, (B, T), device="cuda")
        y = torch.randint(0, V, (B, T), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float().view(-1, V), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    dt = time.time() - t0
    tps = steps * B * T / dt
    print(f"torch train: shape {name} B={B} T={T} steps {steps}: {tps:.0f} tok/s, {1e3 * dt / steps:.1f} ms/step, "
          f"model FLOPs/token {fpt:.4g} (6·{n_matmul} + 12·L·H·D·T), MFU {100 * tps * fpt / (peak * 1e12):.1f}% of {peak:.0f} TFLOP/s",
          flush=True)
    del model, opt
    torch.cuda.empty_cache()


@torch.no_grad()
def decode(name, n):
    V, C, L, H, KV, Fd = SHAPES[name]
    with torch.device("cuda"):
        model = Llama(V, C, L, H, KV, Fd, n + 1).to(torch.bfloat16)
    D = C // H
    cache = [(torch.zeros(1, KV, n + 1, D, device="cuda", dtype=torch.bfloat16),
              torch.zeros(1, KV, n + 1, D, device="cuda", dtype=torch.bfloat16)) for _ in range(L)]
    tok = torch.ones(1, 1, dtype=torch.long, device="cuda")
    for pos in range(8):
        model(tok, pos, cache)
    torch.cuda.synchronize()
    t0 = time.time()
    for pos in range(n):
        tok = model(tok, pos, cache)[:, -1].argmax(-1, keepdim=True)
    torch.cuda.synchronize()
    dt = time.time() - t0
    print(f"torch decode: shape {name} batch 1, {n} tokens: {n / dt:.0f} tok/s ({1e3 * dt / n:.3f} ms/token), eager with a KV cache",
          flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    a = ap.parse_args()
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}", flush=True)
    train("124m", 16, 1024, 20, a.peak_tflops)
    train("350m", 8, 1024, 10, a.peak_tflops)
    decode("1b", 256)
