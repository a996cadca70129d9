// infer.cu — generation: the KV cache, fast CPU kernels for fp32 and bf16 weights, sampling, streaming text,
// DeepSeek LLM's chat template, `deepseek generate` and `deepseek chat`.
//
// What it is: the inference path beside the reference model in deepseek.cu. The reference recomputes the whole
// sequence; here each token's keys and values are cached, the prompt is prefilled in chunks and then one token
// at a time is decoded. Weights are pointed into (the memory map of the safetensors files), never copied, so a
// bf16 7B checkpoint (~14 GB) stays bf16 in memory; activations are fp32. Tests hold this path to the reference
// (logits within 1e-5 at every position) and to transformers' greedy generate (token for token).
// Weights may also be q8_0 (convert --dtype q8_0): int8 blocks of 32 with an fp16 scale, dotted with int8 x.
// What it is not: a CUDA path (inference runs on the CPU), batched generation, or other quantisations.
#include "deepseek.h"
#include "kernels/cpu_exp.h"   // exp_poly: the softmax of cached attention
#include <algorithm>     // std::sort, std::partial_sort, std::max
#include <cmath>         // expf, sqrtf, INFINITY
#include <cstdio>        // printf, fprintf, fflush, fgets
#include <cstdlib>       // calloc, free
#include <cstring>       // memcpy, strcmp
#include <initializer_list>  // std::initializer_list (fused linears)
#include <memory>        // std::unique_ptr: eval's tokenizer, freed also when an error unwinds
#include <ctime>         // time (the default seed)
#include <unistd.h>      // isatty, getpid
#include <nlohmann/json.hpp>  // nlohmann::json: generation_config.json
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>  // _mm512_* / _mm256_*: the decode dot products
#endif
#ifdef _OPENMP
#include <omp.h>         // omp_set_num_threads, omp_get_max_threads
#endif

using json = nlohmann::json;

// ============================================================================
// kernels. Shapes: N tokens in a chunk, C = hidden, H/KV heads, D = head_dim, F = intermediate, V = vocab.

// Four dot products of x[in] with four weight rows at once: four independent FMA chains hide the latency, and x is
// loaded once for all four. Decode is bound by memory bandwidth: each weight is read once per token, so what
// matters is keeping enough cache-line requests in flight. The four rows come from four lanes far apart (see
// Lanes below), and each row's stream is prefetched PREFETCH_AHEAD bytes on, one prefetch per 64-byte line: AMD's
// cores have no adjacent-line prefetcher to fetch the other half of a pair. 512 bytes in each of four streams is
// ~2 KB in flight per core, about one core's bandwidth (~12 GB/s) times DRAM latency (~150 ns).
// The SIMD width is chosen at build time (-march=native): AVX-512, AVX2 + FMA, or portable loops for other CPUs.
static const int PREFETCH_AHEAD = 512;   // bytes ahead in each weight row's stream
static inline void prefetch_ahead(const void* p) { __builtin_prefetch((const char*)p + PREFETCH_AHEAD); }
#if defined(__AVX2__)
static inline float hsum(__m256 v) {   // the sum of 8 lanes (AVX2 dot products; q8_0's on AVX-512 hosts too)
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__)
// (GCC 12's _mm512_reduce_add_ps and the unmasked widening intrinsics trip -Wmaybe-uninitialized inside its own
// headers; the masked forms with a full mask and a plain store compile to the same instructions without it.)
static inline float hsum(__m512 v) {
    alignas(64) float t[16];
    _mm512_store_ps(t, v);
    float s = 0.0f;
    for (int i = 0; i < 16; i++) s += t[i];
    return s;
}
// 16 bf16 → 16 fp32: widen to 32 bits and shift the bits into the high half (bf16 is fp32's top 16 bits)
static inline __m512 bf16x16(__m256i h) {
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, _mm512_maskz_cvtepu16_epi32(0xFFFF, h), 16));
}
// 16 weights as fp32, from fp32 or bf16 rows; with a mask, only the masked lanes are read (the row's tail)
static inline __m512 load16(const float* w) { return _mm512_loadu_ps(w); }
static inline __m512 load16(const uint16_t* w) { return bf16x16(_mm256_loadu_si256((const __m256i*)w)); }
static inline __m512 load16(const float* w, __mmask16 m) { return _mm512_maskz_loadu_ps(m, w); }
static inline __m512 load16(const uint16_t* w, __mmask16 m) { return bf16x16(_mm256_maskz_loadu_epi16(m, w)); }
template <typename W>   // float or uint16_t (bf16) rows
static inline void dot4(float out[4], const float* x, const W* w0, const W* w1, const W* w2, const W* w3, int in) {
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int i = 0;
    for (; i + 16 <= in; i += 16) {
        if (sizeof(W) == 4 || i % 32 == 0) {   // one prefetch per 64 bytes of each row's stream
            prefetch_ahead(w0 + i); prefetch_ahead(w1 + i); prefetch_ahead(w2 + i); prefetch_ahead(w3 + i);
        }
        __m512 xv = _mm512_loadu_ps(x + i);
        s0 = _mm512_fmadd_ps(xv, load16(w0 + i), s0);
        s1 = _mm512_fmadd_ps(xv, load16(w1 + i), s1);
        s2 = _mm512_fmadd_ps(xv, load16(w2 + i), s2);
        s3 = _mm512_fmadd_ps(xv, load16(w3 + i), s3);
    }
    if (i < in) {  // the tail: masked loads read nothing past the row
        __mmask16 m = (__mmask16)((1u << (in - i)) - 1);
        __m512 xv = _mm512_maskz_loadu_ps(m, x + i);
        s0 = _mm512_fmadd_ps(xv, load16(w0 + i, m), s0);
        s1 = _mm512_fmadd_ps(xv, load16(w1 + i, m), s1);
        s2 = _mm512_fmadd_ps(xv, load16(w2 + i, m), s2);
        s3 = _mm512_fmadd_ps(xv, load16(w3 + i, m), s3);
    }
    out[0] = hsum(s0); out[1] = hsum(s1); out[2] = hsum(s2); out[3] = hsum(s3);
}
#elif defined(__AVX2__) && defined(__FMA__)
static inline __m256 load8(const float* w) { return _mm256_loadu_ps(w); }
static inline __m256 load8(const uint16_t* w) {   // 8 bf16 → 8 fp32
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)w)), 16));
}
static inline float widen(float w) { return w; }
static inline float widen(uint16_t w) { return bf16_to_f32(w); }
template <typename W>   // float or uint16_t (bf16) rows
static inline void dot4(float out[4], const float* x, const W* w0, const W* w1, const W* w2, const W* w3, int in) {
    // two accumulators per row (eight chains): AVX2 has half AVX-512's width, so twice the steps in flight
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    int i = 0;
    for (; i + 16 <= in; i += 16) {
        if (sizeof(W) == 4 || i % 32 == 0) {   // one prefetch per 64 bytes of each row's stream
            prefetch_ahead(w0 + i); prefetch_ahead(w1 + i); prefetch_ahead(w2 + i); prefetch_ahead(w3 + i);
        }
        __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);
        a0 = _mm256_fmadd_ps(x0, load8(w0 + i), a0); b0 = _mm256_fmadd_ps(x1, load8(w0 + i + 8), b0);
        a1 = _mm256_fmadd_ps(x0, load8(w1 + i), a1); b1 = _mm256_fmadd_ps(x1, load8(w1 + i + 8), b1);
        a2 = _mm256_fmadd_ps(x0, load8(w2 + i), a2); b2 = _mm256_fmadd_ps(x1, load8(w2 + i + 8), b2);
        a3 = _mm256_fmadd_ps(x0, load8(w3 + i), a3); b3 = _mm256_fmadd_ps(x1, load8(w3 + i + 8), b3);
    }
    float s0 = hsum(_mm256_add_ps(a0, b0)), s1 = hsum(_mm256_add_ps(a1, b1));
    float s2 = hsum(_mm256_add_ps(a2, b2)), s3 = hsum(_mm256_add_ps(a3, b3));
    for (; i < in; i++) {   // the tail, scalar
        s0 = fmaf(x[i], widen(w0[i]), s0); s1 = fmaf(x[i], widen(w1[i]), s1);
        s2 = fmaf(x[i], widen(w2[i]), s2); s3 = fmaf(x[i], widen(w3[i]), s3);
    }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
}
#else
static inline float widen(float w) { return w; }
static inline float widen(uint16_t w) { return bf16_to_f32(w); }
template <typename W>   // float or uint16_t (bf16) rows
static inline void dot4(float out[4], const float* x, const W* w0, const W* w1, const W* w2, const W* w3, int in) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    #pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int i = 0; i < in; i++) {   // fmaf: FMAs under ISO C++'s fp-contract=off
        s0 = fmaf(x[i], widen(w0[i]), s0);
        s1 = fmaf(x[i], widen(w1[i]), s1);
        s2 = fmaf(x[i], widen(w2[i]), s2);
        s3 = fmaf(x[i], widen(w3[i]), s3);
    }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
}
#endif

// q8_0 rows (convert --dtype q8_0): the activation x is quantised to q8_0 as well, once per token, and each block
// of 32 is an integer dot product, as in llama.cpp's Q8_0 × Q8_0:
//   row · x = Σ_b dw[b] · dx[b] · Σ_i qw[b,i] · qx[b,i]      (qw, qx int8 in [-127, 127]; the inner sum is exact)
// It reads one byte per weight (and 2 bytes of scale per 32): a quarter of fp32, about half of bf16.
struct Q8Act { const int8_t* q; const float* d; };   // one token's x: int8 [in], scales (fp16 values) [in/32]
// dw[b]·dx[b] for eight blocks of four rows: the products each block's integer sum is scaled by
static inline void q8_scales8(float sc[4][8], const uint16_t* const s[4], const float* xd, int b0, int kb) {
    for (int r = 0; r < 4; r++)
        for (int k = 0; k < 8; k++) sc[r][k] = k < kb ? f16_to_f32(s[r][b0 + k]) * xd[b0 + k] : 0.0f;
}
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
// Σ over 32 int8 pairs, as 8 int32 partial sums. The instructions multiply unsigned by signed bytes, so x's sign
// moves onto w: |x| · (w · sign x). |x| ≤ 127, so vpmaddubsw's pairs (≤ 2·127·127) never saturate int16.
static inline __m256i dot_i8x32(__m256i ax, __m256i xv, const int8_t* w) {
    __m256i sw = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i*)w), xv);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sw);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), ax, sw);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sw), _mm256_set1_epi16(1));
#endif
}
static inline void dot4_q8(float out[4], const Q8Act& x, const int8_t* const w[4], const uint16_t* const s[4], int nb) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int r = 0; r < 4; r++) __builtin_prefetch(s[r] + 2 * nb);   // the scales two rows on in each lane
    for (int b0 = 0; b0 < nb; b0 += 8) {
        int kb = std::min(8, nb - b0);
        alignas(32) float sc[4][8];
        if (kb == 8) {   // eight fp16 scales at once (F16C), times x's
            __m256 xd = _mm256_loadu_ps(x.d + b0);
            for (int r = 0; r < 4; r++)
                _mm256_store_ps(sc[r], _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(s[r] + b0))), xd));
        } else {   // a row's last kb < 8 blocks (in = 288: 9 blocks): one scale at a time (F16C)
            for (int r = 0; r < 4; r++)
                for (int k = 0; k < 8; k++) sc[r][k] = k < kb ? _cvtsh_ss(s[r][b0 + k]) * x.d[b0 + k] : 0.0f;
        }
        for (int k = 0; k < kb; k++) {
            size_t o = (size_t)(b0 + k) * Q8_BLOCK;
            if (k % 2 == 0)   // one prefetch per 64 bytes of each row's stream
                for (int r = 0; r < 4; r++) prefetch_ahead(w[r] + o);
            __m256i xv = _mm256_loadu_si256((const __m256i*)(x.q + o));
            __m256i ax = _mm256_sign_epi8(xv, xv);
            for (int r = 0; r < 4; r++)
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_i8x32(ax, xv, w[r] + o)), _mm256_broadcast_ss(&sc[r][k]), acc[r]);
        }
    }
    for (int r = 0; r < 4; r++) out[r] = hsum(acc[r]);
}
#else
static inline void dot4_q8(float out[4], const Q8Act& x, const int8_t* const w[4], const uint16_t* const s[4], int nb) {
    float acc[4] = {0, 0, 0, 0};
    for (int b0 = 0; b0 < nb; b0 += 8) {
        int kb = std::min(8, nb - b0);
        float sc[4][8];
        q8_scales8(sc, s, x.d, b0, kb);
        for (int k = 0; k < kb; k++) {
            const int8_t* xb = x.q + (size_t)(b0 + k) * Q8_BLOCK;
            for (int r = 0; r < 4; r++) {
                const int8_t* wb = w[r] + (size_t)(b0 + k) * Q8_BLOCK;
                int32_t sum = 0;
                #pragma omp simd reduction(+ : sum)
                for (int i = 0; i < Q8_BLOCK; i++) sum += (int32_t)wb[i] * (int32_t)xb[i];
                acc[r] = fmaf((float)sum, sc[r][k], acc[r]);
            }
        }
    }
    for (int r = 0; r < 4; r++) out[r] = acc[r];
}
#endif

// Prefill's block: four weight rows against two tokens, eight accumulators; each step loads 4 + 2 vectors for
// 8 FMAs (register-blocked like a GEMM micro-kernel; 8 + 6 vector registers fit even AVX2's 16).
static inline void dot4x2_f32(float out[8], const float* x0, const float* x1, const float* w0, const float* w1,
                              const float* w2, const float* w3, int in) {
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
    #pragma omp simd reduction(+ : a0, a1, a2, a3, b0, b1, b2, b3)
    for (int i = 0; i < in; i++) {
        a0 = fmaf(x0[i], w0[i], a0); a1 = fmaf(x0[i], w1[i], a1); a2 = fmaf(x0[i], w2[i], a2); a3 = fmaf(x0[i], w3[i], a3);
        b0 = fmaf(x1[i], w0[i], b0); b1 = fmaf(x1[i], w1[i], b1); b2 = fmaf(x1[i], w2[i], b2); b3 = fmaf(x1[i], w3[i], b3);
    }
    out[0] = a0; out[1] = a1; out[2] = a2; out[3] = a3; out[4] = b0; out[5] = b1; out[6] = b2; out[7] = b3;
}

// rows [r0, r0+rows) of a bf16 or q8_0 matrix as fp32, into dst [rows, in]
static void rows_to_f32(const InferWeight& W, size_t r0, size_t rows, int in, float* dst) {
    if (W.bf16) {
        const uint16_t* src = W.bf16 + r0 * in;
        #pragma omp simd
        for (size_t i = 0; i < rows * in; i++) dst[i] = bf16_to_f32(src[i]);
    } else {
        q8_0_dequantize(W.q8 + r0 * in, W.q8_scale + r0 * (in / Q8_BLOCK), rows * in, dst);
    }
}

// linear: out[n,o] = Σ_i x[n,i] · W[o,i]   (W [out, in], fp32, bf16 or q8_0; with `accumulate`, out += instead)
// Work is split into blocks of four output rows r[0..3], the first `rows` of them real (Lanes, below, picks
// them; a short block repeats a row, computed and not stored). Decode (N = 1) streams each weight row once: it is bound by
// memory bandwidth, so bf16 and q8_0 weights are read as stored. q8_0 rows take x quantised (xq, one per token)
// for every N. Prefill (N > 1) upcasts a bf16 block once into `buf` [4, in] and reuses it for all N tokens, two
// at a time.
static void linear_block(float* out, const float* x, const Q8Act* xq, const InferWeight& W, int N, int in,
                         int out_dim, const int r[4], int rows, bool accumulate, std::vector<float>& buf) {
    if (W.q8) {
        int nb = in / Q8_BLOCK;
        const int8_t* w[4];
        const uint16_t* s[4];
        for (int j = 0; j < 4; j++) { w[j] = W.q8 + (size_t)r[j] * in; s[j] = W.q8_scale + (size_t)r[j] * nb; }
        for (int n = 0; n < N; n++) {
            float d[4];
            dot4_q8(d, xq[n], w, s, nb);
            float* p = out + (size_t)n * out_dim;
            for (int j = 0; j < rows; j++) p[r[j]] = accumulate ? p[r[j]] + d[j] : d[j];
        }
        return;
    }
    if (W.bf16 && N == 1) {
        float s[4];
        const uint16_t* w0 = W.bf16 + (size_t)r[0] * in;
        dot4(s, x, w0, W.bf16 + (size_t)r[1] * in, W.bf16 + (size_t)r[2] * in, W.bf16 + (size_t)r[3] * in, in);
        for (int j = 0; j < rows; j++) out[r[j]] = accumulate ? out[r[j]] + s[j] : s[j];
        return;
    }
    const float* w[4];
    if (W.f32) {
        for (int j = 0; j < 4; j++) w[j] = W.f32 + (size_t)r[j] * in;
    } else {
        if (buf.size() < (size_t)4 * in) buf.resize((size_t)4 * in);
        for (int j = 0; j < 4; j++) {
            rows_to_f32(W, r[j], 1, in, buf.data() + (size_t)j * in);
            w[j] = buf.data() + (size_t)j * in;
        }
    }
    int n = 0;
    for (; n + 1 < N; n += 2) {  // pairs of tokens
        float s[8];
        dot4x2_f32(s, x + (size_t)n * in, x + (size_t)(n + 1) * in, w[0], w[1], w[2], w[3], in);
        float* p0 = out + (size_t)n * out_dim;
        float* p1 = p0 + out_dim;
        for (int j = 0; j < rows; j++) {
            p0[r[j]] = accumulate ? p0[r[j]] + s[j] : s[j];
            p1[r[j]] = accumulate ? p1[r[j]] + s[4 + j] : s[4 + j];
        }
    }
    for (; n < N; n++) {
        float s[4];
        dot4(s, x + (size_t)n * in, w[0], w[1], w[2], w[3], in);
        float* p = out + (size_t)n * out_dim;
        for (int j = 0; j < rows; j++) p[r[j]] = accumulate ? p[r[j]] + s[j] : s[j];
    }
}

// n fp16 values (q8_0 scales, an fp16 KV cache) → fp32, eight at a time with F16C
static void f16_to_f32_n(float* dst, const uint16_t* h, size_t n) {
    size_t i = 0;
#if defined(__F16C__) && defined(__AVX2__)
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(h + i))));
#endif
    for (; i < n; i++) dst[i] = f16_to_f32(h[i]);
}

// x [N, in] quantised to q8_0 for the q8_0 matrices among a linear's jobs (nullptr when there are none), its
// scales as the floats their fp16 values are. Blocks never cross rows (in % 32 == 0), so all N rows are one call.
// Serial: a few hundred multiplications per token, less than one synchronisation of the threads. The buffers are
// kept (thread_local at the callers): nothing is allocated per token.
struct Q8Input {
    std::vector<int8_t> q;
    std::vector<uint16_t> h;
    std::vector<float> d;
    std::vector<Q8Act> rows;
    const Q8Act* get(const float* x, int N, int in, bool any_q8) {
        if (!any_q8) return nullptr;
        size_t nb = (size_t)in / Q8_BLOCK;
        q.resize((size_t)N * in);
        h.resize((size_t)N * nb);
        d.resize((size_t)N * nb);
        rows.resize(N);
        q8_0_quantize(x, (size_t)N * in, q.data(), h.data());
        f16_to_f32_n(d.data(), h.data(), h.size());
        for (int n = 0; n < N; n++) rows[n] = {q.data() + (size_t)n * in, d.data() + (size_t)n * nb};
        return rows.data();
    }
};

// Several linears of the same input x [N, in] in one parallel loop: one barrier instead of one each (q, k, v).
// Barriers matter: a decode step of a small model is ~10 µs of work per layer, and each synchronisation of the
// threads costs microseconds, far more when the machine is busy.
struct LinearJob { float* out; const InferWeight* W; int out_dim; bool accumulate; };

// Prefill of many tokens is compute-bound: there the packed GEMM of the fast CPU path does the work. fp32 weights
// are gemm_cpu's B operand directly; bf16 and q8_0 rows are widened as each panel is packed (gemm_cpu_lowp).
static const int GEMM_MIN_TOKENS = 8;
static void linear_gemm(const float* x, int N, int in, const LinearJob& j) {
    Accum acc = j.accumulate ? Accum::Add : Accum::Overwrite;
    if (j.W->f32) gemm_cpu(N, j.out_dim, in, x, in, false, j.W->f32, in, true, j.out, j.out_dim, acc);
    else gemm_cpu_lowp(N, j.out_dim, in, x, in, j.W->bf16, j.W->q8, j.W->q8_scale, j.out, j.out_dim, acc);
}

// The calling thread's share of a matrix's rows, as four lanes read side by side. [lo, lo + n) is the thread's
// contiguous share (static: rows · t / T of the OpenMP team); lane j is its j-th quarter, and step k takes row k of each lane. Each lane is a
// sequential stream of whole rows, so a step reads four streams far apart in memory instead of four adjacent
// rows: one core keeps more cache-line requests in flight that way (2 threads on AMD Zen 3: ~27 GB/s from four
// streams per core against ~19 from one). The lanes that have run out (only the last steps of the last lanes)
// repeat the step's first row, computed and not stored: valid lanes are always a prefix.
struct Lanes {
    int lo = 0, len = 0, n = 0;
    explicit Lanes(int rows) {
        int t = 0, T = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        T = omp_get_num_threads();
#endif
        lo = (int)((long long)rows * t / T);
        n = (int)((long long)rows * (t + 1) / T) - lo;
        len = (n + 3) / 4;
    }
    int step(int k, int r[4]) const {   // the rows of step k; returns how many are real
        int valid = 0;
        for (int j = 0; j < 4; j++) {
            int i = j * len + k;
            r[j] = i < n ? lo + i : lo + k;   // (k < n: row k of lane 0 is always real)
            valid += i < n;
        }
        return valid;
    }
};

static void linear_forward(const float* x, int N, int in, std::initializer_list<LinearJob> jobs) {
    if (N >= GEMM_MIN_TOKENS) {
        for (const LinearJob& j : jobs) linear_gemm(x, N, in, j);
        return;
    }
    bool any_q8 = false;
    for (const LinearJob& j : jobs) any_q8 |= j.W->q8 != nullptr;
    thread_local Q8Input xin;
    const Q8Act* xq = xin.get(x, N, in, any_q8);
    #pragma omp parallel
    {
        std::vector<float> buf;
        for (const LinearJob& j : jobs) {   // each thread its share of every job: no barrier between jobs
            Lanes ln(j.out_dim);
            for (int k = 0; k < ln.len; k++) {
                int r[4];
                int rows = ln.step(k, r);
                linear_block(j.out, x, xq, *j.W, N, in, j.out_dim, r, rows, j.accumulate, buf);
            }
        }
    }
}
// One linear through the path generation takes (for tests: decode N < 8 on the stored rows, prefill through the GEMM)
void infer_linear(float* out, const float* x, int N, int in, const InferWeight& W, int out_dim) {
    linear_forward(x, N, in, {{out, &W, out_dim, false}});
}

// The MLP's first half, fused: act[n,f] = silu(x·gate_projᵀ) · (x·up_projᵀ), four rows f at a time, so gate and
// up need no second pass or barrier. act, up_tmp: [N, F].
static void swiglu_linear_forward(float* act, float* up_tmp, const float* x, const InferWeight& gate,
                                  const InferWeight& up, int N, int in, int F) {
    if (N >= GEMM_MIN_TOKENS) {
        linear_gemm(x, N, in, {act, &gate, F, false});
        linear_gemm(x, N, in, {up_tmp, &up, F, false});
        swiglu_forward_cpu(act, act, up_tmp, (size_t)N * F);   // in place: act = silu(gate) · up, element by element
        return;
    }
    thread_local Q8Input xin;
    const Q8Act* xq = xin.get(x, N, in, gate.q8 || up.q8);
    #pragma omp parallel
    {
        std::vector<float> buf;
        Lanes ln(F);
        for (int k = 0; k < ln.len; k++) {
            int r[4];
            int rows = ln.step(k, r);
            linear_block(act, x, xq, gate, N, in, F, r, rows, false, buf);
            linear_block(up_tmp, x, xq, up, N, in, F, r, rows, false, buf);
            for (int n = 0; n < N; n++)
                for (int j = 0; j < rows; j++) {
                    size_t i = (size_t)n * F + r[j];
                    act[i] = silu(act[i]) * up_tmp[i];
                }
        }
    }
}

// RMSNorm of N rows, serially: at decode sizes a parallel region would cost more than the arithmetic.
//   y = w ⊙ x / sqrt(mean(x²) + eps)   (the same formula as rmsnorm_forward_ref in deepseek.cu)
static void rmsnorm_rows(float* out, const float* inp, const float* weight, int N, int C, float eps) {
    for (int n = 0; n < N; n++) {
        const float* x = inp + (size_t)n * C;
        float ss = 0.0f;
        for (int i = 0; i < C; i++) ss += x[i] * x[i];
        float r = 1.0f / sqrtf(ss / C + eps);
        float* y = out + (size_t)n * C;
        for (int i = 0; i < C; i++) y[i] = weight[i] * (x[i] * r);
    }
}

// RoPE (Hugging Face rotate-half layout, as rope_forward_ref in deepseek.cu), serially, for N rows of `heads` heads.
//   (x_i, x_{i+D/2}) → (x_i·cos − x_{i+D/2}·sin, x_{i+D/2}·cos + x_i·sin),  angle = pos · inv_freq[i]
// x may have a row stride (the cache rows). cs [N, D/2, 2]: each row's cos and sin (rope_table), computed once per
// chunk of tokens and shared by q and k of every layer; angle in double from inv_freq [D/2], fp32 as transformers'.
static void rope_table(std::vector<float>* cs, const int* pos, int N, int D, const float* inv_freq) {
    int half = D / 2;
    cs->resize((size_t)N * half * 2);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < half; i++) {
            double angle = (double)pos[n] * (double)inv_freq[i];
            (*cs)[((size_t)n * half + i) * 2] = (float)cos(angle);
            (*cs)[((size_t)n * half + i) * 2 + 1] = (float)sin(angle);
        }
}
static void rope_rows(float* x, size_t stride, const float* cs, int N, int heads, int D) {
    int half = D / 2;
    for (int n = 0; n < N; n++)
        for (int i = 0; i < half; i++) {
            float c = cs[((size_t)n * half + i) * 2], s = cs[((size_t)n * half + i) * 2 + 1];
            for (int h = 0; h < heads; h++) {
                float* v = x + (size_t)n * stride + (size_t)h * D;
                float x1 = v[i], x2 = v[i + half];
                v[i] = x1 * c - x2 * s;
                v[i + half] = x2 * c + x1 * s;
            }
        }
}

// Attention of N new tokens (positions pos0..pos0+N-1) over the cache, which already holds their keys/values.
//   y[n,h] = Σ_{s ≤ pos0+n} softmax_s(q[n,h]·k[s,h/(H/KV)] / sqrt(D)) · v[s,h/(H/KV)]
// q [N, H*D], kc/vc this layer's cache [KV, ctx, D] (kv head h at kc + h·hs), y [N, H*D]. att: per-thread scores
// of length pos0+N. One head's keys are one contiguous run (D elements per position): with the cache
// position-major ([ctx, KV·D], a head's rows D elements at a stride of KV·D) attention read the cache at about
// half the rate of the weight streams (AMD Zen 3, 110M shape, fp32 cache: 107-143 µs a layer, against 89-107
// head-major). Each loop still asks for the row PREFETCH_ROWS positions ahead, one request per 64-byte line.
// The cache's elements are fp32 or fp16 (KV = float or Half, the bits of an IEEE half), widened to fp32 as read.
struct Half { uint16_t bits; };
static inline float kv_widen(float v) { return v; }
static inline float kv_widen(Half h) {
#ifdef __F16C__
    return _cvtsh_ss(h.bits);
#else
    return f16_to_f32(h.bits);
#endif
}
static const int PREFETCH_ROWS = 8;
template <typename KV>
static inline void prefetch_row(const KV* p, int D) {   // one request per 64-byte line of a row of D elements
    for (int i = 0; i < D; i += 64 / (int)sizeof(KV)) __builtin_prefetch(p + i);
}
// The sums, one head at a time: four keys a step (each element of q loaded once for four products)
template <typename KV>
static inline void att_dot4(float d[4], const float* qh, const KV* k0, const KV* k1, const KV* k2, const KV* k3, int D) {
    float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;
    #pragma omp simd reduction(+ : d0, d1, d2, d3)
    for (int i = 0; i < D; i++) {
        float qi = qh[i];
        d0 = fmaf(qi, kv_widen(k0[i]), d0); d1 = fmaf(qi, kv_widen(k1[i]), d1);
        d2 = fmaf(qi, kv_widen(k2[i]), d2); d3 = fmaf(qi, kv_widen(k3[i]), d3);
    }
    d[0] = d0; d[1] = d1; d[2] = d2; d[3] = d3;
}
#if defined(__AVX2__) && defined(__FMA__)
static inline __m256 kv_load8(const float* p) { return _mm256_loadu_ps(p); }
static inline __m256 kv_load8(const Half* p) {
#ifdef __F16C__
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
#else
    alignas(32) float f[8];
    for (int j = 0; j < 8; j++) f[j] = kv_widen(p[j]);
    return _mm256_load_ps(f);
#endif
}
// Eight keys a step (D % 8 == 0), one accumulator each (eight independent FMA chains), and the eight sums reduced
// together by a tree of horizontal adds: a vector of the eight dot products, in key order. The compiler's reduction
// of four `omp simd` sums went through the stack, as many instructions as the products themselves at D = 48.
template <typename KV>
static inline __m256 att_dot8(const float* qh, const KV* k, size_t stride, int D) {
    __m256 a[8];
    for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
    for (int i = 0; i < D; i += 8) {
        __m256 qv = _mm256_loadu_ps(qh + i);
        for (int j = 0; j < 8; j++) a[j] = _mm256_fmadd_ps(qv, kv_load8(k + j * stride + i), a[j]);
    }
    __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));   // keys 0-3, per half
    __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));   // keys 4-7
    return _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20), _mm256_permute2f128_ps(h0, h1, 0x31));
}
#endif
template <typename KV>
static inline float att_dot1(const float* qh, const KV* ks, int D) {
    float dot = 0.0f;
    #pragma omp simd reduction(+ : dot)
    for (int i = 0; i < D; i++) dot = fmaf(qh[i], kv_widen(ks[i]), dot);
    return dot;
}
// yh += a0·v0 + a1·v1 + a2·v2 + a3·v3, added in order of s (the same sums as one row at a time): yh is loaded and
// stored once per four rows
template <typename KV>
static inline void att_axpy4(float* yh, const float a[4], const KV* v0, const KV* v1, const KV* v2, const KV* v3, int D) {
    float a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
#if defined(__AVX2__) && defined(__FMA__)
    if (D % 8 == 0) {   // (fp16 rows widened eight at a time; the compiler does not vectorise the scalar widening)
        __m256 b0 = _mm256_set1_ps(a0), b1 = _mm256_set1_ps(a1), b2 = _mm256_set1_ps(a2), b3 = _mm256_set1_ps(a3);
        for (int i = 0; i < D; i += 8) {
            __m256 y = _mm256_fmadd_ps(b0, kv_load8(v0 + i), _mm256_loadu_ps(yh + i));
            y = _mm256_fmadd_ps(b1, kv_load8(v1 + i), y);
            y = _mm256_fmadd_ps(b2, kv_load8(v2 + i), y);
            _mm256_storeu_ps(yh + i, _mm256_fmadd_ps(b3, kv_load8(v3 + i), y));
        }
        return;
    }
#endif
    #pragma omp simd
    for (int i = 0; i < D; i++)
        yh[i] = fmaf(a3, kv_widen(v3[i]), fmaf(a2, kv_widen(v2[i]), fmaf(a1, kv_widen(v1[i]), fmaf(a0, kv_widen(v0[i]), yh[i]))));
}
template <typename KV>
static inline void att_axpy1(float* yh, float a, const KV* vs, int D) {
    #pragma omp simd
    for (int i = 0; i < D; i++) yh[i] = fmaf(a, kv_widen(vs[i]), yh[i]);
}

// A task is one token and one kv head's query heads (or a part of them, when there are fewer tokens × kv heads
// than threads): the keys' scores, the softmax, then the values, for each query head. With grouped-query
// attention the group's heads take each key and value row in turn, so a row is read from memory once per group
// instead of once per query head (DeepSeek LLM 67B: 64 heads over 8 kv heads); each head's sums keep their order
// of positions, the same as one head at a time. (Walking the cache position by position with all of a thread's
// kv heads at each, when the cache was position-major, was measured slower: attention 14% → 19% of a 110M q8_0
// decode on AMD Zen 3.)
template <typename KVT>
static void attention_cached(float* y, const float* q, const KVT* kc, const KVT* vc, int N, int pos0,
                             int H, int KV, int D, size_t hs) {
    int group = H / KV;
    int parts = std::min(group, std::max(1, (num_threads() + N * KV - 1) / (N * KV)));   // of each group
    float scale = 1.0f / sqrtf((float)D);
    #pragma omp parallel
    {
        // the scores [heads of the task, positions] and each head's running max and 1/sum; kept across calls
        thread_local std::vector<float> att_buf, maxv, inv;
        int hmax = (group + parts - 1) / parts;
        if (att_buf.size() < (size_t)hmax * (pos0 + N)) att_buf.resize((size_t)hmax * (pos0 + N));
        if (maxv.size() < (size_t)hmax) { maxv.resize(hmax); inv.resize(hmax); }
        #pragma omp for collapse(3) schedule(static)
        for (int n = 0; n < N; n++)
            for (int kh = 0; kh < KV; kh++)
                for (int part = 0; part < parts; part++) {
                    int h0 = kh * group + part * group / parts, hn = kh * group + (part + 1) * group / parts - h0;
                    int T = pos0 + n + 1;
                    const float* q0 = q + ((size_t)n * H + h0) * D;   // query head h0 + g at q0 + g·D
                    float* att = att_buf.data();                       // head g's scores at att + g·T
                    const KVT* kb = kc + (size_t)kh * hs;   // the key at position s: kb + s·D
                    const KVT* vb = vc + (size_t)kh * hs;
                    for (int g = 0; g < hn; g++) maxv[g] = -INFINITY;
                    int s = 0;
#if defined(__AVX2__) && defined(__FMA__)
                    if (D % 8 == 0)
                        for (; s + 8 <= T; s += 8) {
                            for (int j = 0; j < 8; j++)
                                if (s + j + PREFETCH_ROWS < T) prefetch_row(kb + (size_t)(s + j + PREFETCH_ROWS) * D, D);
                            for (int g = 0; g < hn; g++) {
                                __m256 d = _mm256_mul_ps(att_dot8(q0 + (size_t)g * D, kb + (size_t)s * D, D, D), _mm256_set1_ps(scale));
                                _mm256_storeu_ps(att + (size_t)g * T + s, d);
                                __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(d), _mm256_extractf128_ps(d, 1));
                                m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
                                maxv[g] = std::max(maxv[g], _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4))));
                            }
                        }
#endif
                    for (; s + 4 <= T; s += 4) {
                        const KVT* k0 = kb + (size_t)s * D;
                        for (int j = 0; j < 4; j++)
                            if (s + j + PREFETCH_ROWS < T) prefetch_row(k0 + (size_t)(j + PREFETCH_ROWS) * D, D);
                        for (int g = 0; g < hn; g++) {
                            float d[4], *a = att + (size_t)g * T + s;
                            att_dot4(d, q0 + (size_t)g * D, k0, k0 + D, k0 + 2 * D, k0 + 3 * D, D);
                            for (int j = 0; j < 4; j++) a[j] = d[j] * scale;
                            maxv[g] = std::max(std::max(maxv[g], std::max(a[0], a[1])), std::max(a[2], a[3]));
                        }
                    }
                    for (; s < T; s++)
                        for (int g = 0; g < hn; g++) {
                            float* a = att + (size_t)g * T + s;
                            *a = att_dot1(q0 + (size_t)g * D, kb + (size_t)s * D, D) * scale;
                            maxv[g] = std::max(maxv[g], *a);
                        }
                    for (int g = 0; g < hn; g++) {
                        float* a = att + (size_t)g * T, m = maxv[g], sum = 0.0f;
                        #pragma omp simd reduction(+ : sum)
                        for (int s2 = 0; s2 < T; s2++) { a[s2] = exp_poly(a[s2] - m); sum += a[s2]; }
                        inv[g] = 1.0f / sum;
                        float* yh = y + ((size_t)n * H + h0 + g) * D;
                        for (int i = 0; i < D; i++) yh[i] = 0.0f;
                    }
                    for (s = 0; s + 4 <= T; s += 4) {
                        const KVT* v0 = vb + (size_t)s * D;
                        for (int j = 0; j < 4; j++)
                            if (s + j + PREFETCH_ROWS < T) prefetch_row(v0 + (size_t)(j + PREFETCH_ROWS) * D, D);
                        for (int g = 0; g < hn; g++) {
                            const float* a = att + (size_t)g * T + s;
                            float p[4] = {a[0] * inv[g], a[1] * inv[g], a[2] * inv[g], a[3] * inv[g]};
                            att_axpy4(y + ((size_t)n * H + h0 + g) * D, p, v0, v0 + D, v0 + 2 * D, v0 + 3 * D, D);
                        }
                    }
                    for (; s < T; s++)
                        for (int g = 0; g < hn; g++)
                            att_axpy1(y + ((size_t)n * H + h0 + g) * D, att[(size_t)g * T + s] * inv[g], vb + (size_t)s * D, D);
                }
    }
}

// An fp16 cache's rows: fp32 → fp16 rounded to nearest even (F16C's vcvtps2ph, or f32_to_f16: the same rule); back
// with f16_to_f32_n. (Serial: a token's keys and values are a few thousand numbers; a prefill chunk's widening is
// small beside its attention.)
static void kv_round_f16(uint16_t* dst, const float* x, size_t n) {
    size_t i = 0;
#if defined(__F16C__) && defined(__AVX2__)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i*)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++) dst[i] = f32_to_f16(x[i]);
}
// N new tokens' keys and values [N, KV·D] (fp32, after RoPE) into one layer's cache at positions pos0.., head by
// head (infer_kv_offset): copied, or rounded to fp16.
static void kv_store(InferModel* im, int layer, int pos0, int N, const float* k, const float* v) {
    int KV = im->cfg.num_key_value_heads, D = im->cfg.head_dim;
    for (int h = 0; h < KV; h++)
        for (int n = 0; n < N; n++) {
            size_t src = ((size_t)n * KV + h) * D, dst = infer_kv_offset(*im, layer, h, pos0 + n);
            if (im->kv_f16) {
                kv_round_f16((uint16_t*)im->key_cache + dst, k + src, D);
                kv_round_f16((uint16_t*)im->value_cache + dst, v + src, D);
            } else {
                memcpy((float*)im->key_cache + dst, k + src, D * sizeof(float));
                memcpy((float*)im->value_cache + dst, v + src, D * sizeof(float));
            }
        }
}

// ============================================================================
// the inference model: weights from a model directory (memory-mapped) or from a Model, and the KV cache

InferModel::~InferModel() {
    free(key_cache);
    free(value_cache);
}

// (The cache stays on ordinary pages: huge pages would be zeroed 2 MiB at a time as positions are first written,
// which made the prefill of a 128-token prompt twice as slow for no measurable gain in decoding.)
static void infer_alloc_cache(InferModel* im, int ctx) {
    const Config& c = im->cfg;
    im->ctx = ctx <= 0 ? c.max_position_embeddings : std::min(ctx, c.max_position_embeddings);
    size_t n = (size_t)c.num_hidden_layers * im->ctx * c.num_key_value_heads * c.head_dim;
    size_t elem = im->kv_f16 ? sizeof(uint16_t) : sizeof(float);
    free(im->key_cache);
    free(im->value_cache);
    // calloc of a large block maps fresh zero pages: memory is only committed as positions are written
    im->key_cache = calloc(n, elem);
    im->value_cache = calloc(n, elem);
    if (!im->key_cache || !im->value_cache) die("cannot allocate the KV cache (%zu MiB)", 2 * n * elem >> 20);
    im->pos = 0;
    im->cached.clear();
}

// A matrix as stored in the file: bf16 and fp32 are pointed into; f16 (or a misaligned tensor) is copied to fp32.
// Returns the offset into im->owned to fix up after all copies, or -1 when pointed into the map.
static long long infer_weight(InferModel* im, const std::string& name, const std::vector<int64_t>& shape, InferWeight* w) {
    const TensorInfo& t = im->st.get(name);
    if (t.shape != shape) {
        std::string got, want;
        for (auto d : t.shape) got += (got.empty() ? "" : ", ") + std::to_string(d);
        for (auto d : shape) want += (want.empty() ? "" : ", ") + std::to_string(d);
        die("tensor '%s' has shape [%s], expected [%s]", name.c_str(), got.c_str(), want.c_str());
    }
    uintptr_t addr = (uintptr_t)t.data;
    if (t.dtype == DType::I8) {   // q8_0: int8 rows and their fp16 scales, both pointed into
        const TensorInfo& sc = im->st.q8_scale(name);
        if ((uintptr_t)sc.data % 2 != 0) die("%s: tensor '%s_scale' is not 2-byte aligned in the file", t.file.c_str(), name.c_str());
        w->q8 = (const int8_t*)t.data;
        w->q8_scale = (const uint16_t*)sc.data;
        return -1;
    }
    if (t.dtype == DType::BF16 && addr % 2 == 0) { w->bf16 = (const uint16_t*)t.data; return -1; }
    if (t.dtype == DType::F32 && addr % 4 == 0) { w->f32 = (const float*)t.data; return -1; }
    size_t off = im->owned.size();
    im->owned.resize(off + t.numel());
    im->st.read_f32(name, shape, im->owned.data() + off);
    return (long long)off;
}

void infer_load(InferModel* im, const std::string& dir, int ctx, bool huge_pages) {
    require_dir(dir, "model directory");
    im->cfg = config_read_json(dir + "/config.json");
    const Config& c = im->cfg;
    im->st.open_dir(dir, huge_pages);
    // the same checks as model_load_dir: names, shapes and dtypes against config.json, and no NaN or ±Inf (a scan
    // of the mapped data: the pages are read now rather than by the first token)
    model_check_tensors(im->st, c, true);
    if (huge_pages && !im->st.in_ram)
        fprintf(stderr, "note: --huge-pages: the weights take more than half of the available memory; memory-mapped instead\n");
    int L = c.num_hidden_layers;
    int64_t C = c.hidden_size, QD = (int64_t)c.num_attention_heads * c.head_dim,
            KVD = (int64_t)c.num_key_value_heads * c.head_dim, F = c.intermediate_size, V = c.vocab_size;
    // fp32 copies of the norms first (small), then the matrices; `owned` offsets are resolved at the end
    // because it may reallocate while growing
    std::vector<std::pair<long long, const float**>> fix_norm;
    std::vector<std::pair<long long, InferWeight*>> fix_w;
    im->layers.assign(L, InferLayer{});
    auto norm = [&](const std::string& name, const float** dst) {
        size_t off = im->owned.size();
        im->owned.resize(off + C);
        im->st.read_f32(name, {C}, im->owned.data() + off);
        fix_norm.push_back({(long long)off, dst});
    };
    auto mat = [&](const std::string& name, std::vector<int64_t> shape, InferWeight* w) {
        long long off = infer_weight(im, name, shape, w);
        if (off >= 0) fix_w.push_back({off, w});
    };
    mat("model.embed_tokens.weight", {V, C}, &im->embed_tokens);
    mat("lm_head.weight", {V, C}, &im->lm_head);
    norm("model.norm.weight", &im->norm);
    for (int l = 0; l < L; l++) {
        std::string p = "model.layers." + std::to_string(l) + ".";
        InferLayer& ly = im->layers[l];
        norm(p + "input_layernorm.weight", &ly.input_layernorm);
        norm(p + "post_attention_layernorm.weight", &ly.post_attention_layernorm);
        mat(p + "self_attn.q_proj.weight", {QD, C}, &ly.q_proj);
        mat(p + "self_attn.k_proj.weight", {KVD, C}, &ly.k_proj);
        mat(p + "self_attn.v_proj.weight", {KVD, C}, &ly.v_proj);
        mat(p + "self_attn.o_proj.weight", {C, QD}, &ly.o_proj);
        mat(p + "mlp.gate_proj.weight", {F, C}, &ly.gate_proj);
        mat(p + "mlp.up_proj.weight", {F, C}, &ly.up_proj);
        mat(p + "mlp.down_proj.weight", {C, F}, &ly.down_proj);
    }
    for (auto& f : fix_norm) *f.second = im->owned.data() + f.first;
    for (auto& f : fix_w) f.second->f32 = im->owned.data() + f.first;
    const InferWeight& q0 = im->layers[0].q_proj;
    im->weights_dtype = q0.q8 ? "q8_0" : q0.bf16 ? "bf16" : "fp32";
    infer_alloc_cache(im, ctx);
}

void infer_from_model(InferModel* im, const Model& m, int ctx) {
    im->cfg = m.cfg;
    const Config& c = m.cfg;
    const ParameterTensors& p = m.params;
    size_t C = c.hidden_size, QD = (size_t)c.num_attention_heads * c.head_dim,
           KVD = (size_t)c.num_key_value_heads * c.head_dim, F = c.intermediate_size;
    im->embed_tokens.f32 = p.embed_tokens;
    im->lm_head.f32 = p.lm_head;
    im->norm = p.norm;
    im->layers.assign(c.num_hidden_layers, InferLayer{});
    for (int l = 0; l < c.num_hidden_layers; l++) {
        InferLayer& ly = im->layers[l];
        ly.input_layernorm = p.input_layernorm + l * C;
        ly.post_attention_layernorm = p.post_attention_layernorm + l * C;
        ly.q_proj.f32 = p.q_proj + l * QD * C;
        ly.k_proj.f32 = p.k_proj + l * KVD * C;
        ly.v_proj.f32 = p.v_proj + l * KVD * C;
        ly.o_proj.f32 = p.o_proj + l * C * QD;
        ly.gate_proj.f32 = p.gate_proj + l * F * C;
        ly.up_proj.f32 = p.up_proj + l * F * C;
        ly.down_proj.f32 = p.down_proj + l * C * F;
    }
    im->weights_dtype = "fp32";
    infer_alloc_cache(im, ctx);
}

void infer_kv_cache_f16(InferModel* im, bool f16) {
    if (im->cuda) die("infer: the KV cache's number format is the CPU decoder's (the GPU keeps its own cache)");
    im->kv_f16 = f16;
    infer_alloc_cache(im, im->ctx);
}

void infer_rewind(InferModel* im, int keep) {
    if (keep < 0 || keep > im->pos) die("infer: cannot rewind to %d (cache holds %d tokens)", keep, im->pos);
    im->pos = keep;
    im->cached.resize(keep);
}

// The GPU's KV cache has the same capacity as the CPU's; positions past a rewind are simply written again.
void infer_attach_cuda(InferModel* im, CudaModel* gpu) {
    cuda_decode_free(im->cuda);
    im->cuda = cuda_decode_create(gpu, im->ctx);
}

// One chunk of N ≤ g_prefill_chunk tokens through the model, the same steps as model_forward_ref in deepseek.cu:
//   x = embed(tokens); per layer: x += o_proj(attn(rope(q), rope(k), v) over the cache); x += down(silu(gate)·up)
// then the final norm and lm_head (for the last token only unless all_logits).
// Chunks of 256: a weight matrix packed for the GEMM serves 256 tokens (64 left the packing a seventh of the time).
int g_prefill_chunk = 256;
static void infer_chunk(InferModel* im, const int* tokens, int N, float* logits_out) {
    const Config& c = im->cfg;
    int C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim;
    int F = c.intermediate_size, V = c.vocab_size, QD = H * D, KVD = KV * D, pos0 = im->pos;
    // scratch: x, xn [N,C]; q, y [N,QD]; gate, up [N,F]; the chunk's fp32 keys, values [N,KVD] (then stored into
    // the cache's head-major rows)
    size_t need = (size_t)N * (2 * C + 2 * QD + 2 * F + 2 * KVD);
    if (im->scratch.size() < need) im->scratch.resize(need);
    float* x = im->scratch.data();
    float* xn = x + (size_t)N * C;
    float* q = xn + (size_t)N * C;
    float* y = q + (size_t)N * QD;
    float* gate = y + (size_t)N * QD;
    float* up = gate + (size_t)N * F;
    float* knew = up + (size_t)N * F;
    float* vnew = knew + (size_t)N * KVD;
    std::vector<int> pos(N);
    for (int n = 0; n < N; n++) pos[n] = pos0 + n;

    for (int n = 0; n < N; n++) {
        float* xr = x + (size_t)n * C;
        if (im->embed_tokens.f32) memcpy(xr, im->embed_tokens.f32 + (size_t)tokens[n] * C, C * sizeof(float));
        else rows_to_f32(im->embed_tokens, tokens[n], 1, C, xr);
    }
    float eps = (float)c.rms_norm_eps;
    int half = D / 2;
    std::vector<float> inv_freq(half);
    for (int i = 0; i < half; i++) inv_freq[i] = 1.0f / powf((float)c.rope_theta, (float)(2 * i) / (float)D);
    thread_local std::vector<float> rope_cs;   // the chunk's cos/sin, for every layer
    rope_table(&rope_cs, pos.data(), N, D, inv_freq.data());
    for (int l = 0; l < c.num_hidden_layers; l++) {
        const InferLayer& ly = im->layers[l];
        size_t layer_off = infer_kv_offset(*im, l, 0, 0), hs = (size_t)im->ctx * D;   // [KV, ctx, D]
        // attention block: x += o_proj(attention(rope(q_proj(xn)), rope(k_proj(xn)), v_proj(xn)))
        rmsnorm_rows(xn, x, ly.input_layernorm, N, C, eps);
        linear_forward(xn, N, C, {{q, &ly.q_proj, QD, false}, {knew, &ly.k_proj, KVD, false}, {vnew, &ly.v_proj, KVD, false}});
        rope_rows(q, QD, rope_cs.data(), N, H, D);
        rope_rows(knew, KVD, rope_cs.data(), N, KV, D);
        kv_store(im, l, pos0, N, knew, vnew);
        if (N >= GEMM_MIN_TOKENS) {   // a prefill chunk: the fast CPU path's blockwise attention, four query rows at a time
            int Tk = pos0 + N;
            const float* kf = (const float*)im->key_cache + layer_off;
            const float* vf = (const float*)im->value_cache + layer_off;
            size_t fhs = hs;   // the head stride of what attention reads
            if (im->kv_f16) {   // the cache's fp16 values widened, [KV, Tk, D] (the same numbers decode reads)
                thread_local std::vector<float> wide;
                size_t n = (size_t)Tk * KVD;
                if (wide.size() < 2 * n) wide.resize(2 * n);
                const uint16_t* kh = (const uint16_t*)im->key_cache + layer_off;
                const uint16_t* vh = (const uint16_t*)im->value_cache + layer_off;
                fhs = (size_t)Tk * D;
                for (int h = 0; h < KV; h++) {
                    f16_to_f32_n(wide.data() + h * fhs, kh + h * hs, fhs);
                    f16_to_f32_n(wide.data() + n + h * fhs, vh + h * hs, fhs);
                }
                kf = wide.data();
                vf = kf + n;
            }
            attention_forward_strided_cpu(y, nullptr, q, kf, vf, 1, N, Tk, pos0, H, KV, D, 0, D, fhs);
        } else if (im->kv_f16) {
            attention_cached(y, q, (const Half*)im->key_cache + layer_off, (const Half*)im->value_cache + layer_off, N,
                             pos0, H, KV, D, hs);
        } else {
            attention_cached(y, q, (const float*)im->key_cache + layer_off, (const float*)im->value_cache + layer_off, N,
                             pos0, H, KV, D, hs);
        }
        linear_forward(y, N, QD, {{x, &ly.o_proj, C, true}});
        // MLP block: x += down_proj(silu(gate_proj(xn)) ⊙ up_proj(xn))
        rmsnorm_rows(xn, x, ly.post_attention_layernorm, N, C, eps);
        swiglu_linear_forward(gate, up, xn, ly.gate_proj, ly.up_proj, N, C, F);
        linear_forward(gate, N, F, {{x, &ly.down_proj, C, true}});
    }
    if (logits_out) {
        rmsnorm_rows(xn, x, im->norm, N, C, eps);
        linear_forward(xn, N, C, {{logits_out, &im->lm_head, V, false}});
    } else {  // only the last token's logits are wanted
        rmsnorm_rows(xn, x + (size_t)(N - 1) * C, im->norm, 1, C, eps);
        linear_forward(xn, 1, C, {{im->logits.data(), &im->lm_head, V, false}});
    }
    im->pos += N;
    im->cached.insert(im->cached.end(), tokens, tokens + N);
}

const float* infer_forward(InferModel* im, const int* tokens, int n, bool all_logits) {
    const Config& c = im->cfg;
    if (n < 1) die("infer: no tokens to process");
    if (im->pos + n > im->ctx)
        die("context full: %d cached + %d new tokens exceed the context of %d tokens", im->pos, n, im->ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c.vocab_size) die("token id %d out of range [0, %d)", tokens[i], c.vocab_size);
    size_t V = c.vocab_size;
    im->logits.resize(all_logits ? (size_t)n * V : V);
    if (im->cuda && !all_logits) {   // --device cuda: the tokens at once (cuda_decode_prefill), the last one's logits
        const float* z = cuda_decode_prefill(im->cuda, tokens, n, im->pos, true);
        memcpy(im->logits.data(), z, V * sizeof(float));
        im->pos += n;
        im->cached.insert(im->cached.end(), tokens, tokens + n);
        return im->logits.data();
    }
    if (im->cuda) {   // every token's logits: token by token through the GPU's KV cache
        for (int i = 0; i < n; i++) {
            bool want = all_logits || i == n - 1;
            const float* z = cuda_decode_step(im->cuda, tokens[i], im->pos, want);
            if (want) memcpy(im->logits.data() + (all_logits ? (size_t)i * V : 0), z, V * sizeof(float));
            im->pos++;
        }
        im->cached.insert(im->cached.end(), tokens, tokens + n);
        return im->logits.data();
    }
    for (int i = 0; i < n; i += g_prefill_chunk) {
        int m = std::min(g_prefill_chunk, n - i);
        infer_chunk(im, tokens + i, m, all_logits ? im->logits.data() + (size_t)i * V : nullptr);
    }
    return im->logits.data();
}

// ============================================================================
// sampling

// xorshift64* from a splitmix64-mixed seed: deterministic draws from --seed alone
static uint64_t rng_next(uint64_t* s) {
    *s ^= *s >> 12; *s ^= *s << 25; *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1Dull;
}
static float rng_uniform(uint64_t* s) { return (rng_next(s) >> 40) / 16777216.0f; }  // [0, 1)

void sampler_init(Sampler* s, const SamplerParams& p) {
    s->p = p;
    uint64_t z = p.seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    s->rng = (z ^ (z >> 31)) | 1;  // never zero
}

// repetition penalty (CTRL, as transformers): for every token seen, z → z/r if z > 0 else z·r
// temperature: z → z/T; top-k: keep the k largest; top-p: keep the smallest prefix of the sorted distribution
// whose probability reaches p (at least one token); then draw from the renormalised distribution.
int sampler_sample(Sampler* s, float* z, int V, const std::vector<int>& seen) {
    const SamplerParams& p = s->p;
    if (p.repetition_penalty != 1.0f) {
        std::vector<uint8_t> done(V, 0);
        for (int id : seen)
            if (id >= 0 && id < V && !done[id]) {
                done[id] = 1;
                z[id] = z[id] > 0 ? z[id] / p.repetition_penalty : z[id] * p.repetition_penalty;
            }
    }
    if (p.temperature <= 0.0f) {  // greedy: the first maximum, as torch.argmax (the maximum in one vectorised
        float m = z[0];           // pass, then the first element equal to it; the logits are finite: check_logits)
        #pragma omp simd reduction(max : m)
        for (int i = 1; i < V; i++) m = std::max(m, z[i]);
        int best = 0;
        while (best + 1 < V && !(z[best] == m)) best++;
        return best;
    }
    auto& w = s->work;
    w.resize(V);
    for (int i = 0; i < V; i++) w[i] = {z[i] / p.temperature, i};
    auto by_logit = [](const std::pair<float, int>& a, const std::pair<float, int>& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    int n = V;
    if (p.top_k > 0 && p.top_k < V) {
        std::partial_sort(w.begin(), w.begin() + p.top_k, w.end(), by_logit);
        n = p.top_k;
    } else if (p.top_p < 1.0f) {
        std::sort(w.begin(), w.end(), by_logit);
    }
    float maxv = -INFINITY;
    for (int i = 0; i < n; i++) maxv = std::max(maxv, w[i].first);
    double sum = 0;
    for (int i = 0; i < n; i++) { w[i].first = expf(w[i].first - maxv); sum += w[i].first; }
    if (p.top_p < 1.0f) {
        if (n == V) {} // already sorted
        else std::sort(w.begin(), w.begin() + n, by_logit);  // top-k's prefix is sorted already; cheap
        double cum = 0;
        int keep = n;
        for (int i = 0; i < n; i++) {
            cum += w[i].first / sum;
            if (cum >= p.top_p) { keep = i + 1; break; }
        }
        n = keep;
        sum = 0;
        for (int i = 0; i < n; i++) sum += w[i].first;
    }
    double r = rng_uniform(&s->rng) * sum, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += w[i].first;
        if (r < acc) return w[i].second;
    }
    return w[n - 1].second;
}

// ============================================================================
// generation

// Logits with a NaN or ±Inf (finite weights whose activations overflow) would be sampled as garbage: an error.
static void check_logits(const float* z, int V, int pos) {
    // z·0 is 0 for a finite z and NaN otherwise: one vectorised pass, the element search only when one is not
    float probe = 0.0f;
    #pragma omp simd reduction(+ : probe)
    for (int i = 0; i < V; i++) probe += z[i] * 0.0f;
    if (probe == 0.0f) return;
    for (int i = 0; i < V; i++)
        if (!std::isfinite(z[i]))
            die("generate: the logits at position %d are not finite (token %d: %s): the model's activations overflow",
                pos, i, std::isnan(z[i]) ? "NaN" : z[i] > 0 ? "+Inf" : "-Inf");
}

std::vector<int> generate_tokens(InferModel* im, const std::vector<int>& prompt, int max_new, const SamplerParams& sp,
                                 const std::vector<int>& eos_ids, GenerateStats* stats,
                                 bool (*on_token)(int id, void* ctx), void* on_token_ctx) {
    GenerateStats st;
    if (prompt.empty()) die("generate: the prompt is empty");
    if ((int)prompt.size() > im->ctx)
        die("the prompt has %zu tokens but the context holds %d (max_position_embeddings %d)", prompt.size(), im->ctx,
            im->cfg.max_position_embeddings);
    // reuse the cached prefix the prompt shares (chat turns), but always recompute the last prompt token
    int keep = 0;
    while (keep < im->pos && keep + 1 < (int)prompt.size() && im->cached[keep] == prompt[keep]) keep++;
    infer_rewind(im, keep);
    st.prompt_tokens = (int)prompt.size();
    st.prefill_tokens = (int)prompt.size() - keep;
    Sampler s;
    sampler_init(&s, sp);
    std::vector<int> seen = prompt, out;
    int V = im->cfg.vocab_size;
    std::vector<float> z(V);
    double t0 = now_seconds();
    const float* logits = infer_forward(im, prompt.data() + keep, st.prefill_tokens);
    double t1 = now_seconds();
    st.prefill_s = t1 - t0;
    st.stop_reason = "length";
    for (int i = 0; i < max_new; i++) {
        check_logits(logits, V, im->pos - 1);
        memcpy(z.data(), logits, V * sizeof(float));
        int next = sampler_sample(&s, z.data(), V, seen);
        if (i == 0) st.first_token_s = now_seconds() - t0;
        if (std::find(eos_ids.begin(), eos_ids.end(), next) != eos_ids.end()) { st.stop_reason = "eos"; break; }
        out.push_back(next);
        seen.push_back(next);
        st.generated++;
        if (on_token && !on_token(next, on_token_ctx)) { st.stop_reason = "stop"; break; }
        if (i + 1 == max_new) break;
        if (im->pos >= im->ctx) { st.stop_reason = "context"; break; }
        logits = infer_forward(im, &next, 1);
    }
    st.decode_s = now_seconds() - t1;
    if (stats) *stats = st;
    return out;
}

std::vector<int> generate_greedy(InferModel* im, const std::vector<int>& prompt, int max_new, int eos) {
    SamplerParams sp;
    std::vector<int> eos_ids;
    if (eos >= 0) eos_ids.push_back(eos);
    return generate_tokens(im, prompt, max_new, sp, eos_ids);
}

// ============================================================================
// streaming text: whole UTF-8 characters only, stop strings held back until they can be ruled out

// The UTF-8 sequence starting at s[i]: its length n > 0 if complete and valid; 0 if a valid but incomplete
// prefix at the end of s; −k if invalid, k being the bytes of its maximal valid prefix (at least 1), which are
// replaced by one U+FFFD (Unicode's "maximal subpart" practice, as Rust's from_utf8_lossy and Python's decode).
static int utf8_seq(const std::string& s, size_t i) {
    unsigned char c = (unsigned char)s[i];
    int len;
    if (c < 0x80) return 1;
    else if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) len = 3;
    else if (c >= 0xF0 && c <= 0xF4) len = 4;
    else return -1;
    for (int k = 1; k < len; k++) {
        if (i + k >= s.size()) return 0;
        unsigned char d = (unsigned char)s[i + k];
        bool ok = (d & 0xC0) == 0x80;
        // the second byte also rules out overlong forms, surrogates and code points above U+10FFFF
        if (k == 1 && ((c == 0xE0 && d < 0xA0) || (c == 0xED && d > 0x9F) || (c == 0xF0 && d < 0x90) ||
                       (c == 0xF4 && d > 0x8F)))
            ok = false;
        if (!ok) return -k;
    }
    return len;
}

// Splits ts->pending into printable text (whole characters, invalid bytes as U+FFFD) and a held tail
// (an incomplete character at the end, or a possible start of the stop string).
static std::string text_stream_drain(TextStream* ts, bool final) {
    std::string text;  // valid UTF-8 from pending
    size_t i = 0;
    const std::string& p = ts->pending;
    while (i < p.size()) {
        int n = utf8_seq(p, i);
        if (n == 0 && !final) break;      // wait for the rest of the character
        if (n <= 0) { text += "\xEF\xBF\xBD"; i += n < 0 ? -n : p.size() - i; continue; }
        text.append(p, i, n);
        i += n;
    }
    std::string rest = p.substr(i);
    if (!ts->stop.empty()) {
        size_t at = text.find(ts->stop);
        if (at != std::string::npos) {
            ts->stopped = true;
            ts->pending.clear();
            return text.substr(0, at);
        }
        if (!final) {  // hold back the longest tail of text that is a prefix of the stop string
            size_t hold = 0;
            for (size_t k = std::min(text.size(), ts->stop.size() - 1); k > 0; k--)
                if (text.compare(text.size() - k, k, ts->stop, 0, k) == 0) { hold = k; break; }
            rest = text.substr(text.size() - hold) + rest;
            text.resize(text.size() - hold);
        }
    }
    ts->pending = final ? "" : rest;
    return text;
}
std::string text_stream_push(TextStream* ts, const std::string& bytes) {
    if (ts->stopped) return "";
    ts->pending += bytes;
    return text_stream_drain(ts, false);
}
std::string text_stream_finish(TextStream* ts) {
    if (ts->stopped) return "";
    return text_stream_drain(ts, true);
}

// ============================================================================
// the chat template (deepseek-llm-7b-chat's tokenizer_config.json):
//   {{ bos }} then per message: user → "User: " + c + "\n\n"; assistant → "Assistant: " + c + eos;
//   system → c + "\n\n"; and with add_generation_prompt, "Assistant:" (no trailing space).

// The same template in Jinja, verbatim from deepseek-llm-7b-chat's tokenizer_config.json (a test compares it with
// tests/fixtures/infer/chat_template.jinja): what a GGUF's tokenizer.chat_template carries for llama.cpp.
const char* const CHAT_TEMPLATE_JINJA =
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ bos_token }}"
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

// the rendered text and, for chat_tokens, the byte ranges of the assistant replies (" " + content + eos)
static std::string chat_render_spans(const std::vector<ChatMessage>& msgs, bool add_generation_prompt,
                                     const std::string& bos, const std::string& eos,
                                     std::vector<std::pair<size_t, size_t>>* spans) {
    std::string s = bos;
    for (const ChatMessage& m : msgs) {
        if (m.role == "user") s += "User: " + m.content + "\n\n";
        else if (m.role == "assistant") {
            s += "Assistant:";
            size_t a = s.size();
            s += " " + m.content + eos;
            if (spans) spans->push_back({a, s.size()});
        } else if (m.role == "system") s += m.content + "\n\n";
        else die("chat: unknown role '%s' (system, user or assistant)", m.role.c_str());
    }
    if (add_generation_prompt) s += "Assistant:";
    return s;
}
std::string chat_render(const std::vector<ChatMessage>& msgs, bool add_generation_prompt, const std::string& bos,
                        const std::string& eos) {
    return chat_render_spans(msgs, add_generation_prompt, bos, eos, nullptr);
}

void chat_tokens(const Tokenizer* tok, const std::vector<ChatMessage>& msgs, bool add_generation_prompt,
                 std::vector<int>* ids, std::vector<uint8_t>* mask) {
    int bos = tokenizer_bos_id(tok), eos = tokenizer_eos_id(tok);
    if (bos < 0 || eos < 0) die("chat: the tokenizer has no BOS/EOS token, which the chat template needs");
    std::vector<std::pair<size_t, size_t>> spans;
    std::string text = chat_render_spans(msgs, add_generation_prompt, tokenizer_token_bytes(tok, bos),
                                         tokenizer_token_bytes(tok, eos), &spans);
    *ids = tokenizer_encode(tok, text, false);  // BOS is in the text, as transformers' apply_chat_template
    if (!mask) return;
    // a token is an assistant token when it starts inside a reply's byte range
    mask->assign(ids->size(), 0);
    size_t off = 0, k = 0;
    for (size_t i = 0; i < ids->size(); i++) {
        while (k < spans.size() && off >= spans[k].second) k++;
        if (k < spans.size() && off >= spans[k].first) (*mask)[i] = 1;
        off += tokenizer_token_bytes(tok, (*ids)[i]).size();
    }
}

// ============================================================================
// the command line: generate and chat

// generation_config.json: the checkpoint's sampling defaults and EOS ids (an int or a list). Each field is read
// typed and checked as the flag that overrides it would be (a value --temperature would refuse is refused here
// too), token ids against the model's vocabulary.
struct GenDefaults {
    bool do_sample = false, has_sampling = false;
    float temperature = 1.0f, top_p = 1.0f, repetition_penalty = 1.0f;
    int top_k = 0;
    int max_new_tokens = 0;             // 0: not given
    std::vector<int> eos;
};
static GenDefaults read_generation_config(const std::string& dir, int vocab_size) {
    GenDefaults g;
    std::string path = dir + "/generation_config.json";
    if (!path_exists(path)) return g;   // (a directory or FIFO of that name is refused by name)
    json j = json_parse_file(path);
    if (!j.is_object()) die("%s: expected a JSON object", path.c_str());
    for (const char* k : {"do_sample", "temperature", "top_p", "top_k", "repetition_penalty"})
        if (json_field(j, k, path, false)) g.has_sampling = true;
    g.do_sample = json_bool(j, "do_sample", path, false);
    g.temperature = (float)json_num(j, "temperature", path, 1.0, 0, 100);            // as --temperature
    double top_p = json_num(j, "top_p", path, 1.0, -1e300, 1e300);                   // as --top-p: (0, 1]
    if (!(top_p > 0 && top_p <= 1)) die("%s: field 'top_p' must be a number in (0, 1], got %g", path.c_str(), top_p);
    g.top_p = (float)top_p;
    g.top_k = (int)json_int(j, "top_k", path, 0, 0, 100000000);                      // as --top-k
    g.repetition_penalty = (float)json_num(j, "repetition_penalty", path, 1.0, 1e-3, 1000);   // as --repetition-penalty
    g.max_new_tokens = (int)json_int(j, "max_new_tokens", path, 0, 1, 10000000);     // as -n
    json_int(j, "max_length", path, 0, 1, 1LL << 40);                                // (typed; not used)
    g.eos = json_token_ids(j, "eos_token_id", path, vocab_size, true);
    json_token_ids(j, "bos_token_id", path, vocab_size, false);
    // (pad_token_id is not read: generation never pads, and -1 is a common way to write "none")
    return g;
}

// Everything a generate/chat run needs, from the flags and the model directory.
struct Session {
    InferModel im;
    CudaModel* gpu = nullptr;           // --device cuda: the weights on the GPU (im decodes through them)
    Tokenizer* tok = nullptr;
    SamplerParams sp;
    std::vector<int> eos_ids;
    int max_new = 256;
    std::string stop;
    bool ids_out = false, quiet = false;
    std::string header;                 // the model/sampling line, printed to stderr once the input is validated
    ~Session() {
        if (tok) tokenizer_free(tok);
        cuda_decode_free(im.cuda);      // the decoder before the model it reads
        im.cuda = nullptr;
        cuda_model_free(gpu);
    }
};

static const std::vector<std::string> GEN_VALUE_FLAGS = {"model", "prompt", "prompt-ids", "n", "max-new-tokens",
    "temperature", "top-k", "top-p", "repetition-penalty", "seed", "stop", "threads", "device", "context", "system", "kv-cache"};

static void session_open(Session* s, const Args& a, bool chat, bool need_tokenizer) {
    // validate every flag before the (possibly slow) load
    Device dev = device_select(a.str("device", "auto"));   // dies if --device cuda cannot run
    if (!a.has("model")) die("%s: --model DIR is required", a.cmd.c_str());
    std::string dir = a.str("model");
    if (a.has("n") && a.has("max-new-tokens")) die("%s: -n and --max-new-tokens are the same flag; give one", a.cmd.c_str());
    // -n 0 or --context 0 would mean nothing the help describes: refused
    s->max_new = (int)a.integer(a.has("n") ? "n" : "max-new-tokens", chat ? 512 : 256, 1, 10000000);
    int ctx = (int)a.integer("context", 0, 1, 10000000);
    std::string kv = a.str("kv-cache", "f32");
    if (kv != "f32" && kv != "f16") die("%s: --kv-cache must be f32 or f16, got '%s'", a.cmd.c_str(), kv.c_str());
    float temperature = (float)a.real("temperature", -1, 0, 100);
    int top_k = (int)a.integer("top-k", -1, 0, 100000000);
    float top_p = (float)a.real("top-p", -1, -1e300, 1e300);
    if (a.has("top-p") && !(top_p > 0 && top_p <= 1))
        die("%s: --top-p must be a number in (0, 1], got '%s'", a.cmd.c_str(), a.str("top-p").c_str());
    float rep = (float)a.real("repetition-penalty", -1, 1e-3, 1000);
    uint64_t seed = a.has("seed") ? (uint64_t)a.integer("seed", 0, 0, (1ll << 62))
                                  : ((uint64_t)time(nullptr) << 20) ^ (uint64_t)getpid();
    s->stop = a.str("stop");
    if (a.has("stop") && s->stop.empty()) die("%s: --stop needs a non-empty string", a.cmd.c_str());

    require_dir(dir, "model directory");
    // an unsupported model type fails here, before anything is mapped
    int vocab = config_read_json(dir + "/config.json").vocab_size;
    if (need_tokenizer && !path_exists(dir + "/tokenizer.json"))
        die("%s: %s has no tokenizer.json (pass --prompt-ids for raw token ids)", a.cmd.c_str(), dir.c_str());
    if (need_tokenizer) s->tok = tokenizer_load(dir + "/tokenizer.json");   // (not a regular file: refused by name)
    GenDefaults g = read_generation_config(dir, vocab);
    if (g.max_new_tokens > 0 && !a.has("n") && !a.has("max-new-tokens")) s->max_new = g.max_new_tokens;
    // defaults: the checkpoint's generation_config (greedy unless do_sample), for chat the paper's 0.7 / 0.95
    // when the checkpoint says nothing; flags override
    SamplerParams& sp = s->sp;
    if (g.do_sample) { sp.temperature = g.temperature; sp.top_p = g.top_p; sp.top_k = g.top_k; }
    else if (chat && !g.has_sampling) { sp.temperature = 0.7f; sp.top_p = 0.95f; }
    sp.repetition_penalty = g.repetition_penalty;
    if (temperature >= 0) sp.temperature = temperature;
    if (top_k >= 0) sp.top_k = top_k;
    if (top_p >= 0) sp.top_p = top_p;
    if (rep > 0) sp.repetition_penalty = rep;
    sp.seed = seed;

    double t0 = now_seconds();
    // on the GPU the host weights are never read by the decoder: keep them mapped, not copied into memory
    infer_load(&s->im, dir, ctx, a.flag("huge-pages") && dev != Device::CUDA);
    const Config& c = s->im.cfg;
    std::string device = device_describe(dev);
    if (dev != Device::CUDA) {
        if (kv == "f16") infer_kv_cache_f16(&s->im, true);
        device += kv == "f16" ? "; KV cache fp16" : "; KV cache fp32";
    } else if (a.has("kv-cache")) {
        device += "; --kv-cache is for the CPU decoder, the GPU keeps its own cache";
    }
    if (dev == Device::CUDA) {
        // the inference-only model: bf16 weights read from the memory-mapped files (no fp32 copy), the KV cache
        s->gpu = cuda_model_create_inference(s->im, false);
        infer_attach_cuda(&s->im, s->gpu);
        size_t kv = 0, dec = cuda_decode_memory_bytes(s->im.cuda, &kv);
        char mem[160];
        snprintf(mem, sizeof mem, "; GPU memory: weights bf16 %.2f GiB, KV cache %.2f GiB (%d positions), activations %.2f GiB",
                 cuda_model_memory_bytes(s->gpu) / 1073741824.0, kv / 1073741824.0, s->im.ctx, (dec - kv) / 1073741824.0);
        device += mem;
    }
    s->eos_ids = g.eos;
    if (s->tok && tokenizer_eos_id(s->tok) >= 0) s->eos_ids.push_back(tokenizer_eos_id(s->tok));
    if (s->eos_ids.empty() && c.eos_token_id >= 0) s->eos_ids.push_back(c.eos_token_id);
    if (s->tok && tokenizer_vocab_size(s->tok) > c.vocab_size)
        die("%s: tokenizer.json has %d tokens but the model only %d embedding rows", a.cmd.c_str(),
            tokenizer_vocab_size(s->tok), c.vocab_size);
    char line[1024];
    snprintf(line, sizeof line, "[model %s: %d layers, d_model %d, %s weights %s, context %d, loaded in %.2f s; "
             "temperature %g, top_k %d, top_p %g, repetition_penalty %g, seed %llu]\n",
             dir.c_str(), c.num_hidden_layers, c.hidden_size, s->im.weights_dtype,
             s->im.st.in_ram ? "in memory" : "memory-mapped", s->im.ctx, now_seconds() - t0,
             sp.temperature, sp.top_k, sp.top_p, sp.repetition_penalty, (unsigned long long)sp.seed);
    s->header = line;
    s->header += "[device: " + device + "]\n";   // the backend --device chose (auto: the GPU when there is one)
}

static void print_stats(const GenerateStats& st) {
    double pf = st.prefill_s > 0 ? st.prefill_tokens / st.prefill_s : 0;
    int decoded = std::max(0, st.generated - 1);   // the first token comes from the prefill's logits
    double dc = st.decode_s > 0 && decoded > 0 ? decoded / st.decode_s : 0;
    fprintf(stderr, "\n[prompt %d tokens (%d prefilled) at %.1f tokens/s | generated %d tokens at %.1f tokens/s | "
            "time to first token %.1f ms | stop: %s]\n",
            st.prompt_tokens, st.prefill_tokens, pf, st.generated, dc, st.first_token_s * 1e3, st.stop_reason.c_str());
}

// streaming callback state: prints each token's text as soon as it forms whole characters
struct StreamCtx {
    Session* s;
    TextStream ts;
    std::string text;    // everything printed (the chat history keeps it)
};
static bool stream_token(int id, void* p) {
    StreamCtx* c = (StreamCtx*)p;
    if (c->s->ids_out) return true;
    // an id past the tokenizer (the embedding is padded, e.g. 102400 rows for 100015 tokens) decodes to nothing,
    // as in tokenizers' decode
    std::string bytes = id < tokenizer_vocab_size(c->s->tok) ? tokenizer_token_bytes(c->s->tok, id) : "";
    std::string out = text_stream_push(&c->ts, bytes);
    if (!out.empty()) { fwrite(out.data(), 1, out.size(), stdout); fflush(stdout); c->text += out; }
    return !c->ts.stopped;
}
static void stream_finish(StreamCtx* c) {
    std::string out = text_stream_finish(&c->ts);
    if (!out.empty()) { fwrite(out.data(), 1, out.size(), stdout); c->text += out; }
    fflush(stdout);
}

static std::vector<int> parse_ids(const std::string& s, const char* what) {
    std::vector<int> ids;
    const char* p = s.c_str();
    while (*p) {
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') p++;
        if (!*p) break;
        char* end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > 2147483647L) die("%s: expected token ids (non-negative integers), got '%s'", what, s.c_str());
        ids.push_back((int)v);
        p = end;
    }
    return ids;
}

static const char* GENERATE_USAGE =
    "usage: deepseek generate --model DIR (--prompt TEXT | --prompt-ids \"ID ID …\") [flags]\n"
    "  completes the prompt (BOS is prepended) and prints the completion to stdout as it is generated;\n"
    "  timings go to stderr.\n"
    "  -n, --max-new-tokens N   new tokens at most (generation_config.json's max_new_tokens, else 256)\n"
    "  --temperature T          0 = greedy; default from generation_config.json (greedy unless do_sample)\n"
    "  --top-k K                keep the K most likely tokens (0 = off)\n"
    "  --top-p P                keep the smallest set of tokens with probability ≥ P (1 = off)\n"
    "  --repetition-penalty R   divide positive / multiply negative logits of seen tokens by R (1 = off)\n"
    "  --seed S                 random seed for sampling (default: from the clock; printed)\n"
    "  --stop STRING            stop when the output contains STRING (not printed)\n"
    "  --ids                    print the generated token ids on one line instead of text\n"
    "  --quiet                  no model line and no timings on stderr\n"
    "  --context N              KV cache size in tokens (default: the model's max_position_embeddings)\n"
    "  --huge-pages             read the weights into huge pages instead of mapping them, if they take under\n"
    "                           half of the available memory: ~10% faster decoding, for a slower start\n"
    "  --kv-cache f32|f16       the CPU's KV cache (default f32: transformers' numbers). f16 halves the bytes\n"
    "                           each new token reads per cached position (llama.cpp's default); keys and\n"
    "                           values are rounded to fp16, so logits move by ~1e-3 of their scale\n"
    "  --threads N, --device auto|cpu|cuda   (auto: the GPU when there is one; the choice is printed)\n";

int cmd_generate(int argc, char** argv) {
    Args a(argc, argv, 2, "generate", GENERATE_USAGE, GEN_VALUE_FLAGS, {"ids", "quiet", "huge-pages"});
    if (a.has("system")) die("generate: --system is a chat flag");
    if (a.has("prompt") == a.has("prompt-ids")) die("generate: give exactly one of --prompt TEXT or --prompt-ids IDS");
    Session s;
    s.ids_out = a.flag("ids");
    s.quiet = a.flag("quiet");   // (accepted before but ignored)
    bool need_tok = a.has("prompt") || !s.ids_out;
    session_open(&s, a, false, need_tok);
    std::vector<int> prompt;
    if (a.has("prompt")) {
        prompt = tokenizer_encode(s.tok, a.str("prompt"), false);
        int bos = tokenizer_bos_id(s.tok) >= 0 ? tokenizer_bos_id(s.tok) : s.im.cfg.bos_token_id;
        if (bos < 0) die("generate: neither tokenizer.json nor config.json names a BOS token to begin the prompt with");
        prompt.insert(prompt.begin(), bos);
    } else {
        prompt = parse_ids(a.str("prompt-ids"), "generate: --prompt-ids");
        if (prompt.empty()) die("generate: --prompt-ids is empty");
    }
    if ((int)prompt.size() > s.im.ctx)
        die("generate: the prompt has %zu tokens, more than the context of %d tokens", prompt.size(), s.im.ctx);
    for (int id : prompt)   // before the header is printed, so that a bad id is the only line on stderr
        if (id < 0 || id >= s.im.cfg.vocab_size)
            die("generate: --prompt-ids: id %d is outside the model's vocabulary [0, %d)", id, s.im.cfg.vocab_size);
    if (!s.quiet) fputs(s.header.c_str(), stderr);
    StreamCtx sc{&s, TextStream{}, ""};
    sc.ts.stop = s.stop;
    GenerateStats st;
    std::vector<int> out = generate_tokens(&s.im, prompt, s.max_new, s.sp, s.eos_ids, &st, stream_token, &sc);
    if (s.ids_out) {
        for (size_t i = 0; i < out.size(); i++) printf("%s%d", i ? " " : "", out[i]);
        printf("\n");
    } else {
        stream_finish(&sc);
        printf("\n");
    }
    fflush(stdout);
    if (st.stop_reason == "context") fprintf(stderr, "[stopped: the context of %d tokens is full]\n", s.im.ctx);
    if (!s.quiet) print_stats(st);
    return 0;
}

static const char* CHAT_USAGE =
    "usage: deepseek chat --model DIR [--system TEXT] [--prompt TEXT] [flags]\n"
    "  talks with a chat model using DeepSeek LLM's template:\n"
    "    <bos>[system\\n\\n]User: …\\n\\nAssistant: …<eos>User: …\\n\\nAssistant:\n"
    "  interactive on a terminal: type a message; /reset clears the history, /exit (or EOF) quits.\n"
    "  with --prompt: one reply, then exit. With stdin not a terminal: one user message per line (16 MiB at most).\n"
    "  the history is kept within the context; the oldest turns are dropped (with a notice) when full.\n"
    "  -n, --max-new-tokens N   new tokens per reply at most (generation_config.json's max_new_tokens, else 512)\n"
    "  --temperature T, --top-k K, --top-p P, --repetition-penalty R, --seed S, --stop STRING\n"
    "                           as for generate; defaults from generation_config.json, else temperature 0.7,\n"
    "                           top_p 0.95 (the paper's chat defaults)\n"
    "  --system TEXT            a system prompt (the release recommends none)\n"
    "  --context N, --huge-pages, --kv-cache f32|f16, --threads N, --device auto|cpu|cuda   as for generate\n";

// One chat turn: render the history + the new user message (dropping the oldest turns until the prompt and a
// reply of max_new tokens fit the context), stream the reply, append it to the history.
// Returns false (history unchanged) if the message alone does not fit.
static bool chat_turn(Session* s, std::vector<ChatMessage>* history, const std::string& system, const std::string& user) {
    history->push_back({"user", user});
    std::vector<int> ids;
    for (;;) {
        std::vector<ChatMessage> msgs;
        if (!system.empty()) msgs.push_back({"system", system});
        msgs.insert(msgs.end(), history->begin(), history->end());
        chat_tokens(s->tok, msgs, true, &ids, nullptr);
        int room = s->im.ctx - (int)ids.size();
        if (room >= std::min(s->max_new, std::max(1, s->im.ctx / 4)) || history->size() <= 1) break;
        // drop the oldest user turn and the reply to it
        size_t drop = history->size() >= 2 && (*history)[1].role == "assistant" ? 2 : 1;
        history->erase(history->begin(), history->begin() + drop);
        fprintf(stderr, "[context full: dropped the oldest turn]\n");
    }
    if ((int)ids.size() >= s->im.ctx) {
        history->pop_back();
        fprintf(stderr, "error: the message is too long: %zu tokens, the context holds %d\n", ids.size(), s->im.ctx);
        return false;
    }
    StreamCtx sc{s, TextStream{}, ""};
    sc.ts.stop = s->stop;
    GenerateStats st;
    generate_tokens(&s->im, ids, s->max_new, s->sp, s->eos_ids, &st, stream_token, &sc);
    stream_finish(&sc);
    printf("\n");
    fflush(stdout);
    std::string reply = sc.text;
    if (!reply.empty() && reply[0] == ' ') reply.erase(0, 1);   // "Assistant: " + content: the space is the template's
    history->push_back({"assistant", reply});
    if (st.stop_reason == "context") fprintf(stderr, "[stopped: the context of %d tokens is full]\n", s->im.ctx);
    if (!s->quiet) print_stats(st);
    return true;
}

int cmd_chat(int argc, char** argv) {
    Args a(argc, argv, 2, "chat", CHAT_USAGE, GEN_VALUE_FLAGS, {"quiet", "huge-pages"});
    if (a.has("prompt-ids")) die("chat: --prompt-ids is a generate flag");
    Session s;
    s.quiet = a.flag("quiet");
    session_open(&s, a, true, true);
    std::string system = a.str("system");
    std::vector<ChatMessage> history;
    if (!s.quiet) fputs(s.header.c_str(), stderr);
    if (a.has("prompt")) return chat_turn(&s, &history, system, a.str("prompt")) ? 0 : 1;
    bool tty = isatty(0);
    if (tty) fprintf(stderr, "chat with %s — /reset clears the history, /exit quits\n", a.str("model").c_str());
    std::string line;
    const size_t CHAT_MAX_LINE = (size_t)16 << 20;
    int failed = 0;
    for (;;) {
        if (tty) { fprintf(stderr, "\n> "); fflush(stderr); }
        line.clear();
        bool got = false;
        // byte by byte (fgets would end the text at a NUL byte), up to the newline; far past any context (~4 bytes a
        // token) is an error: a stream without newlines must not grow the line without bound
        for (int ch; (ch = getc(stdin)) != EOF;) {
            got = true;
            line += (char)ch;
            if (ch == '\n') break;
            if (line.size() > CHAT_MAX_LINE)
                die("chat: a message on stdin is longer than %zu MiB (one message per line)", CHAT_MAX_LINE >> 20);
        }
        if (ferror(stdin)) die("chat: error reading stdin");
        if (!got) break;
        while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
        if (line.empty()) continue;
        if (line == "/exit" || line == "/quit") break;
        if (line == "/reset") { history.clear(); fprintf(stderr, "[history cleared]\n"); continue; }
        if (!chat_turn(&s, &history, system, line)) failed++;
    }
    // a message that could not be answered (its error line is on stderr) makes the exit status 1, so that a script
    // piping messages in sees it; the other messages were still answered
    return failed > 0 ? 1 : 0;
}

// ============================================================================
// evaluation
//
// `deepseek eval` measures a model on held-out data, four ways:
//   --data FILE    chat JSONL: greedy answers to every conversation's prompt (all turns but the last, rendered with
//                  the chat template and the generation prompt) → exact-match accuracy against the last assistant
//                  message (both trimmed of surrounding whitespace) and the repetition ratio of the generations
//   --pairs FILE   preference pairs: log-prob accuracy (share of pairs where log π(chosen) > log π(rejected)); with
//                  --ref DIR also DPO's reward accuracy and margin, rewards β·(log π − log ref)
//   --text FILE    loss and bits per byte of a text, in context-length windows: bpb = Σ nll / ln 2 / bytes
//   --task FILE    multiple-choice items (HellaSwag, ARC, …): acc and acc_norm as lm-evaluation-harness computes
//                  them, from each choice's log-likelihood given the context (section "multiple-choice tasks")
// Repetition ratio: the share of generations in which some sentence (text between . ! ? or a newline, trimmed,
// non-empty) occurs twice or more — the looping the paper counts, which exact answers never contain.
#include <algorithm>          // std::max_element
#include <chrono>             // steady_clock
#include <cmath>              // log
#include <cstdio>             // printf
#include <set>                // std::set (sentences seen)
#include <nlohmann/json.hpp>  // nlohmann::json: the --json summary
#ifdef _OPENMP
#include <omp.h>              // omp_set_num_threads
#endif

static std::string trim(const std::string& s) {
    size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
    return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// true when some sentence of `text` occurs at least twice
bool text_is_repetitive(const std::string& text) {
    std::set<std::string> seen;
    std::string cur;
    for (size_t i = 0; i <= text.size(); i++) {
        char c = i < text.size() ? text[i] : '\n';
        if (c == '.' || c == '!' || c == '?' || c == '\n') {
            std::string s = trim(cur);
            cur.clear();
            if (s.empty()) continue;
            if (!seen.insert(s).second) return true;
        } else {
            cur += c;
        }
    }
    return false;
}

// ---------------------------------------------------------------------------- multiple-choice tasks
//
// `--task FILE`, JSONL {"context": "...", "choices": ["...", ...], "label": K}, is scored as EleutherAI's
// lm-evaluation-harness scores its multiple_choice tasks (HellaSwag, ARC):
//   tokens   the harness's _encode_pair: the context's trailing whitespace (what Python's str.rstrip() removes)
//            moves to the front of the choice; ctx = encode(context), whole = encode(context + choice),
//            continuation = whole[len(ctx):], and the model reads ctx + continuation. No BOS, as for --text (the
//            harness's default for Hugging Face models, add_bos_token False); a context with no tokens becomes the
//            BOS token alone (else EOS: the harness's prefix_token_id). Beyond the model's context the oldest
//            tokens are dropped (the harness's left truncation); a continuation must fit whole.
//   ll_i     Σ log p(continuation token | the tokens before it): choice i's log-likelihood
//   acc      argmax_i ll_i = label;  acc_norm: argmax_i ll_i / len_i = label, len_i = choice i's length in Unicode
//            characters as written in the file (Python's len(choice), the harness's divisor); ties go to the first
//            (numpy's argmax)
// The harness joins context and choice with a target delimiter, " ": a converted task writes it at the end of the
// context, where the rule above moves it to the continuation while len_i counts the choice alone, as the harness's.

// Python's str.isspace() characters, which str.rstrip() removes
static bool py_isspace(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
// bytes of s's trailing whitespace (s is valid UTF-8: the JSON parser refuses anything else)
static size_t trailing_space_bytes(const std::string& s) {
    size_t end = s.size();
    while (end > 0) {
        size_t b = end - 1;
        while (b > 0 && ((unsigned char)s[b] & 0xC0) == 0x80) b--;   // back to the character's lead byte
        unsigned char c0 = s[b];
        int n = (int)(end - b);
        uint32_t cp = n == 1 ? c0 : c0 & (0x7F >> n);
        for (int k = 1; k < n; k++) cp = (cp << 6) | ((unsigned char)s[b + k] & 0x3F);
        if (!py_isspace(cp)) break;
        end = b;
    }
    return s.size() - end;
}
static int utf8_chars(const std::string& s) {
    int n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
}

std::vector<McItem> mc_read_jsonl(const std::string& path, const Tokenizer* tok, int context_len, bool skip_bad,
                                  int* skipped) {
    std::vector<McItem> out;
    int prefix = tokenizer_bos_id(tok) >= 0 ? tokenizer_bos_id(tok) : tokenizer_eos_id(tok);
    read_jsonl_records(path, skip_bad, skipped, [&](const json& j, int line) -> std::string {
        McItem it;
        it.line = line;
        if (!j.contains("context")) return "no \"context\" field";
        if (!j["context"].is_string()) return "\"context\" must be a string, got " + j["context"].dump();
        it.context = j["context"];
        if (!j.contains("choices")) return "no \"choices\" field";
        const json& cs = j["choices"];
        if (!cs.is_array()) return "\"choices\" must be a list of strings, got " + cs.dump();
        if (cs.size() < 2) return "\"choices\" holds " + std::to_string(cs.size()) + " choice" + (cs.size() == 1 ? "" : "s") + " (at least 2)";
        for (size_t k = 0; k < cs.size(); k++) {
            std::string where = "choices[" + std::to_string(k) + "]";
            if (!cs[k].is_string()) return where + " must be a string, got " + cs[k].dump();
            it.choices.push_back(cs[k]);
            if (it.choices.back().empty()) return where + " is empty (acc_norm divides by its length)";
            it.chars.push_back(utf8_chars(it.choices.back()));
        }
        if (!j.contains("label")) return "no \"label\" field";
        const json& l = j["label"];
        if (!l.is_number_integer()) return "\"label\" must be an integer, got " + l.dump();
        if (l.is_number_unsigned() ? l.get<uint64_t>() >= cs.size() : l.get<int64_t>() < 0 || l.get<int64_t>() >= (int64_t)cs.size())
            return "\"label\" " + l.dump() + " is not the index of a choice (0 to " + std::to_string(cs.size() - 1) + ")";
        it.label = l.get<int>();
        // the harness's tokens (the rules above)
        std::string head = it.context.substr(0, it.context.size() - trailing_space_bytes(it.context));
        std::string tail = it.context.substr(head.size());
        it.context_ids = tokenizer_encode(tok, head, false);
        for (size_t k = 0; k < it.choices.size(); k++) {
            std::vector<int> whole = tokenizer_encode(tok, head + tail + it.choices[k], false);
            size_t from = std::min(whole.size(), it.context_ids.size());
            it.continuation_ids.emplace_back(whole.begin() + from, whole.end());
            const std::vector<int>& c = it.continuation_ids.back();
            std::string where = "choices[" + std::to_string(k) + "]";
            if (c.empty())
                return where + " adds no tokens to the context's " + std::to_string(it.context_ids.size()) +
                       " (encode(context + choice) is no longer than encode(context))";
            if ((int)c.size() > context_len)
                return where + " is " + std::to_string(c.size()) + " tokens, more than the model's context of " +
                       std::to_string(context_len);
        }
        if (it.context_ids.empty()) {
            if (prefix < 0) return "the context has no tokens and the tokenizer no BOS or EOS token to put there";
            it.context_ids = {prefix};
        }
        out.push_back(std::move(it));
        return "";
    });
    if (out.empty()) die("%s: no items", path.c_str());
    return out;
}

// Choice k of an item as a scored sequence: context + continuation, the continuation trained; beyond
// context_len + 1 tokens (the last one is only a target) the oldest are dropped, and *truncated counts it.
static ChatSeq mc_sequence(const McItem& it, size_t k, int context_len, long* truncated) {
    ChatSeq s;
    s.ids = it.context_ids;
    s.ids.insert(s.ids.end(), it.continuation_ids[k].begin(), it.continuation_ids[k].end());
    s.trained.assign(s.ids.size(), 0);
    std::fill(s.trained.end() - it.continuation_ids[k].size(), s.trained.end(), 1);
    size_t keep = (size_t)context_len + 1;
    if (s.ids.size() > keep) {
        s.ids.erase(s.ids.begin(), s.ids.end() - keep);
        s.trained.erase(s.trained.begin(), s.trained.end() - keep);
        (*truncated)++;
    }
    return s;
}
static int first_argmax(const std::vector<double>& v) {
    return (int)(std::max_element(v.begin(), v.end()) - v.begin());   // the first of equal maxima
}

static const char* EVAL_USAGE =
    "usage: deepseek eval --model DIR [--data chat.jsonl] [--pairs prefs.jsonl [--ref DIR]] [--text FILE] [--task FILE]\n\n"
    "  --model DIR          the model (its tokenizer.json unless --tokenizer)\n"
    "  --data FILE          held-out conversations: exact-match accuracy of greedy answers (the last assistant\n"
    "                       message is the reference) and the repetition ratio of the generations\n"
    "  --pairs FILE         held-out preference pairs: log-prob accuracy; with --ref DIR, DPO reward accuracy/margin\n"
    "  --ref DIR            the DPO reference model (usually the SFT model)\n"
    "  --beta X             β for the rewards (default 0.1)\n"
    "  --text FILE          validation loss and bits per byte of a text file\n"
    "  --task FILE          multiple-choice JSONL {\"context\", \"choices\": [...], \"label\": K}: acc and acc_norm,\n"
    "                       scored as lm-evaluation-harness scores HellaSwag and ARC (README: eval --task)\n"
    "  --tokenizer FILE     tokenizer.json (default: MODEL/tokenizer.json)\n"
    "  --max-new-tokens N   generation limit per answer (default 64)\n"
    "  --limit N            evaluate only the first N conversations / pairs / task items\n"
    "  --show N             print the first N generations (default 3; 0: none)\n"
    "  --json FILE          also write the results as one JSON object (with --task: every item's log-likelihoods)\n"
    "  --skip-bad           skip malformed JSONL lines instead of stopping\n"
    "  --threads N          CPU threads\n"
    "  --device D           auto (the GPU when there is one) | cpu | cuda (bf16 on the GPU)\n\n"
    "Repetition ratio: share of generations in which a sentence (between . ! ? or newlines) occurs twice.\n";
int cmd_eval(int argc, char** argv) {
    Args a(argc, argv, 2, "eval", EVAL_USAGE, {"model", "data", "pairs", "ref", "beta", "text", "task", "tokenizer", "max-new-tokens",
           "limit", "show", "json", "threads", "device"}, {"skip-bad"});
    Device dev = device_select(a.str("device", "auto"));   // dies if --device cuda cannot run
    if (!a.has("model")) die("eval: --model DIR is required");
    if (!a.has("data") && !a.has("pairs") && !a.has("text") && !a.has("task"))
        die("eval: give at least one of --data, --pairs, --text, --task");
    if (a.has("ref") && !a.has("pairs")) die("eval: --ref needs --pairs");
    int max_new = (int)a.integer("max-new-tokens", 64, 1, 1 << 20);
    long limit = a.integer("limit", 0, 1, 1ll << 40);   // (absent: all; 0 would mean nothing the help says)
    int show = (int)a.integer("show", 3, 0, 1 << 20);
    double beta = a.real("beta", 0.1, 1e-6, 1e6);
    bool skip_bad = a.flag("skip-bad");
    // read every input before loading the model: bad files stop here
    std::vector<SftExample> conv;
    std::vector<DpoExample> pairs;
    std::string text;
    if (a.has("data")) conv = sft_read_jsonl(a.str("data"), skip_bad, nullptr);
    if (a.has("pairs")) pairs = dpo_read_jsonl(a.str("pairs"), skip_bad, nullptr);
    if (a.has("text")) { text = read_text_input(a.str("text")); if (text.empty()) die("eval: %s is empty", a.str("text").c_str()); }
    if (limit > 0 && (long)conv.size() > limit) conv.resize(limit);
    if (limit > 0 && (long)pairs.size() > limit) pairs.resize(limit);
    std::string dir = a.str("model"), tok_path = a.str("tokenizer", dir + "/tokenizer.json");
    require_dir(dir, "eval: model directory");
    if (!path_exists(tok_path)) die("eval: no tokenizer at %s (give --tokenizer FILE)", tok_path.c_str());
    require_file(tok_path, "eval: tokenizer");
    std::unique_ptr<Tokenizer, void (*)(Tokenizer*)> tok_owner(tokenizer_load(tok_path), tokenizer_free);
    Tokenizer* tok = tok_owner.get();   // (freed also when an error unwinds: tests and fuzzers make die() throw)
    // the task's items are tokenised here, still before the weights load: their length check needs only config.json
    std::vector<McItem> items;
    if (a.has("task")) {
        require_file(dir + "/config.json", "eval: model config");
        items = mc_read_jsonl(a.str("task"), tok, config_read_json(dir + "/config.json").max_position_embeddings,
                              skip_bad, nullptr);
        if (limit > 0 && (long)items.size() > limit) items.resize(limit);
    }
    Model m;
    model_load_dir(&m, dir);
    if (tokenizer_vocab_size(tok) > m.cfg.vocab_size)
        die("eval: the tokenizer has %d tokens but the model only %d embedding rows", tokenizer_vocab_size(tok), m.cfg.vocab_size);
    int eos = tokenizer_eos_id(tok), ctx = m.cfg.max_position_embeddings;
    printf("eval: device %s\n", device_describe(dev).c_str());
    // --device cuda: a model's copy on the GPU for one part of the evaluation, sized for that part's largest forward
    auto on_device = [&](const Model& host, int rows, int T) -> CudaModel* {
        return dev == Device::CUDA ? cuda_model_create(host, rows, T, false, false) : nullptr;
    };
    nlohmann::json result = {{"model", dir}};
    auto t0 = std::chrono::steady_clock::now();

    if (!conv.empty()) {
        int correct = 0, repetitive = 0, n = 0, unfinished = 0;
        std::vector<int> ids;
        InferModel im;                  // KV-cache generation over the same fp32 weights
        infer_from_model(&im, m, ctx);
        CudaModel* gpu = on_device(m, 1, 1);   // (only its weights: decoding has its own buffers)
        if (gpu) infer_attach_cuda(&im, gpu);
        for (size_t i = 0; i < conv.size(); i++) {
            std::vector<ChatMessage> prompt(conv[i].messages.begin(), conv[i].messages.end() - 1);
            std::string want = trim(conv[i].messages.back().content);
            chat_tokens(tok, prompt, true, &ids, nullptr);
            if ((int)ids.size() >= ctx) continue;
            std::vector<int> reply = generate_greedy(&im, ids, max_new, eos);
            std::string got = tokenizer_decode(tok, reply);
            bool ok = trim(got) == want, rep = text_is_repetitive(got);
            unfinished += (int)reply.size() >= max_new;   // no EOS within the limit
            correct += ok;
            repetitive += rep;
            n++;
            if (n <= show)
                printf("[%s%s] %s\n  → %s\n", ok ? "ok" : "wrong", rep ? ", repetitive" : "",
                       prompt.back().content.c_str(), got.c_str());
            if (n % 50 == 0) { printf("eval: %d/%zu answers, %.1f%% exact so far\n", n, conv.size(), 100.0 * correct / n); fflush(stdout); }
        }
        cuda_decode_free(im.cuda);
        im.cuda = nullptr;
        cuda_model_free(gpu);
        if (n == 0) die("eval: no conversation prompt fits the context of %d tokens", ctx);
        printf("exact_match: %.4f (%d/%d)\nrepetition_ratio: %.4f (%d/%d)\nunfinished: %d (no EOS within %d tokens)\n",
               (double)correct / n, correct, n, (double)repetitive / n, repetitive, n, unfinished, max_new);
        result["exact_match"] = (double)correct / n;
        result["repetition_ratio"] = (double)repetitive / n;
        result["unfinished"] = unfinished;
        result["answers"] = n;
    }
    if (!pairs.empty()) {
        std::vector<ChatSeq> seqs(2 * pairs.size());
        for (size_t i = 0; i < pairs.size(); i++) dpo_render(tok, pairs[i], &seqs[2 * i], &seqs[2 * i + 1]);
        std::vector<ChatSeq> kept;
        for (size_t i = 0; i < pairs.size(); i++)
            if ((int)std::max(seqs[2 * i].ids.size(), seqs[2 * i + 1].ids.size()) - 1 <= ctx) {
                kept.push_back(seqs[2 * i]);
                kept.push_back(seqs[2 * i + 1]);
            }
        if (kept.empty()) die("eval: no pair fits the context of %d tokens", ctx);
        size_t n = kept.size() / 2;
        int longest = 1;
        for (const ChatSeq& q : kept) longest = std::max(longest, (int)q.ids.size() - 1);
        // log π of every kept sequence under a model (on the GPU when there is one); a non-finite one is an error
        auto pair_logps = [&](Model& model, const char* whose) {
            std::vector<double> lps;
            Backend be{&model, on_device(model, 16, longest)};
            sequence_logps(&be, kept, 16, eos, &lps);
            cuda_model_free(be.cuda);
            for (size_t i = 0; i < lps.size(); i++)
                if (!std::isfinite(lps[i]))
                    die("eval: %s log-probability of pair %zu is not finite: its activations overflow", whose, i / 2);
            return lps;
        };
        std::vector<double> lp = pair_logps(m, "the model's");
        double better = 0;
        for (size_t i = 0; i < n; i++) better += lp[2 * i] > lp[2 * i + 1];
        printf("logp_accuracy: %.4f (%zu pairs)\n", better / n, n);
        result["logp_accuracy"] = better / n;
        result["pairs"] = n;
        if (a.has("ref")) {
            Model ref;
            model_load_dir(&ref, a.str("ref"));
            std::vector<double> rl = pair_logps(ref, "the reference model's");
            std::vector<double> pc(n), pr(n), rc(n), rr(n);
            for (size_t i = 0; i < n; i++) { pc[i] = lp[2 * i]; pr[i] = lp[2 * i + 1]; rc[i] = rl[2 * i]; rr[i] = rl[2 * i + 1]; }
            DpoStats st;
            dpo_loss(pc.data(), pr.data(), rc.data(), rr.data(), (int)n, beta, nullptr, nullptr, &st);
            printf("reward_accuracy: %.4f\nreward_margin: %.4f\ndpo_loss: %.4f\n", st.reward_accuracy, st.reward_margin, st.loss);
            result["reward_accuracy"] = st.reward_accuracy;
            result["reward_margin"] = st.reward_margin;
            result["dpo_loss"] = st.loss;
        }
    }
    if (!text.empty()) {
        std::vector<int> ids = tokenizer_encode(tok, text, false);
        if (ids.size() < 2) die("eval: %s has fewer than 2 tokens", a.str("text").c_str());
        double nll = 0;
        long count = 0;
        Backend be{&m, on_device(m, 1, (int)std::min((size_t)ctx, ids.size() - 1))};
        for (size_t s = 0; s + 1 < ids.size(); s += ctx) {
            int T = (int)std::min((size_t)ctx, ids.size() - 1 - s);
            std::vector<int> tg(ids.begin() + s + 1, ids.begin() + s + 1 + T);
            backend_forward(&be, ids.data() + s, tg.data(), 1, T);
            for (int t = 0; t < T; t++) nll += backend_losses(&be)[t];
            count += T;
            if (!std::isfinite(nll)) die("eval: the loss of %s is not finite in the window from token %zu: the model's activations overflow", a.str("text").c_str(), s);
        }
        cuda_model_free(be.cuda);
        // bytes of the predicted tokens (the first token is never predicted)
        double bytes = (double)text.size() - (double)tokenizer_token_bytes(tok, ids[0]).size();
        printf("val_loss: %.4f (%ld tokens)\nbits_per_byte: %.4f\n", nll / count, count, nll / log(2.0) / bytes);
        result["val_loss"] = nll / count;
        result["bits_per_byte"] = nll / log(2.0) / bytes;
    }
    if (!items.empty()) {
        // one forward per item, its choices as the rows of the batch (they share the context: little padding)
        int widest = 1, longest = 1;
        for (const McItem& it : items) {
            widest = std::max(widest, (int)it.choices.size());
            for (const std::vector<int>& c : it.continuation_ids)
                longest = std::max(longest, std::min(ctx, (int)(it.context_ids.size() + c.size()) - 1));
        }
        Backend be{&m, on_device(m, widest, longest)};
        long right = 0, right_norm = 0, truncated = 0;
        json per_item = json::array();
        for (size_t i = 0; i < items.size(); i++) {
            const McItem& it = items[i];
            std::vector<ChatSeq> seqs;
            for (size_t k = 0; k < it.choices.size(); k++) seqs.push_back(mc_sequence(it, k, ctx, &truncated));
            std::vector<double> ll, norm;
            sequence_logps(&be, seqs, (int)seqs.size(), std::max(eos, 0), &ll);   // (padding: any id; never a target)
            std::vector<int> tokens;
            for (size_t k = 0; k < ll.size(); k++) {
                if (!std::isfinite(ll[k]))
                    die("eval: %s:%d: the log-likelihood of choice %zu is not finite: the model's activations overflow",
                        a.str("task").c_str(), it.line, k);
                norm.push_back(ll[k] / it.chars[k]);
                tokens.push_back((int)it.continuation_ids[k].size());
            }
            int pred = first_argmax(ll), pred_norm = first_argmax(norm);
            right += pred == it.label;
            right_norm += pred_norm == it.label;
            per_item.push_back({{"line", it.line}, {"label", it.label}, {"loglikelihoods", ll}, {"tokens", tokens},
                                {"chars", it.chars}, {"pred", pred}, {"pred_norm", pred_norm}});
            if ((i + 1) % 100 == 0 && i + 1 < items.size())
                fprintf(stderr, "eval: %zu/%zu items, acc %.4f, acc_norm %.4f so far\n", i + 1, items.size(),
                        (double)right / (i + 1), (double)right_norm / (i + 1));
        }
        cuda_model_free(be.cuda);
        if (truncated)
            fprintf(stderr, "warning: %ld choice sequences longer than the context (%d tokens) lost their oldest tokens\n",
                    truncated, ctx);
        double n = (double)items.size();
        printf("items: %zu\nacc: %.4f\nacc_norm: %.4f\n", items.size(), right / n, right_norm / n);
        result["task"] = a.str("task");
        result["items"] = items.size();
        result["acc"] = right / n;
        result["acc_norm"] = right_norm / n;
        result["item_results"] = per_item;
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    printf("eval: done in %.0fs\n", secs);
    if (a.has("json")) write_file_atomic(a.str("json"), result.dump(2) + "\n");
    return 0;
}
