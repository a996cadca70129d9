// defines: attention_forward_cuda, attention_backward_cuda, decode_attention_cuda, attention_check_dims (ATT_WARPS,
//          ATT_TILE, ATT_MAXD) and their kernels
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
    attention_check_dims(D);
    dim3 grid(ceil_div(T, ATT_WARPS), B * H);
    attention_forward_kernel<<<grid, 32 * ATT_WARPS, attention_forward_smem(D)>>>(y, lse, q, k, v, T, H, KV, D, 1.0f / sqrtf((float)D));
    cudaCheck(cudaGetLastError());
}
// dsum: scratch [B,H,T]
static void attention_backward_cuda(bf16* dq, bf16* dk, bf16* dv, float* dsum, const bf16* dy, const bf16* y, const float* lse,
                                    const bf16* q, const bf16* k, const bf16* v, int B, int T, int H, int KV, int D) {
    attention_check_dims(D);
    float scale = 1.0f / sqrtf((float)D);
    attention_dsum_kernel<<<ceil_div((long long)B * T * H, 8), 256>>>(dsum, dy, y, B, T, H, D);
    cudaCheck(cudaGetLastError());
    attention_backward_dq_kernel<<<dim3(ceil_div(T, ATT_WARPS), B * H), 32 * ATT_WARPS, attention_dq_smem(D)>>>(
        dq, dy, lse, dsum, q, k, v, T, H, KV, D, scale);
    cudaCheck(cudaGetLastError());
    attention_backward_dkv_kernel<<<dim3(ceil_div(T, ATT_WARPS), B * KV), 32 * ATT_WARPS, attention_dkv_smem(D)>>>(
        dk, dv, dy, lse, dsum, q, k, v, T, H, KV, D, scale);
    cudaCheck(cudaGetLastError());
}

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
