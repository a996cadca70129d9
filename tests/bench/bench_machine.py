"""bench_machine.py — what a generation benchmark must say beside its figures: the CPU, the memory bandwidth, and
the bytes one decoded token reads (so each decode figure stands beside its bound, bandwidth / bytes per token).

Used by bench_infer.py. The bandwidth comes from build/bench/bench_mem (tests/bench/bench_mem.cpp, built by
`make bench-infer`): T threads streaming a 1 GiB array, best of 5.
"""

import json
import os
import re
import subprocess

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def cpu_description():
    """'AMD EPYC (family 25 model 1), 2 CPUs, AVX2 FMA F16C, L1d 32 KiB / L2 512 KiB per core, L3 32 MiB'."""
    info = {}
    try:
        for line in open("/proc/cpuinfo"):
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
    except OSError:
        return "unknown CPU"
    flags = set(info.get("flags", "").split())
    simd = [name for flag, name in (("avx512f", "AVX-512"), ("avx512_vnni", "VNNI"), ("avx_vnni", "AVX-VNNI"),
                                    ("avx512_bf16", "BF16"), ("avx2", "AVX2"), ("fma", "FMA"), ("f16c", "F16C"))
            if flag in flags]
    caches = []
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in sorted(os.listdir(base)):
            d = os.path.join(base, idx)
            if not idx.startswith("index"):
                continue
            level = open(os.path.join(d, "level")).read().strip()
            kind = open(os.path.join(d, "type")).read().strip()
            size = open(os.path.join(d, "size")).read().strip()
            if kind != "Instruction":
                caches.append(f"L{level}{'d' if kind == 'Data' else ''} {size}")
    except OSError:
        pass
    return (f"{info.get('model name', 'unknown CPU')} (family {info.get('cpu family', '?')} model {info.get('model', '?')}), "
            f"{os.cpu_count()} CPUs, {' '.join(simd) or 'no AVX'}, caches {', '.join(caches) or 'unknown'}")


def read_bandwidth(threads):
    """GB/s (10^9 B/s) that `threads` threads read from memory, or None when bench_mem is missing."""
    exe = os.path.join(ROOT, "build", "bench", "bench_mem")
    if not os.path.exists(exe):
        return None
    r = subprocess.run([exe, "--threads", str(threads)], capture_output=True, text=True)
    m = re.search(r"read_bandwidth_GBps: ([\d.]+)", r.stdout)
    return float(m.group(1)) if m else None


def decode_bytes(model_dir, position, kv_bytes=4):
    """Bytes read to decode one token at `position`: every matrix of every layer and the lm_head as stored (fp32 4,
    bf16 2, q8_0 34/32 bytes per weight — int8 and an fp16 scale per 32), one embedding row, the norms (fp32),
    and the KV cache so far (2 · layers · position · kv_heads · head_dim · kv_bytes: 4 for fp32, 2 for fp16)."""
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    C, L, F, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
    H = cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads", H)
    D = cfg.get("head_dim") or C // H
    if cfg.get("quantization_config", {}).get("quant_method") == "q8_0":
        per_weight = 34 / 32
    else:
        per_weight = 2 if cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16" else 4
    matrices = L * (C * H * D + 2 * C * KV * D + H * D * C + 3 * C * F) + V * C
    return matrices * per_weight + C * per_weight + (2 * L + 1) * C * 4 + 2 * L * position * KV * D * kv_bytes
