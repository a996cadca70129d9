// defines: attention_forward_cuda, attention_backward_cuda, decode_attention_cuda, attention_check_dims (ATT_WARPS,
//          ATT_TILE, ATT_MAXD) and their kernels; the tensor-core kernels (attention_*_tc_kernel, TC_ROWS, TC_KEYS),
//          cuda_set_attention, cuda_attention_path
// The CUDA backend's causal grouped-query attention, fused flash-attention style (tiles in shared memory, an online
// softmax, no T×T matrix), and batch-1 decode attention over the KV cache. Part of deepseek.cu (#included, CUDA builds).
#pragma once

// ----------------------------------------------------------------------------
// Causal grouped-query attention, fused flash-attention style: K/V tiles in shared memory, an online softmax,
// no T×T matrix anywhere. q [B,T,H,D], k/v [B,T,KV,D]; query head h reads kv head h / (H/KV) directly (native
// GQA, no K/V replication). One warp per query row, ATT_WARPS rows of one head per block; lane j owns key j of
// each 32-key tile for the scores and dims lane, lane+32, … of the output.
//   forward:  m, l running max/sum;  y = Σ_s exp(s·k/√D − m) v / l;  lse = m + log l kept for backward
//   backward: P = exp(q·k/√D − lse),  Dq = dy·y,  dS = P ⊙ (dy·vᵀ − Dq)
//             dq = dS·k/√D  (one warp per query row)     dk = dSᵀ·q/√D,  dv = Pᵀ·dy  (one warp per key row,
//             looping over the group's query heads) — two kernels that each own their outputs: no atomics.
// Shared-memory rows are padded to D+1 floats so that 32 lanes reading 32 different rows hit 32 banks.
#define ATT_WARPS 8
#define ATT_TILE 32
#define ATT_MAXD 256

static size_t attention_forward_smem(int D) { return ((size_t)ATT_TILE * (D + 1) + (size_t)ATT_TILE * D + (size_t)ATT_WARPS * D) * sizeof(float); }
static size_t attention_dq_smem(int D) { return ((size_t)2 * ATT_TILE * (D + 1) + (size_t)2 * ATT_WARPS * D) * sizeof(float); }
static size_t attention_dkv_smem(int D) { return ((size_t)2 * ATT_TILE * (D + 1) + 2 * ATT_TILE + (size_t)2 * ATT_WARPS * D) * sizeof(float); }

__global__ void attention_forward_kernel(bf16* y, float* lse, const bf16* q, const bf16* k, const bf16* v,
                                         int T, int H, int KV, int D, float scale) {
    extern __shared__ float smem[];
    float* ks = smem;                              // [TILE][D+1]
    float* vs = ks + ATT_TILE * (D + 1);           // [TILE][D]
    float* qs = vs + ATT_TILE * D;                 // [WARPS][D], pre-scaled by 1/√D
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int b = blockIdx.y / H, h = blockIdx.y % H, kh = h / (H / KV);
    int t0 = blockIdx.x * ATT_WARPS, t = t0 + warp;
    bool active = t < T;
    float* qw = qs + warp * D;
    for (int d = lane; d < D; d += 32) qw[d] = active ? bf2f(q[(((size_t)b * T + t) * H + h) * D + d]) * scale : 0.0f;
    float m = -INFINITY, l = 0.0f, o[ATT_MAXD / 32];
    #pragma unroll
    for (int i = 0; i < ATT_MAXD / 32; i++) o[i] = 0.0f;
    int t_last = min(t0 + ATT_WARPS, T) - 1;
    for (int s0 = 0; s0 <= t_last; s0 += ATT_TILE) {
        __syncthreads();   // the previous tile is consumed (and qs is written)
        for (int i = threadIdx.x; i < ATT_TILE * D; i += blockDim.x) {
            int j = i / D, d = i % D, s = s0 + j;
            float kk = 0.0f, vv = 0.0f;
            if (s < T) {
                size_t off = (((size_t)b * T + s) * KV + kh) * D + d;
                kk = bf2f(k[off]);
                vv = bf2f(v[off]);
            }
            ks[j * (D + 1) + d] = kk;
            vs[j * D + d] = vv;
        }
        __syncthreads();
        if (!active || s0 > t) continue;   // warp-uniform; the loop bounds are block-uniform, so every thread syncs
        int s = s0 + lane;
        float score = -INFINITY;
        if (s <= t) {
            float dot = 0.0f;
            for (int d = 0; d < D; d++) dot += qw[d] * ks[lane * (D + 1) + d];
            score = dot;
        }
        float m_new = fmaxf(m, warp_max(score));
        float p = s <= t ? expf(score - m_new) : 0.0f;
        float alpha = expf(m - m_new);     // 0 on the first tile (m = −∞)
        l = l * alpha + warp_sum(p);
        #pragma unroll
        for (int i = 0; i < ATT_MAXD / 32; i++) o[i] *= alpha;
        int jn = min(ATT_TILE, t - s0 + 1);
        for (int j = 0; j < jn; j++) {
            float pj = __shfl_sync(0xffffffffu, p, j);
            #pragma unroll
            for (int i = 0; i < ATT_MAXD / 32; i++) {
                int d = lane + 32 * i;
                if (d < D) o[i] += pj * vs[j * D + d];
            }
        }
        m = m_new;
    }
    if (!active) return;
    float inv = 1.0f / l;
    #pragma unroll
    for (int i = 0; i < ATT_MAXD / 32; i++) {
        int d = lane + 32 * i;
        if (d < D) y[(((size_t)b * T + t) * H + h) * D + d] = f2bf(o[i] * inv);
    }
    if (lane == 0) lse[((size_t)b * H + h) * T + t] = m + logf(l);
}
// Dq[b,h,t] = Σ_d dy·y  (= Σ_s P·(dy·v), the softmax backward's row term). One warp per row.
__global__ void attention_dsum_kernel(float* dsum, const bf16* dy, const bf16* y, int B, int T, int H, int D) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;   // row = (b·T + t)·H + h
    if (row >= B * T * H) return;
    float acc = 0.0f;
    for (int d = lane; d < D; d += 32) acc += bf2f(dy[(size_t)row * D + d]) * bf2f(y[(size_t)row * D + d]);
    acc = warp_sum(acc);
    int h = row % H, bt = row / H, b = bt / T, t = bt % T;
    if (lane == 0) dsum[((size_t)b * H + h) * T + t] = acc;
}
__global__ void attention_backward_dq_kernel(bf16* dq, const bf16* dy, const float* lse, const float* dsum, const bf16* q,
                                             const bf16* k, const bf16* v, int T, int H, int KV, int D, float scale) {
    extern __shared__ float smem[];
    float* ks = smem;                              // [TILE][D+1]
    float* vs = ks + ATT_TILE * (D + 1);           // [TILE][D+1]
    float* qs = vs + ATT_TILE * (D + 1);           // [WARPS][D], pre-scaled
    float* dys = qs + ATT_WARPS * D;               // [WARPS][D]
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int b = blockIdx.y / H, h = blockIdx.y % H, kh = h / (H / KV);
    int t0 = blockIdx.x * ATT_WARPS, t = t0 + warp;
    bool active = t < T;
    float* qw = qs + warp * D;
    float* dyw = dys + warp * D;
    size_t row = (((size_t)b * T + t) * H + h) * D;
    for (int d = lane; d < D; d += 32) {
        qw[d] = active ? bf2f(q[row + d]) * scale : 0.0f;
        dyw[d] = active ? bf2f(dy[row + d]) : 0.0f;
    }
    float L = active ? lse[((size_t)b * H + h) * T + t] : 0.0f, Dq = active ? dsum[((size_t)b * H + h) * T + t] : 0.0f;
    float acc[ATT_MAXD / 32];
    #pragma unroll
    for (int i = 0; i < ATT_MAXD / 32; i++) acc[i] = 0.0f;
    int t_last = min(t0 + ATT_WARPS, T) - 1;
    for (int s0 = 0; s0 <= t_last; s0 += ATT_TILE) {
        __syncthreads();
        for (int i = threadIdx.x; i < ATT_TILE * D; i += blockDim.x) {
            int j = i / D, d = i % D, s = s0 + j;
            float kk = 0.0f, vv = 0.0f;
            if (s < T) {
                size_t off = (((size_t)b * T + s) * KV + kh) * D + d;
                kk = bf2f(k[off]);
                vv = bf2f(v[off]);
            }
            ks[j * (D + 1) + d] = kk;
            vs[j * (D + 1) + d] = vv;
        }
        __syncthreads();
        if (!active || s0 > t) continue;
        int s = s0 + lane;
        float ds = 0.0f;
        if (s <= t) {
            float dot = 0.0f, dp = 0.0f;
            for (int d = 0; d < D; d++) {
                dot += qw[d] * ks[lane * (D + 1) + d];
                dp += dyw[d] * vs[lane * (D + 1) + d];
            }
            ds = expf(dot - L) * (dp - Dq);
        }
        int jn = min(ATT_TILE, t - s0 + 1);
        for (int j = 0; j < jn; j++) {
            float dsj = __shfl_sync(0xffffffffu, ds, j);
            #pragma unroll
            for (int i = 0; i < ATT_MAXD / 32; i++) {
                int d = lane + 32 * i;
                if (d < D) acc[i] += dsj * ks[j * (D + 1) + d];
            }
        }
    }
    if (!active) return;
    #pragma unroll
    for (int i = 0; i < ATT_MAXD / 32; i++) {
        int d = lane + 32 * i;
        if (d < D) dq[row + d] = f2bf(acc[i] * scale);
    }
}
// One warp per key row s of kv head kh; the block's ATT_WARPS keys share tiles of 32 queries (q, dy, lse, Dq)
// of every query head of the group.
__global__ void attention_backward_dkv_kernel(bf16* dk, bf16* dv, const bf16* dy, const float* lse, const float* dsum,
                                              const bf16* q, const bf16* k, const bf16* v, int T, int H, int KV, int D, float scale) {
    extern __shared__ float smem[];
    float* qs = smem;                              // [TILE][D+1]  queries, pre-scaled
    float* dys = qs + ATT_TILE * (D + 1);          // [TILE][D+1]
    float* ls = dys + ATT_TILE * (D + 1);          // [TILE] lse
    float* dss = ls + ATT_TILE;                    // [TILE] Dq
    float* kws = dss + ATT_TILE;                   // [WARPS][D]
    float* vws = kws + ATT_WARPS * D;              // [WARPS][D]
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int b = blockIdx.y / KV, kh = blockIdx.y % KV, group = H / KV;
    int s_first = blockIdx.x * ATT_WARPS, s = s_first + warp;
    bool active = s < T;
    size_t krow = (((size_t)b * T + s) * KV + kh) * D;
    float* kw = kws + warp * D;
    float* vw = vws + warp * D;
    for (int d = lane; d < D; d += 32) {
        kw[d] = active ? bf2f(k[krow + d]) : 0.0f;
        vw[d] = active ? bf2f(v[krow + d]) : 0.0f;
    }
    float dka[ATT_MAXD / 32], dva[ATT_MAXD / 32];
    #pragma unroll
    for (int i = 0; i < ATT_MAXD / 32; i++) dka[i] = dva[i] = 0.0f;
    for (int h = kh * group; h < (kh + 1) * group; h++)
        for (int t0 = s_first; t0 < T; t0 += ATT_TILE) {
            __syncthreads();
            for (int i = threadIdx.x; i < ATT_TILE * D; i += blockDim.x) {
                int j = i / D, d = i % D, t = t0 + j;
                float qq = 0.0f, gg = 0.0f;
                if (t < T) {
                    size_t off = (((size_t)b * T + t) * H + h) * D + d;
                    qq = bf2f(q[off]) * scale;
                    gg = bf2f(dy[off]);
                }
                qs[j * (D + 1) + d] = qq;
                dys[j * (D + 1) + d] = gg;
            }
            for (int j = threadIdx.x; j < ATT_TILE; j += blockDim.x) {
                int t = t0 + j;
                ls[j] = t < T ? lse[((size_t)b * H + h) * T + t] : 0.0f;
                dss[j] = t < T ? dsum[((size_t)b * H + h) * T + t] : 0.0f;
            }
            __syncthreads();
            if (!active) continue;
            int t = t0 + lane;
            float p = 0.0f, ds = 0.0f;
            if (t < T && t >= s) {
                float dot = 0.0f, dp = 0.0f;
                for (int d = 0; d < D; d++) {
                    dot += kw[d] * qs[lane * (D + 1) + d];
                    dp += vw[d] * dys[lane * (D + 1) + d];
                }
                p = expf(dot - ls[lane]);
                ds = p * (dp - dss[lane]);
            }
            int jn = min(ATT_TILE, T - t0);
            for (int j = 0; j < jn; j++) {
                float pj = __shfl_sync(0xffffffffu, p, j), dsj = __shfl_sync(0xffffffffu, ds, j);
                #pragma unroll
                for (int i = 0; i < ATT_MAXD / 32; i++) {
                    int d = lane + 32 * i;
                    if (d < D) {
                        dva[i] += pj * dys[j * (D + 1) + d];
                        dka[i] += dsj * qs[j * (D + 1) + d];   // qs holds q/√D: the scale of dk is already in
                    }
                }
            }
        }
    if (!active) return;
    #pragma unroll
    for (int i = 0; i < ATT_MAXD / 32; i++) {
        int d = lane + 32 * i;
        if (d < D) { dk[krow + d] = f2bf(dka[i]); dv[krow + d] = f2bf(dva[i]); }
    }
}
// ----------------------------------------------------------------------------
// The same attention on tensor cores (bf16 WMMA 16×16×16 with fp32 accumulation), for head_dim 32, 64 or 128 — the
// released models' 128 among them; other head sizes, and DEEPSEEK_ATTENTION=scalar, take the kernels above. Our own
// kernels rather than cuDNN's fused attention: cuDNN is not among the dependencies (DESIGN.md), and the same tiling as
// above stays readable beside its scalar twin. FlashAttention-2's schedule, without its atomics:
//   forward  a block = 64 query rows of one head (4 warps × 16), key tiles of 64: S = Q·Kᵀ (tensor cores) into shared
//            memory, the online softmax row by row (two lanes a row), O = O·α + P·V (tensor cores, P rounded to bf16;
//            l sums the same rounded P), O kept in shared memory (fp32) because each row is rescaled;
//   backward P = exp(S/√D − lse) recomputed; dS = P ⊙ (dP − Dq), dP = dY·Vᵀ;
//            dq kernel:  a block = 64 query rows, dQ += dS·K over the key tiles, dQ in registers (fragments);
//            dkv kernel: a block = 64 keys of one kv head, over the group's query heads and the query tiles t ≥ s:
//                        dV += Pᵀ·dY, dK += dSᵀ·Q, both in registers. Each kernel owns its outputs: no atomics,
//                        so a run reproduces bit for bit like the scalar kernels.
// Shared-memory rows are padded (bf16 by 8, fp32 by 4) so that the fragments' rows start in different banks and every
// fragment pointer stays 32-byte aligned, as WMMA requires.
#ifndef DEEPSEEK_CUDA_EMU   // (tests/test_cuda_emu.cpp runs these kernels on the CPU: it brings its own wmma)
#include <mma.h>   // nvcuda::wmma
#endif
#define TC_ROWS 64    // query rows (or keys) per block: 4 warps × 16
#define TC_KEYS 64    // keys (or queries) per tile
#define TC_THREADS 128
namespace wmma = nvcuda::wmma;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> FragA;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> FragBt;   // B given as rows of Bᵀ
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> FragB;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;

static bool attention_tc_fits(int D) { return D == 32 || D == 64 || D == 128; }
template <int D> __host__ __device__ constexpr int tc_ld() { return D + 8; }          // bf16 tile rows
constexpr int TC_LDS = TC_KEYS + 4;                                // fp32 score rows
constexpr int TC_LDP = TC_KEYS + 8;                                // bf16 probability rows
template <int D> __host__ __device__ constexpr int tc_ldo() { return D + 4; }         // fp32 output rows
template <int D> constexpr size_t tc_fwd_smem() {
    return (size_t)3 * TC_ROWS * tc_ld<D>() * 2 + (size_t)4 * 16 * TC_LDS * 4 + (size_t)4 * 16 * TC_LDP * 2 + (size_t)4 * 16 * tc_ldo<D>() * 4;
}
template <int D> constexpr size_t tc_dq_smem() {
    return (size_t)4 * TC_ROWS * tc_ld<D>() * 2 + (size_t)4 * 16 * TC_LDS * 4 + (size_t)4 * 16 * TC_LDP * 2 + (size_t)4 * 16 * tc_ldo<D>() * 4;
}
template <int D> constexpr size_t tc_dkv_smem() {
    return (size_t)4 * TC_ROWS * tc_ld<D>() * 2 + (size_t)4 * 16 * TC_LDS * 4 + (size_t)2 * 4 * 16 * TC_LDP * 2 + (size_t)2 * TC_KEYS * 4;
}

// rows [r0, r0 + 64) of a [B·T, heads, D] tensor's head `head` into a [64][ld] tile, zeros past T (16-byte copies)
template <int D> __device__ void tc_load_tile(bf16* tile, const bf16* x, int b, int r0, int T, int heads, int head) {
    constexpr int ld = tc_ld<D>(), V8 = D / 8;
    for (int i = threadIdx.x; i < TC_ROWS * V8; i += blockDim.x) {
        int j = i / V8, c = (i % V8) * 8, r = r0 + j;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (r < T) val = *(const uint4*)(x + (((size_t)b * T + r) * heads + head) * D + c);
        *(uint4*)(tile + j * ld + c) = val;
    }
}

// A warp's 16×64 product through tensor cores into Sw [16][TC_LDS]: rows a [16][ld] times the transpose of a tile
// b [64][ld] (scores q·kᵀ, and dy·vᵀ in the backward)
template <int D> __device__ void tc_rows_times_tile_t(float* Sw, const bf16* a, const bf16* b) {
    constexpr int ld = tc_ld<D>();
    for (int j = 0; j < TC_KEYS / 16; j++) {
        FragC acc;
        wmma::fill_fragment(acc, 0.0f);
        #pragma unroll
        for (int kk = 0; kk < D; kk += 16) {
            FragA fa;
            FragBt fb;
            wmma::load_matrix_sync(fa, a + kk, ld);
            wmma::load_matrix_sync(fb, b + j * 16 * ld + kk, ld);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(Sw + j * 16, acc, TC_LDS, wmma::mem_row_major);
    }
}
// acc [16 × D] (D/16 fragments) += a [16][TC_LDP] (bf16 weights over the 64 tile rows) · the tile b [64][ld]
template <int D> __device__ void tc_accumulate(FragC (&acc)[D / 16], const bf16* a, const bf16* b) {
    constexpr int ld = tc_ld<D>();
    #pragma unroll
    for (int n = 0; n < D / 16; n++)
        #pragma unroll
        for (int kk = 0; kk < TC_KEYS; kk += 16) {
            FragA fa;
            FragB fb;
            wmma::load_matrix_sync(fa, a + kk, TC_LDP);
            wmma::load_matrix_sync(fb, b + kk * ld + n * 16, ld);
            wmma::mma_sync(acc[n], fa, fb, acc[n]);
        }
}

template <int D>
__global__ void __launch_bounds__(TC_THREADS) attention_forward_tc_kernel(bf16* y, float* lse, const bf16* q, const bf16* k,
                                                                           const bf16* v, int T, int H, int KV, float scale) {
    extern __shared__ __align__(128) unsigned char smem_tc[];
    constexpr int ld = tc_ld<D>(), ldo = tc_ldo<D>();
    bf16* Qs = (bf16*)smem_tc;                       // [64][ld]
    bf16* Ks = Qs + TC_ROWS * ld;                    // [64][ld]
    bf16* Vs = Ks + TC_KEYS * ld;                    // [64][ld]
    float* Ss = (float*)(Vs + TC_KEYS * ld);         // [4 warps][16][TC_LDS]
    bf16* Ps = (bf16*)(Ss + 4 * 16 * TC_LDS);        // [4][16][TC_LDP]
    float* Os = (float*)(Ps + 4 * 16 * TC_LDP);      // [4][16][ldo]
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int b = blockIdx.y / H, h = blockIdx.y % H, kh = h / (H / KV);
    int t0 = blockIdx.x * TC_ROWS, w0 = t0 + warp * 16;   // the block's and the warp's first query row
    float* Sw = Ss + warp * 16 * TC_LDS;
    bf16* Pw = Ps + warp * 16 * TC_LDP;
    float* Ow = Os + warp * 16 * ldo;
    tc_load_tile<D>(Qs, q, b, t0, T, H, h);
    for (int i = lane; i < 16 * D; i += 32) Ow[(i / D) * ldo + i % D] = 0.0f;
    int r = lane / 2, half = lane % 2, t = w0 + r;   // the row this lane keeps the softmax state of (with lane ^ 1)
    float m = -INFINITY, l = 0.0f;
    int t_last = min(t0 + TC_ROWS, T) - 1;           // block-uniform: every thread runs every iteration's barriers
    for (int s0 = 0; s0 <= t_last; s0 += TC_KEYS) {
        __syncthreads();   // the previous tile is consumed
        tc_load_tile<D>(Ks, k, b, s0, T, KV, kh);
        tc_load_tile<D>(Vs, v, b, s0, T, KV, kh);
        __syncthreads();
        if (w0 >= T || s0 > w0 + 15) continue;       // warp-uniform: no key of this tile is visible to the warp's rows
        tc_rows_times_tile_t<D>(Sw, Qs + warp * 16 * ld, Ks);   // S = Q_w · Kᵀ  [16 × 64]
        __syncwarp();
        float mx = -INFINITY;                         // the online softmax over this lane's 32 keys of row r
        for (int c = half * 32; c < half * 32 + 32; c++) {
            int s = s0 + c;
            float x = (t < T && s <= t) ? Sw[r * TC_LDS + c] * scale : -INFINITY;
            Sw[r * TC_LDS + c] = x;
            mx = fmaxf(mx, x);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        float m_new = fmaxf(m, mx);
        bool none = m_new == -INFINITY;               // no visible key yet (or a row past T): nothing to add
        float alpha = none ? 1.0f : expf(m - m_new);  // 0 on the row's first visible tile (m = −∞)
        float sum = 0.0f;
        for (int c = half * 32; c < half * 32 + 32; c++) {
            bf16 p = f2bf(none ? 0.0f : expf(Sw[r * TC_LDS + c] - m_new));
            Pw[r * TC_LDP + c] = p;
            sum += bf2f(p);                           // l sums the rounded P that multiplies V
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        l = l * alpha + sum;
        m = m_new;
        for (int d = half; d < D; d += 2) Ow[r * ldo + d] *= alpha;
        __syncwarp();
        #pragma unroll
        for (int n = 0; n < D; n += 16) {             // O_w += P_w · V  [16 × D]
            FragC acc;
            wmma::load_matrix_sync(acc, Ow + n, ldo, wmma::mem_row_major);
            #pragma unroll
            for (int kk = 0; kk < TC_KEYS; kk += 16) {
                FragA a;
                FragB bv;
                wmma::load_matrix_sync(a, Pw + kk, TC_LDP);
                wmma::load_matrix_sync(bv, Vs + kk * ld + n, ld);
                wmma::mma_sync(acc, a, bv, acc);
            }
            wmma::store_matrix_sync(Ow + n, acc, ldo, wmma::mem_row_major);
        }
        __syncwarp();
    }
    __syncwarp();
    if (t < T) {
        float inv = 1.0f / l;
        for (int d = half; d < D; d += 2) y[(((size_t)b * T + t) * H + h) * D + d] = f2bf(Ow[r * ldo + d] * inv);
        if (half == 0) lse[((size_t)b * H + h) * T + t] = m + logf(l);
    }
}

// dQ = scale · Σ_key-tiles dS·K for 64 query rows of one head; dsum (Dq) from attention_dsum_kernel
template <int D>
__global__ void __launch_bounds__(TC_THREADS) attention_backward_dq_tc_kernel(bf16* dq, const bf16* dy, const float* lse,
                                                                              const float* dsum, const bf16* q, const bf16* k,
                                                                              const bf16* v, int T, int H, int KV, float scale) {
    extern __shared__ __align__(128) unsigned char smem_tc[];
    constexpr int ld = tc_ld<D>(), ldo = tc_ldo<D>();
    bf16* Qs = (bf16*)smem_tc;                       // [64][ld]
    bf16* Gs = Qs + TC_ROWS * ld;                    // dY [64][ld]
    bf16* Ks = Gs + TC_ROWS * ld;
    bf16* Vs = Ks + TC_KEYS * ld;
    float* Ss = (float*)(Vs + TC_KEYS * ld);         // [4][16][TC_LDS]: S, then dP
    bf16* Ds = (bf16*)(Ss + 4 * 16 * TC_LDS);        // [4][16][TC_LDP]: dS
    float* Os = (float*)(Ds + 4 * 16 * TC_LDP);      // [4][16][ldo]: dQ on its way out
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int b = blockIdx.y / H, h = blockIdx.y % H, kh = h / (H / KV);
    int t0 = blockIdx.x * TC_ROWS, w0 = t0 + warp * 16;
    float* Sw = Ss + warp * 16 * TC_LDS;
    bf16* Dw = Ds + warp * 16 * TC_LDP;
    tc_load_tile<D>(Qs, q, b, t0, T, H, h);
    tc_load_tile<D>(Gs, dy, b, t0, T, H, h);
    int r = lane / 2, half = lane % 2, t = w0 + r;
    float L = t < T ? lse[((size_t)b * H + h) * T + t] : 0.0f, Dq = t < T ? dsum[((size_t)b * H + h) * T + t] : 0.0f;
    FragC acc[D / 16];
    #pragma unroll
    for (int n = 0; n < D / 16; n++) wmma::fill_fragment(acc[n], 0.0f);
    int t_last = min(t0 + TC_ROWS, T) - 1;
    for (int s0 = 0; s0 <= t_last; s0 += TC_KEYS) {
        __syncthreads();
        tc_load_tile<D>(Ks, k, b, s0, T, KV, kh);
        tc_load_tile<D>(Vs, v, b, s0, T, KV, kh);
        __syncthreads();
        if (w0 >= T || s0 > w0 + 15) continue;
        float p[32];
        for (int pass = 0; pass < 2; pass++) {        // pass 0: S = Q·Kᵀ → P;  pass 1: dP = dY·Vᵀ → dS
            tc_rows_times_tile_t<D>(Sw, (pass ? Gs : Qs) + warp * 16 * ld, pass ? Vs : Ks);
            __syncwarp();
            #pragma unroll
            for (int i = 0; i < 32; i++) {
                int cc = half * 32 + i, s = s0 + cc;
                float x = Sw[r * TC_LDS + cc];
                if (pass == 0) p[i] = (t < T && s <= t) ? expf(x * scale - L) : 0.0f;
                else Dw[r * TC_LDP + cc] = f2bf(p[i] * (x - Dq));
            }
            __syncwarp();
        }
        tc_accumulate<D>(acc, Dw, Ks);                // dQ_w += dS_w · K  [16 × D]
    }
    float* Ow = Os + warp * 16 * ldo;
    #pragma unroll
    for (int n = 0; n < D / 16; n++) wmma::store_matrix_sync(Ow + n * 16, acc[n], ldo, wmma::mem_row_major);
    __syncwarp();
    if (t < T)
        for (int d = half; d < D; d += 2) dq[(((size_t)b * T + t) * H + h) * D + d] = f2bf(Ow[r * ldo + d] * scale);
}

// dK, dV for 64 keys of one kv head: over the group's query heads and the query tiles that see them (t ≥ s)
template <int D>
__global__ void __launch_bounds__(TC_THREADS) attention_backward_dkv_tc_kernel(bf16* dk, bf16* dv, const bf16* dy, const float* lse,
                                                                               const float* dsum, const bf16* q, const bf16* k,
                                                                               const bf16* v, int T, int H, int KV, float scale) {
    extern __shared__ __align__(128) unsigned char smem_tc[];
    constexpr int ld = tc_ld<D>(), ldo = tc_ldo<D>();
    bf16* Ks = (bf16*)smem_tc;                       // the block's keys [64][ld]
    bf16* Vs = Ks + TC_ROWS * ld;
    bf16* Qs = Vs + TC_ROWS * ld;                    // a query tile [64][ld]
    bf16* Gs = Qs + TC_KEYS * ld;                    // its dY
    float* Ss = (float*)(Gs + TC_KEYS * ld);         // [4][16][TC_LDS]: Sᵀ, then dPᵀ
    bf16* Ps = (bf16*)(Ss + 4 * 16 * TC_LDS);        // [4][16][TC_LDP]: Pᵀ
    bf16* Ds = Ps + 4 * 16 * TC_LDP;                 // [4][16][TC_LDP]: dSᵀ
    float* Ls = (float*)(Ds + 4 * 16 * TC_LDP);      // [64] the tile's lse
    float* Qd = Ls + TC_KEYS;                        // [64] its Dq
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int b = blockIdx.y / KV, kh = blockIdx.y % KV, group = H / KV;
    int s_first = blockIdx.x * TC_ROWS, w0 = s_first + warp * 16;   // the block's and the warp's first key
    float* Sw = Ss + warp * 16 * TC_LDS;
    bf16* Pw = Ps + warp * 16 * TC_LDP;
    bf16* Dw = Ds + warp * 16 * TC_LDP;
    tc_load_tile<D>(Ks, k, b, s_first, T, KV, kh);
    tc_load_tile<D>(Vs, v, b, s_first, T, KV, kh);
    int r = lane / 2, half = lane % 2, s = w0 + r;   // the key row this lane works on (with lane ^ 1)
    FragC dka[D / 16], dva[D / 16];
    #pragma unroll
    for (int n = 0; n < D / 16; n++) { wmma::fill_fragment(dka[n], 0.0f); wmma::fill_fragment(dva[n], 0.0f); }
    for (int h = kh * group; h < (kh + 1) * group; h++)
        for (int t0 = s_first; t0 < T; t0 += TC_KEYS) {
            __syncthreads();
            tc_load_tile<D>(Qs, q, b, t0, T, H, h);
            tc_load_tile<D>(Gs, dy, b, t0, T, H, h);
            for (int j = threadIdx.x; j < TC_KEYS; j += blockDim.x) {
                int t = t0 + j;
                Ls[j] = t < T ? lse[((size_t)b * H + h) * T + t] : 0.0f;
                Qd[j] = t < T ? dsum[((size_t)b * H + h) * T + t] : 0.0f;
            }
            __syncthreads();
            if (w0 >= T) continue;                    // warp-uniform (t0 + 63 ≥ w0 always: t0 ≥ s_first, tiles of 64)
            float p[32];
            for (int pass = 0; pass < 2; pass++) {    // pass 0: Sᵀ = K·Qᵀ → Pᵀ;  pass 1: dPᵀ = V·dYᵀ → dSᵀ
                tc_rows_times_tile_t<D>(Sw, (pass ? Vs : Ks) + warp * 16 * ld, pass ? Gs : Qs);
                __syncwarp();
                #pragma unroll
                for (int i = 0; i < 32; i++) {
                    int cc = half * 32 + i, t = t0 + cc;
                    float x = Sw[r * TC_LDS + cc];
                    if (pass == 0) {
                        p[i] = (s < T && t < T && t >= s) ? expf(x * scale - Ls[cc]) : 0.0f;
                        Pw[r * TC_LDP + cc] = f2bf(p[i]);
                    } else {
                        Dw[r * TC_LDP + cc] = f2bf(p[i] * (x - Qd[cc]));
                    }
                }
                __syncwarp();
            }
            tc_accumulate<D>(dva, Pw, Gs);            // dV_w += Pᵀ_w · dY   [16 × D]
            tc_accumulate<D>(dka, Dw, Qs);            // dK_w += dSᵀ_w · Q
        }
    __syncthreads();   // the query tiles are consumed: their space stages the outputs, [4][16][ldo] fp32 (≤ 2·64·ld bf16)
    float* Ow = (float*)Qs + warp * 16 * ldo;
    size_t krow = (((size_t)b * T + s) * KV + kh) * D;
    for (int out = 0; out < 2; out++) {
        #pragma unroll
        for (int n = 0; n < D / 16; n++) wmma::store_matrix_sync(Ow + n * 16, out ? dva[n] : dka[n], ldo, wmma::mem_row_major);
        __syncwarp();
        if (s < T)
            for (int d = half; d < D; d += 2) {
                if (out) dv[krow + d] = f2bf(Ow[r * ldo + d]);
                else dk[krow + d] = f2bf(Ow[r * ldo + d] * scale);
            }
        __syncwarp();
    }
}

// DEEPSEEK_ATTENTION=scalar (or cuda_set_attention("scalar")) keeps every head size on the kernels above
static int g_attention_scalar = -1;   // -1: not read yet
static bool attention_use_tc(int D) {
    if (g_attention_scalar < 0) {
        const char* e = getenv("DEEPSEEK_ATTENTION");
        std::string s = e ? e : "";
        if (s != "" && s != "auto" && s != "tensor" && s != "scalar")
            die("DEEPSEEK_ATTENTION must be auto, tensor or scalar, got '%s'", s.c_str());
        g_attention_scalar = s == "scalar";
    }
    return !g_attention_scalar && attention_tc_fits(D);
}
void cuda_set_attention(const std::string& impl) {
    if (impl != "auto" && impl != "tensor" && impl != "scalar") die("attention: auto, tensor or scalar, got '%s'", impl.c_str());
    g_attention_scalar = impl == "scalar";
}
const char* cuda_attention_path(int D) { return attention_use_tc(D) ? "tensor cores (bf16 WMMA)" : "CUDA cores (fp32)"; }

// The host side, launches (<<<…>>>) and all: not in the CPU emulation, which launches the kernels itself
#ifndef DEEPSEEK_CUDA_EMU
template <int D> static void attention_tc_configure() {
    static bool done = false;   // opt in to their shared memory (over 48 KiB) once per head size
    if (done) return;
    cudaCheck(cudaFuncSetAttribute(attention_forward_tc_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)tc_fwd_smem<D>()));
    cudaCheck(cudaFuncSetAttribute(attention_backward_dq_tc_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)tc_dq_smem<D>()));
    cudaCheck(cudaFuncSetAttribute(attention_backward_dkv_tc_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)tc_dkv_smem<D>()));
    done = true;
}
template <int D> static void attention_forward_tc(bf16* y, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H, int KV) {
    attention_tc_configure<D>();
    attention_forward_tc_kernel<D><<<dim3(ceil_div(T, TC_ROWS), B * H), TC_THREADS, tc_fwd_smem<D>()>>>(y, lse, q, k, v, T, H, KV,
                                                                                                       1.0f / sqrtf((float)D));
    cudaCheck(cudaGetLastError());
}
template <int D> static void attention_backward_tc(bf16* dq, bf16* dk, bf16* dv, const float* dsum, const bf16* dy, const float* lse,
                                                   const bf16* q, const bf16* k, const bf16* v, int B, int T, int H, int KV) {
    attention_tc_configure<D>();
    float scale = 1.0f / sqrtf((float)D);
    attention_backward_dq_tc_kernel<D><<<dim3(ceil_div(T, TC_ROWS), B * H), TC_THREADS, tc_dq_smem<D>()>>>(dq, dy, lse, dsum, q, k, v,
                                                                                                          T, H, KV, scale);
    cudaCheck(cudaGetLastError());
    attention_backward_dkv_tc_kernel<D><<<dim3(ceil_div(T, TC_ROWS), B * KV), TC_THREADS, tc_dkv_smem<D>()>>>(dk, dv, dy, lse, dsum, q,
                                                                                                             k, v, T, H, KV, scale);
    cudaCheck(cudaGetLastError());
}

static void attention_check_dims(int D) {
    if (D > ATT_MAXD) die("cuda: head_dim %d exceeds the attention kernels' maximum %d", D, ATT_MAXD);
    static int configured_for = 0;   // opt in to > 48 KiB of shared memory once per head size
    if (configured_for == D) return;
    cudaCheck(cudaFuncSetAttribute(attention_forward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)attention_forward_smem(D)));
    cudaCheck(cudaFuncSetAttribute(attention_backward_dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)attention_dq_smem(D)));
    cudaCheck(cudaFuncSetAttribute(attention_backward_dkv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)attention_dkv_smem(D)));
    configured_for = D;
}
static void attention_forward_cuda(bf16* y, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H, int KV, int D) {
    if (attention_use_tc(D)) {
        if (D == 32) attention_forward_tc<32>(y, lse, q, k, v, B, T, H, KV);
        else if (D == 64) attention_forward_tc<64>(y, lse, q, k, v, B, T, H, KV);
        else attention_forward_tc<128>(y, lse, q, k, v, B, T, H, KV);
        return;
    }
    attention_check_dims(D);
    dim3 grid(ceil_div(T, ATT_WARPS), B * H);
    attention_forward_kernel<<<grid, 32 * ATT_WARPS, attention_forward_smem(D)>>>(y, lse, q, k, v, T, H, KV, D, 1.0f / sqrtf((float)D));
    cudaCheck(cudaGetLastError());
}
// dsum: scratch [B,H,T]
static void attention_backward_cuda(bf16* dq, bf16* dk, bf16* dv, float* dsum, const bf16* dy, const bf16* y, const float* lse,
                                    const bf16* q, const bf16* k, const bf16* v, int B, int T, int H, int KV, int D) {
    attention_dsum_kernel<<<ceil_div((long long)B * T * H, 8), 256>>>(dsum, dy, y, B, T, H, D);
    cudaCheck(cudaGetLastError());
    if (attention_use_tc(D)) {
        if (D == 32) attention_backward_tc<32>(dq, dk, dv, dsum, dy, lse, q, k, v, B, T, H, KV);
        else if (D == 64) attention_backward_tc<64>(dq, dk, dv, dsum, dy, lse, q, k, v, B, T, H, KV);
        else attention_backward_tc<128>(dq, dk, dv, dsum, dy, lse, q, k, v, B, T, H, KV);
        return;
    }
    attention_check_dims(D);
    float scale = 1.0f / sqrtf((float)D);
    attention_backward_dq_kernel<<<dim3(ceil_div(T, ATT_WARPS), B * H), 32 * ATT_WARPS, attention_dq_smem(D)>>>(
        dq, dy, lse, dsum, q, k, v, T, H, KV, D, scale);
    cudaCheck(cudaGetLastError());
    attention_backward_dkv_kernel<<<dim3(ceil_div(T, ATT_WARPS), B * KV), 32 * ATT_WARPS, attention_dkv_smem(D)>>>(
        dk, dv, dy, lse, dsum, q, k, v, T, H, KV, D, scale);
    cudaCheck(cudaGetLastError());
}

#endif  // DEEPSEEK_CUDA_EMU

// Batch-1 decode attention over the KV cache: the query at position pos attends to cache rows 0..pos.
// q [H,D], cache [Tmax,KV,D] (one layer). One block per query head: scores in shared memory (one warp per key,
// lanes over D), a block softmax, then thread d sums P·v[:,d] (coalesced over d).
__global__ void decode_attention_kernel(bf16* y, const bf16* q, const bf16* kc, const bf16* vc, int pos, int H, int KV, int D, float scale) {
    extern __shared__ float scores[];             // [pos+1]
    __shared__ float red[32];
    int h = blockIdx.x, kh = h / (H / KV), warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
    const bf16* qh = q + (size_t)h * D;
    for (int s = warp; s <= pos; s += nw) {
        const bf16* ks = kc + ((size_t)s * KV + kh) * D;
        float dot = 0.0f;
        for (int d = lane; d < D; d += 32) dot += bf2f(qh[d]) * bf2f(ks[d]);
        dot = warp_sum(dot);
        if (lane == 0) scores[s] = dot * scale;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int s = threadIdx.x; s <= pos; s += blockDim.x) mx = fmaxf(mx, scores[s]);
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int s = threadIdx.x; s <= pos; s += blockDim.x) { float e = expf(scores[s] - mx); scores[s] = e; sum += e; }
    sum = block_sum(sum, red);   // its __syncthreads also publishes the exponentials
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s <= pos; s++) acc += scores[s] * bf2f(vc[((size_t)s * KV + kh) * D + d]);
        y[(size_t)h * D + d] = f2bf(acc / sum);
    }
}
#ifndef DEEPSEEK_CUDA_EMU
static void decode_attention_cuda(bf16* y, const bf16* q, const bf16* kc, const bf16* vc, int pos, int H, int KV, int D) {
    size_t smem = (size_t)(pos + 1) * sizeof(float);
    if (smem > 48 * 1024) {
        static size_t configured = 0;
        if (smem > configured) {
            cudaCheck(cudaFuncSetAttribute(decode_attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
            configured = smem;
        }
    }
    decode_attention_kernel<<<H, 128, smem>>>(y, q, kc, vc, pos, H, KV, D, 1.0f / sqrtf((float)D));
    cudaCheck(cudaGetLastError());
}
#endif  // DEEPSEEK_CUDA_EMU
