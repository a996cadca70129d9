// defines: adamw_cuda, grad_sumsq_cuda, grad_norm_cuda (NORM_BLOCKS) and their kernels
// The CUDA backend's optimizer step: AdamW on the fp32 master weights, and the global gradient norm, both
// deterministic. Part of deepseek.cu (#included, CUDA builds).
#pragma once

// ----------------------------------------------------------------------------
// AdamW on the fp32 master weights (torch.optim.AdamW, with the same arithmetic as the CPU's adamw_step), then
// the bf16 parameters are refreshed from them:
//   g = grad·grad_scale;  m += (1−β1)·(g − m);  v = β2·v + (1−β2)·g²
//   w = w·(1 − lr·wd) − lr/(1−β1^t) · m / (sqrt(v)/sqrt(1−β2^t) + eps)     (wd only on matrices);  param = bf16(w)

__global__ void adamw_kernel(float* master, bf16* param, float* m, float* v, const float* grad, size_t n, float step_size,
                             float bc2_sqrt, float decay, float beta1, float beta2, float eps, float grad_scale) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = grad[i] * grad_scale;
    float mi = m[i] + (1.0f - beta1) * (g - m[i]), vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    float w = master[i] * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    master[i] = w;
    param[i] = f2bf(w);
}
static void adamw_cuda(float* master, bf16* param, float* m, float* v, const float* grad, size_t n, float lr, float beta1,
                       float beta2, float eps, float wd, float grad_scale, int step) {
    double bc1 = 1.0 - pow((double)beta1, (double)step), bc2 = 1.0 - pow((double)beta2, (double)step);
    adamw_kernel<<<ceil_div((long long)n, 256), 256>>>(master, param, m, v, grad, n, (float)(lr / bc1), (float)sqrt(bc2),
                                                       1.0f - lr * wd, beta1, beta2, eps, grad_scale);
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// global gradient norm: sqrt(Σ g²). A fixed grid of blocks writes partial sums; the host adds them in order
// in double: deterministic.
#define NORM_BLOCKS 512
__global__ void sumsq_partial_kernel(float* partial, const float* g, size_t n) {
    __shared__ float red[32];
    float acc = 0.0f;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) acc += g[i] * g[i];
    acc = block_sum(acc, red);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}
static double grad_sumsq_cuda(const float* g, size_t n, float* partial_dev) {
    if (n == 0) return 0.0;
    sumsq_partial_kernel<<<NORM_BLOCKS, 512>>>(partial_dev, g, n);
    cudaCheck(cudaGetLastError());
    float h[NORM_BLOCKS];
    cudaCheck(cudaMemcpy(h, partial_dev, sizeof h, cudaMemcpyDeviceToHost));
    double s = 0.0;
    for (int i = 0; i < NORM_BLOCKS; i++) s += h[i];
    return s;
}
static float grad_norm_cuda(const float* g, size_t n, float* partial_dev) { return (float)sqrt(grad_sumsq_cuda(g, n, partial_dev)); }
