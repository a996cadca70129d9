// defines: rmsnorm_forward_cpu, residual_rmsnorm_forward_cpu, rmsnorm_backward_cpu, rope_table, rope_apply_cpu,
//          swiglu_forward_cpu, swiglu_backward_cpu, crossentropy_forward_cpu, crossentropy_backward_cpu
//          (internals: hmax16, hsum16, max_vec)
// The fast CPU path's row-wise layers: RMSNorm vectorised and fused with the residual add, RoPE from a cos/sin
// table, SwiGLU and cross-entropy on exp_poly (cpu_exp.h, which infer.cu's decode uses too). Part of deepseek.cu
// (#included).
#pragma once
#include "cpu_exp.h"    // exp_poly
#if defined(__AVX512F__)
#include <immintrin.h>  // _mm512_*: the horizontal max and sum
#endif

// ----------------------------------------------------------------------------
// RMSNorm, fast: vectorised, and fused with the residual add that precedes it in the model.

// out = rmsnorm(inp) · w, as rmsnorm_forward_ref but summing x² in vector lanes
void rmsnorm_forward_cpu(float* out, float* rstd, const float* inp, const float* weight, int N, int C, float eps) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* x = inp + (size_t)n * C;
        float ss = 0.0f;
        #pragma omp simd reduction(+ : ss)
        for (int i = 0; i < C; i++) ss += x[i] * x[i];
        float r = 1.0f / sqrtf(ss / C + eps);
        if (rstd) rstd[n] = r;
        float* y = out + (size_t)n * C;
        #pragma omp simd
        for (int i = 0; i < C; i++) y[i] = weight[i] * (x[i] * r);
    }
}
// res += skip, then out = rmsnorm(res) · w — one pass over the row instead of two (the model's
// "h = x + attention(x); rmsnorm(h)" and "x' = h + mlp(h); rmsnorm(x')")
void residual_rmsnorm_forward_cpu(float* res, float* out, float* rstd, const float* skip, const float* weight, int N, int C, float eps) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float* x = res + (size_t)n * C;
        const float* s = skip + (size_t)n * C;
        float ss = 0.0f;
        #pragma omp simd reduction(+ : ss)
        for (int i = 0; i < C; i++) { x[i] += s[i]; ss += x[i] * x[i]; }
        float r = 1.0f / sqrtf(ss / C + eps);
        rstd[n] = r;
        float* y = out + (size_t)n * C;
        #pragma omp simd
        for (int i = 0; i < C; i++) y[i] = weight[i] * (x[i] * r);
    }
}
// dinp = dskip + rstd·(g − x̂·mean(g ⊙ x̂)) with g = dy ⊙ w (dskip: the gradient arriving around the norm
// through the residual connection; may equal dinp, i.e. accumulate, or be null); dw += Σ_n dy ⊙ x̂.
// The dw sum runs over rows in order inside each thread's block of columns: no atomics, fixed order.
void rmsnorm_backward_cpu(float* dinp, const float* dskip, float* dweight, const float* dout, const float* inp,
                          const float* weight, const float* rstd, int N, int C) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* x = inp + (size_t)n * C;
        const float* dy = dout + (size_t)n * C;
        float r = rstd[n], dot = 0.0f;
        #pragma omp simd reduction(+ : dot)
        for (int i = 0; i < C; i++) dot += dy[i] * weight[i] * x[i];
        dot *= r / C;
        float* dx = dinp + (size_t)n * C;
        const float* ds = dskip ? dskip + (size_t)n * C : nullptr;
        #pragma omp simd
        for (int i = 0; i < C; i++) dx[i] = (ds ? ds[i] : 0.0f) + r * (dy[i] * weight[i] - x[i] * r * dot);
    }
    const int CB = 64;  // columns per task
    #pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += CB) {
        int cw = std::min(CB, C - c0);
        float acc[CB] = {0};
        for (int n = 0; n < N; n++) {
            const float* dy = dout + (size_t)n * C + c0;
            const float* x = inp + (size_t)n * C + c0;
            float r = rstd[n];
            #pragma omp simd
            for (int i = 0; i < cw; i++) acc[i] += dy[i] * x[i] * r;
        }
        for (int i = 0; i < cw; i++) dweight[c0 + i] += acc[i];
    }
}

// ----------------------------------------------------------------------------
// RoPE, fast: the angles depend only on (position, i), so a table of cos/sin for positions 0..T−1 is
// computed once per forward (exactly as the reference computes them) and applied in place to q, k and,
// rotated back, to their gradients. Bit-identical to rope_rotate_ref.

void rope_table(float* cosv, float* sinv, int T, int D, float theta) {  // cosv, sinv: [T, D/2]
    int half = D / 2;
    std::vector<float> inv_freq(half);
    for (int i = 0; i < half; i++) inv_freq[i] = 1.0f / powf(theta, (float)(2 * i) / (float)D);
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            double angle = (double)t * (double)inv_freq[i];
            cosv[(size_t)t * half + i] = (float)cos(angle);
            sinv[(size_t)t * half + i] = (float)sin(angle);
        }
}
// x [N, heads, D] in place, row n at position pos[n]; sign −1 applies the inverse rotation (backward)
void rope_apply_cpu(float* x, const float* cosv, const float* sinv, const int* pos, int N, int heads, int D, float sign) {
    int half = D / 2;
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* cs = cosv + (size_t)pos[n] * half;
        const float* sn = sinv + (size_t)pos[n] * half;
        for (int h = 0; h < heads; h++) {
            float* v = x + ((size_t)n * heads + h) * D;
            #pragma omp simd
            for (int i = 0; i < half; i++) {
                float c = cs[i], s = sign * sn[i], x1 = v[i], x2 = v[i + half];
                v[i] = x1 * c - x2 * s;
                v[i + half] = x2 * c + x1 * s;
            }
        }
    }
}

// ----------------------------------------------------------------------------
// SwiGLU, fast: vectorised exp; backward computes σ once for both gradients. Backward WRITES (=) dgate, dup.

void swiglu_forward_cpu(float* act, const float* gate, const float* up, size_t n) {
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) act[i] = gate[i] / (1.0f + exp_poly(-gate[i])) * up[i];
}
void swiglu_backward_cpu(float* dgate, float* dup, const float* dact, const float* gate, const float* up, size_t n) {
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], sig = 1.0f / (1.0f + exp_poly(-g));
        dgate[i] = dact[i] * up[i] * sig * (1.0f + g * (1.0f - sig));
        dup[i] = dact[i] * g * sig;
    }
}

// ----------------------------------------------------------------------------
// Cross-entropy fused with the softmax. Forward: one pass per row for max, one for Σe^(z−max), with vector
// lanes; nll = lse − z[target]. Backward WRITES (=) dlogits = w·(e^(z − lse) − onehot) in a single pass: the
// log-sum-exp is not recomputed but recovered as lse = nll + z[target] (exact up to one rounding, ~1e-7).

#if defined(__AVX512F__)
// halving over 256-bit halves, 128-bit lanes, pairs and neighbours; every lane ends with the total (full masks,
// as in cpu_gemm.h's transpose16: GCC 12's unmasked forms, and its 512 → 256-bit cast, warn -Wmaybe-uninitialized)
static inline float hmax16(__m512 v) {
    const __mmask16 all = 0xFFFF;
    v = _mm512_maskz_max_ps(all, v, _mm512_maskz_shuffle_f32x4(all, v, v, 0x4E));
    v = _mm512_maskz_max_ps(all, v, _mm512_maskz_shuffle_f32x4(all, v, v, 0xB1));
    v = _mm512_maskz_max_ps(all, v, _mm512_maskz_shuffle_ps(all, v, v, 0x4E));
    v = _mm512_maskz_max_ps(all, v, _mm512_maskz_shuffle_ps(all, v, v, 0xB1));
    return _mm512_cvtss_f32(v);
}
static inline float hsum16(__m512 v) {
    const __mmask16 all = 0xFFFF;
    v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(all, v, v, 0x4E));
    v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(all, v, v, 0xB1));
    v = _mm512_add_ps(v, _mm512_maskz_shuffle_ps(all, v, v, 0x4E));
    v = _mm512_add_ps(v, _mm512_maskz_shuffle_ps(all, v, v, 0xB1));
    return _mm512_cvtss_f32(v);
}
#endif

// max of x[0..n) in 16 running lane maxima: GCC leaves a plain max reduction scalar (even under `omp simd`, and
// the lane form too), which had made this max pass 3/4 of the cross-entropy's time
static inline float max_vec(const float* x, int n) {
    int i = 0;
#if defined(__AVX512F__)
    __m512 vm = _mm512_set1_ps(-INFINITY);
    for (; i + 16 <= n; i += 16) vm = _mm512_maskz_max_ps(0xFFFF, vm, _mm512_loadu_ps(x + i));  // (maskz: see transpose16, cpu_gemm.h)
    float m = hmax16(vm);
#else
    float lane[16], m = -INFINITY;
    for (int l = 0; l < 16; l++) lane[l] = -INFINITY;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) lane[l] = x[i + l] > lane[l] ? x[i + l] : lane[l];
    for (int l = 0; l < 16; l++) m = lane[l] > m ? lane[l] : m;
#endif
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

void crossentropy_forward_cpu(float* losses, const float* logits, const int* targets, int N, int V) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        if (targets[n] < 0) { losses[n] = 0.0f; continue; }
        const float* z = logits + (size_t)n * V;
        float maxv = max_vec(z, V);
        float sum = 0.0f;
        #pragma omp simd reduction(+ : sum)
        for (int i = 0; i < V; i++) sum += exp_poly(z[i] - maxv);
        losses[n] = logf(sum) + maxv - z[targets[n]];
    }
}
void crossentropy_backward_cpu(float* dlogits, const float* logits, const float* losses, const int* targets,
                               const float* dlosses, int N, int V) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float* dz = dlogits + (size_t)n * V;
        if (targets[n] < 0 || dlosses[n] == 0.0f) { memset(dz, 0, (size_t)V * sizeof(float)); continue; }
        const float* z = logits + (size_t)n * V;
        float lse = losses[n] + z[targets[n]], w = dlosses[n];
        #pragma omp simd
        for (int i = 0; i < V; i++) dz[i] = w * exp_poly(z[i] - lse);
        dz[targets[n]] -= w;
    }
}
