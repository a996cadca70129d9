// defines: gemm_cpu, gemm_cpu_lowp, gemm_kernel_name, gemm_block_columns, matmul_forward_cpu, matmul_backward_cpu
//          (internals: GEMM_MR/NR/KC/NC, transpose16/8, gemm_pack_a/b, gemm_blocked, gemm_kernel*, gemm_scratch)
// The fast CPU path's matrix multiply: a cache-blocked fp32 GEMM whose microkernel (AVX-512 14×32, AVX2 6×16 or
// portable 4×16) is chosen at build time by -march, and the model's matmul on it. Part of deepseek.cu (#included).
#pragma once
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>  // _mm512_* / _mm256_*: the microkernels
#endif

// ----------------------------------------------------------------------------
// GEMM: C[M,N] (+)= op(A)[M,K] · op(B)[K,N], fp32, row-major storage.
//   op(A)[m,k] = A[m·lda + k]  (a_trans false)  or  A[k·lda + m]  (a_trans true)
//   op(B)[k,n] = B[k·ldb + n]  (b_trans false)  or  B[n·ldb + k]  (b_trans true)
// The model's three products are all of this form (W is [out, in], X is [N, in], dY is [N, out]):
//   forward   Y  = X · Wᵀ      M=N,   N=out, K=in    B transposed
//   backward  dX += dY · W     M=N,   N=in,  K=out
//   backward  dW += dYᵀ · X    M=out, N=in,  K=N     A transposed
//
// Blocking: the loops, outermost first, and where their operands live on this machine
// (Xeon, Sapphire Rapids class: L1d 48 KiB and L2 2 MiB per core, L3 shared):
//   jc: NC columns of op(B)  ┐ pack op(B)[KC×NC] into NR-wide panels, shared by the threads:
//   pc: KC of the K axis     ┘   512·512·4 B = 1 MiB, in each core's L2
//   ir: MR rows of op(A)     — one strip of op(A), MR×KC = 14·512·4 B = 28 KiB, in L1 for the whole jr loop: read
//                              in place when A is row-major (its MR rows run along k: X and dY in forward and dX),
//                              packed [k·MR + r] into a per-thread buffer when it is transposed (dYᵀ for dW; all
//                              of a thread's strips once, ahead of the blocks, when N > NC: down_proj's dW +4%)
//   jr: NR columns           — the microkernel: an MR×NR tile of C in registers, KC rank-1 updates, its B panel
//                              (KC×NR = 64 KiB) streaming from L2
// The AVX-512 microkernel keeps a 14×32 tile in 28 zmm registers; each k step loads two vectors of B,
// broadcasts 14 scalars of A and issues 28 FMAs — 14 cycles on two FMA ports, while its loads (56 B of A
// from L1, 128 B of B from L2, prefetched 16 steps ahead) are well within what the caches deliver.
// Edge tiles run the same kernel instantiated for their row count, with masked columns.
// Why this order: at KC = 512 a B panel (64 KiB) does not fit L1 but an A strip does, and a smaller KC stores each
// C tile more often (KC = 256 measured −4%). The classic Goto order (an MC×KC block of A packed into L2, the B
// panel reused across it) was 1–10% slower on the products with a row-major A — packing A is most of the
// difference — and the same on dW. KC = 512 makes the model's K = C = 512 products one pass.
// Threads split the rows evenly (each share ending in a partial strip rather than one thread getting a whole extra
// strip: 1–2% on M = 1024), or the NR panels of each block when there are few rows.
// Each C element is one FMA chain over k in increasing order, started from C itself when accumulating —
// the same chain whatever the blocking or the thread count, so results do not depend on either.

#if defined(__AVX512F__)
static const int GEMM_MR = 14, GEMM_NR = 32;
static const char* GEMM_KERNEL = "avx512 14x32";
#elif defined(__AVX2__) && defined(__FMA__)
static const int GEMM_MR = 6, GEMM_NR = 16;
static const char* GEMM_KERNEL = "avx2 6x16";
#else
static const int GEMM_MR = 4, GEMM_NR = 16;
static const char* GEMM_KERNEL = "portable 4x16";
#endif
// The packed B block, KC×NC floats, is read by every core from its own L2: NC is chosen at run time so that it takes
// half of the L2 the CPU reports (the rest holds C tiles and the streams that pass): 2 MiB (Sapphire Rapids) →
// NC 512, a 1 MiB block; 1 MiB (Zen 4/5) → 256; 512 KiB (Zen 2/3) → 128. DEEPSEEK_GEMM_NC overrides it (for
// measurements). Results do not depend on NC (each C element is one FMA chain over k, below).
static const int GEMM_KC = 512;
static int gemm_nc_choose() {
    if (const char* e = getenv("DEEPSEEK_GEMM_NC")) {
        int v = atoi(e);
        if (v >= GEMM_NR && v <= 8192) return v / GEMM_NR * GEMM_NR;
    }
    long l2 = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
    l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    if (l2 <= 0) l2 = 1l << 20;   // unknown: 1 MiB, today's smallest common L2 per core among AVX-512 CPUs
    long nc = l2 / 2 / (GEMM_KC * (long)sizeof(float)) / GEMM_NR * GEMM_NR;
    return (int)std::min(1024l, std::max(2l * GEMM_NR, nc));
}
static const int GEMM_NC = gemm_nc_choose();
const char* gemm_kernel_name() { return GEMM_KERNEL; }
int gemm_block_columns() { return GEMM_NC; }

#if defined(__AVX512F__)
// 16×16 transpose in registers (row i = r[i] in, column i = r[i] out): pairs of rows interleaved as 32-bit,
// then 64-bit elements, then 128-bit lanes twice. gemm_pack_b uses it for a transposed B (the forward's W), which
// otherwise moves one float per load/store pair and costs a tenth of the GEMM on the model's shapes.
static inline void transpose16(__m512 r[16]) {
    const __mmask16 all = 0xFFFF;  // full masks: the masked forms keep GCC 12's headers free of -Wmaybe-uninitialized
    const __mmask8 half = 0xFF;
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) { t[i] = _mm512_maskz_unpacklo_ps(all, r[i], r[i + 1]); t[i + 1] = _mm512_maskz_unpackhi_ps(all, r[i], r[i + 1]); }
    for (int i = 0; i < 16; i += 4) {
        r[i]     = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(half, _mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 1] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(half, _mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 2] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(half, _mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
        r[i + 3] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(half, _mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
    for (int i = 0; i < 4; i++) {
        t[i]      = _mm512_maskz_shuffle_f32x4(all, r[i], r[i + 4], 0x88);
        t[i + 4]  = _mm512_maskz_shuffle_f32x4(all, r[i], r[i + 4], 0xdd);
        t[i + 8]  = _mm512_maskz_shuffle_f32x4(all, r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_maskz_shuffle_f32x4(all, r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 4; i++) {
        r[i]      = _mm512_maskz_shuffle_f32x4(all, t[i], t[i + 8], 0x88);
        r[i + 8]  = _mm512_maskz_shuffle_f32x4(all, t[i], t[i + 8], 0xdd);
        r[i + 4]  = _mm512_maskz_shuffle_f32x4(all, t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_maskz_shuffle_f32x4(all, t[i + 4], t[i + 12], 0xdd);
    }
}
#elif defined(__AVX2__)
// 8×8 transpose in registers for the AVX2 build's B packing (the same reason): rows interleaved as 32-bit, then
// 64-bit elements (shuffles within 128-bit lanes), then the lanes exchanged.
static inline void transpose8(__m256 r[8]) {
    __m256 t[8];
    for (int i = 0; i < 8; i += 2) { t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]); t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]); }
    for (int i = 0; i < 8; i += 4) {
        r[i]     = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        t[i]     = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
        t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
    }
    for (int i = 0; i < 8; i++) r[i] = t[i];
}
#endif

// pack op(A)[m0.., k0..k0+kc) into panels of MR rows: panel p holds A[m0+p·MR+r, k0+k] at [p·MR·kc + k·MR + r],
// rows past M are zero (the microkernel always computes a whole tile; the extra rows are never stored)
static void gemm_pack_a(float* ap, const float* A, int lda, bool trans, int m0, int mc, int k0, int kc) {
    for (int p = 0; p < mc; p += GEMM_MR) {
        float* dst = ap + (size_t)p * kc;
        int rows = std::min(GEMM_MR, mc - p);
        if (trans) {
            for (int k = 0; k < kc; k++) {
                const float* src = A + (size_t)(k0 + k) * lda + m0 + p;
                if (rows == GEMM_MR) { memcpy(dst + k * GEMM_MR, src, sizeof(float) * GEMM_MR); continue; }  // fixed size: vector moves
                for (int r = 0; r < rows; r++) dst[k * GEMM_MR + r] = src[r];
                for (int r = rows; r < GEMM_MR; r++) dst[k * GEMM_MR + r] = 0.0f;
            }
        } else {
            // a row-major A: packed only by the AVX2 and portable builds (AVX-512 reads its strips in place)
            if (rows == GEMM_MR) {  // a transpose: MR row streams in, one contiguous stream out
                const float* src = A + (size_t)(m0 + p) * lda + k0;
                for (int k = 0; k < kc; k++)
                    #pragma GCC unroll 16
                    for (int r = 0; r < GEMM_MR; r++) dst[k * GEMM_MR + r] = src[(size_t)r * lda + k];
                continue;
            }
            for (int r = 0; r < GEMM_MR; r++) {
                if (r >= rows) { for (int k = 0; k < kc; k++) dst[k * GEMM_MR + r] = 0.0f; continue; }
                const float* src = A + (size_t)(m0 + p + r) * lda + k0;
                for (int k = 0; k < kc; k++) dst[k * GEMM_MR + r] = src[k];
            }
        }
    }
}
// pack one NR-wide panel of op(B)[k0..k0+kc, n0..n0+cols): [k·NR + c], columns past `cols` zero
static void gemm_pack_b(float* bp, const float* B, int ldb, bool trans, int k0, int kc, int n0, int cols) {
    if (trans && cols == GEMM_NR) {  // a transpose
        const float* src = B + (size_t)n0 * ldb + k0;
        int k = 0;
#if defined(__AVX512F__)
        for (; k + 16 <= kc; k += 16)  // two 16×16 squares: columns 0–15 and 16–31
            for (int half = 0; half < 2; half++) {
                __m512 r[16];
                for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + (size_t)(half * 16 + i) * ldb + k);
                transpose16(r);
                for (int j = 0; j < 16; j++) _mm512_store_ps(bp + (size_t)(k + j) * GEMM_NR + half * 16, r[j]);
            }
#elif defined(__AVX2__)
        for (; k + 8 <= kc; k += 8)  // two 8×8 squares: columns 0–7 and 8–15
            for (int half = 0; half < 2; half++) {
                __m256 r[8];
                for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + (size_t)(half * 8 + i) * ldb + k);
                transpose8(r);
                for (int j = 0; j < 8; j++) _mm256_store_ps(bp + (size_t)(k + j) * GEMM_NR + half * 8, r[j]);
            }
#endif
        for (; k < kc; k++)
            #pragma GCC unroll 32
            for (int c = 0; c < GEMM_NR; c++) bp[k * GEMM_NR + c] = src[(size_t)c * ldb + k];
    } else if (trans) {
        for (int c = 0; c < GEMM_NR; c++) {
            if (c >= cols) { for (int k = 0; k < kc; k++) bp[k * GEMM_NR + c] = 0.0f; continue; }
            const float* src = B + (size_t)(n0 + c) * ldb + k0;
            for (int k = 0; k < kc; k++) bp[k * GEMM_NR + c] = src[k];
        }
    } else {
        for (int k = 0; k < kc; k++) {
            const float* src = B + (size_t)(k0 + k) * ldb + n0;
            float* dst = bp + k * GEMM_NR;
            if (cols == GEMM_NR) { memcpy(dst, src, sizeof(float) * GEMM_NR); continue; }
            for (int c = 0; c < cols; c++) dst[c] = src[c];
            for (int c = cols; c < GEMM_NR; c++) dst[c] = 0.0f;
        }
    }
}

// the microkernel: C[rows×cols] (ldc) = (load ? C : 0) + Σ_k op(A)[r, k] · b[k·NR + c], as one FMA chain per
// element, with the strip of A packed (a[k·MR + r]) or, in place, row-major (a[r·lda + k]; AVX-512 only)
#if defined(__AVX512F__)
static const bool GEMM_A_IN_PLACE = true;
// R rows (R = MR inside C; fewer at its bottom edge, so no FMA is spent on padding rows) and the columns
// under the masks m0 (0–15), m1 (16–31): full except at C's right edge.
template <int R, bool IN_PLACE>
static void gemm_kernel_rows(int kc, const float* a, size_t lda, const float* b, float* C, int ldc, bool load,
                             __mmask16 m0, __mmask16 m1) {
    __m512 c0[R], c1[R];
    #pragma GCC unroll 14
    for (int r = 0; r < R; r++) {
        c0[r] = load ? _mm512_maskz_loadu_ps(m0, C + (size_t)r * ldc) : _mm512_setzero_ps();
        c1[r] = load ? _mm512_maskz_loadu_ps(m1, C + (size_t)r * ldc + 16) : _mm512_setzero_ps();
    }
    for (int k = 0; k < kc; k++, b += GEMM_NR) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        _mm_prefetch((const char*)(b + 16 * GEMM_NR), _MM_HINT_T0);
        _mm_prefetch((const char*)(b + 16 * GEMM_NR + 16), _MM_HINT_T0);
        #pragma GCC unroll 14
        for (int r = 0; r < R; r++) {
            __m512 ar = _mm512_set1_ps(IN_PLACE ? a[r * lda + k] : a[k * GEMM_MR + r]);
            c0[r] = _mm512_fmadd_ps(ar, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(ar, b1, c1[r]);
        }
    }
    #pragma GCC unroll 14
    for (int r = 0; r < R; r++) {
        _mm512_mask_storeu_ps(C + (size_t)r * ldc, m0, c0[r]);
        _mm512_mask_storeu_ps(C + (size_t)r * ldc + 16, m1, c1[r]);
    }
}
static void gemm_kernel(int kc, const float* a, size_t lda, bool in_place, const float* b, float* C, int ldc, bool load,
                        int rows, int cols) {
    __mmask16 m0 = (__mmask16)(cols >= 16 ? 0xFFFF : (1u << cols) - 1), m1 = (__mmask16)(cols >= 32 ? 0xFFFF : cols <= 16 ? 0 : (1u << (cols - 16)) - 1);
    using K = void (*)(int, const float*, size_t, const float*, float*, int, bool, __mmask16, __mmask16);
#define GEMM_ROWS(P) {nullptr, gemm_kernel_rows<1, P>, gemm_kernel_rows<2, P>, gemm_kernel_rows<3, P>, gemm_kernel_rows<4, P>, \
        gemm_kernel_rows<5, P>, gemm_kernel_rows<6, P>, gemm_kernel_rows<7, P>, gemm_kernel_rows<8, P>, gemm_kernel_rows<9, P>, \
        gemm_kernel_rows<10, P>, gemm_kernel_rows<11, P>, gemm_kernel_rows<12, P>, gemm_kernel_rows<13, P>, gemm_kernel_rows<14, P>}
    static const K by_rows[2][GEMM_MR + 1] = {GEMM_ROWS(false), GEMM_ROWS(true)};
#undef GEMM_ROWS
    by_rows[in_place][rows](kc, a, lda, b, C, ldc, load, m0, m1);
}
#else
static const bool GEMM_A_IN_PLACE = false;  // AVX2 and portable: the strip is always packed
#if defined(__AVX2__) && defined(__FMA__)
static void gemm_kernel_full(int kc, const float* a, const float* b, float* C, int ldc, bool load) {
    __m256 c0[GEMM_MR], c1[GEMM_MR];
    #pragma GCC unroll 6
    for (int r = 0; r < GEMM_MR; r++) {
        c0[r] = load ? _mm256_loadu_ps(C + (size_t)r * ldc) : _mm256_setzero_ps();
        c1[r] = load ? _mm256_loadu_ps(C + (size_t)r * ldc + 8) : _mm256_setzero_ps();
    }
    for (int k = 0; k < kc; k++, a += GEMM_MR, b += GEMM_NR) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        #pragma GCC unroll 6
        for (int r = 0; r < GEMM_MR; r++) {
            __m256 ar = _mm256_broadcast_ss(a + r);
            c0[r] = _mm256_fmadd_ps(ar, b0, c0[r]);
            c1[r] = _mm256_fmadd_ps(ar, b1, c1[r]);
        }
    }
    #pragma GCC unroll 6
    for (int r = 0; r < GEMM_MR; r++) {
        _mm256_storeu_ps(C + (size_t)r * ldc, c0[r]);
        _mm256_storeu_ps(C + (size_t)r * ldc + 8, c1[r]);
    }
}
#else
static void gemm_kernel_full(int kc, const float* a, const float* b, float* C, int ldc, bool load) {
    float acc[GEMM_MR][GEMM_NR];
    for (int r = 0; r < GEMM_MR; r++)
        for (int c = 0; c < GEMM_NR; c++) acc[r][c] = load ? C[(size_t)r * ldc + c] : 0.0f;
    for (int k = 0; k < kc; k++, a += GEMM_MR, b += GEMM_NR)
        for (int r = 0; r < GEMM_MR; r++)
            for (int c = 0; c < GEMM_NR; c++) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
    for (int r = 0; r < GEMM_MR; r++)
        for (int c = 0; c < GEMM_NR; c++) C[(size_t)r * ldc + c] = acc[r][c];
}
#endif
// a whole tile, or one at the edge of C (fewer than MR rows or NR columns) run on a full tile in scratch
static void gemm_kernel(int kc, const float* a, size_t lda, bool in_place, const float* b, float* C, int ldc, bool load,
                        int rows, int cols) {
    if (rows == GEMM_MR && cols == GEMM_NR) { gemm_kernel_full(kc, a, b, C, ldc, load); return; }
    alignas(64) float tile[GEMM_MR * GEMM_NR];
    for (int r = 0; r < GEMM_MR; r++)
        for (int c = 0; c < GEMM_NR; c++) tile[r * GEMM_NR + c] = (load && r < rows && c < cols) ? C[(size_t)r * ldc + c] : 0.0f;
    gemm_kernel_full(kc, a, b, tile, GEMM_NR, load);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) C[(size_t)r * ldc + c] = tile[r * GEMM_NR + c];
}
#endif

// aligned scratch that lives as long as the thread and only grows (the packed panels)
static float* gemm_scratch(std::vector<float>* v, size_t n) {
    if (v->size() < n + 16) v->resize(n + 16);
    return (float*)(((uintptr_t)v->data() + 63) & ~(uintptr_t)63);
}

// The blocked product; pack_b(bp, k0, kc, n0, cols) packs one NR-wide panel of op(B) (gemm_pack_b's contract), so
// the same loops serve fp32 B (gemm_cpu) and weights stored as bf16 or q8_0 (gemm_cpu_lowp).
template <class PackB>
static void gemm_blocked(int M, int N, int K, const float* A, int lda, bool a_trans, float* C, int ldc, Accum accum,
                         const PackB& pack_b) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {  // an empty sum
        if (accum == Accum::Overwrite)
            for (int m = 0; m < M; m++) memset(C + (size_t)m * ldc, 0, (size_t)N * sizeof(float));
        return;
    }
    static thread_local std::vector<float> bpack_buf;  // per calling thread: callers may run in parallel
    float* bpack = gemm_scratch(&bpack_buf, (size_t)GEMM_KC * GEMM_NC);
    bool in_place = GEMM_A_IN_PLACE && !a_trans;  // read A's strips where they lie, or pack each one
    int P = num_threads();
    int m_strips = (M + GEMM_MR - 1) / GEMM_MR;
    bool split_rows = m_strips >= 2 * P || N <= GEMM_NR;
    #pragma omp parallel num_threads(P)
    {
        static thread_local std::vector<float> astrip_buf, aall_buf;
        int t = 0, nt = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        // this thread's rows [m_lo, m_hi) or, with few rows, its share of each block's NR panels
        int m_lo = 0, m_hi = M;
        if (split_rows) {
            m_lo = (int)((long long)M * t / nt);
            m_hi = (int)((long long)M * (t + 1) / nt);
        }
        // A packed (transposed): with one column block, a strip at a time; with several, all of this thread's strips
        // for all of K once, ahead of the blocks (each strip [pc·S·MR + s·MR·kc], S strips), instead of once per block
        int S = (m_hi - m_lo + GEMM_MR - 1) / GEMM_MR;
        bool pack_once = !in_place && N > GEMM_NC;
        float* astrip = in_place ? nullptr : gemm_scratch(pack_once ? &aall_buf : &astrip_buf,
                                                          pack_once ? (size_t)K * S * GEMM_MR : (size_t)GEMM_KC * GEMM_MR);
        if (pack_once)
            for (int pc = 0; pc < K; pc += GEMM_KC)
                for (int s = 0; s < S; s++) {
                    int kc = std::min(GEMM_KC, K - pc), ir = m_lo + s * GEMM_MR;
                    gemm_pack_a(astrip + (size_t)pc * S * GEMM_MR + (size_t)s * GEMM_MR * kc, A, lda, a_trans, ir,
                                std::min(GEMM_MR, m_hi - ir), pc, kc);
                }
        for (int jc = 0; jc < N; jc += GEMM_NC) {
            int nc = std::min(GEMM_NC, N - jc), n_panels = (nc + GEMM_NR - 1) / GEMM_NR;
            int j_lo = split_rows ? 0 : (int)((long long)n_panels * t / nt);
            int j_hi = split_rows ? n_panels : (int)((long long)n_panels * (t + 1) / nt);
            for (int pc = 0; pc < K; pc += GEMM_KC) {
                int kc = std::min(GEMM_KC, K - pc);
                bool load = accum == Accum::Add || pc > 0;
                #pragma omp for schedule(static)
                for (int j = 0; j < n_panels; j++)
                    pack_b(bpack + (size_t)j * GEMM_NR * kc, pc, kc, jc + j * GEMM_NR, std::min(GEMM_NR, nc - j * GEMM_NR));
                // (implicit barrier: the packed B block is complete)
                for (int ir = m_lo; ir < m_hi; ir += GEMM_MR) {
                    int rows = std::min(GEMM_MR, m_hi - ir);
                    const float* a = A + (size_t)ir * lda + pc;  // in place: the strip's first row, at column pc
                    if (pack_once) {
                        a = astrip + (size_t)pc * S * GEMM_MR + (size_t)(ir - m_lo) / GEMM_MR * GEMM_MR * kc;
                    } else if (!in_place) {
                        gemm_pack_a(astrip, A, lda, a_trans, ir, rows, pc, kc);
                        a = astrip;
                    }
                    for (int j = j_lo; j < j_hi; j++) {
                        int n0 = jc + j * GEMM_NR;
                        gemm_kernel(kc, a, (size_t)lda, in_place, bpack + (size_t)j * GEMM_NR * kc, C + (size_t)ir * ldc + n0,
                                    ldc, load, rows, std::min(GEMM_NR, N - n0));
                    }
                }
                #pragma omp barrier
            }
        }
    }
}

void gemm_cpu(int M, int N, int K, const float* A, int lda, bool a_trans, const float* B, int ldb, bool b_trans,
              float* C, int ldc, Accum accum) {
    gemm_blocked(M, N, K, A, lda, a_trans, C, ldc, accum, [&](float* bp, int k0, int kc, int n0, int cols) {
        gemm_pack_b(bp, B, ldb, b_trans, k0, kc, n0, cols);
    });
}

// C = (accum ? C : 0) + A · Wᵀ with W [N, K] stored as bf16 rows (w_bf16) or q8_0 (w_q8 + its fp16 scales, K a
// multiple of Q8_BLOCK): generation's prefill. Each panel's rows are widened into a per-thread [NR, KC] buffer
// (in L1/L2), which gemm_pack_b then transposes as it would an fp32 W: the weights are read once per column block
// as stored, and no fp32 copy of the matrix is made. Results equal gemm_cpu on the widened W, bit for bit.
void gemm_cpu_lowp(int M, int N, int K, const float* A, int lda, const uint16_t* w_bf16, const int8_t* w_q8,
                   const uint16_t* w_q8_scale, float* C, int ldc, Accum accum) {
    gemm_blocked(M, N, K, A, lda, false, C, ldc, accum, [&](float* bp, int k0, int kc, int n0, int cols) {
        static thread_local std::vector<float> rows_buf;
        float* rows = gemm_scratch(&rows_buf, (size_t)GEMM_NR * GEMM_KC);
        for (int c = 0; c < cols; c++) {
            float* dst = rows + (size_t)c * kc;
            size_t at = (size_t)(n0 + c) * K + k0;
            if (w_bf16) {
                const uint16_t* src = w_bf16 + at;
                #pragma omp simd
                for (int k = 0; k < kc; k++) dst[k] = bf16_to_f32(src[k]);
            } else {   // k0 and kc are whole blocks: KC and K are multiples of Q8_BLOCK
                q8_0_dequantize(w_q8 + at, w_q8_scale + at / Q8_BLOCK, (size_t)kc, dst);
            }
        }
        gemm_pack_b(bp, rows, kc, true, 0, kc, 0, cols);
    });
}

// matmul on gemm_cpu: forward writes out; backward adds dW += dYᵀ·X and writes or adds dX = dY·W (dinp_accum).
// A handful of rows (generation: one token at a time) is a matrix-vector product, bound by reading the
// weights once: dot products straight from W beat packing it.
void matmul_forward_cpu(float* out, const float* inp, const float* weight, int N, int in, int out_dim) {
    if (N <= 4) {
        #pragma omp parallel for schedule(static)
        for (int o = 0; o < out_dim; o++) {
            const float* w = weight + (size_t)o * in;
            for (int n = 0; n < N; n++) {
                const float* x = inp + (size_t)n * in;
                float sum = 0.0f;
                #pragma omp simd reduction(+ : sum)
                for (int i = 0; i < in; i++) sum += x[i] * w[i];
                out[(size_t)n * out_dim + o] = sum;
            }
        }
        return;
    }
    gemm_cpu(N, out_dim, in, inp, in, false, weight, in, true, out, out_dim, Accum::Overwrite);
}
void matmul_backward_cpu(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                         int N, int in, int out_dim, Accum dinp_accum) {
    if (dinp) gemm_cpu(N, in, out_dim, dout, out_dim, false, weight, in, false, dinp, in, dinp_accum);
    if (dweight) gemm_cpu(out_dim, in, N, dout, out_dim, true, inp, in, false, dweight, in, Accum::Add);
}
