// defines: embedding_forward_kernel, embedding_backward_kernel, embedding_group, rmsnorm_forward_cuda,
//          rmsnorm_backward_cuda (RMS_CHUNK), rope_apply_cuda, swiglu_forward_cuda, swiglu_backward_cuda,
//          crossentropy_forward_kernel, crossentropy_backward_inplace_kernel, and their kernels
// The CUDA backend's row-wise layers, in the order of the CPU's: the embedding (a deterministic backward), RMSNorm,
// RoPE, SwiGLU and the in-place cross-entropy. Part of deepseek.cu (#included, CUDA builds, after cuda_common.cuh).
#pragma once

// ----------------------------------------------------------------------------
// embedding: residual[n] = embed_tokens[token[n]];  d embed_tokens[v] += Σ_{n: token[n]=v} dres[n]

__global__ void embedding_forward_kernel(bf16* out, const int* tokens, const bf16* wte, int N, int C) {
    int n = blockIdx.x;
    const bf16* row = wte + (size_t)tokens[n] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) out[(size_t)n * C + c] = row[c];
}
// Deterministic backward: the host groups positions by token (counting sort, positions ascending); one block per
// distinct token sums its rows in that fixed order and owns its gradient row, so repeated tokens never race.
__global__ void embedding_backward_kernel(float* dwte, const float* dres, const int* uniq, const int* starts,
                                          const int* order, int C) {
    int u = blockIdx.x, begin = starts[u], end = starts[u + 1];
    float* dst = dwte + (size_t)uniq[u] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = 0.0f;
        for (int i = begin; i < end; i++) acc += dres[(size_t)order[i] * C + c];
        dst[c] += acc;
    }
}
// host side of the grouping: uniq[U], starts[U+1], order[N] (positions sorted by token, stable)
static void embedding_group(const int* tokens, int N, int V, std::vector<int>* uniq, std::vector<int>* starts,
                            std::vector<int>* order) {
    std::vector<int> count(V + 1, 0);
    for (int i = 0; i < N; i++) count[tokens[i] + 1]++;
    for (int v = 0; v < V; v++) count[v + 1] += count[v];
    order->assign(N, 0);
    std::vector<int> fill(count.begin(), count.end() - 1);
    for (int i = 0; i < N; i++) (*order)[fill[tokens[i]]++] = i;
    uniq->clear();
    starts->clear();
    for (int v = 0; v < V; v++)
        if (count[v + 1] > count[v]) { uniq->push_back(v); starts->push_back(count[v]); }
    starts->push_back(N);
}

// ----------------------------------------------------------------------------
// RMSNorm: y = w ⊙ x · rstd,  rstd = 1/sqrt(mean(x²) + eps). One warp per row.
// Backward, fused with the residual add: dres += rstd · (g − x̂ · mean(g ⊙ x̂)) with g = dy ⊙ w, x̂ = x·rstd;
// it also writes the bf16 copy of dres the next matmul reads. dw += Σ_n dy ⊙ x̂ runs as a two-pass column
// sum (fixed chunks of rows, then the chunks in order): deterministic, no atomics.

__global__ void rmsnorm_forward_kernel(bf16* out, float* rstd, const bf16* inp, const bf16* weight, int N, int C, float eps) {
    int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const bf16* x = inp + (size_t)n * C;
    float ss = 0.0f;
    for (int i = lane; i < C; i += 32) { float v = bf2f(x[i]); ss += v * v; }
    float r = rsqrtf(warp_sum(ss) / C + eps);
    if (rstd && lane == 0) rstd[n] = r;
    bf16* y = out + (size_t)n * C;
    for (int i = lane; i < C; i += 32) y[i] = f2bf(bf2f(weight[i]) * (bf2f(x[i]) * r));
}
__global__ void rmsnorm_backward_kernel(float* dres, bf16* dres16, const bf16* dout, const bf16* inp, const bf16* weight,
                                        const float* rstd, int N, int C) {
    int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const bf16* x = inp + (size_t)n * C;
    const bf16* dy = dout + (size_t)n * C;
    float r = rstd[n], dot = 0.0f;
    for (int i = lane; i < C; i += 32) dot += bf2f(dy[i]) * bf2f(weight[i]) * bf2f(x[i]) * r;
    dot = warp_sum(dot) / C;
    float* dx = dres + (size_t)n * C;
    for (int i = lane; i < C; i += 32) {
        float v = dx[i] + r * (bf2f(dy[i]) * bf2f(weight[i]) - bf2f(x[i]) * r * dot);
        dx[i] = v;
        if (dres16) dres16[(size_t)n * C + i] = f2bf(v);
    }
}
#define RMS_CHUNK 64   // rows per partial column sum
__global__ void rmsnorm_dweight_partial_kernel(float* partial, const bf16* dout, const bf16* inp, const float* rstd, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, n0 = blockIdx.y * RMS_CHUNK;
    if (c >= C) return;
    float acc = 0.0f;
    for (int n = n0; n < min(n0 + RMS_CHUNK, N); n++) acc += bf2f(dout[(size_t)n * C + c]) * bf2f(inp[(size_t)n * C + c]) * rstd[n];
    partial[(size_t)blockIdx.y * C + c] = acc;
}
__global__ void column_sum_accumulate_kernel(float* dst, const float* partial, int chunks, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float acc = 0.0f;
    for (int i = 0; i < chunks; i++) acc += partial[(size_t)i * C + c];
    dst[c] += acc;
}
static void rmsnorm_forward_cuda(bf16* out, float* rstd, const bf16* inp, const bf16* w, int N, int C, float eps) {
    rmsnorm_forward_kernel<<<ceil_div(N, 4), 128>>>(out, rstd, inp, w, N, C, eps);
    cudaCheck(cudaGetLastError());
}
// partial: scratch of ceil(N / RMS_CHUNK) · C floats
static void rmsnorm_backward_cuda(float* dres, bf16* dres16, float* dweight, float* partial, const bf16* dout, const bf16* inp,
                                  const bf16* w, const float* rstd, int N, int C) {
    rmsnorm_backward_kernel<<<ceil_div(N, 4), 128>>>(dres, dres16, dout, inp, w, rstd, N, C);
    cudaCheck(cudaGetLastError());
    int chunks = ceil_div(N, RMS_CHUNK);
    rmsnorm_dweight_partial_kernel<<<dim3(ceil_div(C, 256), chunks), 256>>>(partial, dout, inp, rstd, N, C);
    cudaCheck(cudaGetLastError());
    column_sum_accumulate_kernel<<<ceil_div(C, 256), 256>>>(dweight, partial, chunks, C);
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// RoPE, Hugging Face rotate-half layout: (x1, x2) → (x1·cos − x2·sin, x2·cos + x1·sin), in place; sign = −1 rotates
// back (the backward). The cos/sin table [positions, D/2] is the CPU's rope_table, uploaded once, so both
// backends rotate by the same fp32 factors. Position of row n: pos0 + n % T.

__global__ void rope_kernel(bf16* x, const float* cos_t, const float* sin_t, int N, int heads, int D, int T, int pos0, float sign) {
    int half = D / 2;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x, total = (size_t)N * heads * half;
    if (idx >= total) return;
    int i = (int)(idx % half);
    size_t nh = idx / half;
    int n = (int)(nh / heads);
    int pos = pos0 + n % T;
    float c = cos_t[(size_t)pos * half + i], s = sign * sin_t[(size_t)pos * half + i];
    bf16* v = x + nh * D;
    float x1 = bf2f(v[i]), x2 = bf2f(v[i + half]);
    v[i] = f2bf(x1 * c - x2 * s);
    v[i + half] = f2bf(x2 * c + x1 * s);
}
static void rope_apply_cuda(bf16* x, const float* cos_t, const float* sin_t, int N, int heads, int D, int T, int pos0, float sign) {
    size_t total = (size_t)N * heads * (D / 2);
    rope_kernel<<<ceil_div((long long)total, 256), 256>>>(x, cos_t, sin_t, N, heads, D, T, pos0, sign);
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// SwiGLU: act = silu(gate) ⊙ up,  silu'(x) = σ(x)·(1 + x·(1 − σ(x))).
// The backward runs in place: gate and up are overwritten by dgate and dup (they are not needed afterwards).

__global__ void swiglu_forward_kernel(bf16* act, const bf16* gate, const bf16* up, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = bf2f(gate[i]);
    act[i] = f2bf(g / (1.0f + expf(-g)) * bf2f(up[i]));
}
__global__ void swiglu_backward_kernel(bf16* gate_dgate, bf16* up_dup, const bf16* dact, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = bf2f(gate_dgate[i]), u = bf2f(up_dup[i]), da = bf2f(dact[i]), sig = 1.0f / (1.0f + expf(-g));
    gate_dgate[i] = f2bf(da * u * sig * (1.0f + g * (1.0f - sig)));
    up_dup[i] = f2bf(da * g * sig);
}
static void swiglu_forward_cuda(bf16* act, const bf16* gate, const bf16* up, size_t n) {
    swiglu_forward_kernel<<<ceil_div((long long)n, 256), 256>>>(act, gate, up, n);
    cudaCheck(cudaGetLastError());
}
static void swiglu_backward_cuda(bf16* gate_dgate, bf16* up_dup, const bf16* dact, size_t n) {
    swiglu_backward_kernel<<<ceil_div((long long)n, 256), 256>>>(gate_dgate, up_dup, dact, n);
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// Cross-entropy from bf16 logits, in fp32: lse = log Σ exp(z), nll = lse − z[target]; masked (target < 0) → 0.
// The paper's in-place cross-entropy: the backward overwrites the logits with their gradient
//   dz = dloss · (exp(z − lse) − onehot(target)),  masked rows or dloss = 0 → exactly 0,
// so the [N,V] logits buffer is the only one of its size. One block per row.

__global__ void crossentropy_forward_kernel(float* losses, float* lse_out, const bf16* logits, const int* targets, int V) {
    __shared__ float red[32];
    int n = blockIdx.x;
    if (targets[n] < 0) {   // block-uniform
        if (threadIdx.x == 0) { losses[n] = 0.0f; lse_out[n] = 0.0f; }
        return;
    }
    const bf16* z = logits + (size_t)n * V;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, bf2f(z[i]));
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) sum += expf(bf2f(z[i]) - mx);
    sum = block_sum(sum, red);
    if (threadIdx.x == 0) {
        float lse = mx + logf(sum);
        lse_out[n] = lse;
        losses[n] = lse - bf2f(z[targets[n]]);
    }
}
__global__ void crossentropy_backward_inplace_kernel(bf16* logits, const float* lse, const int* targets, const float* dlosses, int V) {
    int n = blockIdx.x, tgt = targets[n];
    float w = tgt < 0 ? 0.0f : dlosses[n], L = lse[n];
    bf16* z = logits + (size_t)n * V;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float g = w == 0.0f ? 0.0f : w * (expf(bf2f(z[i]) - L) - (i == tgt ? 1.0f : 0.0f));
        z[i] = f2bf(g);
    }
}
