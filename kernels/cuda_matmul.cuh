// defines: gemm_cuda, cuda_blas_release, matmul_forward_cuda, matmul_backward_cuda (internals: GemmPlan, CudaBlas, g_blas, ptr_alignment)
// The CUDA backend's matrix multiplies, all through cuBLASLt (bf16 in, fp32 accumulation), with the residual add
// fused into the epilogue. Part of deepseek.cu (#included, CUDA builds, after cuda_common.cuh).
#pragma once

// ----------------------------------------------------------------------------
// matmul through cuBLASLt: bf16 A and B, fp32 accumulation, a bf16 or fp32 D. cuBLASLt is column-major; our
// row-major [rows, cols] matrix is its [cols, rows] matrix, which turns each product below into one call:
//   forward   out[N,OUT]  = inp[N,IN] · W[OUT,IN]ᵀ (+ residual)      → D(OUT×N) = Wᵀ(OUT×IN) · inp(IN×N)
//   backward  dinp[N,IN]  = dout[N,OUT] · W[OUT,IN]                 → D(IN×N)  = W(IN×OUT) · dout(OUT×N)
//             dW[OUT,IN] += dout[N,OUT]ᵀ · inp[N,IN]   (fp32)       → D(IN×OUT) = inp(IN×N) · doutᵀ(N×OUT)
// Fused epilogue: the residual add is cuBLASLt's D = A·B + β·C with C the residual stream (C ≠ D), so the
// o_proj / down_proj outputs land in the residual stream without a separate pass.

struct GemmPlan {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
};
struct CudaBlas {
    cublasLtHandle_t lt = nullptr;
    void* workspace = nullptr;
    size_t workspace_size = 32u << 20;
    std::map<std::vector<long long>, GemmPlan> plans;   // one plan per shape/layout/alignment, found once
};
static CudaBlas g_blas;

static int ptr_alignment(const void* p) {
    uintptr_t u = (uintptr_t)p;
    int a = 256;
    while (a > 2 && (u % a) != 0) a /= 2;
    return a;
}
// D[m×n] = op(A)[m×k] · op(B)[k×n] + beta · C   (column-major; C = D when c is null)
static void gemm_cuda(bool ta, bool tb, int m, int n, int k, const bf16* A, int lda, const bf16* B, int ldb, void* D,
                      cudaDataType_t dtype, int ldd, float beta, const void* c = nullptr) {
    if (m == 0 || n == 0) return;
    if (!g_blas.lt) {
        cublasCheck(cublasLtCreate(&g_blas.lt));
        cudaCheck(cudaMalloc(&g_blas.workspace, g_blas.workspace_size));
    }
    const void* C = c ? c : D;
    int alA = ptr_alignment(A), alB = ptr_alignment(B), alC = ptr_alignment(C), alD = ptr_alignment(D);
    std::vector<long long> key = {ta, tb, m, n, k, lda, ldb, ldd, (long long)dtype, alA, alB, std::min(alC, alD)};
    auto it = g_blas.plans.find(key);
    if (it == g_blas.plans.end()) {
        GemmPlan p;
        cublasCheck(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        cublasOperation_t opA = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opB = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
        cublasCheck(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof opA));
        cublasCheck(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof opB));
        cublasCheck(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, ta ? k : m, ta ? m : k, lda));
        cublasCheck(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, tb ? n : k, tb ? k : n, ldb));
        cublasCheck(cublasLtMatrixLayoutCreate(&p.d, dtype, m, n, ldd));
        cublasLtMatmulPreference_t pref;
        cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                         &g_blas.workspace_size, sizeof g_blas.workspace_size));
        // slices of per-layer tensors are not always 256-byte aligned: tell the heuristic what they are
        uint32_t a32[4] = {(uint32_t)alA, (uint32_t)alB, (uint32_t)std::min(alC, alD), (uint32_t)std::min(alC, alD)};
        cublasLtMatmulPreferenceAttributes_t which[4] = {
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
        for (int i = 0; i < 4; i++) cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, which[i], &a32[i], sizeof a32[i]));
        cublasLtMatmulHeuristicResult_t res;
        int found = 0;
        cublasCheck(cublasLtMatmulAlgoGetHeuristic(g_blas.lt, p.op, p.a, p.b, p.d, p.d, pref, 1, &res, &found));
        cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
        if (found == 0) die("cuBLASLt: no algorithm for a %dx%dx%d matmul", m, n, k);
        p.algo = res.algo;
        it = g_blas.plans.emplace(key, p).first;
    }
    const GemmPlan& p = it->second;
    float alpha = 1.0f;
    cublasCheck(cublasLtMatmul(g_blas.lt, p.op, &alpha, A, p.a, B, p.b, &beta, C, p.d, D, p.d, &p.algo,
                               g_blas.workspace, g_blas.workspace_size, 0));
}
// cuBLASLt's handle, its plans' descriptors and layouts, and the workspace, freed (the next gemm_cuda makes them again)
static void cuda_blas_release() {
    for (auto& kv : g_blas.plans) {
        GemmPlan& p = kv.second;
        cublasCheck(cublasLtMatrixLayoutDestroy(p.a));
        cublasCheck(cublasLtMatrixLayoutDestroy(p.b));
        cublasCheck(cublasLtMatrixLayoutDestroy(p.d));
        cublasCheck(cublasLtMatmulDescDestroy(p.op));
    }
    g_blas.plans.clear();
    if (g_blas.lt) cublasCheck(cublasLtDestroy(g_blas.lt));
    g_blas.lt = nullptr;
    cudaCheck(cudaFree(g_blas.workspace));
    g_blas.workspace = nullptr;
}
// out[N,OUT] = inp[N,IN] · W[OUT,IN]ᵀ (+ residual[N,OUT] when given)
static void matmul_forward_cuda(bf16* out, const bf16* inp, const bf16* w, int N, int IN, int OUT, const bf16* residual = nullptr) {
    gemm_cuda(true, false, OUT, N, IN, w, IN, inp, IN, out, CUDA_R_16BF, OUT, residual ? 1.0f : 0.0f, residual);
}
// dinp[N,IN] = dout[N,OUT] · W (dinp_accum: = or +=);  dW[OUT,IN] += doutᵀ · inp in fp32 (either may be null)
static void matmul_backward_cuda(bf16* dinp, float* dw, const bf16* dout, const bf16* inp, const bf16* w, int N, int IN,
                                 int OUT, Accum dinp_accum) {
    if (dw) gemm_cuda(false, true, IN, OUT, N, inp, IN, dout, OUT, dw, CUDA_R_32F, IN, 1.0f);
    if (dinp) gemm_cuda(false, false, IN, N, OUT, w, IN, dout, OUT, dinp, CUDA_R_16BF, IN, dinp_accum == Accum::Add ? 1.0f : 0.0f);
}
