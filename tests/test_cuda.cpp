// CUDA backend tests: every kernel against its CPU twin on random inputs (odd sizes included), the whole model
// against the CPU backend on the GQA fixture (logits, loss, every gradient), a 20-step loss trajectory, decoding
// against the full forward, determinism. Without a CUDA device each says "skipped: no CUDA device" and counts
// as skipped, not passed.
//
// Tolerances come from bf16: 8 significant bits, so one rounding moves a value by at most 2^-9 ≈ 0.2% of
// itself. A kernel that reads bf16, computes in fp32 and rounds its output once is within 2^-8 of the fp32
// reference on the same (bf16-rounded) inputs, element by element; we allow 1% of the element, with an
// absolute floor of 1% of the tensor's largest magnitude for elements that cancel to near zero. Outputs kept in
// fp32 (rstd, losses, parameter gradients, master weights) differ only by fp32 summation order: 1e-4.
#include <doctest/doctest.h>  // TEST_CASE, CHECK, REQUIRE, MESSAGE
#include <cmath>              // fabs, sqrt, exp
#include <cstdio>             // printf
#include <cstring>            // memcpy
#include <vector>             // std::vector
#include <map>                // std::map (metrics by step)
#include <nlohmann/json.hpp>  // nlohmann::json: metrics.jsonl of the CLI runs
#include "../deepseek.h"      // cuda_* backend API, cpu twins, Model
#include "test_util.h"        // g_tests_skipped, run_cmd, deepseek_bin, max_rel_err

// true (and the test counted as skipped, with a visible line) when there is no GPU to run on
static bool skip_without_gpu(const char* what) {
#ifdef DEEPSEEK_CUDA
    if (cuda_device_count() > 0) return false;
#endif
    g_tests_skipped++;
    printf("skipped: no CUDA device (%s)\n", what);
    MESSAGE("skipped: no CUDA device");
    return true;
}

#ifdef DEEPSEEK_CUDA
// ---------------------------------------------------------------------------- helpers

struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed) {}
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    float uniform() { return (next() >> 40) / 16777216.0f; }                   // [0, 1)
    float normal() {
        float u1 = uniform() + 1e-7f, u2 = uniform();
        return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
    }
};
// random values already representable in bf16, so both backends see the same inputs
static std::vector<float> rand_bf16(Rng& r, size_t n, float scale) {
    std::vector<float> v(n);
    for (auto& x : v) x = bf16_to_f32(f32_to_bf16(scale * r.normal()));
    return v;
}
static double floor_of(const std::vector<float>& ref, double frac) {
    double mx = 0;
    for (float x : ref) mx = std::max(mx, (double)fabs(x));
    return std::max(frac * mx, 1e-30);
}
// element-wise relative error with the absolute floor of 1% of the reference's scale
static double err_bf16(const std::vector<float>& got, const std::vector<float>& want) {
    REQUIRE(got.size() == want.size());
    return max_rel_err(got.data(), want.data(), want.size(), floor_of(want, 1e-2));
}
// ‖got − want‖ / ‖want‖
static double rel_l2(const float* got, const float* want, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    if (!(num == num)) return INFINITY;
    return den > 0 ? sqrt(num / den) : sqrt(num);
}
static void round_params_bf16(Model* m) {
    for (float& x : m->params_memory) x = bf16_to_f32(f32_to_bf16(x));
}
struct Fixture {
    Model m;
    std::vector<int> inputs, targets;
    int B = 0, T = 0;
};
static void load_gqa_fixture(Fixture* f) {
    model_load_dir(&f->m, "tests/fixtures/model_gqa");
    SafeTensors ref;
    ref.open_file("tests/fixtures/model_gqa_ref.safetensors");
    const TensorInfo& ids = ref.get("input_ids");
    REQUIRE(ids.shape.size() == 2);
    f->B = (int)ids.shape[0];
    f->T = (int)ids.shape[1];
    f->inputs.resize(ids.numel());
    memcpy(f->inputs.data(), ids.data, ids.nbytes);
    const TensorInfo& tg = ref.get("targets");
    f->targets.resize(tg.numel());
    memcpy(f->targets.data(), tg.data, tg.nbytes);
}
#endif

// ---------------------------------------------------------------------------- kernels vs their CPU twins

TEST_CASE("CUDA embedding forward copies rows; backward sums repeated tokens like the CPU, deterministically") {
    if (skip_without_gpu("embedding")) return;
#ifdef DEEPSEEK_CUDA
    Rng r(1);
    int N = 53, V = 37, C = 70;
    std::vector<int> tok(N);
    for (int i = 0; i < N; i++) tok[i] = i % 3 == 0 ? 5 : (int)(r.next() % V);   // token 5 repeats many times
    std::vector<float> wte = rand_bf16(r, (size_t)V * C, 1.0f), dres((size_t)N * C), dw0((size_t)V * C);
    for (auto& x : dres) x = r.normal();
    for (auto& x : dw0) x = r.normal();
    std::vector<float> out((size_t)N * C), dw = dw0, dw2 = dw0;
    cuda_op_embedding(out.data(), dw.data(), tok.data(), wte.data(), dres.data(), N, V, C);
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) REQUIRE(out[(size_t)i * C + c] == wte[(size_t)tok[i] * C + c]);   // a copy: exact
    std::vector<float> want = dw0;   // the CPU's scatter-add, serial over tokens (model_backward)
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) want[(size_t)tok[i] * C + c] += dres[(size_t)i * C + c];
    double e = max_rel_err(dw.data(), want.data(), want.size(), floor_of(want, 1e-3));
    MESSAGE("embedding backward max rel err " << e);
    CHECK(e < 1e-5);   // fp32 sums of ≤ 18 terms in a different association
    cuda_op_embedding(out.data(), dw2.data(), tok.data(), wte.data(), dres.data(), N, V, C);
    CHECK(memcmp(dw.data(), dw2.data(), dw.size() * 4) == 0);   // no racing atomics: bit-identical reruns
#endif
}

TEST_CASE("CUDA matmul (cuBLASLt, bf16 in, fp32 accumulate) matches the CPU forward and backward, odd sizes") {
    if (skip_without_gpu("matmul")) return;
#ifdef DEEPSEEK_CUDA
    Rng r(2);
    int N = 37, in = 70, out_dim = 45;
    std::vector<float> x = rand_bf16(r, (size_t)N * in, 1.0f), w = rand_bf16(r, (size_t)out_dim * in, 0.1f),
                       dout = rand_bf16(r, (size_t)N * out_dim, 1.0f), dw0((size_t)out_dim * in);
    for (auto& v : dw0) v = r.normal();
    std::vector<float> out((size_t)N * out_dim), dinp((size_t)N * in), dw = dw0;
    cuda_op_matmul(out.data(), dinp.data(), dw.data(), x.data(), w.data(), dout.data(), N, in, out_dim);
    std::vector<float> want_out((size_t)N * out_dim), want_dinp((size_t)N * in, 0.0f), want_dw = dw0;
    matmul_forward_ref(want_out.data(), x.data(), w.data(), N, in, out_dim);
    matmul_backward_ref(want_dinp.data(), want_dw.data(), dout.data(), x.data(), w.data(), N, in, out_dim);
    double e_out = err_bf16(out, want_out), e_dinp = err_bf16(dinp, want_dinp);
    double e_dw = max_rel_err(dw.data(), want_dw.data(), dw.size(), floor_of(want_dw, 1e-3));
    MESSAGE("matmul: out " << e_out << ", dinp " << e_dinp << ", dweight (fp32) " << e_dw);
    CHECK(e_out < 1e-2);
    CHECK(e_dinp < 1e-2);
    CHECK(e_dw < 1e-4);   // exact bf16 products, fp32 sums: only the summation order differs
#endif
}

TEST_CASE("CUDA RMSNorm forward and fused residual backward match the CPU, odd sizes") {
    if (skip_without_gpu("rmsnorm")) return;
#ifdef DEEPSEEK_CUDA
    Rng r(3);
    int N = 133, C = 77;
    float eps = 1e-6f;
    std::vector<float> x = rand_bf16(r, (size_t)N * C, 2.0f), w = rand_bf16(r, C, 1.0f), dout = rand_bf16(r, (size_t)N * C, 1.0f);
    std::vector<float> dx0((size_t)N * C), dw0(C);
    for (auto& v : dx0) v = r.normal();
    for (auto& v : dw0) v = r.normal();
    std::vector<float> out((size_t)N * C), rstd(N), dx = dx0, dw = dw0;
    cuda_op_rmsnorm(out.data(), rstd.data(), dx.data(), dw.data(), x.data(), w.data(), dout.data(), N, C, eps);
    std::vector<float> want((size_t)N * C), want_rstd(N), want_dx = dx0, want_dw = dw0;
    rmsnorm_forward_ref(want.data(), want_rstd.data(), x.data(), w.data(), N, C, eps);
    rmsnorm_backward_ref(want_dx.data(), want_dw.data(), dout.data(), x.data(), w.data(), want_rstd.data(), N, C);
    double e_out = err_bf16(out, want), e_rstd = max_rel_err(rstd.data(), want_rstd.data(), N, 1e-30);
    double e_dx = max_rel_err(dx.data(), want_dx.data(), dx.size(), floor_of(want_dx, 1e-3));
    double e_dw = max_rel_err(dw.data(), want_dw.data(), C, floor_of(want_dw, 1e-3));
    MESSAGE("rmsnorm: out " << e_out << ", rstd " << e_rstd << ", dinp " << e_dx << ", dweight " << e_dw);
    CHECK(e_out < 1e-2);
    CHECK(e_rstd < 1e-5);
    CHECK(e_dx < 1e-4);   // fp32 in and out (the residual stream's gradient), same bf16 inputs
    CHECK(e_dw < 1e-4);
#endif
}

TEST_CASE("CUDA RoPE forward and backward rotate like the CPU (Hugging Face rotate-half)") {
    if (skip_without_gpu("rope")) return;
#ifdef DEEPSEEK_CUDA
    Rng r(4);
    int B = 3, T = 13, heads = 3, D = 10, N = B * T;
    std::vector<int> pos(N);
    for (int i = 0; i < N; i++) pos[i] = i % T;
    for (float sign : {1.0f, -1.0f}) {
        std::vector<float> x = rand_bf16(r, (size_t)N * heads * D, 1.0f), want = x;
        cuda_op_rope(x.data(), N, T, heads, D, 10000.0f, sign);
        if (sign > 0) rope_forward_ref(want.data(), pos.data(), N, heads, D, 10000.0f);
        else rope_backward_ref(want.data(), pos.data(), N, heads, D, 10000.0f);
        double e = err_bf16(x, want);
        MESSAGE("rope sign " << sign << ": max rel err " << e);
        CHECK(e < 1e-2);
    }
#endif
}

#ifdef DEEPSEEK_CUDA
static void check_attention(int B, int T, int H, int KV, int D, uint64_t seed) {
    for (const char* impl : {"scalar", "tensor"}) {
    cuda_set_attention(impl);
    MESSAGE("attention kernels asked: " << impl << ", run: " << cuda_attention_path(D));
    Rng r(seed);
    size_t nq = (size_t)B * T * H * D, nk = (size_t)B * T * KV * D;
    std::vector<float> q = rand_bf16(r, nq, 1.0f), k = rand_bf16(r, nk, 1.0f), v = rand_bf16(r, nk, 1.0f), dy = rand_bf16(r, nq, 1.0f);
    std::vector<float> y(nq), dq(nq), dk(nk), dv(nk);
    cuda_op_attention(y.data(), dq.data(), dk.data(), dv.data(), q.data(), k.data(), v.data(), dy.data(), B, T, H, KV, D);
    std::vector<float> wy(nq), att((size_t)B * H * T * T), wdq(nq, 0.0f), wdk(nk, 0.0f), wdv(nk, 0.0f);
    attention_forward_ref(wy.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, KV, D);
    attention_backward_ref(wdq.data(), wdk.data(), wdv.data(), dy.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, KV, D);
    AttentionBounds bd = attention_bf16_bounds(q.data(), k.data(), v.data(), dy.data(), att.data(), wy.data(), wdq.data(),
                                               wdk.data(), wdv.data(), B, T, H, KV, D);
    double l_y = rel_l2(y.data(), wy.data(), nq), l_dq = rel_l2(dq.data(), wdq.data(), nq), l_dk = rel_l2(dk.data(), wdk.data(), nk),
           l_dv = rel_l2(dv.data(), wdv.data(), nk);
    double b_y = max_bound_ratio(y.data(), wy.data(), bd.y), b_dq = max_bound_ratio(dq.data(), wdq.data(), bd.dq),
           b_dk = max_bound_ratio(dk.data(), wdk.data(), bd.dk), b_dv = max_bound_ratio(dv.data(), wdv.data(), bd.dv);
    MESSAGE("attention B=" << B << " T=" << T << " H=" << H << " KV=" << KV << " D=" << D << ": rel L2 y " << l_y << " dq "
            << l_dq << " dk " << l_dk << " dv " << l_dv << "; worst error / its bf16 bound: y " << b_y << " dq " << b_dq
            << " dk " << b_dk << " dv " << b_dv);
    CHECK(l_y < 1e-2);
    CHECK(l_dq < 1e-2);
    CHECK(l_dk < 1e-2);
    CHECK(l_dv < 1e-2);
    // every element within the error that bf16's roundings allow (attention_bf16_bounds, tests/test_util.h: the
    // tensor-core kernels round P and dS to bf16 for their products, which the CUDA-core ones keep in fp32)
    CHECK(b_y <= 1.0);
    CHECK(b_dq <= 1.0);
    CHECK(b_dk <= 1.0);
    CHECK(b_dv <= 1.0);
    }
    cuda_set_attention("auto");
}
#endif

// each shape on both sets of kernels: the CUDA-core ones, and the tensor-core ones where the head size has them (32,
// 64, 128; the others say which kernels ran)
TEST_CASE("CUDA flash attention forward and backward match the CPU reference (GQA, T not a multiple of the tiles)") {
    if (skip_without_gpu("attention")) return;
#ifdef DEEPSEEK_CUDA
    check_attention(2, 130, 6, 2, 64, 9);   // tensor cores: three query and key tiles of 64, the last partial, GQA
    check_attention(1, 33, 4, 1, 32, 10);   // tensor cores: one partial tile, all heads on one kv head
    check_attention(2, 45, 6, 2, 40, 5);    // GQA groups of 3, two key tiles, D with a partial second lane pass
    check_attention(1, 70, 4, 4, 128, 6);   // MHA, D = 128 as in the released models
    check_attention(3, 7, 6, 2, 8, 7);      // the fixture's shape: D = 8 < 32 lanes
#endif
}

TEST_CASE("CUDA decode attention over a KV cache matches the CPU attention's last row") {
    if (skip_without_gpu("decode attention")) return;
#ifdef DEEPSEEK_CUDA
    Rng r(8);
    int H = 6, KV = 2, D = 40;
    for (int pos : {0, 1, 31, 300}) {
        int T = pos + 1;
        std::vector<float> q = rand_bf16(r, (size_t)T * H * D, 1.0f), k = rand_bf16(r, (size_t)T * KV * D, 1.0f),
                           v = rand_bf16(r, (size_t)T * KV * D, 1.0f);
        std::vector<float> y((size_t)H * D), wy((size_t)T * H * D), att((size_t)H * T * T);
        cuda_op_decode_attention(y.data(), q.data() + (size_t)pos * H * D, k.data(), v.data(), pos, H, KV, D);
        attention_forward_ref(wy.data(), att.data(), q.data(), k.data(), v.data(), 1, T, H, KV, D);
        std::vector<float> last(wy.begin() + (size_t)pos * H * D, wy.end());
        double e = err_bf16(y, last);
        MESSAGE("decode attention pos " << pos << ": max rel err " << e);
        CHECK(e < 1e-2);
    }
#endif
}

TEST_CASE("CUDA SwiGLU forward and in-place backward match the CPU") {
    if (skip_without_gpu("swiglu")) return;
#ifdef DEEPSEEK_CUDA
    Rng r(9);
    size_t n = 1001;
    std::vector<float> g = rand_bf16(r, n, 3.0f), u = rand_bf16(r, n, 1.0f), da = rand_bf16(r, n, 1.0f);
    std::vector<float> act(n), dg(n), du(n), wact(n), wdg(n, 0.0f), wdu(n, 0.0f);
    cuda_op_swiglu(act.data(), dg.data(), du.data(), g.data(), u.data(), da.data(), n);
    swiglu_forward_ref(wact.data(), g.data(), u.data(), n);
    swiglu_backward_ref(wdg.data(), wdu.data(), da.data(), g.data(), u.data(), n);
    double ea = err_bf16(act, wact), eg = err_bf16(dg, wdg), eu = err_bf16(du, wdu);
    MESSAGE("swiglu: act " << ea << ", dgate " << eg << ", dup " << eu);
    CHECK(ea < 1e-2);
    CHECK(eg < 1e-2);
    CHECK(eu < 1e-2);
#endif
}

TEST_CASE("CUDA in-place cross-entropy matches the CPU loss and logits gradient; masked rows are exactly zero") {
    if (skip_without_gpu("crossentropy")) return;
#ifdef DEEPSEEK_CUDA
    Rng r(10);
    int N = 9, V = 1001;
    std::vector<float> z = rand_bf16(r, (size_t)N * V, 3.0f);
    std::vector<int> tg(N);
    for (int i = 0; i < N; i++) tg[i] = i % 4 == 1 ? -1 : (int)(r.next() % V);
    std::vector<float> dl;
    model_mean_loss_weights(tg.data(), N, &dl);
    dl[0] *= 3.0f;   // per-token weights, not only the mean
    std::vector<float> loss(N), dz((size_t)N * V), wloss(N), wdz((size_t)N * V);
    cuda_op_crossentropy(loss.data(), dz.data(), z.data(), tg.data(), dl.data(), N, V);
    crossentropy_forward_ref(wloss.data(), z.data(), tg.data(), N, V);
    crossentropy_backward_ref(wdz.data(), z.data(), tg.data(), dl.data(), N, V);
    double el = max_rel_err(loss.data(), wloss.data(), N, 1e-6), ed = err_bf16(dz, wdz);
    MESSAGE("crossentropy: losses " << el << ", dlogits " << ed);
    CHECK(el < 1e-4);   // fp32 from the same bf16 logits
    CHECK(ed < 1e-2);
    for (int i = 0; i < N; i++)
        if (tg[i] < 0) {
            CHECK(loss[i] == 0.0f);
            for (int j = 0; j < V; j++) REQUIRE(dz[(size_t)i * V + j] == 0.0f);
        }
#endif
}

TEST_CASE("CUDA AdamW updates fp32 master weights like the CPU's adamw_step and refreshes bf16 parameters by rounding") {
    if (skip_without_gpu("adamw")) return;
#ifdef DEEPSEEK_CUDA
    Rng r(11);
    size_t n = 1003;
    std::vector<float> w(n), m(n), v(n), g(n), p(n);
    for (size_t i = 0; i < n; i++) { w[i] = r.normal(); m[i] = 0.1f * r.normal(); v[i] = 0.01f * r.uniform(); g[i] = r.normal(); }
    std::vector<float> ww = w, wm = m, wv = v, gs(n);
    float lr = 1e-3f, wd = 0.1f, scale = 0.5f;
    int step = 3;
    cuda_op_adamw(w.data(), p.data(), m.data(), v.data(), g.data(), n, lr, 0.9f, 0.95f, 1e-8f, wd, scale, step);
    for (size_t i = 0; i < n; i++) gs[i] = g[i] * scale;
    adamw_step(ww.data(), gs.data(), wm.data(), wv.data(), n, lr, wd, step);   // the CPU twin (train.cu, torch-checked)
    double ew = max_rel_err(w.data(), ww.data(), n, 1e-3), em = max_rel_err(m.data(), wm.data(), n, 1e-6),
           ev = max_rel_err(v.data(), wv.data(), n, 1e-8);
    MESSAGE("adamw: master " << ew << ", m " << em << ", v " << ev);
    CHECK(ew < 1e-5);   // the same fp32 arithmetic; only fused multiply-adds may round differently
    CHECK(em < 1e-5);
    CHECK(ev < 1e-5);
    for (size_t i = 0; i < n; i++) REQUIRE(p[i] == bf16_to_f32(f32_to_bf16(w[i])));   // round to nearest even, both sides
#endif
}

TEST_CASE("CUDA global gradient norm matches the CPU's grad_global_norm") {
    if (skip_without_gpu("grad norm")) return;
#ifdef DEEPSEEK_CUDA
    Rng r(12);
    size_t n = 1234567;
    std::vector<float> g(n);
    for (auto& x : g) x = r.normal() * 1e-3f;
    float got = cuda_op_grad_norm(g.data(), n);
    double want = grad_global_norm(g.data(), n);   // the CPU twin (train.cu), summed in double
    MESSAGE("grad norm " << got << " vs " << want);
    CHECK(fabs(got - want) / want < 1e-5);   // fp32 partial sums of ~5 squares, then blocks of 512: ~1e-7
#endif
}

// ---------------------------------------------------------------------------- the whole model vs the CPU backend

TEST_CASE("CUDA model logits, loss and every gradient match the CPU backend on the GQA fixture (bf16 tolerance)") {
    if (skip_without_gpu("model vs CPU")) return;
#ifdef DEEPSEEK_CUDA
    Fixture f;
    load_gqa_fixture(&f);
    round_params_bf16(&f.m);   // both backends start from the same (bf16) weights
    const Config& c = f.m.cfg;
    size_t nl = (size_t)f.B * f.T * c.vocab_size;
    std::vector<float> w;
    model_mean_loss_weights(f.targets.data(), (int)f.targets.size(), &w);
    float cpu_loss = model_forward(&f.m, f.inputs.data(), f.targets.data(), f.B, f.T);
    model_zero_grad(&f.m);
    model_backward(&f.m, w.data());
    for (bool recompute : {false, true}) {
        CudaModel* g = cuda_model_create(f.m, f.B, f.T, recompute, false);
        float loss = cuda_model_forward(g, f.inputs.data(), f.targets.data(), f.B, f.T);
        std::vector<float> logits(nl), grads(f.m.num_parameters);
        cuda_model_get_logits(g, logits.data());
        cuda_model_zero_grad(g);
        cuda_model_backward(g, w.data());
        cuda_model_get_grads(g, grads.data());
        cuda_model_free(g);
        double e_logits = rel_l2(logits.data(), f.m.acts.logits, nl);
        MESSAGE("recompute " << recompute << ": loss " << loss << " vs CPU " << cpu_loss << "; logits rel L2 " << e_logits);
        // ~15 bf16 roundings on each path through the 2 layers add in quadrature to well under 1%
        CHECK(fabs(loss - cpu_loss) / cpu_loss < 1e-2);
        CHECK(e_logits < 2e-2);
        double worst = 0;
        std::string worst_name;
        for (const ParamView& pv : param_views(c)) {
            size_t n = 1;
            for (auto d : pv.shape) n *= (size_t)d;
            double e = rel_l2(grads.data() + pv.offset, f.m.grads_memory.data() + pv.offset, n);
            if (e > worst) { worst = e; worst_name = pv.name; }
        }
        MESSAGE("recompute " << recompute << ": gradients worst rel L2 " << worst << " (" << worst_name << ")");
        // gradients pass through twice the roundings, the bf16 in-place dlogits among them
        CHECK(worst < 5e-2);
    }
#endif
}

TEST_CASE("CUDA forward+backward is bit-for-bit deterministic; --recompute gives the same gradients") {
    if (skip_without_gpu("determinism")) return;
#ifdef DEEPSEEK_CUDA
    Fixture f;
    load_gqa_fixture(&f);
    std::vector<float> w;
    model_mean_loss_weights(f.targets.data(), (int)f.targets.size(), &w);
    std::vector<std::vector<float>> runs;
    for (bool recompute : {false, false, true}) {
        CudaModel* g = cuda_model_create(f.m, f.B, f.T, recompute, false);
        cuda_model_forward(g, f.inputs.data(), f.targets.data(), f.B, f.T);
        cuda_model_zero_grad(g);
        cuda_model_backward(g, w.data());
        runs.emplace_back(f.m.num_parameters);
        cuda_model_get_grads(g, runs.back().data());
        cuda_model_free(g);
    }
    CHECK(memcmp(runs[0].data(), runs[1].data(), runs[0].size() * 4) == 0);   // no atomics, fixed sum orders
    // recompute reruns the same kernels on the same inputs; only cuBLASLt may pick another algorithm for
    // differently aligned scratch, which reorders fp32 sums: far below one bf16 rounding
    double e = rel_l2(runs[2].data(), runs[0].data(), runs[0].size());
    MESSAGE("recompute vs stored activations: gradients rel L2 " << e);
    CHECK(e < 1e-3);
#endif
}

TEST_CASE("CUDA 20-step AdamW loss trajectory follows the CPU backend's") {
    if (skip_without_gpu("trajectory")) return;
#ifdef DEEPSEEK_CUDA
    Fixture f;
    load_gqa_fixture(&f);
    round_params_bf16(&f.m);   // the same starting weights on both backends
    std::vector<float> w;
    model_mean_loss_weights(f.targets.data(), (int)f.targets.size(), &w);
    float lr = 3e-3f;
    CudaModel* g = cuda_model_create(f.m, f.B, f.T, false, false);
    AdamW opt;   // the CPU backend's optimizer (train.cu): β 0.9/0.95, ε 1e-8, decay 0.1 on matrices
    std::vector<float> cpu_loss, gpu_loss;
    for (int step = 1; step <= 20; step++) {
        cpu_loss.push_back(model_forward(&f.m, f.inputs.data(), f.targets.data(), f.B, f.T));
        model_zero_grad(&f.m);
        model_backward(&f.m, w.data());
        adamw_update(&f.m, &opt, lr);
        gpu_loss.push_back(cuda_model_forward(g, f.inputs.data(), f.targets.data(), f.B, f.T));
        cuda_model_zero_grad(g);
        cuda_model_backward(g, w.data());
        cuda_model_adamw(g, lr, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, step);
    }
    cuda_model_free(g);
    double worst = 0;
    for (int i = 0; i < 20; i++) worst = std::max(worst, (double)fabs(gpu_loss[i] - cpu_loss[i]) / cpu_loss[i]);
    MESSAGE("losses CPU " << cpu_loss[0] << " → " << cpu_loss[19] << ", CUDA " << gpu_loss[0] << " → " << gpu_loss[19]
                          << "; worst step rel diff " << worst);
    CHECK(cpu_loss[19] < 0.9 * cpu_loss[0]);   // the trajectory goes somewhere: it memorises the batch
    CHECK(gpu_loss[19] < 0.9 * gpu_loss[0]);
    CHECK(worst < 3e-2);   // bf16 forward/backward on fp32 master weights tracks the fp32 run within a few %
#endif
}

// ZeRO-1 on the GPU (train.cu's data-parallel path): each rank's AdamW updates its shard of the master weights with
// its shard of the moments, the shards' Σg² add up to the whole norm, and an all-gather (simulated here by assembling
// the shards on the host and setting them on every model) reassembles the weights. AdamW is element-wise and the
// forward/backward bit-for-bit deterministic, so 3 shards must give the whole-buffer AdamW's weights exactly.
TEST_CASE("CUDA ZeRO-1: AdamW on 3 shards reassembles the whole-buffer AdamW's weights bit for bit; shard norms add up") {
    if (skip_without_gpu("ZeRO-1 AdamW")) return;
#ifdef DEEPSEEK_CUDA
    Fixture f;
    load_gqa_fixture(&f);
    round_params_bf16(&f.m);
    std::vector<float> w;
    model_mean_loss_weights(f.targets.data(), (int)f.targets.size(), &w);
    size_t P = f.m.num_parameters;
    Dist d;
    d.world = 3;
    dist_shards(&d, P);
    CudaModel* whole = cuda_model_create(f.m, f.B, f.T, false, false);
    std::vector<CudaModel*> part(3);
    for (int r = 0; r < 3; r++) {
        part[r] = cuda_model_create(f.m, f.B, f.T, false, false);
        cuda_model_shard_optimizer(part[r], d.shard[r], d.shard[r + 1]);
    }
    Model assembled = f.m, shard_w = f.m;
    double worst_ss = 0;
    for (int step = 1; step <= 3; step++) {
        for (CudaModel* g : {whole, part[0], part[1], part[2]}) {
            cuda_model_forward(g, f.inputs.data(), f.targets.data(), f.B, f.T);
            cuda_model_zero_grad(g);
            cuda_model_backward(g, w.data());
        }
        double ss = cuda_model_grad_sum_squares(whole, 0, P), sum = 0;
        for (int r = 0; r < 3; r++) sum += cuda_model_grad_sum_squares(part[r], d.shard[r], d.shard[r + 1]);
        worst_ss = std::max(worst_ss, fabs(sum - ss) / ss);
        cuda_model_adamw(whole, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, step);
        for (int r = 0; r < 3; r++) {
            cuda_model_adamw(part[r], 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, step);
            cuda_model_get_params(part[r], &shard_w);
            std::copy(shard_w.params_memory.begin() + d.shard[r], shard_w.params_memory.begin() + d.shard[r + 1],
                      assembled.params_memory.begin() + d.shard[r]);
        }
        for (int r = 0; r < 3; r++) cuda_model_set_params(part[r], assembled);   // the all-gather
    }
    Model want = f.m;
    cuda_model_get_params(whole, &want);
    size_t differ = 0;
    for (size_t i = 0; i < P; i++) differ += memcmp(&want.params_memory[i], &assembled.params_memory[i], 4) != 0;
    // the moments: each shard's equal the whole run's slice
    std::vector<float> mw(P), vw(P);
    cuda_model_get_adam_state(whole, mw.data(), vw.data());
    size_t moments_differ = 0;
    for (int r = 0; r < 3; r++) {
        size_t n = d.shard[r + 1] - d.shard[r];
        std::vector<float> ms(n), vs(n);
        cuda_model_get_adam_state(part[r], ms.data(), vs.data());
        moments_differ += memcmp(ms.data(), mw.data() + d.shard[r], n * 4) != 0;
        moments_differ += memcmp(vs.data(), vw.data() + d.shard[r], n * 4) != 0;
    }
    MESSAGE("3 steps, 3 shards: " << differ << " of " << P << " weights differ; shard Σg² vs whole: rel " << worst_ss);
    CHECK(differ == 0);
    CHECK(moments_differ == 0);
    CHECK(worst_ss < 1e-6);   // the same squares added in another order (fp32 partials, double total)
    cuda_model_free(whole);
    for (CudaModel* g : part) cuda_model_free(g);
#endif
}

TEST_CASE("CUDA batch-1 decoding with the KV cache reproduces the CPU forward's logits at every position") {
    if (skip_without_gpu("decode")) return;
#ifdef DEEPSEEK_CUDA
    Fixture f;
    load_gqa_fixture(&f);
    round_params_bf16(&f.m);
    int T = f.T, V = f.m.cfg.vocab_size;
    model_forward(&f.m, f.inputs.data(), nullptr, 1, T);   // first sequence
    CudaModel* g = cuda_model_create(f.m, 1, 1, false, false);
    CudaDecode* d = cuda_decode_create(g, T);
    double worst = 0;
    for (int t = 0; t < T; t++) {
        const float* z = cuda_decode_step(d, f.inputs[t], t, true);
        worst = std::max(worst, rel_l2(z, f.m.acts.logits + (size_t)t * V, V));
    }
    cuda_decode_free(d);
    cuda_model_free(g);
    MESSAGE("decode vs CPU forward: worst position's logits rel L2 " << worst);
    CHECK(worst < 2e-2);
#endif
}

// The inference-only model (generate and chat on the GPU) holds the bf16 weights read from the stored files, fp32, bf16
// or q8_0, and nothing else. Each is rounded to bf16 exactly as the training model rounds the same values (q8_0
// dequantised first), so their decoders give the same logits bit for bit; the training calls say they cannot run.
TEST_CASE("CUDA inference-only model from fp32, bf16 and q8_0 files decodes exactly like the training model; its training calls are errors") {
    if (skip_without_gpu("inference-only model")) return;
#ifdef DEEPSEEK_CUDA
    Config c;   // q8_0 needs rows of whole 32-blocks: every width a multiple of 32
    c.vocab_size = 384; c.hidden_size = 64; c.num_hidden_layers = 2; c.num_attention_heads = 4; c.num_key_value_heads = 2;
    c.head_dim = 16; c.intermediate_size = 160; c.max_position_embeddings = 64; c.bos_token_id = 0; c.eos_token_id = 1;
    Model src;
    model_build(&src, c);
    model_init_random(&src, 5, 0.05f);
    std::string d = tmp_dir("cuda_infer_model");
    for (StoreDtype dt : {StoreDtype::F32, StoreDtype::BF16, StoreDtype::Q8_0}) {
        std::string dir = d + "/m" + std::to_string((int)dt);
        model_save_dir(src, dir, dt);
        InferModel im;
        infer_load(&im, dir, 16);
        Model host;   // the same file through the training path: dequantised to fp32, then rounded to bf16 on upload
        model_load_dir(&host, dir);
        CudaModel* inf = cuda_model_create_inference(im, false);
        CudaModel* trn = cuda_model_create(host, 1, 1, false, false);
        CHECK(cuda_model_memory_bytes(inf) == host.num_parameters * 2);
        CudaDecode* a = cuda_decode_create(inf, 16);
        CudaDecode* b = cuda_decode_create(trn, 16);
        int V = src.cfg.vocab_size, toks[6] = {0, 17, 42, 99, 5, 230};
        size_t differ = 0;
        for (int t = 0; t < 6; t++) {
            const float* pa = cuda_decode_step(a, toks[t], t, true);
            std::vector<float> va(pa, pa + V);
            const float* pb = cuda_decode_step(b, toks[t], t, true);
            differ += memcmp(va.data(), pb, (size_t)V * 4) != 0;
        }
        MESSAGE(im.weights_dtype << " weights: " << differ << " of 6 positions' logits differ from the training model's decoder");
        CHECK(differ == 0);
        CHECK_THROWS(cuda_model_forward(inf, toks, nullptr, 1, 6));
        CHECK_THROWS(cuda_model_zero_grad(inf));
        cuda_decode_free(a);
        cuda_decode_free(b);
        cuda_model_free(inf);
        cuda_model_free(trn);
    }
#endif
}

// Prefill runs a prompt's tokens at once: matmuls over n rows, RoPE from the position offset, the flash kernel for a
// chunk that starts the cache and decode attention for one that continues it. Against token-by-token decoding (the
// test above holds it to the CPU forward): the same arithmetic but for cuBLASLt's algorithm for n rows and the
// attention kernel's summation order, so the logits agree to bf16 rounding (rel L2 1e-2), and so does every cached
// K and V (the next token's logits, which read the whole cache).
TEST_CASE("CUDA batched prefill (one chunk, and continued from a cached prefix) gives token-by-token decoding's logits") {
    if (skip_without_gpu("prefill")) return;
#ifdef DEEPSEEK_CUDA
    Fixture f;
    load_gqa_fixture(&f);
    int T = f.T, V = f.m.cfg.vocab_size;
    REQUIRE(T >= 8);
    CudaModel* g = cuda_model_create(f.m, 1, 1, false, false);
    CudaDecode* step = cuda_decode_create(g, T + 1);
    CudaDecode* pre = cuda_decode_create(g, T + 1);
    CudaDecode* two = cuda_decode_create(g, T + 1);
    std::vector<float> want;
    for (int t = 0; t < T; t++) {
        const float* z = cuda_decode_step(step, f.inputs[t], t, true);
        if (t == T - 1) want.assign(z, z + V);
    }
    const float* z1 = cuda_decode_prefill(pre, f.inputs.data(), T, 0, true);
    double e_one = rel_l2(z1, want.data(), V);
    int k = T / 3;   // a prefix, then the rest at position k (the decode-attention path)
    cuda_decode_prefill(two, f.inputs.data(), k, 0, false);
    const float* z2 = cuda_decode_prefill(two, f.inputs.data() + k, T - k, k, true);
    double e_two = rel_l2(z2, want.data(), V);
    MESSAGE("prefill of " << T << " tokens vs token by token: logits rel L2 " << e_one << "; as " << k << " + " << T - k
            << " tokens: " << e_two);
    CHECK(e_one < 1e-2);
    CHECK(e_two < 1e-2);
    // the caches: one more token after each reads every cached K and V
    const float* s_next = cuda_decode_step(step, 7, T, true);
    std::vector<float> s_copy(s_next, s_next + V);
    const float* p_next = cuda_decode_step(pre, 7, T, true);
    double e_cache = rel_l2(p_next, s_copy.data(), V);
    MESSAGE("the next token after the prefill vs after token-by-token decoding: logits rel L2 " << e_cache);
    CHECK(e_cache < 1e-2);
    CHECK_THROWS(cuda_decode_prefill(pre, f.inputs.data(), 2, T, true));   // past the cache
    cuda_decode_free(step);
    cuda_decode_free(pre);
    cuda_decode_free(two);
    cuda_model_free(g);
#endif
}

// ---------------------------------------------------------------------------- the subcommands on the CUDA backend
//
// The same runs with --device cuda and --device cpu. Tolerance for losses: the model test above bounds one
// forward's loss within 1% of the CPU's (bf16 parameters and activations, fp32 sums), and the trajectory test
// bounds 20 AdamW steps at lr 3e-3 on one batch within 3%. The CLI run uses the same lr but a new batch each step,
// clipping and the multi-step schedule: each step's loss is one forward (≤ 1%) on weights that drifted as in the
// trajectory test (≤ 3%); we allow 5% per step.

static std::string cli_tmp(const std::string& name) { return tmp_dir("cuda_" + name); }
// a learnable token stream (next = 5·prev + 3 + noise mod V) as `deepseek data prepare` lays it out, and a micro model
static std::string cli_data(const std::string& dir, int V) {
    make_dirs(dir);
    for (int split = 0; split < 2; split++) {
        size_t n = split ? 600 : 6000;
        shard_write(dir + (split ? "/val.bin" : "/train.bin"), markov_tokens(n, V, 1 + split), V);
    }
    write_file_atomic(dir + "/data.json", "{\"vocab_size\": " + std::to_string(V) + ", \"train\": {\"file\": \"train.bin\", "
                      "\"bytes_per_token\": 4.0}, \"val\": {\"file\": \"val.bin\", \"bytes_per_token\": 4.0}}");
    return dir;
}
static std::string cli_model(const std::string& dir, int V) {
    Config c;
    c.vocab_size = V; c.hidden_size = 64; c.num_hidden_layers = 2; c.num_attention_heads = 4; c.num_key_value_heads = 2;
    c.head_dim = 16; c.intermediate_size = 128; c.max_position_embeddings = 64; c.bos_token_id = 0; c.eos_token_id = 1;
    Model m;
    model_build(&m, c);
    model_init_random(&m, 11, 0.02f);
    model_save_dir(m, dir, StoreDtype::F32);
    return dir;
}
// step → value of `key` in a run's metrics.jsonl
static std::map<long, double> metric(const std::string& path, const char* key) {
    std::map<long, double> v;
    std::string text = read_file(path);
    for (size_t pos = 0, e; (e = text.find('\n', pos)) != std::string::npos; pos = e + 1) {
        auto j = nlohmann::json::parse(text.substr(pos, e - pos), nullptr, false);
        if (j.is_object() && j.contains(key) && j.contains("step")) v[j["step"].get<long>()] = j[key].get<double>();
    }
    return v;
}
static double worst_rel(const std::map<long, double>& got, const std::map<long, double>& want) {
    double w = 0;
    for (auto& kv : want) {
        auto it = got.find(kv.first);
        double d = it == got.end() ? INFINITY : fabs(it->second - kv.second) / fabs(kv.second);
        if (!(d <= w)) w = d;
    }
    return w;
}

TEST_CASE("CUDA train: --device cuda follows --device cpu's losses for 20 steps; its checkpoint resumes on the CPU") {
    if (skip_without_gpu("train --device cuda")) return;
    std::string d = cli_tmp("train");
    std::string data = cli_data(d + "/data", 64), model = cli_model(d + "/model", 64);
    std::string base = deepseek_bin() + " train --model " + model + " --data " + data + " --seq-len 16 --batch-tokens 128 "
                       "--micro-batch 4 --lr 3e-3 --steps 20 --eval-every 10 --save-every 10 --eval-windows 8 --threads 4 ";
    auto gpu = run_cmd(base + "--device cuda --out " + d + "/gpu");
    REQUIRE_MESSAGE(gpu.rc == 0, gpu.out);
    CHECK(gpu.out.find("train: device cuda") != std::string::npos);
    auto cpu = run_cmd(base + "--device cpu --out " + d + "/cpu");
    REQUIRE_MESSAGE(cpu.rc == 0, cpu.out);
    auto lg = metric(d + "/gpu/metrics.jsonl", "loss"), lc = metric(d + "/cpu/metrics.jsonl", "loss");
    REQUIRE(lc.size() == 20);
    double worst = worst_rel(lg, lc);
    MESSAGE("train losses CPU " << lc[1] << " → " << lc[20] << ", CUDA " << lg[1] << " → " << lg[20] << "; worst step rel diff " << worst);
    CHECK(worst < 5e-2);
    CHECK(lg[20] < lg[1] - 0.5);   // it learned (the CPU: 4.17 → 2.64)
    double vg = metric(d + "/gpu/metrics.jsonl", "val_loss")[20], vc = metric(d + "/cpu/metrics.jsonl", "val_loss")[20];
    MESSAGE("validation loss after 20 steps: CPU " << vc << ", CUDA " << vg);
    CHECK(fabs(vg - vc) / vc < 5e-2);
    // the CUDA run's step-10 checkpoint (fp32 master weights + AdamW moments) continues on the CPU
    auto res = run_cmd(deepseek_bin() + " train --resume " + d + "/gpu/step_000010 --out " + d + "/resumed --device cpu --threads 4");
    REQUIRE_MESSAGE(res.rc == 0, res.out);
    CHECK(res.out.find("resuming") != std::string::npos);
    auto lr_ = metric(d + "/resumed/metrics.jsonl", "loss");
    std::map<long, double> second_half;
    for (long s = 11; s <= 20; s++) second_half[s] = lg[s];
    double wr = worst_rel(lr_, second_half);
    MESSAGE("steps 11-20 resumed on the CPU vs continued on the GPU: worst rel diff " << wr);
    CHECK(wr < 5e-2);
    Model m;
    model_load_dir(&m, d + "/resumed/final");
    CHECK(m.cfg.vocab_size == 64);
}

// Greedy decoding of the GQA fixture model on both backends. bf16 weights move each logit by ~1% of the logits' scale
// (the decode test above), so where the CPU's top two logits are closer than that the GPU may pick the other one:
// the tokens must agree up to the first disagreement, and there the CPU's logits of the two picks must be within 2%
// of the scale (after which the continuations differ legitimately and are not compared).
TEST_CASE("CUDA generate: --device cuda --temperature 0 gives the CPU's first 8 greedy tokens (or a bf16-close tie)") {
    if (skip_without_gpu("generate --device cuda")) return;
    std::string model = "tests/fixtures/infer/gen_gqa", prompt = "0 17 42 99 5 230 7 64";
    std::string base = deepseek_bin() + " generate --model " + model + " --prompt-ids '" + prompt + "' -n 8 --temperature 0 --ids ";
    auto g = run_cmd("(" + base + "--device cuda 2>/dev/null)"), c = run_cmd("(" + base + "--device cpu 2>/dev/null)");
    REQUIRE_MESSAGE(g.rc == 0, g.out);
    REQUIRE_MESSAGE(c.rc == 0, c.out);
    MESSAGE("CPU: " << c.out << "CUDA: " << g.out);
    auto parse = [](const std::string& s) {
        std::vector<int> v;
        for (size_t i = 0; i < s.size();) {
            if (isdigit((unsigned char)s[i])) { size_t e; v.push_back(std::stoi(s.substr(i), &e)); i += e; } else i++;
        }
        return v;
    };
    std::vector<int> gt = parse(g.out), ct = parse(c.out), ids = parse(prompt);
    REQUIRE(ct.size() == 8);
    REQUIRE(gt.size() == 8);
    size_t i = 0;
    while (i < 8 && gt[i] == ct[i]) i++;
    if (i < 8) {
        Model m;
        model_load_dir(&m, model);
        InferModel im;
        infer_from_model(&im, m, 0);
        ids.insert(ids.end(), ct.begin(), ct.begin() + i);
        const float* z = infer_forward(&im, ids.data(), (int)ids.size());
        double scale = 0;
        for (int v = 0; v < m.cfg.vocab_size; v++) scale = std::max(scale, (double)fabs(z[v]));
        double gap = (z[ct[i]] - z[gt[i]]) / scale;
        MESSAGE("first difference at token " << i << ": CPU logit gap between the two picks " << gap << " of the scale");
        CHECK(gap < 2e-2);
    }
}

TEST_CASE("CUDA sft and dpo: --device cuda, the first step's loss matches the CPU's; dpo starts at ln 2; --recompute agrees") {
    if (skip_without_gpu("sft/dpo --device cuda")) return;
    std::string d = cli_tmp("align"), model = "tests/fixtures/infer/gen_gqa";
    std::string sft, dpo;
    const char* qa[4][3] = {{"What is 2 + 2?", "4", "5"}, {"Name a colour.", "Blue.", "Seven."},
                            {"Say hi.", "Hi!", "No."}, {"Count to three.", "1 2 3", "3 2 1"}};
    for (auto& q : qa) {
        sft += std::string("{\"messages\": [{\"role\": \"user\", \"content\": \"") + q[0] + "\"}, {\"role\": \"assistant\", \"content\": \"" + q[1] + "\"}]}\n";
        dpo += std::string("{\"prompt\": \"") + q[0] + "\", \"chosen\": \"" + q[1] + "\", \"rejected\": \"" + q[2] + "\"}\n";
    }
    write_file_atomic(d + "/sft.jsonl", sft);
    write_file_atomic(d + "/dpo.jsonl", dpo);
    for (const char* stage : {"sft", "dpo"}) {
        std::map<std::string, std::map<long, double>> loss;
        for (std::string dev : {"cuda", "cpu", "recompute"}) {
            std::string out = d + "/" + stage + "_" + dev;
            std::string flag = dev == "recompute" ? "cuda --recompute" : dev;
            auto r = run_cmd(deepseek_bin() + " " + stage + " --model " + model + " --data " + d + "/" + stage + ".jsonl --out " +
                             out + " --batch 2 --epochs 1 --lr 1e-3 --threads 4 --overwrite --device " + flag);
            REQUIRE_MESSAGE(r.rc == 0, r.out);
            CHECK(r.out.find(std::string(stage) + ": device " + (dev == "cpu" ? "cpu" : "cuda")) != std::string::npos);
            CHECK(file_exists(out + "/final/optimizer.safetensors"));
            loss[dev] = metric(out + "/metrics.jsonl", "loss");
        }
        REQUIRE(loss["cpu"].size() == 2);
        MESSAGE(stage << " step-1 loss CPU " << loss["cpu"][1] << ", CUDA " << loss["cuda"][1] << "; step 2 CUDA "
                      << loss["cuda"][2] << ", with --recompute " << loss["recompute"][2]);
        CHECK(fabs(loss["cuda"][1] - loss["cpu"][1]) / loss["cpu"][1] < 2e-2);   // one forward: bf16 within 1%
        // --recompute changes only what backward keeps: the first forward is the same, the first update nearly so
        // (cuBLASLt may pick another algorithm for the recomputed shapes: gradients within 1e-3, the model test)
        CHECK(loss["recompute"][1] == loss["cuda"][1]);
        CHECK(fabs(loss["recompute"][2] - loss["cuda"][2]) / loss["cuda"][2] < 1e-2);
        // before the first update policy and reference are the same weights on the same backend: z = 0 but for the
        // rounding of a differently padded batch (bf16 logits: ~1e-2 per sequence's log-prob, times β = 0.1)
        if (std::string(stage) == "dpo") CHECK(fabs(loss["cuda"][1] - log(2.0)) < 1e-2);
    }
}

// ---------------------------------------------------------------------------- without a GPU (run everywhere)

TEST_CASE("--device cuda without a usable GPU is one clear error line for every subcommand; auto says it picked the CPU") {
    std::string d = cli_tmp("nogpu");
    std::string data = cli_data(d + "/data", 64), model = cli_model(d + "/model", 64), gen = "tests/fixtures/infer/gen_gqa";
    std::string train = deepseek_bin() + " train --model " + model + " --data " + data + " --seq-len 16 --batch-tokens 64 "
                        "--micro-batch 4 --steps 1 --eval-every 0 --threads 1 --out " + d + "/run ";
    std::string generate = deepseek_bin() + " generate --model " + gen + " --prompt-ids '0 5 6' -n 2 --temperature 0 --ids ";
    // --device auto: the GPU when there is one, and the run says which
    const char* picked = cuda_device_count() > 0 ? "cuda" : "cpu";
    auto t = run_cmd(train + "--device auto");
    REQUIRE_MESSAGE(t.rc == 0, t.out);
    CHECK(t.out.find(std::string("train: device ") + picked) != std::string::npos);
    auto g = run_cmd("(" + generate + "--device auto 2>&1 >/dev/null)");   // stderr only
    REQUIRE_MESSAGE(g.rc == 0, g.out);
    CHECK(g.out.find(std::string("[device: ") + picked) != std::string::npos);
    // --recompute is the CUDA backend's: on the CPU a note, and the run goes on
    auto rc = run_cmd(train + "--device cpu --recompute --overwrite");
    REQUIRE_MESSAGE(rc.rc == 0, rc.out);
    CHECK(rc.out.find("note: --recompute applies to --device cuda") != std::string::npos);
    if (cuda_device_count() > 0) return;
    for (const std::string& cmd : {train, generate, deepseek_bin() + " chat --model " + gen + " --prompt hi ",
                                   deepseek_bin() + " sft --model " + gen + " --data x.jsonl --out " + d + "/sft ",
                                   deepseek_bin() + " dpo --model " + gen + " --data x.jsonl --out " + d + "/dpo ",
                                   deepseek_bin() + " eval --model " + gen + " --text x.txt "}) {
        auto r = run_cmd(cmd + "--device cuda");
        INFO(cmd << "\n" << r.out);
        CHECK(r.rc == 1);
        CHECK(r.out.rfind("error: --device cuda", 0) == 0);
        CHECK(count_lines(r.out) == 1);
    }
}


TEST_CASE("gpu_check.sh says 'no CUDA device' and exits 0 on a machine without a GPU") {
    // both GPU-machine scripts parse (bash -n), here and there; gpu_deps.sh without a command prints its usage
    CHECK(run_cmd("bash -n tests/gpu_check.sh && bash -n tests/gpu_deps.sh").rc == 0);
    auto u = run_cmd("bash tests/gpu_deps.sh");
    CHECK(u.rc == 2);
    CHECK(u.out.find("usage: bash tests/gpu_deps.sh fetch | unpack") != std::string::npos);
    if (cuda_device_count() > 0) {   // with a GPU it would run the whole check: that is make gpu-check's job
        g_tests_skipped++;
        MESSAGE("skipped: a CUDA device is present");
        return;
    }
    auto r = run_cmd("bash tests/gpu_check.sh");
    CHECK(r.rc == 0);
    CHECK(r.out.find("no CUDA device") != std::string::npos);
}

TEST_CASE("bench_gpu without a usable GPU fails with one clear error line; --help works") {
#ifndef DEEPSEEK_CUDA
    g_tests_skipped++;
    MESSAGE("skipped: a CPU-only build (tests/bench/bench_gpu links the CUDA objects; make test builds it in the CUDA variant)");
#else
    const std::string bench = "./build/bench/bench_gpu";   // built by `make test` in the CUDA variant
    REQUIRE_MESSAGE(file_exists(bench), bench << " is missing: run make build/bench/bench_gpu");
    auto h = run_cmd(bench + " --help");
    CHECK(h.rc == 0);
    CHECK(h.out.find("usage: bench_gpu") != std::string::npos);
    if (cuda_device_count() > 0) return;
    auto r = run_cmd(bench + " --shape 124m --steps 1");
    CHECK(r.rc == 1);
    CHECK(r.out.rfind("error: ", 0) == 0);
    CHECK(count_lines(r.out) == 1);
    auto bad = run_cmd(bench + " --shape nope");
    CHECK(bad.rc == 1);
    CHECK(bad.out.find("error: ") != std::string::npos);
#endif
}
