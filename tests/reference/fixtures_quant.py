"""fixtures_quant.py — the q8_0 quantisation fixture from the peer (the gguf package, llama.cpp's Python side).

Run by make_fixtures.py (or alone: .venv/bin/python tests/reference/fixtures_quant.py) from the repository root.
Writes tests/fixtures/quant/q8_0.safetensors:

  x       F32 [N]          the weights to quantise (N a multiple of 32)
  blocks  U8  [N/32, 34]   gguf.quants.quantize(x, Q8_0): per block of 32, the fp16 scale d (2 bytes, little
                           endian) then 32 int8 q — the package states it is bit-exact with ggml-quants.c's reference

The blocks of x are chosen to reach every branch of the rule (d = max|x| / 127, q = round-half-away(x / d), d
stored as fp16): normal values at several scales, an all-zero block, blocks of exact ties (k + 0.5 with max 127,
so d = 1), a block whose scale is an fp16 subnormal, one whose scale rounds to fp16's largest finite values, and
negative maxima. tests/test_infer.cpp holds q8_0_quantize to these bytes exactly.
"""

import os
import sys

import numpy as np
from gguf import GGMLQuantizationType, quants
from safetensors.numpy import save_file

OUT = os.path.join("tests", "fixtures", "quant")


def blocks_of_x():
    rng = np.random.default_rng(20261207)
    bs = []
    for scale in (1e-3, 0.02, 0.5, 3.0, 100.0):              # normal weights at several scales
        for _ in range(8):
            bs.append(rng.normal(0, scale, 32))
    bs.append(np.zeros(32))                                   # d = 0: every q is 0
    for _ in range(4):                                        # exact ties: x/d = k + 0.5, d = 1
        b = rng.integers(-126, 126, 32) + 0.5
        b[0] = 127.0 if rng.random() < 0.5 else -127.0
        bs.append(b)
    bs.append(rng.normal(0, 1e-4, 32))                        # d ≈ 2e-6: an fp16 subnormal scale
    bs.append(rng.normal(0, 1e-9, 32))                        # d below fp16's smallest subnormal: stored 0
    b = rng.normal(0, 1, 32); b[5] = 65504.0 * 127 * 0.99999; bs.append(b)   # d just under fp16's max
    b = rng.normal(0, 1, 32); b[9] = -40.0; bs.append(b)     # the maximum is negative
    b = rng.uniform(-1, 1, 32).astype(np.float32); b[3] = 1.0; bs.append(b)  # max exactly 1
    return np.concatenate(bs).astype(np.float32)


def main():
    os.makedirs(OUT, exist_ok=True)
    x = blocks_of_x()
    q = quants.quantize(x.reshape(1, -1), GGMLQuantizationType.Q8_0).reshape(-1, 34)
    assert q.shape[0] * 32 == x.size and q.dtype == np.uint8
    # the package's own dequantisation must give back x within half a step of each block (a check on the fixture)
    back = quants.dequantize(q.reshape(1, -1), GGMLQuantizationType.Q8_0).reshape(-1)
    d = q[:, :2].copy().view(np.float16).astype(np.float32).reshape(-1)
    err = np.abs(back - x).reshape(-1, 32).max(axis=1)
    amax = np.abs(x).reshape(-1, 32).max(axis=1)
    kept = d > 0   # (a scale below fp16's smallest subnormal is stored as 0: that block comes back as zeros)
    # half a step, plus what storing d in fp16 moves 127 steps (relative 2^-11, or 2^-25 absolute when subnormal)
    assert np.all(err[kept] <= 0.5 * d[kept] + 127 * np.maximum(d[kept] * 2.0**-11, 2.0**-25) + 1e-30)
    assert np.all(back.reshape(-1, 32)[~kept] == 0) and np.sum(~kept & (amax > 0)) == 1
    path = os.path.join(OUT, "q8_0.safetensors")
    save_file({"x": x, "blocks": np.ascontiguousarray(q)}, path, metadata={"peer": "gguf.quants.quantize Q8_0"})
    print(f"wrote {path} ({x.size} weights, {q.shape[0]} blocks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
