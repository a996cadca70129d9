// Generation tests: the KV cache against full recomputation, greedy generation and the chat template against
// transformers' fixtures (tests/reference/fixtures_infer.py), sampling, streaming text, and the CLI's errors.
#include <doctest/doctest.h>  // TEST_CASE, CHECK, REQUIRE
#include <cmath>              // fabs
#include <cstring>            // memcpy
#include <map>                // std::map
#include <random>             // std::mt19937 (random splits of test strings)
#ifdef _OPENMP
#include <omp.h>              // omp_set_num_threads: decode's row split at several thread counts
#endif
#include <nlohmann/json.hpp>  // nlohmann::json: the fixtures
#include "../deepseek.h"      // InferModel, generate_*, chat_*, sampler_*, text_stream_*
#include "test_util.h"        // run_cmd, deepseek_bin

using json = nlohmann::json;
static const std::string FX = "tests/fixtures/infer/";

// run_cmd captures stderr too: these keep only stdout (or only stderr)
static CmdResult run_stdout(const std::string& cmd) { return run_cmd("( (" + cmd + ") 2>/dev/null )"); }
static CmdResult run_stderr(const std::string& cmd) { return run_cmd("( (" + cmd + ") 2>&1 >/dev/null )"); }
static json load_json(const std::string& path) { return json::parse(read_file(path)); }
static std::string ids_str(const std::vector<int>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); i++) s += (i ? " " : "") + std::to_string(v[i]);
    return s;
}
// max |a − b| / max |b|: the error relative to the logits' scale
static double rel_to_scale(const float* a, const float* b, size_t n) {
    double d = 0, m = 1e-30;
    for (size_t i = 0; i < n; i++) { d = std::max(d, (double)fabs(a[i] - b[i])); m = std::max(m, (double)fabs(b[i])); }
    return d / m;
}
static bool valid_utf8(const std::string& s) {
    size_t i = 0;
    while (i < s.size()) {
        unsigned char c = s[i];
        int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!n || i + n > s.size()) return false;
        for (int k = 1; k < n; k++) if (((unsigned char)s[i + k] & 0xC0) != 0x80) return false;
        i += n;
    }
    return true;
}

// ---------------------------------------------------------------------------- the KV cache

// Prefill a prefix (in chunks of 32 here, so it crosses chunk boundaries), then decode one token at a time; every position's
// logits must equal the reference model's full recomputation (deepseek.cu, itself within 1e-4 of transformers).
// Both are fp32 with different summation orders (FMA, four-row blocks): ~1e-7 of the scale, well under 1e-5.
static void check_cache_vs_recompute(Model& m, int T, int prefill) {
    const Config& c = m.cfg;
    std::vector<int> toks(T);
    bool was = g_cpu_reference;
    g_cpu_reference = true;   // the oracle: deepseek.cu's reference layers
    uint64_t s = 12345;
    for (int t = 0; t < T; t++) { s = s * 6364136223846793005ull + 1442695040888963407ull; toks[t] = (int)((s >> 33) % c.vocab_size); }
    model_forward(&m, toks.data(), nullptr, 1, T);
    g_cpu_reference = was;
    InferModel im;
    infer_from_model(&im, m, T);
    size_t V = c.vocab_size;
    int chunk = g_prefill_chunk;
    g_prefill_chunk = 32;
    const float* pre = infer_forward(&im, toks.data(), prefill, true);
    g_prefill_chunk = chunk;
    double worst = rel_to_scale(pre, m.acts.logits, (size_t)prefill * V);
    for (int t = prefill; t < T; t++) {
        const float* z = infer_forward(&im, &toks[t], 1);
        worst = std::max(worst, rel_to_scale(z, m.acts.logits + (size_t)t * V, V));
    }
    MESSAGE("KV cache vs recomputation over " << T << " positions (prefill " << prefill << "): max rel err " << worst);
    CHECK(worst < 1e-5);
    CHECK(im.pos == T);
}

TEST_CASE("logits with the KV cache equal full recomputation at every position within 1e-5 (GQA fixture model)") {
    Model m;
    model_load_dir(&m, FX + "gen_gqa");
    check_cache_vs_recompute(m, 100, 70);
}

TEST_CASE("logits with the KV cache equal full recomputation at every position within 1e-5 (random MHA, 3 layers)") {
    Config c;
    c.vocab_size = 97; c.hidden_size = 40; c.num_hidden_layers = 3; c.num_attention_heads = 5; c.num_key_value_heads = 5;
    c.head_dim = 8; c.intermediate_size = 70; c.max_position_embeddings = 90; c.rope_theta = 500000.0;
    Model m;
    model_build(&m, c);
    model_init_random(&m, 7, 0.2f);
    check_cache_vs_recompute(m, 90, 1);
}

// ---------------------------------------------------------------------------- an fp16 KV cache (--kv-cache f16)

// The oracle for an fp16 cache: model_forward_ref's steps on deepseek.cu's reference layers, where attention reads
// the keys and values the cache under test holds (im's, widened) instead of the reference's own. Two checks in one:
// each cached value must be the reference's key or value rounded to fp16 to nearest (f32_to_f16's rule; the q8_0
// test checks its scales against the gguf package), and the logits are then a function of those values alone.
// The rounding is checked as *excess*: how far beyond half an fp16 step the cached value lies from the
// reference's, relative to the largest of its row (one position's keys or values). Exact rounding of the same number gives 0; the fp32 sums of the decoder and the
// reference differ in order (~1e-7 relative), which can move a value sitting on a rounding boundary by one step:
// excess ~1e-7. A wrong rounding rule (truncation) or a value in the wrong place gives 1e-4 and more.
static std::vector<float> reference_logits_kv16(const Model& m, const std::vector<int>& toks, const InferModel& im,
                                                double* excess) {
    const Config& c = m.cfg;
    int T = (int)toks.size(), C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads;
    int D = c.head_dim, F = c.intermediate_size, V = c.vocab_size, QD = H * D, KVD = KV * D;
    float eps = (float)c.rms_norm_eps;
    std::vector<float> x((size_t)T * C), ln((size_t)T * C), tmp((size_t)T * C), rstd(T), q((size_t)T * QD),
        y((size_t)T * QD), k((size_t)T * KVD), v((size_t)T * KVD), att((size_t)H * T * T), gate((size_t)T * F),
        up((size_t)T * F), act((size_t)T * F), logits((size_t)T * V);
    std::vector<int> pos(T);
    for (int t = 0; t < T; t++) {
        pos[t] = t;
        memcpy(&x[(size_t)t * C], m.params.embed_tokens + (size_t)toks[t] * C, C * sizeof(float));
    }
    *excess = 0;
    // the cached fp16 value replaces the reference's r, after measuring how far it lies beyond r's half step
    auto take_cached = [&](float* r, const uint16_t* cache, int layer) {   // cache: im's key or value cache
        for (int t = 0; t < T; t++) {
            float* row = r + (size_t)t * KVD;
            double scale = 1e-30;   // the sums' rounding is relative to the row's scale, not to one (small) element
            for (int j = 0; j < KVD; j++) scale = std::max(scale, (double)fabs(row[j]));
            for (int j = 0; j < KVD; j++) {
                float cv = f16_to_f32(cache[infer_kv_offset(im, layer, j / D, t) + j % D]);
                int e;
                frexpf(row[j], &e);   // |r| in [2^(e-1), 2^e): fp16 steps of 2^(e-11), 2^-24 among the subnormals
                double half_step = 0.5 * ldexp(1.0, std::max(e - 11, -24));
                *excess = std::max(*excess, std::max(0.0, fabs((double)cv - row[j]) - half_step) / scale);
                row[j] = cv;
            }
        }
    };
    for (int l = 0; l < c.num_hidden_layers; l++) {
        auto w = layer_weights(m.params, c, l);
        rmsnorm_forward_ref(ln.data(), rstd.data(), x.data(), w.input_layernorm, T, C, eps);
        matmul_forward_ref(q.data(), ln.data(), w.q_proj, T, C, QD);
        matmul_forward_ref(k.data(), ln.data(), w.k_proj, T, C, KVD);
        matmul_forward_ref(v.data(), ln.data(), w.v_proj, T, C, KVD);
        rope_forward_ref(q.data(), pos.data(), T, H, D, (float)c.rope_theta);
        rope_forward_ref(k.data(), pos.data(), T, KV, D, (float)c.rope_theta);
        take_cached(k.data(), (const uint16_t*)im.key_cache, l);
        take_cached(v.data(), (const uint16_t*)im.value_cache, l);
        attention_forward_ref(y.data(), att.data(), q.data(), k.data(), v.data(), 1, T, H, KV, D);
        matmul_forward_ref(tmp.data(), y.data(), w.o_proj, T, QD, C);
        for (size_t i = 0; i < x.size(); i++) x[i] += tmp[i];
        rmsnorm_forward_ref(ln.data(), rstd.data(), x.data(), w.post_attention_layernorm, T, C, eps);
        matmul_forward_ref(gate.data(), ln.data(), w.gate_proj, T, C, F);
        matmul_forward_ref(up.data(), ln.data(), w.up_proj, T, C, F);
        swiglu_forward_ref(act.data(), gate.data(), up.data(), (size_t)T * F);
        matmul_forward_ref(tmp.data(), act.data(), w.down_proj, T, F, C);
        for (size_t i = 0; i < x.size(); i++) x[i] += tmp[i];
    }
    rmsnorm_forward_ref(ln.data(), rstd.data(), x.data(), m.params.norm, T, C, eps);
    matmul_forward_ref(logits.data(), ln.data(), m.params.lm_head, T, C, V);
    return logits;
}

// Prefill (chunks of 32: the GEMM path over the widened cache) then decode one token at a time (the fp16 rows
// widened in registers), against the oracle above.
static void check_kv16(const Model& m, int T, int prefill) {
    std::vector<int> toks(T);
    for (int t = 0; t < T; t++) toks[t] = (t * 53 + 7) % m.cfg.vocab_size;
    InferModel im;
    infer_from_model(&im, m, T);
    infer_kv_cache_f16(&im, true);
    size_t V = m.cfg.vocab_size;
    std::vector<float> z((size_t)T * V);
    int chunk = g_prefill_chunk;
    g_prefill_chunk = 32;
    memcpy(z.data(), infer_forward(&im, toks.data(), prefill, true), (size_t)prefill * V * sizeof(float));
    g_prefill_chunk = chunk;
    for (int t = prefill; t < T; t++) memcpy(&z[(size_t)t * V], infer_forward(&im, &toks[t], 1), V * sizeof(float));
    double excess;
    std::vector<float> ref = reference_logits_kv16(m, toks, im, &excess);
    double worst = rel_to_scale(z.data(), ref.data(), (size_t)T * V);
    // and the rounding matters at all: the fp32 cache's logits are measurably elsewhere
    InferModel f32;
    infer_from_model(&f32, m, T);
    double moved = rel_to_scale(infer_forward(&f32, toks.data(), T, true), ref.data(), (size_t)T * V);
    MESSAGE("fp16 KV cache over " << T << " positions (prefill " << prefill << "): rounding excess " << excess
            << ", logits vs the reference on the cached values: max rel err " << worst << "; the fp32 cache's: " << moved);
    CHECK(excess < 1e-5);
    CHECK(worst < 1e-5);
    CHECK(moved > 10 * worst);
}

TEST_CASE("an fp16 KV cache equals the reference on fp16-rounded keys and values within 1e-5 (GQA fixture model)") {
    Model m;
    model_load_dir(&m, FX + "gen_gqa");
    check_kv16(m, 100, 70);
}

TEST_CASE("an fp16 KV cache equals the reference on fp16-rounded keys and values within 1e-5 (MHA, head_dim 12)") {
    Config c;   // head_dim 12: not a multiple of 8, the widening's scalar tails
    c.vocab_size = 97; c.hidden_size = 48; c.num_attention_heads = 4; c.num_key_value_heads = 4; c.head_dim = 12;
    c.num_hidden_layers = 2; c.intermediate_size = 70; c.max_position_embeddings = 90; c.rope_theta = 500000.0;
    Model m;
    model_build(&m, c);
    model_init_random(&m, 5, 0.3f);
    check_kv16(m, 90, 9);
}

TEST_CASE("bf16 weights: the cached path equals the reference on the same bf16-rounded weights within 1e-5") {
    InferModel bf;
    infer_load(&bf, FX + "gen_bf16", 0);
    REQUIRE(std::string(bf.weights_dtype) == "bf16");
    REQUIRE(bf.layers[0].q_proj.bf16 != nullptr);  // kept bf16, pointed into the map
    Model m;
    model_load_dir(&m, FX + "gen_bf16");            // the reference upcasts the same bf16 values to fp32
    int T = 80;
    std::vector<int> toks(T);
    for (int t = 0; t < T; t++) toks[t] = (t * 37 + 11) % m.cfg.vocab_size;
    model_forward(&m, toks.data(), nullptr, 1, T);
    const float* z = infer_forward(&bf, toks.data(), T, true);
    double e = rel_to_scale(z, m.acts.logits, (size_t)T * m.cfg.vocab_size);
    MESSAGE("bf16 prefill vs reference: max rel err " << e);
    CHECK(e < 1e-5);
}

// Decode with bf16 weights runs its own dot products (bf16 read as bf16, widened in registers): odd shapes test
// the vector tails (hidden 40 = 2·16 + 8, intermediate 70, vocab 97: rows that are not a multiple of four).
TEST_CASE("bf16 weights, decoding one token at a time, equal the reference on the same weights within 1e-5 (odd shapes)") {
    Config c;
    c.vocab_size = 97; c.hidden_size = 40; c.num_hidden_layers = 2; c.num_attention_heads = 5; c.num_key_value_heads = 1;
    c.head_dim = 8; c.intermediate_size = 70; c.max_position_embeddings = 64;
    Model r;
    model_build(&r, c);
    model_init_random(&r, 11, 0.2f);
    std::string d = tmp_dir("bf16_decode");
    model_save_dir(r, d, StoreDtype::BF16);
    InferModel bf;
    infer_load(&bf, d, 0);
    REQUIRE(std::string(bf.weights_dtype) == "bf16");
    Model m;
    model_load_dir(&m, d);   // the same bf16 values, upcast to fp32
    int T = 40;
    std::vector<int> toks(T);
    for (int t = 0; t < T; t++) toks[t] = (t * 29 + 5) % c.vocab_size;
    bool was = g_cpu_reference;
    g_cpu_reference = true;
    model_forward(&m, toks.data(), nullptr, 1, T);
    g_cpu_reference = was;
    double worst = 0;
    for (int t = 0; t < T; t++) {
        const float* z = infer_forward(&bf, &toks[t], 1);
        worst = std::max(worst, rel_to_scale(z, m.acts.logits + (size_t)t * c.vocab_size, c.vocab_size));
    }
    MESSAGE("bf16 decode vs reference over " << T << " positions: max rel err " << worst);
    CHECK(worst < 1e-5);
}

// ---------------------------------------------------------------------------- q8_0 weights (convert --dtype q8_0)

// tests/reference/fixtures_quant.py: weights chosen to reach every branch of the rule (zeros, exact ties, fp16
// subnormal and near-maximal scales, negative maxima) and the gguf package's Q8_0 blocks of them.
TEST_CASE("q8_0 blocks equal the gguf package's Q8_0 (llama.cpp's reference rule) byte for byte") {
    SafeTensors st;
    st.open_file("tests/fixtures/quant/q8_0.safetensors");
    const TensorInfo& x = st.get("x");
    const TensorInfo& b = st.get("blocks");
    size_t n = x.numel(), nb = n / Q8_BLOCK;
    REQUIRE(x.dtype == DType::F32);
    REQUIRE(n % Q8_BLOCK == 0);
    REQUIRE(b.shape == std::vector<int64_t>{(int64_t)nb, 2 + Q8_BLOCK});
    std::vector<float> xv(n);
    memcpy(xv.data(), x.data, n * sizeof(float));
    std::vector<int8_t> q(n);
    std::vector<uint16_t> d(nb);
    q8_0_quantize(xv.data(), n, q.data(), d.data());
    size_t bad_scale = 0, bad_q = 0;
    for (size_t k = 0; k < nb; k++) {
        const uint8_t* blk = b.data + (2 + Q8_BLOCK) * k;
        uint16_t want;
        memcpy(&want, blk, 2);
        bad_scale += want != d[k];
        bad_q += memcmp(blk + 2, q.data() + Q8_BLOCK * k, Q8_BLOCK) != 0;
    }
    MESSAGE(nb << " blocks: " << bad_scale << " scales and " << bad_q << " blocks of int8 differ from the gguf package's");
    CHECK(bad_scale == 0);
    CHECK(bad_q == 0);
}

// A q8_0 matrix [out, in] of random rows (row scales spread over four decades) and its dequantised fp32 copy
struct Q8Matrix {
    std::vector<int8_t> q;
    std::vector<uint16_t> d;
    std::vector<double> deq;
    InferWeight w;
    Q8Matrix(int out, int in, uint64_t seed) : q((size_t)out * in), d((size_t)out * in / Q8_BLOCK), deq((size_t)out * in) {
        std::mt19937 g((unsigned)seed);
        std::normal_distribution<float> nd(0.0f, 1.0f);
        std::vector<float> f((size_t)out * in);
        for (int o = 0; o < out; o++) {
            float sc = powf(10.0f, -3.0f + 4.0f * (float)o / (float)std::max(1, out - 1));
            for (int i = 0; i < in; i++) f[(size_t)o * in + i] = sc * nd(g);
        }
        q8_0_quantize(f.data(), f.size(), q.data(), d.data());
        for (size_t i = 0; i < f.size(); i++) deq[i] = (double)q[i] * f16_to_f32(d[i / Q8_BLOCK]);
        w.q8 = q.data();
        w.q8_scale = d.data();
    }
};

// Decode (N < 8) quantises each token's x to q8_0 and sums int8 products exactly per block, scaling by the two
// fp16 scales: the result must equal that sum taken in float64 up to fp32 rounding of the scaled block sums. Prefill
// (N ≥ 8) upcasts the rows for the GEMM: it must equal the dequantised matrix times x. Shapes with a row count that
// is not a multiple of four and block counts that are not a multiple of eight reach every tail.
TEST_CASE("q8_0 linear: decode equals the exact int8 sums of the quantised operands, prefill the dequantised product") {
    std::mt19937 g(5);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (auto shape : {std::pair<int, int>{13, 96}, {37, 800}, {8, 256}, {5, 32}}) {
        int out = shape.first, in = shape.second, nb = in / Q8_BLOCK;
        Q8Matrix W(out, in, 100 + out);
        for (int N : {1, 3, 9}) {
            std::vector<float> x((size_t)N * in), y((size_t)N * out, NAN);
            for (auto& v : x) v = nd(g) * (nd(g) > 1.5f ? 20.0f : 1.0f);   // a few outliers, as activations have
            infer_linear(y.data(), x.data(), N, in, W.w, out);
            double worst = 0;
            for (int n = 0; n < N; n++) {
                const float* xr = x.data() + (size_t)n * in;
                std::vector<int8_t> qx(in);
                std::vector<uint16_t> dx(nb);
                q8_0_quantize(xr, in, qx.data(), dx.data());
                for (int o = 0; o < out; o++) {
                    double exact = 0, mag = 0;
                    if (N < 8) {   // Σ_b dw·dx·Σ_i qw·qx
                        for (int b = 0; b < nb; b++) {
                            long long isum = 0;
                            for (int i = 0; i < Q8_BLOCK; i++)
                                isum += (long long)W.q[(size_t)o * in + b * Q8_BLOCK + i] * qx[b * Q8_BLOCK + i];
                            double t = (double)f16_to_f32(W.d[(size_t)o * nb + b]) * f16_to_f32(dx[b]) * (double)isum;
                            exact += t;
                            mag += fabs(t);
                        }
                    } else {       // the dequantised row · x
                        for (int i = 0; i < in; i++) {
                            double t = W.deq[(size_t)o * in + i] * xr[i];
                            exact += t;
                            mag += fabs(t);
                        }
                    }
                    worst = std::max(worst, fabs((double)y[(size_t)n * out + o] - exact) / std::max(mag, 1e-30));
                }
            }
            INFO("out " << out << ", in " << in << ", N " << N << ": max error relative to Σ|terms| " << worst);
            CHECK(worst < 1e-6);   // fp32 products and sums of ≤ 800 terms: a few units of 2^-24 times the sum of |terms|
        }
    }
}

// Decode's fp32 and bf16 products (N < 8) split each thread's rows into four lanes read side by side; whatever
// the row count and the thread count, every output row must be written once, with its own row's dot product. y
// starts as NaN, so a row left unwritten fails; a row written with another row's product fails the bound.
TEST_CASE("fp32 and bf16 linear: decode gives every output row its own dot product, for any row and thread count") {
    std::mt19937 g(11);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    int threads0 = num_threads();
    for (int threads : {1, 2, 3, 5}) {
#ifdef _OPENMP
        omp_set_num_threads(threads);
#endif
        for (auto shape : {std::pair<int, int>{1, 64}, {3, 40}, {5, 288}, {13, 96}, {37, 300}, {64, 17}}) {
            int out = shape.first, in = shape.second;
            std::vector<float> wf((size_t)out * in);
            for (int o = 0; o < out; o++)   // rows of very different sizes: a row's product mistaken for another's shows
                for (int i = 0; i < in; i++) wf[(size_t)o * in + i] = nd(g) * powf(2.0f, (float)(o % 7));
            std::vector<uint16_t> wb(wf.size());
            for (size_t i = 0; i < wf.size(); i++) wb[i] = f32_to_bf16(wf[i]);
            for (int N : {1, 3}) {
                std::vector<float> x((size_t)N * in);
                for (auto& v : x) v = nd(g);
                for (int bf : {0, 1}) {
                    InferWeight W;
                    if (bf) W.bf16 = wb.data(); else W.f32 = wf.data();
                    std::vector<float> y((size_t)N * out, NAN);
                    infer_linear(y.data(), x.data(), N, in, W, out);
                    double worst = 0;
                    for (int n = 0; n < N; n++)
                        for (int o = 0; o < out; o++) {
                            double exact = 0, mag = 0;
                            for (int i = 0; i < in; i++) {
                                double w = bf ? bf16_to_f32(wb[(size_t)o * in + i]) : wf[(size_t)o * in + i];
                                exact += w * x[(size_t)n * in + i];
                                mag += fabs(w * x[(size_t)n * in + i]);
                            }
                            double e = fabs((double)y[(size_t)n * out + o] - exact) / mag;
                            if (!(e <= worst)) worst = e;   // NaN (a row never written) propagates as failure
                        }
                    INFO(threads << " threads, out " << out << ", in " << in << ", N " << N << (bf ? ", bf16" : ", fp32")
                         << ": max error relative to sum of |terms| " << worst);
                    CHECK(worst < 1e-6);
                }
            }
        }
    }
#ifdef _OPENMP
    omp_set_num_threads(threads0);
#endif
}

// The acceptance bar for q8_0: a trained model's perplexity within 1% of the same model in bf16. The model is
// trained here (the Markov stream of test_util.h, ~3 choices per token: perplexity far below the vocabulary's 64)
// and scored one token at a time, so every matrix product takes decode's int8 path.
TEST_CASE("q8_0: a trained model's perplexity is within 1% of the same model's in bf16 (token by token, the decode path)") {
    std::string d = tmp_dir("q8_ppl");
    std::string data = synthetic_data(d + "/data", 64, 40000, 2000);
    Config c;
    c.vocab_size = 64; c.hidden_size = 64; c.num_hidden_layers = 2; c.num_attention_heads = 4; c.num_key_value_heads = 2;
    c.head_dim = 16; c.intermediate_size = 128; c.max_position_embeddings = 128; c.bos_token_id = 0; c.eos_token_id = 1;
    {
        Model m;
        model_build(&m, c);
        model_init_random(&m, 3, 0.02f);
        model_save_dir(m, d + "/init", StoreDtype::F32);
    }
    auto r = run_cmd(deepseek_bin() + " train --device cpu --model " + d + "/init --data " + data + " --out " + d +
                     "/run --seq-len 64 --batch-tokens 512 --micro-batch 8 --lr 1e-2 --steps " + (asan() ? "40" : "150") +
                     " --eval-every 0 --save-every 0 --threads 2");
    REQUIRE_MESSAGE(r.rc == 0, r.out);
    Model trained;
    model_load_dir(&trained, d + "/run/final");
    model_save_dir(trained, d + "/bf16", StoreDtype::BF16);
    model_save_dir(trained, d + "/q8", StoreDtype::Q8_0);
    std::vector<uint32_t> text = markov_tokens(120, 64, 77);   // a stream the model has not seen
    auto perplexity = [&](const std::string& dir, const char* dtype) {
        InferModel im;
        infer_load(&im, dir, 0);
        REQUIRE(std::string(im.weights_dtype) == dtype);
        double nll = 0;
        for (size_t t = 0; t + 1 < text.size(); t++) {
            int tok = (int)text[t];
            const float* z = infer_forward(&im, &tok, 1);
            double mx = z[0], sum = 0;
            for (int v = 1; v < c.vocab_size; v++) mx = std::max(mx, (double)z[v]);
            for (int v = 0; v < c.vocab_size; v++) sum += exp((double)z[v] - mx);
            nll += mx + log(sum) - z[text[t + 1]];
        }
        return exp(nll / (double)(text.size() - 1));
    };
    double p_bf16 = perplexity(d + "/bf16", "bf16"), p_q8 = perplexity(d + "/q8", "q8_0");
    MESSAGE("perplexity: bf16 " << p_bf16 << ", q8_0 " << p_q8 << " (ratio " << p_q8 / p_bf16 << ")");
    CHECK(p_bf16 < 8.0);                        // the model learned the stream (uniform: 64)
    CHECK(fabs(p_q8 / p_bf16 - 1.0) < 0.01);
}

TEST_CASE("the cache rewinds to a shared prefix and the context limit is enforced") {
    Model m;
    model_load_dir(&m, FX + "gen_gqa");
    InferModel im;
    infer_from_model(&im, m, 20);
    std::vector<int> a = {3, 4, 5, 6, 7, 8}, b = {3, 4, 5, 9, 10};
    std::vector<float> want(m.cfg.vocab_size);
    const float* z = infer_forward(&im, b.data(), (int)b.size());
    memcpy(want.data(), z, want.size() * 4);
    infer_rewind(&im, 0);
    infer_forward(&im, a.data(), (int)a.size());
    infer_rewind(&im, 3);
    z = infer_forward(&im, b.data() + 3, 2);
    // the same tokens, grouped into other pairs by the prefill kernel: equal up to summation order (~1e-7)
    CHECK(rel_to_scale(z, want.data(), want.size()) < 1e-6);
    std::vector<int> many(16, 5);
    CHECK_THROWS_AS(infer_forward(&im, many.data(), 16), DeepseekError);  // 5 + 16 > 20
}

// ---------------------------------------------------------------------------- greedy vs transformers

static void check_greedy(const std::string& name) {
    json g = load_json(FX + "greedy.json");
    const json& mj = g["models"][name];
    InferModel im;
    infer_load(&im, FX + name, 0);
    int eos = load_json(FX + name + "/generation_config.json")["eos_token_id"];
    int n_new = g["n_new"];
    for (const json& r : mj["runs"]) {
        std::vector<int> prompt = r["prompt_ids"], want = r["generated_ids"];
        std::vector<int> got = generate_greedy(&im, prompt, n_new, eos);
        MESSAGE(name << " '" << r["prompt"].get<std::string>() << "': " << got.size() << " tokens, transformers "
                     << want.size() << ", fp64 margin " << r["min_margin_fp64"].get<double>());
        CHECK(got == want);
        if (r.contains("transformers_bf16_ids"))
            MESSAGE("  transformers in bf16 (bf16 activations) agrees for the first " << r["transformers_bf16_agrees_for"]
                    << " tokens");
    }
}

TEST_CASE("greedy generation of 64 tokens equals transformers' generate token for token (GQA)") { check_greedy("gen_gqa"); }
TEST_CASE("greedy generation of 64 tokens equals transformers' generate token for token (MHA, rope_theta 5e5)") {
    check_greedy("gen_mha");
}
TEST_CASE("a bf16 sharded checkpoint gives transformers' greedy tokens (bf16 weights, fp32 activations)") {
    json g = load_json(FX + "greedy.json");
    REQUIRE(g["models"]["gen_bf16"]["computation"] == "bf16_weights_fp32_compute");
    REQUIRE(file_exists(FX + "gen_bf16/model.safetensors.index.json"));
    check_greedy("gen_bf16");
}

TEST_CASE("generate --prompt --ids on the CLI prints transformers' greedy ids, and the text its decode") {
    json g = load_json(FX + "greedy.json");
    for (const char* name : {"gen_gqa", "gen_bf16"}) {
        const json& r = g["models"][name]["runs"][0];
        std::string base = deepseek_bin() + " generate --model " + FX + name + " --prompt '" +
                           r["prompt"].get<std::string>() + "' -n 64 --temperature 0 --threads 2 --device cpu";
        auto ids = run_stdout(base + " --ids");
        REQUIRE(ids.rc == 0);
        CHECK(ids.out == ids_str(r["generated_ids"]) + "\n");
        if (r.contains("generated_text")) {
            auto text = run_stdout(base);
            REQUIRE(text.rc == 0);
            CHECK(text.out == r["generated_text"].get<std::string>() + "\n");
        }
        std::string base5 = base;
        base5.replace(base5.find("-n 64"), 5, "-n 5");   // (a flag given twice is an error: replaced, not repeated)
        auto err = run_stderr(base5 + " --ids");
        CHECK(err.out.find("tokens/s") != std::string::npos);              // timings on stderr
        CHECK(err.out.find("time to first token") != std::string::npos);
        CHECK(err.out.find("weights memory-mapped") != std::string::npos);
        // --huge-pages: the same tokens from weights read into (huge-page) memory
        auto huge = run_stdout(base + " --ids --huge-pages");
        REQUIRE(huge.rc == 0);
        CHECK(huge.out == ids.out);
        CHECK(run_stderr(base5 + " --ids --huge-pages").out.find("weights in memory") != std::string::npos);
        // --kv-cache: the header names the cache's format; f16 runs (its numbers: the fp16 KV cache cases above)
        CHECK(err.out.find("KV cache fp32") != std::string::npos);
        auto kv16 = run_stderr(base5 + " --ids --kv-cache f16");
        CHECK(kv16.rc == 0);
        CHECK(kv16.out.find("KV cache fp16") != std::string::npos);
    }
}

// ---------------------------------------------------------------------------- chat template

TEST_CASE("the chat template renders and tokenizes exactly like transformers' apply_chat_template") {
    json fx = load_json(FX + "chat_template.json");
    Tokenizer* tok = tokenizer_load(FX + "tokenizer.json");
    std::string bos = fx["bos_token"], eos = fx["eos_token"];
    int n = 0, with_system = 0, with_prompt = 0;
    for (const json& c : fx["cases"]) {
        std::vector<ChatMessage> msgs;
        for (const json& m : c["messages"]) {
            msgs.push_back({m["role"], m["content"]});
            with_system += m["role"] == "system";
        }
        bool gp = c["add_generation_prompt"];
        with_prompt += gp;
        CHECK(chat_render(msgs, gp, bos, eos) == c["text"].get<std::string>());
        std::vector<int> ids;
        std::vector<uint8_t> mask;
        chat_tokens(tok, msgs, gp, &ids, &mask);
        CHECK(ids == c["ids"].get<std::vector<int>>());
        CHECK(std::vector<int>(mask.begin(), mask.end()) == c["assistant_masks"].get<std::vector<int>>());
        n++;
    }
    CHECK(n >= 8);
    CHECK(with_system > 0);
    CHECK(with_prompt > 0);
    tokenizer_free(tok);
}

// ---------------------------------------------------------------------------- sampling

static std::vector<float> toy_logits() { return {1.0f, 3.0f, 2.0f, -1.0f, 2.5f, 0.0f}; }

TEST_CASE("temperature 0 is the argmax; top-k 1 is greedy at any temperature") {
    Sampler s;
    SamplerParams p;
    sampler_init(&s, p);
    auto z = toy_logits();
    CHECK(sampler_sample(&s, z.data(), 6, {}) == 1);
    p.temperature = 5.0f; p.top_k = 1; p.seed = 3;
    sampler_init(&s, p);
    for (int i = 0; i < 50; i++) { z = toy_logits(); CHECK(sampler_sample(&s, z.data(), 6, {}) == 1); }
}

TEST_CASE("sampling draws from softmax(z / T), restricted by top-k and top-p, reproducibly from the seed") {
    auto freq = [](SamplerParams p, int draws) {
        Sampler s;
        sampler_init(&s, p);
        std::vector<double> f(6, 0);
        for (int i = 0; i < draws; i++) { auto z = toy_logits(); f[sampler_sample(&s, z.data(), 6, {})] += 1.0 / draws; }
        return f;
    };
    auto softmax = [](std::vector<int> keep, float T) {
        auto z = toy_logits();
        std::vector<double> p(6, 0);
        double sum = 0;
        for (int i : keep) { p[i] = exp(z[i] / T); sum += p[i]; }
        for (double& x : p) x /= sum;
        return p;
    };
    const int N = 20000;  // binomial std ≤ 0.0036 per frequency: 0.015 is > 4 sigma
    SamplerParams p;
    p.temperature = 1.5f; p.seed = 11;
    auto f = freq(p, N), want = softmax({0, 1, 2, 3, 4, 5}, 1.5f);
    for (int i = 0; i < 6; i++) CHECK(fabs(f[i] - want[i]) < 0.015);
    p.top_k = 3;  // the three largest logits: ids 1, 4, 2
    f = freq(p, N); want = softmax({1, 4, 2}, 1.5f);
    for (int i = 0; i < 6; i++) CHECK(fabs(f[i] - want[i]) < 0.015);
    p.top_k = 0; p.temperature = 1.0f; p.top_p = 0.8f;
    // softmax(z) sorted: id1 0.459, id4 0.278, id2 0.169, … → the smallest prefix reaching 0.8 is {1, 4, 2}
    auto full = softmax({0, 1, 2, 3, 4, 5}, 1.0f);
    REQUIRE(full[1] + full[4] < 0.8);
    REQUIRE(full[1] + full[4] + full[2] >= 0.8);
    f = freq(p, N); want = softmax({1, 4, 2}, 1.0f);
    for (int i = 0; i < 6; i++) CHECK(fabs(f[i] - want[i]) < 0.015);
    // the same seed gives the same draws; another seed other draws
    p.seed = 5;
    auto seq = [](SamplerParams p) {
        Sampler s;
        sampler_init(&s, p);
        std::vector<int> out;
        for (int i = 0; i < 64; i++) { auto z = toy_logits(); out.push_back(sampler_sample(&s, z.data(), 6, {})); }
        return out;
    };
    CHECK(seq(p) == seq(p));
    SamplerParams q = p;
    q.seed = 6;
    CHECK(seq(p) != seq(q));
}

TEST_CASE("repetition penalty divides positive and multiplies negative logits of seen tokens, once each") {
    Sampler s;
    SamplerParams p;
    p.repetition_penalty = 2.0f;
    sampler_init(&s, p);
    auto z = toy_logits();
    int pick = sampler_sample(&s, z.data(), 6, {1, 1, 3, 4});
    auto z0 = toy_logits();
    CHECK(z[1] == z0[1] / 2.0f);   // seen twice, penalised once
    CHECK(z[3] == z0[3] * 2.0f);   // negative: pushed further down
    CHECK(z[4] == z0[4] / 2.0f);
    CHECK(z[2] == z0[2]);          // unseen
    CHECK(pick == 2);              // 3/2 = 1.5 and 2.5/2 = 1.25 now lose to 2.0
}

TEST_CASE("sampled generation with a seed is reproducible on the CLI") {
    std::string cmd = deepseek_bin() + " generate --model " + FX + "gen_gqa --prompt 'The quick' -n 20 --temperature 0.9"
                      " --top-p 0.9 --top-k 40 --repetition-penalty 1.1 --ids --device cpu";
    auto a = run_stdout(cmd + " --seed 1"), b = run_stdout(cmd + " --seed 1"), c = run_stdout(cmd + " --seed 2");
    REQUIRE(a.rc == 0);
    CHECK(a.out == b.out);
    CHECK(a.out != c.out);
}

// ---------------------------------------------------------------------------- streaming text

TEST_CASE("streamed text never splits a UTF-8 character and concatenates to the whole") {
    std::string text = "Grüße, 中文 🙂 café — déjà vu! 𝄞 end";
    std::mt19937 rng(1);
    for (int trial = 0; trial < 200; trial++) {
        TextStream ts;
        std::string out;
        size_t i = 0;
        while (i < text.size()) {
            size_t k = 1 + rng() % 4;
            std::string piece = text.substr(i, k);
            i += piece.size();
            std::string o = text_stream_push(&ts, piece);
            REQUIRE(valid_utf8(o));
            out += o;
        }
        out += text_stream_finish(&ts);
        REQUIRE(out == text);
    }
}

TEST_CASE("invalid bytes stream as U+FFFD per maximal subpart, as Unicode (and Python's decode) prescribe") {
    auto run = [](const std::vector<std::string>& pieces) {
        TextStream ts;
        std::string out;
        for (auto& p : pieces) out += text_stream_push(&ts, p);
        out += text_stream_finish(&ts);
        return out;
    };
    const std::string R = "\xEF\xBF\xBD";
    CHECK(run({"a\xE4", "\xB8", "b"}) == "a" + R + "b");      // truncated 3-byte sequence: one U+FFFD
    CHECK(run({"\xFF", "x"}) == R + "x");                     // never a UTF-8 byte
    CHECK(run({"\xED\xA0\x80"}) == R + R + R);                // a surrogate: each byte replaced
    CHECK(run({"ok\xF0\x9F"}) == "ok" + R);                    // cut off at the end
}

TEST_CASE("a stop string ends the output before it, even when it spans tokens, and nothing after it prints") {
    std::string text = "alpha beta\nUser: gamma";
    std::mt19937 rng(2);
    for (int trial = 0; trial < 100; trial++) {
        TextStream ts;
        ts.stop = "\nUser:";
        std::string out;
        size_t i = 0;
        while (i < text.size() && !ts.stopped) {
            std::string piece = text.substr(i, 1 + rng() % 3);
            i += piece.size();
            out += text_stream_push(&ts, piece);
        }
        out += text_stream_finish(&ts);
        REQUIRE(ts.stopped);
        REQUIRE(out == "alpha beta");
    }
    TextStream ts;
    ts.stop = "xyz";
    std::string out = text_stream_push(&ts, "abc xy");
    CHECK(out == "abc ");    // "xy" may begin the stop string: held
    out += text_stream_finish(&ts);
    CHECK(out == "abc xy");  // a held partial match is printed when the text ends
}

// ---------------------------------------------------------------------------- chat on the CLI

TEST_CASE("chat answers a --prompt and, from stdin, one message per line with /reset") {
    std::string base = deepseek_bin() + " chat --model " + FX + "gen_gqa --temperature 0 -n 8 --threads 2 --device cpu";
    auto one = run_stdout(base + " --prompt 'Who are you?'");
    REQUIRE(one.rc == 0);
    CHECK(count_lines(one.out) >= 1);
    // the first reply from stdin equals the --prompt reply (same history, greedy); after /reset again
    auto two = run_stdout("printf 'Who are you?\\n/reset\\nWho are you?\\n/exit\\n' | " + base);
    REQUIRE(two.rc == 0);
    CHECK(two.out == one.out + one.out);
}

TEST_CASE("chat drops the oldest turns with a notice when the history outgrows the context") {
    std::string cmd = "printf 'The quick brown fox jumps\\nover the lazy dog in the beginning\\nwas the word and light\\n"
                      "and the water and the spirit\\n' | " + deepseek_bin() + " chat --model " + FX +
                      "gen_gqa --temperature 0 -n 16 --context 48 --threads 2 --quiet --device cpu 2>&1";
    auto r = run_cmd(cmd);
    REQUIRE(r.rc == 0);
    CHECK(r.out.find("dropped the oldest turn") != std::string::npos);
}

// ---------------------------------------------------------------------------- errors

TEST_CASE("generate and chat report bad input in one clear line with exit 1") {
    std::string g = deepseek_bin() + " generate --model " + FX + "gen_gqa ";
    auto expect_error = [](const std::string& cmd, const std::string& words) {
        auto r = run_cmd(cmd);
        INFO(cmd << "\n" << r.out);
        CHECK(r.rc == 1);
        CHECK(r.out.rfind("error: ", 0) == 0);
        CHECK(count_lines(r.out) == 1);
        CHECK(r.out.find(words) != std::string::npos);
    };
    // a prompt longer than the context (gen_gqa: 160 positions)
    std::string longp;
    for (int i = 0; i < 120; i++) longp += "the quick brown ";
    expect_error(g + "--prompt '" + longp + "'", "context");
    expect_error(g + "--prompt 'the quick brown fox' --context 3", "context");
    // non-numeric and out-of-range flags
    expect_error(g + "--prompt hi -n ten", "-n");
    expect_error(g + "--prompt hi --temperature hot", "--temperature");
    expect_error(g + "--prompt hi --top-p 1.5", "--top-p");
    expect_error(g + "--prompt hi --seed x", "--seed");
    expect_error(g + "--prompt-ids '1 two'", "token ids");
    expect_error(g + "--prompt hi --bogus 1", "unknown flag");
    expect_error(g + "--prompt hi --kv-cache q4", "--kv-cache");
    expect_error(deepseek_bin() + " generate --prompt hi", "--model");
    expect_error(g, "--prompt");
    // an unsupported model type, a missing tokenizer.json, a missing directory
    std::string d = tmp_dir("infer_badtype");
    run_cmd("cp " + FX + "gen_gqa/* " + d + "/");
    json cfg = load_json(d + "/config.json");
    cfg["model_type"] = "mistral";
    cfg["architectures"] = {"MistralForCausalLM"};
    write_file_atomic(d + "/config.json", cfg.dump());
    expect_error(deepseek_bin() + " generate --model " + d + " --prompt hi", "unsupported");
    std::string nt = tmp_dir("infer_notok");
    run_cmd("cp " + FX + "gen_gqa/config.json " + FX + "gen_gqa/model.safetensors " + nt + "/");
    expect_error(deepseek_bin() + " generate --model " + nt + " --prompt hi", "tokenizer.json");
    expect_error(deepseek_bin() + " chat --model " + nt + " --prompt hi", "tokenizer.json");
    expect_error(deepseek_bin() + " chat --model " + FX + "gen_gqa --quiet --context 8 --prompt '" + longp.substr(0, 200) + "'",
                 "too long");
    expect_error(deepseek_bin() + " generate --model build/test_tmp/no_such_model --prompt hi", "does not exist");
    // a stdin line without end (17 MiB without a newline): one error, not unbounded memory
    expect_error("head -c 17825792 /dev/zero | tr '\\0' a | " + deepseek_bin() + " chat --model " + FX + "gen_gqa --quiet", "longer than 16 MiB");
    // the weights file truncated while chat holds it mapped (after loading, before the first reply): the next read
    // of a page past the new end is SIGBUS, which must end in one error line, not a crash. The script waits for
    // chat's "[device:" line (printed once the model is loaded), truncates, then sends a message.
    std::string tr = tmp_dir("infer_truncated");
    run_cmd("cp " + FX + "gen_gqa/* " + tr + "/");
    expect_error("T=" + tr + "; mkfifo $T/in && { " + deepseek_bin() + " chat --model $T --temperature 0 -n 4 --threads 2 "
                     "--device cpu < $T/in > $T/out 2> $T/err & } && exec 3> $T/in && "
                     "for i in $(seq 600); do grep -q '^\\[device:' $T/err && break; sleep 0.05; done && "
                     "truncate -s 4096 $T/model.safetensors && echo hello >&3 && exec 3>&- && wait $!; rc=$?; "
                     "grep -v '^\\[' $T/err; exit $rc",
                 "truncated or changed on disk");
    // without a tokenizer, raw ids still work
    auto raw = run_stdout(deepseek_bin() + " generate --model " + nt + " --prompt-ids '0 5 6' -n 3 --temperature 0 --ids");
    CHECK(raw.rc == 0);
    CHECK(count_lines(raw.out) == 1);
}

TEST_CASE("generation_config.json supplies the sampling defaults (chat: 0.7 / 0.95 when silent) and flags override") {
    std::string d = tmp_dir("infer_gencfg");
    run_cmd("cp " + FX + "gen_gqa/* " + d + "/");
    auto header = [&](const std::string& sub, const std::string& flags) {
        return run_stderr(deepseek_bin() + " " + sub + " --model " + d + " --prompt hi -n 1 --seed 1 " + flags).out;
    };
    // the fixture's generation_config.json says nothing about sampling: generate is greedy, chat the paper's defaults
    CHECK(header("generate", "").find("temperature 0, top_k 0, top_p 1,") != std::string::npos);
    CHECK(header("chat", "").find("temperature 0.7, top_k 0, top_p 0.95,") != std::string::npos);
    // deepseek-llm-7b-chat's generation_config.json
    write_file_atomic(d + "/generation_config.json",
                      "{\"bos_token_id\": 0, \"eos_token_id\": 1, \"do_sample\": true, \"temperature\": 0.3, \"top_p\": 0.9}");
    CHECK(header("generate", "").find("temperature 0.3, top_k 0, top_p 0.9,") != std::string::npos);
    CHECK(header("chat", "").find("temperature 0.3, top_k 0, top_p 0.9,") != std::string::npos);
    CHECK(header("generate", "--temperature 0 --top-p 1 --top-k 5").find("temperature 0, top_k 5, top_p 1,") != std::string::npos);
}

TEST_CASE("generate --help and chat --help describe the flags") {
    for (const char* sub : {"generate", "chat"}) {
        auto r = run_cmd(deepseek_bin() + " " + sub + " --help");
        CHECK(r.rc == 0);
        CHECK(r.out.find("--temperature") != std::string::npos);
        CHECK(r.out.find("--top-p") != std::string::npos);
        CHECK(r.out.find("--kv-cache f32|f16") != std::string::npos);
    }
}
