// defines: bf16, bf2f, f2bf, cudaCheck, cublasCheck, ceil_div, warp_sum, warp_max, block_sum, block_max,
//          f32_to_bf16_kernel, bf16_to_f32_kernel, upload_bf16, download_bf16, cuda_select_device
// What every file of the CUDA backend uses: the bf16 type, error checks, warp and block reductions, host↔device
// copies; and below, the backend's rules of precision and determinism. Part of deepseek.cu (#included, CUDA builds).
#pragma once
#include <cuda_runtime.h>  // cudaMalloc, cudaMemcpy, kernels
#include <cuda_bf16.h>     // __nv_bfloat16, __float2bfloat16, __bfloat162float
#include <cublasLt.h>      // cublasStatus_t (cublasCheck); the matmuls are in cuda_matmul.cuh

// The CUDA backend: bf16 parameters and activations, fp32 master weights, fp32 gradients and AdamW moments,
// cuBLASLt for every matrix multiply, our own kernels for the rest. Each kernel sits under the same math title
// as its CPU twin in kernels/cpu_*.h; the _ref layer (deepseek.cu) is the oracle tests/test_cuda.cpp compares it with.
//
// Precision: bf16 keeps 8 significant bits (relative rounding 2^-9). Every kernel reads bf16, computes in fp32
// and rounds its output once. Reductions (norms, softmax sums, the loss) are fp32; parameter gradients
// accumulate in fp32 (cuBLASLt with an fp32 C/D and beta = 1). Activation gradients are bf16 except the
// residual stream's, which is fp32 (dres) with a bf16 copy (dres16) for the matmuls.
// Determinism: no kernel races with atomics; every sum runs in a fixed order, so a run reproduces bit-exactly.

typedef __nv_bfloat16 bf16;

static void cuda_check(cudaError_t e, const char* file, int line) {
    if (e != cudaSuccess) die("CUDA error at %s:%d: %s", file, line, cudaGetErrorString(e));
}
static void cublas_check(cublasStatus_t s, const char* file, int line) {
    if (s != CUBLAS_STATUS_SUCCESS) die("cuBLASLt error at %s:%d: status %d", file, line, (int)s);
}
#define cudaCheck(x) cuda_check((x), __FILE__, __LINE__)
#define cublasCheck(x) cublas_check((x), __FILE__, __LINE__)

static inline int ceil_div(long long a, long long b) { return (int)((a + b - 1) / b); }
__device__ inline float bf2f(bf16 x) { return __bfloat162float(x); }
__device__ inline bf16 f2bf(float x) { return __float2bfloat16(x); }   // round to nearest even

// warp-level and block-level reductions (blockDim.x a multiple of 32, ≤ 1024)
__device__ inline float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ inline float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
__device__ float block_sum(float x, float* shared32) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    x = warp_sum(x);
    __syncthreads();                 // shared32 may still be read by a previous call
    if (lane == 0) shared32[warp] = x;
    __syncthreads();
    float r = 0.0f;
    for (int i = 0; i < nw; i++) r += shared32[i];   // same order in every thread: identical results
    return r;
}
__device__ float block_max(float x, float* shared32) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    x = warp_max(x);
    __syncthreads();
    if (lane == 0) shared32[warp] = x;
    __syncthreads();
    float r = -INFINITY;
    for (int i = 0; i < nw; i++) r = fmaxf(r, shared32[i]);
    return r;
}

// fp32 ↔ bf16 conversions on the device
__global__ void f32_to_bf16_kernel(bf16* out, const float* in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f2bf(in[i]);
}
__global__ void bf16_to_f32_kernel(float* out, const bf16* in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = bf2f(in[i]);
}
// host ↔ device copies of fp32 host arrays as bf16 (rounded to nearest even on the way up)
static void upload_bf16(bf16* dst, const float* src, size_t n) {
    std::vector<uint16_t> h(n);
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16(src[i]);
    cudaCheck(cudaMemcpy(dst, h.data(), n * 2, cudaMemcpyHostToDevice));
}
static void download_bf16(float* dst, const bf16* src, size_t n) {
    std::vector<uint16_t> h(n);
    cudaCheck(cudaMemcpy(h.data(), src, n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(h[i]);
}

static void cuda_select_device() {
    if (cuda_device_count() == 0) die("cuda: no CUDA device is available");
    cudaCheck(cudaSetDevice(cuda_device_index()));   // the rank's GPU (cuda_use_local_rank), 0 for a lone process
}
