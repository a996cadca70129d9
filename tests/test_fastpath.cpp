// Fast CPU paths (the _cpu functions, kernels/cpu_*.h) against the fp32 _ref layers they replace: every fast
// function on shapes that are not multiples of its tile sizes, single rows included, and the whole model.
// Tolerances: both sides are fp32 and differ only in summation order (and the fast exp, ≤ 1 ulp). A K-term
// fp32 sum carries a rounding error of up to ~K·2^-24 of its partial sums' size (a random walk, ~√K, in
// practice); errors are measured relative to each element with an absolute floor of 1% of the tensor's largest
// magnitude, so for K ≤ 600 random terms they reach a few 1e-5: the bound is 1e-4 (a wrong index or a lost
// block gives errors of order 1). Elementwise layers with no long sums are held to 1e-5 or tighter.
#include <doctest/doctest.h>  // TEST_CASE, CHECK, REQUIRE, MESSAGE
#include <algorithm>          // std::max({...})
#include <cmath>              // fabs
#include <cstdlib>            // getenv
#include <cstring>            // memcmp
#include <vector>             // std::vector
#include <omp.h>              // omp_set_num_threads, omp_get_max_threads
#include "../deepseek.h"      // the fast paths and their references
#include "../kernels/cpu_exp.h"  // exp_poly
#include "test_util.h"        // max_rel_err


// deterministic, varied test data in about [-scale, scale]
static std::vector<float> test_data(size_t n, uint32_t seed, float scale = 1.0f) {
    std::vector<float> v(n);
    uint32_t s = seed * 2654435761u + 12345u;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        v[i] = scale * ((float)(s >> 8) / 8388608.0f - 1.0f);
    }
    return v;
}
static double floor_of(const std::vector<float>& ref) {
    double mx = 0;
    for (float x : ref) mx = std::max(mx, (double)fabs(x));
    return std::max(1e-2 * mx, 1e-30);
}
static double rel_err(const std::vector<float>& got, const std::vector<float>& ref) {
    REQUIRE(got.size() == ref.size());
    return max_rel_err(got.data(), ref.data(), got.size(), floor_of(ref));
}
// runs f with n OpenMP threads, restoring the previous count
template <class F> static void with_threads(int n, F f) {
    int old = omp_get_max_threads();
    omp_set_num_threads(n);
    f();
    omp_set_num_threads(old);
}

// ---------------------------------------------------------------------------- GEMM

// (N rows, in, out): single rows, sizes off the 14×32 / 6×16 / 4×16 tiles, and K past one 256 block
static const int kMatShapes[][3] = {{1, 7, 5}, {2, 33, 17}, {4, 64, 40}, {5, 16, 32}, {13, 48, 31}, {15, 257, 33},
                                    {29, 300, 70}, {64, 129, 96}, {97, 520, 65}, {200, 64, 1100}};

TEST_CASE("the fast matmul (forward, dX and dW) matches the reference on shapes off the tile sizes, single rows included") {
    double worst = 0;
    for (auto& s : kMatShapes) {
        int N = s[0], in = s[1], out = s[2];
        auto x = test_data((size_t)N * in, 1 + N), w = test_data((size_t)out * in, 2 + in), dy = test_data((size_t)N * out, 3 + out);
        std::vector<float> y((size_t)N * out), y_ref(y.size());
        matmul_forward_cpu(y.data(), x.data(), w.data(), N, in, out);
        matmul_forward_ref(y_ref.data(), x.data(), w.data(), N, in, out);
        // backward accumulates: start both from the same non-zero gradients
        auto dx = test_data((size_t)N * in, 4), dw = test_data((size_t)out * in, 5);
        auto dx_ref = dx, dw_ref = dw;
        matmul_backward_cpu(dx.data(), dw.data(), dy.data(), x.data(), w.data(), N, in, out, Accum::Add);
        matmul_backward_ref(dx_ref.data(), dw_ref.data(), dy.data(), x.data(), w.data(), N, in, out);
        double e = std::max({rel_err(y, y_ref), rel_err(dx, dx_ref), rel_err(dw, dw_ref)});
        if (e > 1e-4) MESSAGE("N=" << N << " in=" << in << " out=" << out << ": rel err " << e);
        worst = std::max(worst, e);
    }
    MESSAGE("matmul fast vs reference (" << std::string(gemm_kernel_name()) << "): max rel err " << worst);
    CHECK(worst < 1e-4);
}

TEST_CASE("gemm_cpu computes op(A)·op(B) for all four transpositions, overwriting or accumulating, with leading dimensions") {
    // M, N, K: edges of every tile size, K across KC blocks (512), N across NC blocks (512 columns), and in one
    const int shapes[][3] = {{1, 1, 1}, {3, 45, 7}, {17, 33, 300}, {30, 64, 513}, {9, 1500, 33}, {20, 2100, 40}, {4, 8300, 9}, {17, 40, 2100}, {3, 4200, 1030},
                             {45, 1100, 530}};  // the last: rows split between threads, several column and K blocks
    double worst = 0;
    for (auto& s : shapes)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int acc = 0; acc < 2; acc++) {
                    int M = s[0], N = s[1], K = s[2];
                    int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;  // padded rows
                    auto A = test_data((size_t)(ta ? K : M) * lda, 7), B = test_data((size_t)(tb ? N : K) * ldb, 8);
                    auto C = test_data((size_t)M * ldc, 9);
                    auto want = C;
                    for (int m = 0; m < M; m++)  // the definition, in double
                        for (int n = 0; n < N; n++) {
                            double sum = acc ? C[(size_t)m * ldc + n] : 0.0;
                            for (int k = 0; k < K; k++)
                                sum += (double)(ta ? A[(size_t)k * lda + m] : A[(size_t)m * lda + k]) *
                                       (tb ? B[(size_t)n * ldb + k] : B[(size_t)k * ldb + n]);
                            want[(size_t)m * ldc + n] = (float)sum;
                        }
                    gemm_cpu(M, N, K, A.data(), lda, ta, B.data(), ldb, tb, C.data(), ldc, acc ? Accum::Add : Accum::Overwrite);
                    worst = std::max(worst, rel_err(C, want));  // padding columns: untouched on both sides
                }
    MESSAGE("gemm_cpu vs double definition: max rel err " << worst);
    CHECK(worst < 1e-4);
}

TEST_CASE("gemm_cpu on every row count up to two microkernel tiles, with column edges; padding never written") {
    // the edge tiles run kernels specialised on their row count and masked on their columns, on A's strip read in
    // place (row-major A) or packed (transposed A): each one here
    double worst = 0;
    for (int ta = 0; ta < 2; ta++)
        for (int M = 1; M <= 29; M++)
            for (int N : {5, 16, 17, 31, 33, 47})
                for (int acc = 0; acc < 2; acc++) {
                    int K = 9, lda = (ta ? M : K) + 1, ldb = K, ldc = N + 3;
                    auto A = test_data((size_t)(ta ? K : M) * lda, 21 + M), B = test_data((size_t)N * ldb, 22 + N);
                    auto C = test_data((size_t)M * ldc, 23);
                    auto want = C;
                    for (int m = 0; m < M; m++)
                        for (int n = 0; n < N; n++) {
                            double sum = acc ? C[(size_t)m * ldc + n] : 0.0;
                            for (int k = 0; k < K; k++)
                                sum += (double)(ta ? A[(size_t)k * lda + m] : A[(size_t)m * lda + k]) * B[(size_t)n * ldb + k];
                            want[(size_t)m * ldc + n] = (float)sum;
                        }
                    gemm_cpu(M, N, K, A.data(), lda, ta, B.data(), ldb, true, C.data(), ldc, acc ? Accum::Add : Accum::Overwrite);
                    worst = std::max(worst, rel_err(C, want));
                }
    MESSAGE("gemm_cpu edges vs double definition: max rel err " << worst);
    CHECK(worst < 1e-4);
}

TEST_CASE("gemm results are bit-identical for 1, 2 and 3 threads") {
    int M = 61, N = 130, K = 600;
    auto A = test_data((size_t)M * K, 11), B = test_data((size_t)N * K, 12);
    std::vector<float> c1((size_t)M * N), c2(c1.size()), c3(c1.size());
    for (int ta = 0; ta < 2; ta++) {  // A read in place, and A transposed (packed strips); A is M×K or K×M
        int lda = ta ? M : K;
        with_threads(1, [&] { gemm_cpu(M, N, K, A.data(), lda, ta, B.data(), K, true, c1.data(), N, Accum::Overwrite); });
        with_threads(2, [&] { gemm_cpu(M, N, K, A.data(), lda, ta, B.data(), K, true, c2.data(), N, Accum::Overwrite); });
        with_threads(3, [&] { gemm_cpu(M, N, K, A.data(), lda, ta, B.data(), K, true, c3.data(), N, Accum::Overwrite); });
        CHECK(memcmp(c1.data(), c2.data(), c1.size() * 4) == 0);
        CHECK(memcmp(c1.data(), c3.data(), c1.size() * 4) == 0);
    }
}

// Generation's prefill with bf16 or q8_0 weights widens each panel's rows as it packs them: the product must be the
// fp32 GEMM's on the widened matrix, bit for bit (K past one KC block, N and M off the tiles, accumulating too).
TEST_CASE("gemm_cpu_lowp (bf16 and q8_0 weights widened while packing) equals gemm_cpu on the widened weights, bit for bit") {
    int K = 544;   // 17 blocks of 32: two KC passes
    for (int M : {1, 8, 61}) for (int N : {5, 130}) {
        auto A = test_data((size_t)M * K, 31), W = test_data((size_t)N * K, 32), C0 = test_data((size_t)M * N, 33);
        std::vector<uint16_t> wb((size_t)N * K), wd((size_t)N * K / Q8_BLOCK);
        std::vector<int8_t> wq((size_t)N * K);
        std::vector<float> wide_b((size_t)N * K), wide_q((size_t)N * K);
        for (size_t i = 0; i < wb.size(); i++) { wb[i] = f32_to_bf16(W[i]); wide_b[i] = bf16_to_f32(wb[i]); }
        q8_0_quantize(W.data(), W.size(), wq.data(), wd.data());
        q8_0_dequantize(wq.data(), wd.data(), W.size(), wide_q.data());
        for (Accum acc : {Accum::Overwrite, Accum::Add}) {
            std::vector<float> want = C0, got = C0;
            gemm_cpu(M, N, K, A.data(), K, false, wide_b.data(), K, true, want.data(), N, acc);
            gemm_cpu_lowp(M, N, K, A.data(), K, wb.data(), nullptr, nullptr, got.data(), N, acc);
            INFO("bf16, M " << M << ", N " << N);
            CHECK(memcmp(want.data(), got.data(), want.size() * 4) == 0);
            want = C0; got = C0;
            gemm_cpu(M, N, K, A.data(), K, false, wide_q.data(), K, true, want.data(), N, acc);
            gemm_cpu_lowp(M, N, K, A.data(), K, nullptr, wq.data(), wd.data(), got.data(), N, acc);
            INFO("q8_0, M " << M << ", N " << N);
            CHECK(memcmp(want.data(), got.data(), want.size() * 4) == 0);
        }
    }
}

// ---------------------------------------------------------------------------- elementwise layers

TEST_CASE("fast RMSNorm, the fused residual+RMSNorm and its backward match the reference") {
    for (int C : {1, 17, 64, 130}) {
        int N = 9;
        auto x = test_data((size_t)N * C, 21), skip = test_data((size_t)N * C, 22), w = test_data(C, 23), dy = test_data((size_t)N * C, 24);
        float eps = 1e-5f;
        std::vector<float> y((size_t)N * C), y_ref(y.size()), r(N), r_ref(N);
        rmsnorm_forward_cpu(y.data(), r.data(), x.data(), w.data(), N, C, eps);
        rmsnorm_forward_ref(y_ref.data(), r_ref.data(), x.data(), w.data(), N, C, eps);
        CHECK(rel_err(y, y_ref) < 1e-5);
        CHECK(rel_err(r, r_ref) < 1e-5);
        // fused: res = x + skip, normed
        auto res = x;
        std::vector<float> sum_ref((size_t)N * C);
        for (size_t i = 0; i < sum_ref.size(); i++) sum_ref[i] = x[i] + skip[i];
        rmsnorm_forward_ref(y_ref.data(), r_ref.data(), sum_ref.data(), w.data(), N, C, eps);
        residual_rmsnorm_forward_cpu(res.data(), y.data(), r.data(), skip.data(), w.data(), N, C, eps);
        CHECK(memcmp(res.data(), sum_ref.data(), res.size() * 4) == 0);  // the add is the same single rounding
        CHECK(rel_err(y, y_ref) < 1e-5);
        CHECK(rel_err(r, r_ref) < 1e-5);
        // backward, accumulating (dskip = dinp) and with a separate skip gradient
        auto dx = test_data((size_t)N * C, 25), dw = test_data(C, 26);
        auto dx_ref = dx, dw_ref = dw;
        rmsnorm_backward_ref(dx_ref.data(), dw_ref.data(), dy.data(), sum_ref.data(), w.data(), r_ref.data(), N, C);
        rmsnorm_backward_cpu(dx.data(), dx.data(), dw.data(), dy.data(), sum_ref.data(), w.data(), r_ref.data(), N, C);
        CHECK(rel_err(dx, dx_ref) < 1e-5);
        CHECK(rel_err(dw, dw_ref) < 1e-5);
        auto dskip = test_data((size_t)N * C, 27);
        std::vector<float> dx2((size_t)N * C, 123.0f), dw2(C, 0.0f), dx2_ref = dskip, dw2_ref(C, 0.0f);
        rmsnorm_backward_ref(dx2_ref.data(), dw2_ref.data(), dy.data(), sum_ref.data(), w.data(), r_ref.data(), N, C);
        rmsnorm_backward_cpu(dx2.data(), dskip.data(), dw2.data(), dy.data(), sum_ref.data(), w.data(), r_ref.data(), N, C);
        CHECK(rel_err(dx2, dx2_ref) < 1e-5);
        CHECK(rel_err(dw2, dw2_ref) < 1e-5);
    }
}

TEST_CASE("RoPE from the table is bit-identical to the reference rotation, forward and backward") {
    int T = 37, heads = 3, D = 10;
    std::vector<int> pos(2 * T);
    for (int i = 0; i < 2 * T; i++) pos[i] = (i * 7) % T;  // positions in any order
    auto x = test_data((size_t)2 * T * heads * D, 31);
    std::vector<float> cs((size_t)T * D / 2), sn(cs.size());
    for (float theta : {10000.0f, 500000.0f}) {
        rope_table(cs.data(), sn.data(), T, D, theta);
        auto a = x, b = x;
        rope_apply_cpu(a.data(), cs.data(), sn.data(), pos.data(), 2 * T, heads, D, 1.0f);
        rope_forward_ref(b.data(), pos.data(), 2 * T, heads, D, theta);
        CHECK(memcmp(a.data(), b.data(), a.size() * 4) == 0);
        rope_apply_cpu(a.data(), cs.data(), sn.data(), pos.data(), 2 * T, heads, D, -1.0f);
        rope_backward_ref(b.data(), pos.data(), 2 * T, heads, D, theta);
        CHECK(memcmp(a.data(), b.data(), a.size() * 4) == 0);
    }
}

TEST_CASE("fast SwiGLU forward and backward match the reference") {
    size_t n = 1003;
    auto g = test_data(n, 41, 12.0f), u = test_data(n, 42), da = test_data(n, 43);
    std::vector<float> a(n), a_ref(n), dg(n), du(n), dg_ref(n, 0.0f), du_ref(n, 0.0f);
    swiglu_forward_cpu(a.data(), g.data(), u.data(), n);
    swiglu_forward_ref(a_ref.data(), g.data(), u.data(), n);
    swiglu_backward_cpu(dg.data(), du.data(), da.data(), g.data(), u.data(), n);  // writes
    swiglu_backward_ref(dg_ref.data(), du_ref.data(), da.data(), g.data(), u.data(), n);  // accumulates onto 0
    double e = std::max({rel_err(a, a_ref), rel_err(dg, dg_ref), rel_err(du, du_ref)});
    MESSAGE("swiglu fast vs reference: max rel err " << e);
    CHECK(e < 2e-6);
}

TEST_CASE("fused cross-entropy matches the reference loss and gradient; masked rows are exactly zero") {
    for (int V : {1, 5, 100, 1031}) {
        int N = 7;
        auto z = test_data((size_t)N * V, 51, 8.0f), dl = test_data(N, 52);
        std::vector<int> tg(N);
        for (int i = 0; i < N; i++) tg[i] = (i * 13) % V;
        tg[2] = -1;
        dl[4] = 0.0f;
        std::vector<float> loss(N), loss_ref(N), dz((size_t)N * V, 7.0f), dz_ref((size_t)N * V);
        crossentropy_forward_cpu(loss.data(), z.data(), tg.data(), N, V);
        crossentropy_forward_ref(loss_ref.data(), z.data(), tg.data(), N, V);
        crossentropy_backward_cpu(dz.data(), z.data(), loss.data(), tg.data(), dl.data(), N, V);
        crossentropy_backward_ref(dz_ref.data(), z.data(), tg.data(), dl.data(), N, V);
        CHECK(rel_err(loss, loss_ref) < 1e-5);
        CHECK(rel_err(dz, dz_ref) < 1e-5);
        CHECK(loss[2] == 0.0f);
        for (int i = 0; i < V; i++) {
            REQUIRE(dz[(size_t)2 * V + i] == 0.0f);
            REQUIRE(dz[(size_t)4 * V + i] == 0.0f);
        }
    }
}

// ---------------------------------------------------------------------------- attention

TEST_CASE("blockwise online-softmax attention matches the reference (GQA and MHA, T off the block sizes, T = 1)") {
    struct S { int B, T, H, KV, D; };
    std::vector<S> shapes = {{1, 1, 2, 1, 4}, {2, 13, 6, 2, 8}, {1, 70, 4, 4, 10}, {2, 131, 4, 2, 16}};
    if (!asan()) shapes.push_back({1, 260, 8, 2, 64});
    double worst = 0;
    for (auto s : shapes) {
        size_t nq = (size_t)s.B * s.T * s.H * s.D, nk = (size_t)s.B * s.T * s.KV * s.D;
        auto q = test_data(nq, 61, 2.0f), k = test_data(nk, 62, 2.0f), v = test_data(nk, 63), dy = test_data(nq, 64);
        std::vector<float> y(nq), y_ref(nq), lse((size_t)s.B * s.H * s.T), att((size_t)s.B * s.H * s.T * s.T);
        attention_forward_cpu(y.data(), lse.data(), q.data(), k.data(), v.data(), s.B, s.T, s.H, s.KV, s.D);
        attention_forward_ref(y_ref.data(), att.data(), q.data(), k.data(), v.data(), s.B, s.T, s.H, s.KV, s.D);
        // backward accumulates: both start from the same gradients
        auto dq = test_data(nq, 65), dk = test_data(nk, 66), dv = test_data(nk, 67);
        auto dq_ref = dq, dk_ref = dk, dv_ref = dv;
        attention_backward_cpu(dq.data(), dk.data(), dv.data(), dy.data(), y.data(), lse.data(), q.data(), k.data(), v.data(),
                                s.B, s.T, s.H, s.KV, s.D);
        attention_backward_ref(dq_ref.data(), dk_ref.data(), dv_ref.data(), dy.data(), att.data(), q.data(), k.data(), v.data(),
                           s.B, s.T, s.H, s.KV, s.D);
        double e = std::max({rel_err(y, y_ref), rel_err(dq, dq_ref), rel_err(dk, dk_ref), rel_err(dv, dv_ref)});
        MESSAGE("attention B=" << s.B << " T=" << s.T << " H=" << s.H << " KV=" << s.KV << " D=" << s.D << ": max rel err " << e);
        worst = std::max(worst, e);
    }
    CHECK(worst < 1e-4);
}

TEST_CASE("attention matches the reference when the scores span hundreds (the running max must be the true max)") {
    // q, k integers in [-12, 12] and D = 64: every score q·k/8 is exact in fp32 on both sides (|q·k| ≤ 9216 < 2^24),
    // and they reach ±100 and beyond, where e^s overflows fp32 unless each row's largest score is subtracted. A max
    // over only some lanes or keys leaves e^(s − m) clamped or infinite, and y wrong.
    int B = 1, T = 70, H = 4, KV = 2, D = 64;
    size_t nq = (size_t)B * T * H * D, nk = (size_t)B * T * KV * D;
    auto q = test_data(nq, 71, 12.0f), k = test_data(nk, 72, 12.0f), v = test_data(nk, 73);
    for (float& x : q) x = roundf(x);
    for (float& x : k) x = roundf(x);
    std::vector<float> y(nq), y_ref(nq), lse((size_t)B * H * T), att((size_t)B * H * T * T);
    attention_forward_cpu(y.data(), lse.data(), q.data(), k.data(), v.data(), B, T, H, KV, D);
    attention_forward_ref(y_ref.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, KV, D);
    double e = rel_err(y, y_ref);
    MESSAGE("attention, scores within ±1152: max rel err " << e);
    CHECK(e < 1e-4);
}

// Generation's prefill: the queries of positions q0 … T−1 over all T keys equal those rows of the full attention
TEST_CASE("attention with a query offset (prefill over a KV cache) equals the same rows of full causal attention") {
    struct S { int T, q0, H, KV, D; };
    double worst = 0;
    for (S s : std::vector<S>{{70, 32, 4, 2, 16}, {131, 67, 6, 3, 8}, {40, 39, 2, 1, 64}, {300, 0, 4, 4, 64}}) {
        size_t nq = (size_t)s.T * s.H * s.D, nk = (size_t)s.T * s.KV * s.D, row = (size_t)s.H * s.D;
        auto q = test_data(nq, 71, 2.0f), k = test_data(nk, 72, 2.0f), v = test_data(nk, 73);
        std::vector<float> y(nq), lse((size_t)s.H * s.T), yo(nq - s.q0 * row);
        attention_forward_cpu(y.data(), lse.data(), q.data(), k.data(), v.data(), 1, s.T, s.H, s.KV, s.D);
        attention_forward_offset_cpu(yo.data(), nullptr, q.data() + s.q0 * row, k.data(), v.data(), 1, s.T - s.q0, s.T, s.q0,
                                 s.H, s.KV, s.D);
        std::vector<float> tail(y.begin() + s.q0 * row, y.end());
        worst = std::max(worst, rel_err(yo, tail));
    }
    MESSAGE("attention with a query offset vs full attention: max rel err " << worst);
    CHECK(worst < 1e-6);
}

// ---------------------------------------------------------------------------- the model

static Config fast_test_config() {
    Config c;
    c.vocab_size = 301; c.hidden_size = 96; c.num_hidden_layers = 2; c.num_attention_heads = 6; c.num_key_value_heads = 2;
    c.head_dim = 16; c.intermediate_size = 200; c.max_position_embeddings = 128;
    return c;
}
struct ModelRun { float loss; std::vector<float> logits, grads; };
static ModelRun run_model(const Config& c, bool reference, int B, int T) {
    Model m;
    model_build(&m, c);
    model_init_random(&m, 5, 0.08f);
    std::vector<int> in(B * T), tg(B * T);
    for (int i = 0; i < B * T; i++) { in[i] = (i * 37 + 11) % c.vocab_size; tg[i] = (i * 53 + 7) % c.vocab_size; }
    tg[3] = -1;
    tg[B * T - 2] = -1;
    std::vector<float> w;
    model_mean_loss_weights(tg.data(), B * T, &w);
    bool old = g_cpu_reference;
    g_cpu_reference = reference;
    ModelRun r;
    r.loss = model_forward(&m, in.data(), tg.data(), B, T);
    model_zero_grad(&m);
    model_backward(&m, w.data());
    g_cpu_reference = old;
    r.logits.assign(m.acts.logits, m.acts.logits + (size_t)B * T * c.vocab_size);
    r.grads = m.grads_memory;
    return r;
}

// Each side is within ~5e-5 of float64 transformers on the fixtures (test_model.cpp), so they may differ by the
// sum of their errors: 2e-4. (A fast path that is wrong, not just rounded differently, misses by orders more.)
TEST_CASE("the model on the fast paths matches the reference model: logits, loss and every gradient") {
    Config c = fast_test_config();
    int B = 2, T = asan() ? 37 : 75;  // T crosses attention blocks and is no multiple of a tile
    ModelRun fast = run_model(c, false, B, T), ref = run_model(c, true, B, T);
    double el = rel_err(fast.logits, ref.logits);
    MESSAGE("model fast vs reference: logits " << el << ", loss " << fast.loss << " vs " << ref.loss);
    CHECK(el < 2e-4);
    CHECK(fabs(fast.loss - ref.loss) / fabs(ref.loss) < 1e-5);
    double worst = 0;
    std::string worst_name;
    for (const ParamView& pv : param_views(c)) {
        size_t n = 1;
        for (auto d : pv.shape) n *= (size_t)d;
        std::vector<float> g(fast.grads.begin() + pv.offset, fast.grads.begin() + pv.offset + n),
            gr(ref.grads.begin() + pv.offset, ref.grads.begin() + pv.offset + n);
        double e = rel_err(g, gr);
        if (e > worst) { worst = e; worst_name = pv.name; }
    }
    MESSAGE("model fast vs reference: gradients max rel err " << worst << " (" << worst_name << ")");
    CHECK(worst < 2e-4);
}

TEST_CASE("training steps on the fast paths are bit-identical for 1, 2 and 3 threads") {
    Config c = fast_test_config();
    ModelRun r1, r2, r3;
    with_threads(1, [&] { r1 = run_model(c, false, 2, 33); });
    with_threads(2, [&] { r2 = run_model(c, false, 2, 33); });
    with_threads(3, [&] { r3 = run_model(c, false, 2, 33); });
    CHECK(r1.loss == r2.loss);
    CHECK(r1.loss == r3.loss);
    CHECK(memcmp(r1.logits.data(), r2.logits.data(), r1.logits.size() * 4) == 0);
    CHECK(memcmp(r1.logits.data(), r3.logits.data(), r1.logits.size() * 4) == 0);
    CHECK(memcmp(r1.grads.data(), r2.grads.data(), r1.grads.size() * 4) == 0);
    CHECK(memcmp(r1.grads.data(), r3.grads.data(), r1.grads.size() * 4) == 0);
}

TEST_CASE("switching g_cpu_reference between forward and backward is a clear error, not wrong gradients") {
    Config c = fast_test_config();
    Model m;
    model_build(&m, c);
    model_init_random(&m, 5, 0.08f);
    std::vector<int> in(8, 3), tg(8, 4);
    std::vector<float> w(8, 0.125f);
    model_forward(&m, in.data(), tg.data(), 1, 8);  // fast path: acts.att holds [L,B,H,T] log-sum-exps
    g_cpu_reference = true;
    bool threw = false;
    try { model_backward(&m, w.data()); } catch (const DeepseekError& e) {
        threw = true;
        CHECK(e.msg.find("g_cpu_reference") != std::string::npos);
    }
    g_cpu_reference = false;
    CHECK(threw);
}

// ---------------------------------------------------------------------------- exp_poly on every input

// (runs under make test-asan too: UBSan reported a left shift of a negative int for NaN before)
TEST_CASE("exp_poly is defined for NaN, ±Inf and huge inputs, and is within 1 ulp of libm's correctly rounded e^x") {
    volatile float nan = NAN, inf = INFINITY;   // volatile: computed at run time, where UBSan looks
    CHECK(std::isnan(exp_poly(nan)));
    CHECK(std::isnan(exp_poly(-nan)));
    float top = exp_poly(inf), bottom = exp_poly(-inf);
    CHECK(std::isfinite(top));
    CHECK(top > 1e38f);                          // e^88.3, the clamp
    CHECK(bottom >= 0.0f);
    CHECK(bottom < 1e-37f);                      // e^-87.3
    volatile float big = 1e30f, up = 89.0f, down = -88.0f;
    CHECK(exp_poly(big) == top);
    CHECK(exp_poly(up) == top);
    CHECK(exp_poly(-big) == bottom);
    CHECK(exp_poly(down) == bottom);
    CHECK(std::fabs(exp_poly(1.0f) - 2.718281828f) < 1e-6f);
    // the clamp's range [-87.3, 88.3] (where e^x is a normal float), every 997th bit pattern of each sign: against
    // e^x in double from libm, rounded once to float
    size_t checked = 0, over = 0;
    long worst = 0;
    uint32_t hi;
    float lim = 88.3f;
    memcpy(&hi, &lim, 4);
    for (uint32_t u = 0; u <= hi; u += 997)
        for (uint32_t sign : {0u, 0x80000000u}) {
            uint32_t b = u | sign;
            float x;
            memcpy(&x, &b, 4);
            if (x < -87.3f) continue;
            float y = exp_poly(x), e = (float)std::exp((double)x);
            int32_t yb, eb;
            memcpy(&yb, &y, 4);
            memcpy(&eb, &e, 4);
            long ulps = std::labs((long)yb - (long)eb);   // both positive: bit patterns order like the values
            worst = std::max(worst, ulps);
            over += ulps > 1;
            checked++;
        }
    MESSAGE("exp_poly: " << checked << " inputs against libm, worst " << worst << " ulp");
    CHECK(over == 0);
}
