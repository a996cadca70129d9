// defines: attention_forward_cpu, attention_forward_offset_cpu, attention_forward_strided_cpu, attention_backward_cpu
//          (internals: ATT_BQ/BK/R, att_mask, att_scores4, att_rows4, att_outer4, exp16, att_softmax_row)
// The fast CPU path's causal grouped-query attention: blockwise, with an online softmax (the FlashAttention
// recurrence) and no T×T matrix. Part of deepseek.cu (#included, after cpu_layers.h, whose hmax16/hsum16 it uses).
#pragma once
#include "cpu_exp.h"    // exp_madd, exp_poly
#if defined(__AVX512F__)
#include <immintrin.h>  // _mm512_*: the register-blocked block products
#endif

// ----------------------------------------------------------------------------
// Attention, fast: blockwise causal GQA attention with an online softmax (the FlashAttention recurrence);
// no T×T matrix is stored, only each row's log-sum-exp for backward, which recomputes the probabilities.
// For query row t and key blocks of ATT_BK, with running max mx, sum l and output o:
//   S_s = q_t·k_s/√D;  mx' = max(mx, max_s S_s);  l' = l·e^(mx−mx') + Σ_s e^(S_s−mx');
//   o' = o·e^(mx−mx') + Σ_s e^(S_s−mx')·v_s;   finally y_t = o/l, lse_t = mx + log l.
// A task is (b, kv head, block of ATT_BQ query rows): the key block, packed transposed [D, ATT_BK] so the
// scores vectorise over keys, serves every query head of the group. Each row is summed over keys in order.
//
// The block products are register-blocked like the GEMM microkernel, four query rows at a time (a fifth of
// the GEMM's speed before, when each row was done alone and its accumulators went through memory):
//   att_scores4   S[4, ≤ATT_BK] = Q4 · Kᵀ       16 vector accumulators; each packed key row serves four queries;
//                                                 only the keys up to the rows' causal limit
//   att_rows4     O4[4, D]     += P[4, nk] · V   (also dq += dS · K)      D in chunks of 64: 16 accumulators
//   att_outer4    G[nk, D]     += P[4, nk]ᵀ · X4 (dv += Pᵀ·dy, dk += dSᵀ·q) the four X rows stay in registers
// A short group of rows is padded with a row of zeros whose results go to scratch.

static const int ATT_BQ = 32, ATT_BK = 64, ATT_R = 4;

#if defined(__AVX512F__)
static inline __mmask16 att_mask(int n) { return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1); }
template <int NV>  // the first NV·16 keys of the block (the rest lie past every row's causal limit)
static void att_scores4_n(float* s, const float* const* q, const float* kt, int D) {
    __m512 a[ATT_R][NV];
    for (int r = 0; r < ATT_R; r++)
        for (int c = 0; c < NV; c++) a[r][c] = _mm512_setzero_ps();
    for (int d = 0; d < D; d++) {
        const float* kd = kt + (size_t)d * ATT_BK;
        __m512 kv[NV];
        for (int c = 0; c < NV; c++) kv[c] = _mm512_loadu_ps(kd + 16 * c);
        #pragma GCC unroll 4
        for (int r = 0; r < ATT_R; r++) {
            __m512 x = _mm512_set1_ps(q[r][d]);
            for (int c = 0; c < NV; c++) a[r][c] = _mm512_fmadd_ps(x, kv[c], a[r][c]);
        }
    }
    for (int r = 0; r < ATT_R; r++)
        for (int c = 0; c < NV; c++) _mm512_storeu_ps(s + r * ATT_BK + c * 16, a[r][c]);
}
// S[4, 0..nk) (at least; entries up to the next 16 may be written too, the rest are left as they were)
static void att_scores4(float* s, const float* const* q, const float* kt, int nk, int D) {
    switch ((nk + 15) / 16) {
        case 1: att_scores4_n<1>(s, q, kt, D); break;
        case 2: att_scores4_n<2>(s, q, kt, D); break;
        case 3: att_scores4_n<3>(s, q, kt, D); break;
        default: att_scores4_n<4>(s, q, kt, D); break;
    }
}
static void att_rows4(float* const* o, const float* p, const float* v, size_t vstride, int nk, int D) {
    for (int d0 = 0; d0 < D; d0 += 64) {
        __mmask16 m[4];
        for (int c = 0; c < 4; c++) m[c] = att_mask(D - d0 - 16 * c);
        __m512 a[ATT_R][4];
        for (int r = 0; r < ATT_R; r++)
            for (int c = 0; c < 4; c++) a[r][c] = _mm512_maskz_loadu_ps(m[c], o[r] + d0 + 16 * c);
        for (int j = 0; j < nk; j++) {
            const float* vj = v + (size_t)j * vstride + d0;
            __m512 v0 = _mm512_maskz_loadu_ps(m[0], vj), v1 = _mm512_maskz_loadu_ps(m[1], vj + 16),
                   v2 = _mm512_maskz_loadu_ps(m[2], vj + 32), v3 = _mm512_maskz_loadu_ps(m[3], vj + 48);
            #pragma GCC unroll 4
            for (int r = 0; r < ATT_R; r++) {
                __m512 x = _mm512_set1_ps(p[r * ATT_BK + j]);
                a[r][0] = _mm512_fmadd_ps(x, v0, a[r][0]);
                a[r][1] = _mm512_fmadd_ps(x, v1, a[r][1]);
                a[r][2] = _mm512_fmadd_ps(x, v2, a[r][2]);
                a[r][3] = _mm512_fmadd_ps(x, v3, a[r][3]);
            }
        }
        for (int r = 0; r < ATT_R; r++)
            for (int c = 0; c < 4; c++) _mm512_mask_storeu_ps(o[r] + d0 + 16 * c, m[c], a[r][c]);
    }
}
static void att_outer4(float* g, const float* p, const float* const* x, int nk, int D) {
    for (int d0 = 0; d0 < D; d0 += 64) {
        __mmask16 m[4];
        for (int c = 0; c < 4; c++) m[c] = att_mask(D - d0 - 16 * c);
        __m512 xr[ATT_R][4];
        for (int r = 0; r < ATT_R; r++)
            for (int c = 0; c < 4; c++) xr[r][c] = _mm512_maskz_loadu_ps(m[c], x[r] + d0 + 16 * c);
        for (int j = 0; j < nk; j++) {
            float* gj = g + (size_t)j * D + d0;
            __m512 a0 = _mm512_maskz_loadu_ps(m[0], gj), a1 = _mm512_maskz_loadu_ps(m[1], gj + 16),
                   a2 = _mm512_maskz_loadu_ps(m[2], gj + 32), a3 = _mm512_maskz_loadu_ps(m[3], gj + 48);
            #pragma GCC unroll 4
            for (int r = 0; r < ATT_R; r++) {
                __m512 w = _mm512_set1_ps(p[r * ATT_BK + j]);
                a0 = _mm512_fmadd_ps(w, xr[r][0], a0);
                a1 = _mm512_fmadd_ps(w, xr[r][1], a1);
                a2 = _mm512_fmadd_ps(w, xr[r][2], a2);
                a3 = _mm512_fmadd_ps(w, xr[r][3], a3);
            }
            _mm512_mask_storeu_ps(gj, m[0], a0);
            _mm512_mask_storeu_ps(gj + 16, m[1], a1);
            _mm512_mask_storeu_ps(gj + 32, m[2], a2);
            _mm512_mask_storeu_ps(gj + 48, m[3], a3);
        }
    }
}
#else
// portable twins: the same sums, left to the compiler to vectorise
static void att_scores4(float* s, const float* const* q, const float* kt, int nk, int D) {
    for (int r = 0; r < ATT_R; r++) {
        float* sr = s + r * ATT_BK;
        for (int j = 0; j < nk; j++) sr[j] = 0.0f;
        for (int d = 0; d < D; d++) {
            float x = q[r][d];
            const float* kd = kt + (size_t)d * ATT_BK;
            #pragma omp simd
            for (int j = 0; j < nk; j++) sr[j] = fmaf(x, kd[j], sr[j]);
        }
    }
}
static void att_rows4(float* const* o, const float* p, const float* v, size_t vstride, int nk, int D) {
    for (int r = 0; r < ATT_R; r++)
        for (int j = 0; j < nk; j++) {
            float w = p[r * ATT_BK + j];
            const float* vj = v + (size_t)j * vstride;
            #pragma omp simd
            for (int d = 0; d < D; d++) o[r][d] = fmaf(w, vj[d], o[r][d]);
        }
}
static void att_outer4(float* g, const float* p, const float* const* x, int nk, int D) {
    for (int j = 0; j < nk; j++)
        for (int r = 0; r < ATT_R; r++) {
            float w = p[r * ATT_BK + j];
            float* gj = g + (size_t)j * D;
            #pragma omp simd
            for (int d = 0; d < D; d++) gj[d] = fmaf(w, x[r][d], gj[d]);
        }
}
#endif

// One row of a score block, in place: s[j] ← e^(s[j]·scale − m') for j < n and 0 for n ≤ j < ATT_BK, with
// m' = max(m, max_j s[j]·scale) returned and Σ_j e^(s[j]·scale − m') in *sum. GCC leaves a loop's max and its
// sum's last lane reduction scalar, through memory: they were a third of the forward, so here both are halvings (hmax16, hsum16)
// in registers, and e^x is exp_poly's polynomial on 16 lanes (forward: 2.0 → 1.55 ms per layer at d512, T 256).
#if defined(__AVX512F__)
static inline __m512 exp16(__m512 x) {  // exp_poly (deepseek.h): the same operations on 16 lanes, the same bits
    const __mmask16 all = 0xFFFF;  // full masks: the masked forms keep GCC 12's headers free of -Wmaybe-uninitialized
    // the clamp with x second: vmaxps/vminps return their second operand when either is NaN, so NaN in gives NaN
    // out, as exp_poly (finite inputs: the same bits either way)
    x = _mm512_maskz_min_ps(all, _mm512_set1_ps(88.3f), _mm512_maskz_max_ps(all, _mm512_set1_ps(-87.3f), x));
    __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(12582912.0f)),
                             _mm512_set1_ps(12582912.0f));
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-6f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    __m512i bits = _mm512_maskz_slli_epi32(all, _mm512_add_epi32(_mm512_maskz_cvtps_epi32(all, n), _mm512_set1_epi32(127)), 23);  // 2^n
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}
static inline float att_softmax_row(float* s, int n, float scale, float m, float* sum) {
    static_assert(ATT_BK == 64, "four vectors per row");
    __m512 x[4], vm = _mm512_set1_ps(m), vs = _mm512_set1_ps(scale);
    __mmask16 k[4];
    for (int c = 0; c < 4; c++) {
        k[c] = att_mask(n - 16 * c);
        x[c] = _mm512_mul_ps(_mm512_maskz_loadu_ps(k[c], s + 16 * c), vs);
        vm = _mm512_mask_max_ps(vm, k[c], vm, x[c]);
    }
    m = hmax16(vm);
    __m512 vmax = _mm512_set1_ps(m), acc = _mm512_setzero_ps();
    for (int c = 0; c < 4; c++) {
        __m512 e = _mm512_maskz_mov_ps(k[c], exp16(_mm512_sub_ps(x[c], vmax)));
        _mm512_storeu_ps(s + 16 * c, e);
        acc = _mm512_add_ps(acc, e);
    }
    *sum = hsum16(acc);
    return m;
}
#else
static inline float att_softmax_row(float* s, int n, float scale, float m, float* sum) {
    for (int j = 0; j < n; j++) { s[j] *= scale; m = s[j] > m ? s[j] : m; }
    float total = 0.0f;
    #pragma omp simd reduction(+ : total)
    for (int j = 0; j < n; j++) { s[j] = exp_poly(s[j] - m); total += s[j]; }
    for (int j = n; j < ATT_BK; j++) s[j] = 0.0f;
    *sum = total;
    return m;
}
#endif

// q [B,T,H,D], k/v [B,T,KV,D] → y [B,T,H,D], lse [B,H,T]
void attention_forward_cpu(float* y, float* lse, const float* q, const float* k, const float* v,
                           int B, int T, int H, int KV, int D) {
    attention_forward_offset_cpu(y, lse, q, k, v, B, T, T, 0, H, KV, D);
}

// The same with the queries at absolute positions q0 … q0+Tq−1 over Tk = q0 + Tq keys (generation's prefill: the
// new tokens' queries over the KV cache, which already holds their keys). q/y [B,Tq,H,D], k/v [B,Tk,KV,D],
// lse [B,H,Tq] or nullptr.
void attention_forward_offset_cpu(float* y, float* lse, const float* q, const float* k, const float* v,
                                  int B, int Tq, int Tk, int q0, int H, int KV, int D) {
    attention_forward_strided_cpu(y, lse, q, k, v, B, Tq, Tk, q0, H, KV, D, (size_t)Tk * KV * D, (size_t)KV * D, D);
}

// The same over keys and values at any strides (in floats): key s of kv head kh in batch b at k + b·bs + s·ps + kh·hs
// (v alike). [B,Tk,KV,D] is (Tk·KV·D, KV·D, D); generation's cache, [KV, ctx, D] per layer, is (·, D, ctx·D).
void attention_forward_strided_cpu(float* y, float* lse, const float* q, const float* k, const float* v,
                                   int B, int Tq, int Tk, int q0, int H, int KV, int D, size_t bs, size_t ps, size_t hs) {
    int T = Tq;   // query rows (the loops below index q, y and lse by row t; its position is q0 + t)
    int group = H / KV, nqb = (T + ATT_BQ - 1) / ATT_BQ, nkb = (Tk + ATT_BK - 1) / ATT_BK;
    float scale = 1.0f / sqrtf((float)D);
    // every key block packed transposed once, [B, KV, nkb][D, ATT_BK] (zero past Tk): each is read by all the
    // query blocks after it, which would otherwise pack it again each
    static thread_local std::vector<float> ktall;
    if (ktall.size() < (size_t)B * KV * nkb * D * ATT_BK) ktall.resize((size_t)B * KV * nkb * D * ATT_BK);
    float* kpack = ktall.data();  // the calling thread's buffer, shared with the team below
    #pragma omp parallel for collapse(3) schedule(static)
    for (int b = 0; b < B; b++)
        for (int kh = 0; kh < KV; kh++)
            for (int kb = 0; kb < nkb; kb++) {
                float* kt = kpack + (((size_t)b * KV + kh) * nkb + kb) * D * ATT_BK;
                int s0 = kb * ATT_BK, nk = std::min(ATT_BK, Tk - s0);
                for (int j = 0; j < ATT_BK; j++) {
                    const float* ks = k + (size_t)b * bs + (size_t)(s0 + (j < nk ? j : 0)) * ps + (size_t)kh * hs;
                    for (int d = 0; d < D; d++) kt[(size_t)d * ATT_BK + j] = j < nk ? ks[d] : 0.0f;
                }
            }
    #pragma omp parallel
    {
        std::vector<float> s(ATT_R * ATT_BK), zero(D, 0.0f), junk(D);
        std::vector<float> mx((size_t)group * ATT_BQ), l((size_t)group * ATT_BQ), acc((size_t)group * ATT_BQ * D);
        #pragma omp for collapse(3) schedule(static)
        for (int b = 0; b < B; b++)
            for (int kh = 0; kh < KV; kh++)
                for (int qb = 0; qb < nqb; qb++) {
                    int t0 = qb * ATT_BQ, t1 = std::min(T, t0 + ATT_BQ);
                    std::fill(mx.begin(), mx.end(), -INFINITY);
                    std::fill(l.begin(), l.end(), 0.0f);
                    std::fill(acc.begin(), acc.end(), 0.0f);
                    for (int s0 = 0; s0 < q0 + t1; s0 += ATT_BK) {
                        int nk = std::min(ATT_BK, Tk - s0);
                        const float* kt = kpack + (((size_t)b * KV + kh) * nkb + s0 / ATT_BK) * D * ATT_BK;
                        for (int h = kh * group; h < (kh + 1) * group; h++)
                            for (int tr = std::max(t0, s0 - q0); tr < t1; tr += ATT_R) {  // rows tr .. tr+3
                                int rows = std::min(ATT_R, t1 - tr);
                                const float* qr[ATT_R];
                                float* orow[ATT_R];
                                for (int r = 0; r < ATT_R; r++) {
                                    size_t ri = (size_t)(h - kh * group) * ATT_BQ + (tr + r - t0);
                                    qr[r] = r < rows ? q + (((size_t)b * T + tr + r) * H + h) * D : zero.data();
                                    orow[r] = r < rows ? acc.data() + ri * D : junk.data();
                                }
                                int nvmax = std::min(nk, q0 + tr + rows - 1 - s0 + 1);  // keys any of the rows sees
                                att_scores4(s.data(), qr, kt, nvmax, D);
                                for (int r = 0; r < ATT_R; r++) {
                                    float* sp = s.data() + r * ATT_BK;
                                    if (r >= rows) { for (int j = 0; j < ATT_BK; j++) sp[j] = 0.0f; continue; }
                                    int nv = std::min(nk, q0 + tr + r - s0 + 1);  // causal: keys s0 .. q0 + t
                                    size_t ri = (size_t)(h - kh * group) * ATT_BQ + (tr + r - t0);
                                    float m_old = mx[ri], sum;
                                    float m_new = att_softmax_row(sp, nv, scale, m_old, &sum);
                                    float corr = exp_poly(m_old - m_new);  // m_old = −inf → ~0, times 0
                                    mx[ri] = m_new;
                                    l[ri] = l[ri] * corr + sum;
                                    float* ar = orow[r];
                                    #pragma omp simd
                                    for (int d = 0; d < D; d++) ar[d] *= corr;
                                }
                                att_rows4(orow, s.data(), v + (size_t)b * bs + (size_t)s0 * ps + (size_t)kh * hs, ps, nvmax, D);
                            }
                    }
                    for (int h = kh * group; h < (kh + 1) * group; h++)
                        for (int t = t0; t < t1; t++) {
                            size_t r = (size_t)(h - kh * group) * ATT_BQ + (t - t0);
                            float inv = 1.0f / l[r];
                            float* yt = y + (((size_t)b * T + t) * H + h) * D;
                            const float* ar = acc.data() + r * D;
                            #pragma omp simd
                            for (int d = 0; d < D; d++) yt[d] = ar[d] * inv;
                            if (lse) lse[((size_t)b * H + h) * T + t] = mx[r] + logf(l[r]);
                        }
                }
    }
}

// Backward, recomputing P = e^(S − lse) blockwise. With δ_t = dy_t·y_t (= Σ_s P_ts dP_ts):
//   dP = dy·vᵀ;  dS = P ⊙ (dP − δ)/√D;  dq += dS·k;  dk += dSᵀ·q;  dv += Pᵀ·dy      (all ACCUMULATE)
// A task is (b, kv head): it owns the dk/dv rows of its kv head and the dq rows of its query heads, so
// nothing is shared; within it, key blocks go in order, and queries t ≥ block start in order, four at a time.
void attention_backward_cpu(float* dq, float* dk, float* dv, const float* dy, const float* y, const float* lse,
                            const float* q, const float* k, const float* v, int B, int T, int H, int KV, int D) {
    int group = H / KV;
    float scale = 1.0f / sqrtf((float)D);
    #pragma omp parallel
    {
        std::vector<float> kt((size_t)D * ATT_BK), vt((size_t)D * ATT_BK), p(ATT_R * ATT_BK), ds(ATT_R * ATT_BK),
            dkb((size_t)ATT_BK * D), dvb((size_t)ATT_BK * D), delta((size_t)group * T), zero(D, 0.0f), junk(D);
        #pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++)
            for (int kh = 0; kh < KV; kh++) {
                for (int h = kh * group; h < (kh + 1) * group; h++)
                    for (int t = 0; t < T; t++) {
                        const float* dyt = dy + (((size_t)b * T + t) * H + h) * D;
                        const float* yt = y + (((size_t)b * T + t) * H + h) * D;
                        float sum = 0.0f;
                        #pragma omp simd reduction(+ : sum)
                        for (int d = 0; d < D; d++) sum += dyt[d] * yt[d];
                        delta[(size_t)(h - kh * group) * T + t] = sum;
                    }
                for (int s0 = 0; s0 < T; s0 += ATT_BK) {
                    int nk = std::min(ATT_BK, T - s0);
                    for (int j = 0; j < ATT_BK; j++) {
                        for (int d = 0; d < D; d++) {
                            bool in = j < nk;
                            kt[(size_t)d * ATT_BK + j] = in ? k[(((size_t)b * T + s0 + j) * KV + kh) * D + d] : 0.0f;
                            vt[(size_t)d * ATT_BK + j] = in ? v[(((size_t)b * T + s0 + j) * KV + kh) * D + d] : 0.0f;
                        }
                    }
                    std::fill(dkb.begin(), dkb.end(), 0.0f);
                    std::fill(dvb.begin(), dvb.end(), 0.0f);
                    for (int h = kh * group; h < (kh + 1) * group; h++)
                        for (int tr = s0; tr < T; tr += ATT_R) {
                            int rows = std::min(ATT_R, T - tr);
                            const float *qr[ATT_R], *dyr[ATT_R];
                            float* dqr[ATT_R];
                            for (int r = 0; r < ATT_R; r++) {
                                size_t at = (((size_t)b * T + tr + r) * H + h) * D;
                                qr[r] = r < rows ? q + at : zero.data();
                                dyr[r] = r < rows ? dy + at : zero.data();
                                dqr[r] = r < rows ? dq + at : junk.data();
                            }
                            int nvmax = std::min(nk, tr + rows - 1 - s0 + 1);  // keys any of the rows sees
                            att_scores4(p.data(), qr, kt.data(), nvmax, D);
                            att_scores4(ds.data(), dyr, vt.data(), nvmax, D);   // dP, turned into dS below
                            for (int r = 0; r < ATT_R; r++) {
                                float* pr = p.data() + r * ATT_BK;
                                float* dr = ds.data() + r * ATT_BK;
                                int nv = r < rows ? std::min(nk, tr + r - s0 + 1) : 0;
                                float L = r < rows ? lse[((size_t)b * H + h) * T + tr + r] : 0.0f;
                                float dl = r < rows ? delta[(size_t)(h - kh * group) * T + tr + r] : 0.0f;
                                #pragma omp simd
                                for (int j = 0; j < nv; j++) {
                                    pr[j] = exp_poly(pr[j] * scale - L);
                                    dr[j] = pr[j] * (dr[j] - dl) * scale;  // dS
                                }
                                for (int j = nv; j < ATT_BK; j++) { pr[j] = 0.0f; dr[j] = 0.0f; }
                            }
                            att_outer4(dvb.data(), p.data(), dyr, nvmax, D);
                            att_outer4(dkb.data(), ds.data(), qr, nvmax, D);
                            att_rows4(dqr, ds.data(), k + (((size_t)b * T + s0) * KV + kh) * D, (size_t)KV * D, nvmax, D);
                        }
                    for (int j = 0; j < nk; j++) {
                        float* dks = dk + (((size_t)b * T + s0 + j) * KV + kh) * D;
                        float* dvs = dv + (((size_t)b * T + s0 + j) * KV + kh) * D;
                        const float* dkj = dkb.data() + (size_t)j * D;
                        const float* dvj = dvb.data() + (size_t)j * D;
                        #pragma omp simd
                        for (int d = 0; d < D; d++) { dks[d] += dkj[d]; dvs[d] += dvj[d]; }
                    }
                }
            }
    }
}
