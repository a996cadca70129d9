// Model tests: configuration, the CPU reference against transformers' fixtures, finite differences, weights I/O,
// and the error paths of model loading and the CLI.
#include <doctest/doctest.h>  // TEST_CASE, CHECK, REQUIRE
#include <cmath>              // fabs
#include <cstdio>             // FILE
#include <cstring>            // memcpy
#include <functional>         // std::function
#include <nlohmann/json.hpp>  // nlohmann::json (editing config.json in error tests)
#include "../deepseek.h"      // Model, SafeTensors, config_*, model_*
#include "test_util.h"        // run_cmd, deepseek_bin, max_rel_err

// ---------------------------------------------------------------------------- configuration

TEST_CASE("info prints the released models' exact parameter counts and the paper's M") {
    auto r7 = run_cmd(deepseek_bin() + " info --preset deepseek-llm-7b");
    REQUIRE(r7.rc == 0);
    CHECK(r7.out.find("parameters: 6910365696\n") != std::string::npos);
    size_t at = r7.out.find("flops_per_token: ");
    REQUIRE(at != std::string::npos);
    double M = atof(r7.out.c_str() + at + 17);
    CHECK(fabs(M - 4.228e10) / 4.228e10 < 5e-4);
    auto r67 = run_cmd(deepseek_bin() + " info --preset deepseek-llm-67b");
    REQUIRE(r67.rc == 0);
    CHECK(r67.out.find("parameters: 67425001472\n") != std::string::npos);
}

TEST_CASE("small presets have the sizes the issue asks for, with grouped-query attention") {
    Config t, s;
    REQUIRE(config_preset("tiny", &t));
    REQUIRE(config_preset("small", &s));
    CHECK(config_num_parameters(t) >= 1000000);
    CHECK(config_num_parameters(t) <= 5000000);
    CHECK(config_num_parameters(s) >= 20000000);
    CHECK(config_num_parameters(s) <= 40000000);
    CHECK(t.num_key_value_heads < t.num_attention_heads);
    CHECK(s.num_key_value_heads < s.num_attention_heads);
}

TEST_CASE("config.json round-trips through write and read") {
    Config c;
    REQUIRE(config_preset("deepseek-llm-67b", &c));
    c.rope_theta = 500000.0f;
    std::string d = tmp_dir("cfg");
    config_write_json(c, d + "/config.json");
    Config r = config_read_json(d + "/config.json");
    CHECK(r.vocab_size == c.vocab_size);
    CHECK(r.hidden_size == c.hidden_size);
    CHECK(r.num_hidden_layers == c.num_hidden_layers);
    CHECK(r.num_attention_heads == c.num_attention_heads);
    CHECK(r.num_key_value_heads == c.num_key_value_heads);
    CHECK(r.head_dim == c.head_dim);
    CHECK(r.intermediate_size == c.intermediate_size);
    CHECK(r.max_position_embeddings == c.max_position_embeddings);
    CHECK(r.rope_theta == c.rope_theta);
    CHECK(r.rms_norm_eps == c.rms_norm_eps);
}

// ---------------------------------------------------------------------------- against transformers

// The absolute floor of the relative error: 1% of the tensor's largest magnitude. Reference values are fp64;
// ours are fp32 sums of ~100 products, whose rounding is ~1e-7 of the tensor's scale, so an element that nearly
// cancels to 0 cannot be expected to hold 1e-4 of its own size — but it must hold 1e-6 of the tensor's scale.
static double scale_floor(const std::vector<float>& ref) {
    double mx = 0;
    for (float x : ref) mx = std::max(mx, (double)fabs(x));
    return std::max(1e-2 * mx, 1e-30);
}
static double max_abs_err(const float* a, const float* b, size_t n) {
    double w = 0;
    for (size_t i = 0; i < n; i++) w = std::max(w, (double)fabs(a[i] - b[i]));
    return w;
}

struct FixtureRun {
    Model m;
    std::vector<int> inputs, targets;
    int B = 0, T = 0;
};
static void load_fixture(FixtureRun* f, const std::string& name, SafeTensors* ref) {
    model_load_dir(&f->m, "tests/fixtures/" + name);
    ref->open_file("tests/fixtures/" + name + "_ref.safetensors");
    const TensorInfo& ids = ref->get("input_ids");
    REQUIRE(ids.dtype == DType::I32);
    REQUIRE(ids.shape.size() == 2);
    f->B = (int)ids.shape[0];
    f->T = (int)ids.shape[1];
    f->inputs.resize(ids.numel());
    memcpy(f->inputs.data(), ids.data, ids.nbytes);
    if (ref->has("targets")) {
        const TensorInfo& tg = ref->get("targets");
        f->targets.resize(tg.numel());
        memcpy(f->targets.data(), tg.data, tg.nbytes);
    }
}

static void check_against_transformers(const std::string& name) {
    FixtureRun f;
    SafeTensors ref;
    load_fixture(&f, name, &ref);
    const Config& c = f.m.cfg;
    int masked = 0;
    for (int t : f.targets) masked += t < 0;
    REQUIRE(masked > 0);  // the fixture must exercise the loss mask
    float loss = model_forward(&f.m, f.inputs.data(), f.targets.data(), f.B, f.T);
    // logits
    size_t nl = (size_t)f.B * f.T * c.vocab_size;
    std::vector<float> want(nl);
    ref.read_f32("logits", {f.B, f.T, c.vocab_size}, want.data());
    double e_logits = max_rel_err(f.m.acts.logits, want.data(), nl, scale_floor(want));
    MESSAGE(name << ": logits max rel err " << e_logits << " (max abs err " << max_abs_err(f.m.acts.logits, want.data(), nl) << ")");
    CHECK(e_logits < 1e-4);
    float want_loss;
    ref.read_f32("loss", {1}, &want_loss);
    MESSAGE(name << ": loss " << loss << " vs transformers " << want_loss);
    CHECK(fabs(loss - want_loss) / fabs(want_loss) < 1e-5);
    // every parameter gradient
    model_zero_grad(&f.m);
    std::vector<float> w;
    model_mean_loss_weights(f.targets.data(), (int)f.targets.size(), &w);
    model_backward(&f.m, w.data());
    double worst = 0;
    std::string worst_name;
    int checked = 0;
    for (const ParamView& pv : param_views(c)) {
        size_t n = 1;
        for (auto d : pv.shape) n *= (size_t)d;
        std::vector<float> g(n);
        ref.read_f32("grad." + pv.name, pv.shape, g.data());
        double e = max_rel_err(f.m.grads_memory.data() + pv.offset, g.data(), n, scale_floor(g));
        if (e > worst) { worst = e; worst_name = pv.name; }
        checked++;
    }
    MESSAGE(name << ": " << checked << " gradients, max rel err " << worst << " (" << worst_name << ")");
    CHECK(checked == (int)param_views(c).size());
    CHECK(worst < 1e-4);
}

TEST_CASE("logits, loss and every gradient match transformers (GQA model, masked tokens)") {
    check_against_transformers("model_gqa");
}
TEST_CASE("logits, loss and every gradient match transformers (MHA model, rope_theta 500000)") {
    check_against_transformers("model_mha");
}

TEST_CASE("masked tokens contribute exactly zero gradient") {
    FixtureRun f;
    SafeTensors ref;
    load_fixture(&f, "model_gqa", &ref);
    // gradient with the fixture's mask vs with one more token masked and its weight set to zero by hand:
    // masking a token must equal dropping its term
    std::vector<float> w(f.targets.size(), 0.0f);
    model_forward(&f.m, f.inputs.data(), f.targets.data(), f.B, f.T);
    model_zero_grad(&f.m);
    model_backward(&f.m, w.data());  // all weights zero → all gradients exactly zero
    for (float g : f.m.grads_memory) REQUIRE(g == 0.0f);
    // a masked target gives exactly zero gradient even when its weight is non-zero
    std::vector<int> all_masked(f.targets.size(), -1);
    std::vector<float> ones(f.targets.size(), 1.0f);
    model_forward(&f.m, f.inputs.data(), all_masked.data(), f.B, f.T);
    model_zero_grad(&f.m);
    model_backward(&f.m, ones.data());
    for (float g : f.m.grads_memory) REQUIRE(g == 0.0f);
}

TEST_CASE("a model written here loads in transformers with identical logits (fixture script's verdict)") {
    SafeTensors ref;
    ref.open_file("tests/fixtures/saved_by_deepseek_ref.safetensors");
    REQUIRE(ref.metadata.count("strict_load"));
    CHECK(ref.metadata["strict_load"] == "ok");
    REQUIRE(ref.metadata.count("bf16_rounding"));
    CHECK(ref.metadata["bf16_rounding"] == "exact");
    // and transformers' logits for that model equal ours
    Model m;
    model_load_dir(&m, "tests/fixtures/saved_by_deepseek");
    const TensorInfo& ids = ref.get("input_ids");
    std::vector<int> in(ids.numel());
    memcpy(in.data(), ids.data, ids.nbytes);
    int B = (int)ids.shape[0], T = (int)ids.shape[1];
    model_forward(&m, in.data(), nullptr, B, T);
    std::vector<float> want((size_t)B * T * m.cfg.vocab_size);
    ref.read_f32("logits", {B, T, m.cfg.vocab_size}, want.data());
    double e = max_rel_err(m.acts.logits, want.data(), want.size(), scale_floor(want));
    MESSAGE("saved_by_deepseek: logits max rel err vs transformers " << e);
    CHECK(e < 1e-4);
}

// ---------------------------------------------------------------------------- finite differences

TEST_CASE("finite differences agree with the analytic gradient for sampled entries of every tensor") {
    Config c;
    c.vocab_size = 23; c.hidden_size = 16; c.num_hidden_layers = 2; c.num_attention_heads = 4; c.num_key_value_heads = 2;
    c.head_dim = 4; c.intermediate_size = 20; c.max_position_embeddings = 8;
    Model m;
    model_build(&m, c);
    model_init_random(&m, 7, 0.3f);
    for (const ParamView& pv : param_views(c))  // perturb the norm weights away from 1 so their gradients are generic
        if (!pv.is_matrix)
            for (int64_t i = 0; i < pv.shape[0]; i++) m.params_memory[pv.offset + i] += 0.05f * (float)((i * 7919 + pv.offset) % 11) - 0.25f;
    int B = 2, T = 6;
    std::vector<int> in(B * T), tg(B * T);
    for (int i = 0; i < B * T; i++) { in[i] = (i * 5 + 3) % c.vocab_size; tg[i] = (i * 11 + 1) % c.vocab_size; }
    tg[2] = -1;
    tg[7] = -1;
    std::vector<float> w;
    model_mean_loss_weights(tg.data(), B * T, &w);
    model_forward(&m, in.data(), tg.data(), B, T);
    model_zero_grad(&m);
    model_backward(&m, w.data());
    std::vector<float> grad = m.grads_memory;
    double worst = 0;
    int sampled = 0;
    for (const ParamView& pv : param_views(c)) {
        size_t n = 1;
        for (auto d : pv.shape) n *= (size_t)d;
        for (int s = 0; s < 4; s++) {
            size_t idx = pv.offset + (size_t)((s * 2654435761u + pv.offset) % n);
            float orig = m.params_memory[idx], h = 1e-2f;
            m.params_memory[idx] = orig + h;
            double lp = model_forward(&m, in.data(), tg.data(), B, T);
            m.params_memory[idx] = orig - h;
            double lm = model_forward(&m, in.data(), tg.data(), B, T);
            m.params_memory[idx] = orig;
            double fd = (lp - lm) / (2 * h);
            double err = fabs(fd - grad[idx]) / std::max(fabs(fd), 1e-2);
            if (err > worst) worst = err;
            if (err > 2e-2) MESSAGE(pv.name << "[" << idx - pv.offset << "]: fd " << fd << " analytic " << grad[idx]);
            sampled++;
        }
    }
    MESSAGE("finite differences: " << sampled << " entries, max rel err " << worst);
    CHECK(worst < 2e-2);  // central differences in fp32 with h = 1e-2: O(h²) truncation + fp32 rounding of the loss
}

// ---------------------------------------------------------------------------- weights I/O

TEST_CASE("a model saved here loads back with identical parameters (fp32) and rounded ones (bf16)") {
    Config c;
    REQUIRE(config_preset("tiny", &c));
    c.num_hidden_layers = 1;
    Model m;
    model_build(&m, c);
    model_init_random(&m, 1, 0.02f);
    std::string d = tmp_dir("roundtrip");
    model_save_dir(m, d + "/f32", StoreDtype::F32);
    model_save_dir(m, d + "/bf16", StoreDtype::BF16);
    Model a, b;
    model_load_dir(&a, d + "/f32");
    model_load_dir(&b, d + "/bf16");
    CHECK(a.params_memory == m.params_memory);
    size_t bad = 0;
    for (size_t i = 0; i < m.num_parameters; i++) bad += b.params_memory[i] != bf16_to_f32(f32_to_bf16(m.params_memory[i]));
    CHECK(bad == 0);
    CHECK(!file_exists(d + "/f32/model.safetensors.tmp"));
}

TEST_CASE("bf16 and f16 conversions are exact where they should be") {
    CHECK(bf16_to_f32(f32_to_bf16(1.0f)) == 1.0f);
    CHECK(f32_to_bf16(1.0f + 1.0f / 256) == f32_to_bf16(1.0f));          // tie rounds to even (down)
    CHECK(f32_to_bf16(1.0f + 3.0f / 256) == f32_to_bf16(1.0f + 4.0f / 256));  // tie rounds to even (up)
    CHECK(f16_to_f32(0x3c00) == 1.0f);
    CHECK(f16_to_f32(0xc000) == -2.0f);
    CHECK(f16_to_f32(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
    CHECK(std::isinf(f16_to_f32(0x7c00)));
}

TEST_CASE("a sharded checkpoint with an index loads like a single file") {
    Config c;
    REQUIRE(config_preset("tiny", &c));
    c.num_hidden_layers = 2;
    Model m;
    model_build(&m, c);
    model_init_random(&m, 3, 0.02f);
    std::string d = tmp_dir("sharded");
    config_write_json(c, d + "/config.json");
    // two shards: the embedding and layer 0 in one, the rest in the other
    std::vector<TensorOut> s1, s2;
    nlohmann::json idx;
    for (const ParamView& pv : param_views(c)) {
        bool first = pv.name.find("embed") != std::string::npos || pv.name.find("layers.0.") != std::string::npos;
        (first ? s1 : s2).push_back({pv.name, DType::F32, pv.shape, m.params_memory.data() + pv.offset});
        idx["weight_map"][pv.name] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
    }
    safetensors_write(d + "/model-00001-of-00002.safetensors", s1, true);
    safetensors_write(d + "/model-00002-of-00002.safetensors", s2, true);
    write_file_atomic(d + "/model.safetensors.index.json", idx.dump());
    Model r;
    model_load_dir(&r, d);
    size_t bad = 0;
    for (size_t i = 0; i < m.num_parameters; i++) bad += r.params_memory[i] != bf16_to_f32(f32_to_bf16(m.params_memory[i]));
    CHECK(bad == 0);
}

// ---------------------------------------------------------------------------- bad input

// Copies the GQA fixture model into a scratch directory, for corrupting.
static std::string scratch_model(const std::string& name) {
    std::string d = tmp_dir(name);
    run_cmd("cp tests/fixtures/model_gqa/config.json tests/fixtures/model_gqa/model.safetensors " + d + "/");
    return d;
}
static std::string load_error(const std::string& dir) {
    try {
        Model m;
        model_load_dir(&m, dir);
    } catch (const DeepseekError& e) {
        return e.msg;
    }
    return "";
}
static void patch_config(const std::string& dir, const std::string& key, const nlohmann::json& value, bool erase = false) {
    nlohmann::json j = nlohmann::json::parse(read_file(dir + "/config.json"));
    if (erase) j.erase(key); else j[key] = value;
    write_file_atomic(dir + "/config.json", j.dump());
}
// Rewrites model.safetensors with a new header (same data bytes).
static void patch_header(const std::string& dir, const std::function<void(nlohmann::json&)>& edit) {
    std::string s = read_file(dir + "/model.safetensors");
    uint64_t hl = 0;
    memcpy(&hl, s.data(), 8);
    nlohmann::json h = nlohmann::json::parse(s.substr(8, hl));
    edit(h);
    std::string nh = h.dump();
    uint64_t nl = nh.size();
    std::string out(8, '\0');
    memcpy(&out[0], &nl, 8);
    write_file_atomic(dir + "/model.safetensors", out + nh + s.substr(8 + hl));
}

TEST_CASE("bad model directories give one clear error, never a crash") {
    SUBCASE("missing safetensors") {
        std::string d = scratch_model("bad_missing");
        remove((d + "/model.safetensors").c_str());
        CHECK(load_error(d).find("no model.safetensors") != std::string::npos);
    }
    SUBCASE("truncated safetensors") {
        std::string d = scratch_model("bad_trunc");
        std::string s = read_file(d + "/model.safetensors");
        write_file_atomic(d + "/model.safetensors", s.substr(0, s.size() / 2));
        CHECK(load_error(d).find("truncated") != std::string::npos);
        write_file_atomic(d + "/model.safetensors", s.substr(0, 5));
        CHECK(load_error(d).find("truncated") != std::string::npos);
    }
    SUBCASE("a header that lies about offsets") {
        std::string d = scratch_model("bad_offsets");
        patch_header(d, [](nlohmann::json& h) { h["lm_head.weight"]["data_offsets"][1] = 1ull << 40; });
        CHECK(load_error(d).find("data_offsets") != std::string::npos);
        d = scratch_model("bad_offsets2");
        patch_header(d, [](nlohmann::json& h) {
            auto& o = h["model.norm.weight"]["data_offsets"];
            o[1] = o[1].get<uint64_t>() - 4;  // size no longer matches the shape
        });
        CHECK(load_error(d).find("needs") != std::string::npos);
    }
    SUBCASE("malformed header JSON") {
        std::string d = scratch_model("bad_json");
        std::string s = read_file(d + "/model.safetensors");
        s[12] = '#';
        write_file_atomic(d + "/model.safetensors", s);
        CHECK(load_error(d).find("malformed") != std::string::npos);
    }
    SUBCASE("a tensor with the wrong shape") {
        std::string d = scratch_model("bad_shape");
        patch_header(d, [](nlohmann::json& h) {
            auto& t = h["model.layers.0.mlp.up_proj.weight"];
            int64_t a = t["shape"][0], b = t["shape"][1];
            t["shape"] = {b, a};
        });
        CHECK(load_error(d).find("has shape") != std::string::npos);
    }
    SUBCASE("a tensor with the wrong dtype") {
        std::string d = scratch_model("bad_dtype");
        patch_header(d, [](nlohmann::json& h) { h["model.norm.weight"]["dtype"] = "I32"; });
        CHECK(load_error(d).find("dtype I32") != std::string::npos);
        patch_header(d, [](nlohmann::json& h) { h["model.norm.weight"]["dtype"] = "Q4_K"; });
        CHECK(load_error(d).find("unsupported dtype") != std::string::npos);
    }
    SUBCASE("a missing tensor") {
        // a valid file without one tensor (erasing its header entry alone would leave a gap in the data, an
        // error of its own)
        std::string d = scratch_model("bad_missing_tensor");
        {
            SafeTensors st;
            st.open_file("tests/fixtures/model_gqa/model.safetensors");
            std::vector<TensorOut> keep;
            for (const auto& t : st.tensors)
                if (t.first != "model.layers.1.self_attn.k_proj.weight") keep.push_back({t.first, t.second.dtype, t.second.shape, t.second.data});
            safetensors_write(d + "/model.safetensors", keep);
        }
        CHECK(load_error(d).find("missing tensor") != std::string::npos);
    }
    SUBCASE("config.json with a missing or absurd field") {
        std::string d = scratch_model("bad_cfg");
        patch_config(d, "hidden_size", 0, true);
        CHECK(load_error(d).find("missing field 'hidden_size'") != std::string::npos);
        d = scratch_model("bad_cfg2");
        patch_config(d, "num_hidden_layers", -3);
        CHECK(load_error(d).find("num_hidden_layers") != std::string::npos);
        d = scratch_model("bad_cfg3");
        patch_config(d, "num_key_value_heads", 4);  // does not divide 6
        CHECK(load_error(d).find("num_key_value_heads") != std::string::npos);
        d = scratch_model("bad_cfg4");
        patch_config(d, "vocab_size", "many");
        CHECK(load_error(d).find("must be an integer") != std::string::npos);
        d = scratch_model("bad_cfg5");
        patch_config(d, "model_type", "gpt2");
        CHECK(load_error(d).find("unsupported model_type") != std::string::npos);
        d = scratch_model("bad_cfg6");
        write_file_atomic(d + "/config.json", "{\"vocab_size\": 3,");
        CHECK(load_error(d).find("malformed JSON") != std::string::npos);
    }
}

// A tensor the model does not use is an error (tests/test_inputs.cpp), except the rotary_emb.inv_freq buffers older
// transformers saved: those are recomputed from rope_theta and ignored by every load path.
TEST_CASE("rotary_emb.inv_freq buffers in a checkpoint are ignored, on every load path") {
    std::string d = scratch_model("inv_freq");
    {
        SafeTensors st;
        st.open_file("tests/fixtures/model_gqa/model.safetensors");
        std::vector<TensorOut> ts;
        for (const auto& t : st.tensors) ts.push_back({t.first, t.second.dtype, t.second.shape, t.second.data});
        std::vector<float> inv(4, 0.5f);
        for (int l = 0; l < 2; l++)
            ts.push_back({"model.layers." + std::to_string(l) + ".self_attn.rotary_emb.inv_freq", DType::F32, {4}, inv.data()});
        safetensors_write(d + "/model.safetensors", ts);
    }
    Model ref, m;
    model_load_dir(&ref, "tests/fixtures/model_gqa");
    model_load_dir(&m, d);
    CHECK(m.params_memory == ref.params_memory);
    InferModel im;
    infer_load(&im, d, 0);
    CHECK(run_cmd(deepseek_bin() + " info --model " + d).rc == 0);
}

TEST_CASE("the CLI reports bad input in one line with a non-zero exit") {
    auto one_error_line = [](const CmdResult& r) {
        CHECK(r.rc == 1);
        CHECK(count_lines(r.out) == 1);
        CHECK(r.out.rfind("error: ", 0) == 0);
    };
    one_error_line(run_cmd(deepseek_bin() + " info --preset deepseek-llm-1b"));
    one_error_line(run_cmd(deepseek_bin() + " info --preset tiny --frobnicate 3"));
    one_error_line(run_cmd(deepseek_bin() + " info --preset tiny --seq-len abc"));
    one_error_line(run_cmd(deepseek_bin() + " info --preset tiny --threads -2"));
    one_error_line(run_cmd(deepseek_bin() + " info --model build/test_tmp/does_not_exist"));
    one_error_line(run_cmd(deepseek_bin() + " frobnicate"));
    std::string d = scratch_model("cli_trunc");
    write_file_atomic(d + "/model.safetensors", "abc");
    one_error_line(run_cmd(deepseek_bin() + " convert --model " + d + " --out build/test_tmp/cli_out"));
}

TEST_CASE("--device cuda is a clear error when CUDA is unavailable, and --device auto falls back to the CPU") {
    if (cuda_device_count() > 0) {
        MESSAGE("skipped: a CUDA device is present");
        g_tests_skipped++;
        return;
    }
    auto r = run_cmd(deepseek_bin() + " info --preset tiny --device cuda");
    CHECK(r.rc == 1);
    CHECK(r.out.find("cuda") != std::string::npos);
    auto a = run_cmd(deepseek_bin() + " info --preset tiny --device auto");
    CHECK(a.rc == 0);
    CHECK(a.out.find("device: cpu") != std::string::npos);
}

// ---------------------------------------------------------------------------- GGUF export (convert --to gguf)

namespace {
const std::string GGUF_FX = "tests/fixtures/infer/";
// convert --to gguf of DIR at DTYPE into build/test_tmp/gguf/NAME.gguf, read back
std::string gguf_export(const std::string& dir, const std::string& dtype, const std::string& name, GgufFile* f,
                        const std::string& extra = "") {
    make_dirs("build/test_tmp/gguf");
    std::string out = "build/test_tmp/gguf/" + name + ".gguf";
    CmdResult r = run_cmd(deepseek_bin() + " convert --model " + dir + " --to gguf --dtype " + dtype + " --out " + out + " " + extra);
    REQUIRE_MESSAGE(r.rc == 0, r.out);
    gguf_read(out, f);
    return out;
}
const GgufTensor* gguf_tensor(const GgufFile& f, const std::string& name) {
    for (const GgufTensor& t : f.tensors)
        if (t.name == name) return &t;
    return nullptr;
}
// the row of our (Hugging Face) matrix that GGUF row r holds: within a head of D rows, GGUF row 2i is row i and
// GGUF row 2i+1 is row D/2 + i (llama.cpp rotates adjacent pairs, transformers the two halves); heads 0: identity
int64_t hf_row(int64_t r, bool permuted, int64_t D) {
    if (!permuted) return r;
    int64_t h = r / D, j = r % D;
    return j % 2 == 0 ? h * D + j / 2 : h * D + D / 2 + j / 2;
}
std::string gguf_name_of(const std::string& hf) {
    if (hf == "model.embed_tokens.weight") return "token_embd.weight";
    if (hf == "model.norm.weight") return "output_norm.weight";
    if (hf == "lm_head.weight") return "output.weight";
    size_t a = std::string("model.layers.").size(), b = hf.find('.', a);
    std::string rest = hf.substr(b + 1), l = hf.substr(a, b - a);
    static const std::map<std::string, std::string> m = {
        {"input_layernorm.weight", "attn_norm"}, {"self_attn.q_proj.weight", "attn_q"}, {"self_attn.k_proj.weight", "attn_k"},
        {"self_attn.v_proj.weight", "attn_v"}, {"self_attn.o_proj.weight", "attn_output"},
        {"post_attention_layernorm.weight", "ffn_norm"}, {"mlp.gate_proj.weight", "ffn_gate"},
        {"mlp.up_proj.weight", "ffn_up"}, {"mlp.down_proj.weight", "ffn_down"}};
    return "blk." + l + "." + m.at(rest) + ".weight";
}
// gen_gqa's shape with an FFN of 192 (q8_0 needs rows in whole blocks of 32; the fixture's is 176), random
// weights N(0, 0.1²), the fixture's tokenizer: made once per run
const std::string& gguf_model32() {
    static std::string dir;
    if (dir.empty()) {
        dir = "build/test_tmp/gguf/model32";
        run_cmd("rm -rf " + dir);
        make_dirs("build/test_tmp/gguf");
        nlohmann::json c = nlohmann::json::parse(read_file(GGUF_FX + "gen_gqa/config.json"));
        c["intermediate_size"] = 192;
        write_file_atomic("build/test_tmp/gguf/model32.json", c.dump());
        CmdResult r = run_cmd(deepseek_bin() + " convert --config build/test_tmp/gguf/model32.json --init-std 0.1 --seed 5 --out " + dir);
        REQUIRE_MESSAGE(r.rc == 0, r.out);
        run_cmd("cp " + GGUF_FX + "gen_gqa/tokenizer.json " + dir + "/");
    }
    return dir;
}
}  // namespace

TEST_CASE("gguf: convert --to gguf writes llama.cpp's llama layout: hyperparameters, names, dims, types, alignment") {
    GgufFile f;
    gguf_export(GGUF_FX + "gen_gqa", "f32", "meta", &f);
    Config c = config_read_json(GGUF_FX + "gen_gqa/config.json");
    CHECK(f.version == 3);
    auto u = [&](const std::string& k) { const GgufValue* v = f.find(k); REQUIRE_MESSAGE(v, k); CHECK(v->type == GGUF_U32); return v->i; };
    auto fl = [&](const std::string& k) { const GgufValue* v = f.find(k); REQUIRE_MESSAGE(v, k); CHECK(v->type == GGUF_F32); return v->f; };
    REQUIRE(f.find("general.architecture"));
    CHECK(f.find("general.architecture")->s == "llama");
    CHECK(u("general.file_type") == 0);
    CHECK(u("general.alignment") == 32);
    CHECK(u("llama.context_length") == c.max_position_embeddings);
    CHECK(u("llama.embedding_length") == c.hidden_size);
    CHECK(u("llama.block_count") == c.num_hidden_layers);
    CHECK(u("llama.feed_forward_length") == c.intermediate_size);
    CHECK(u("llama.attention.head_count") == c.num_attention_heads);
    CHECK(u("llama.attention.head_count_kv") == c.num_key_value_heads);
    CHECK(c.num_key_value_heads < c.num_attention_heads);   // (the fixture is GQA: attn_k has fewer rows)
    CHECK(u("llama.rope.dimension_count") == c.head_dim);
    CHECK(u("llama.vocab_size") == c.vocab_size);
    CHECK(fl("llama.rope.freq_base") == (float)c.rope_theta);
    CHECK(fl("llama.attention.layer_norm_rms_epsilon") == (float)c.rms_norm_eps);
    // the chat template: ours (the fixture's tokenizer_config.json has none), the Jinja transformers renders
    REQUIRE(f.find("tokenizer.chat_template"));
    std::string jinja = read_file(GGUF_FX + "chat_template.jinja");
    CHECK(f.find("tokenizer.chat_template")->s == jinja);
    CHECK(std::string(CHAT_TEMPLATE_JINJA) == jinja);
    CHECK(u("tokenizer.ggml.padding_token_id") == 1);   // tokenizer_config.json's pad_token, EOS
    // every parameter once, under llama.cpp's name, dims reversed (ne[0] = columns), aligned offsets, F32 throughout
    std::vector<ParamView> views = param_views(c);
    CHECK(f.tensors.size() == views.size());
    CHECK(f.data_offset % 32 == 0);
    for (const ParamView& pv : views) {
        const GgufTensor* t = gguf_tensor(f, gguf_name_of(pv.name));
        REQUIRE_MESSAGE(t, pv.name);
        std::vector<uint64_t> want(pv.shape.rbegin(), pv.shape.rend());
        CHECK_MESSAGE(t->ne == want, pv.name);
        CHECK(t->type == GGML_TYPE_F32);
        CHECK(t->offset % 32 == 0);
        CHECK(t->nbytes == 4 * (size_t)t->ne[0] * (t->ne.size() > 1 ? t->ne[1] : 1));
    }
}

TEST_CASE("gguf: every tensor equals its source: f32 exactly (q/k rows permuted per head), bf16 rounded, q8_0 blocks") {
    Model m;
    model_load_dir(&m, gguf_model32());
    const Config& c = m.cfg;
    for (std::string dt : {"f32", "bf16", "q8_0"}) {
        CAPTURE(dt);
        GgufFile f;
        gguf_export(gguf_model32(), dt, "values_" + dt, &f);
        CHECK(f.find("general.file_type")->i == (dt == "f32" ? 0 : dt == "bf16" ? 32 : 7));
        size_t mismatched = 0, permuted_rows_differ = 0;
        for (const ParamView& pv : param_views(c)) {
            const GgufTensor* t = gguf_tensor(f, gguf_name_of(pv.name));
            REQUIRE(t);
            const float* w = m.params_memory.data() + pv.offset;
            bool matrix = pv.shape.size() == 2, perm = pv.name.find("q_proj") != std::string::npos || pv.name.find("k_proj") != std::string::npos;
            int64_t rows = matrix ? pv.shape[0] : 1, cols = pv.shape.back();
            uint32_t want_type = !matrix || dt == "f32" ? GGML_TYPE_F32 : dt == "bf16" ? GGML_TYPE_BF16 : GGML_TYPE_Q8_0;
            CHECK_MESSAGE(t->type == want_type, pv.name);
            for (int64_t r = 0; r < rows; r++) {
                const float* src = w + hf_row(r, perm, c.head_dim) * cols;
                if (perm && hf_row(r, perm, c.head_dim) != r && memcmp(src, w + r * cols, cols * 4) != 0) permuted_rows_differ++;
                if (t->type == GGML_TYPE_F32) {
                    mismatched += memcmp(t->data + r * cols * 4, src, cols * 4) != 0;
                } else if (t->type == GGML_TYPE_BF16) {
                    for (int64_t k = 0; k < cols; k++) {
                        uint16_t h;
                        memcpy(&h, t->data + (r * cols + k) * 2, 2);
                        mismatched += h != f32_to_bf16(src[k]);
                    }
                } else {
                    int64_t nb = cols / Q8_BLOCK;
                    std::vector<int8_t> q(cols);
                    std::vector<uint16_t> d(nb);
                    q8_0_quantize(src, cols, q.data(), d.data());
                    for (int64_t b = 0; b < nb; b++) {
                        const uint8_t* blk = t->data + (r * nb + b) * 34;   // fp16 scale, then 32 int8
                        mismatched += memcmp(blk, &d[b], 2) != 0 || memcmp(blk + 2, q.data() + b * Q8_BLOCK, Q8_BLOCK) != 0;
                    }
                }
            }
        }
        CHECK(mismatched == 0);
        CHECK(permuted_rows_differ > 0);   // the permutation moved rows that differ: the check above could fail
    }
}

TEST_CASE("gguf: a bf16 source gives bit-identical BF16 and a q8_0 source's blocks are copied, not requantised") {
    // bf16 (sharded) source → BF16: the stored bits themselves
    GgufFile fb;
    gguf_export(GGUF_FX + "gen_bf16", "bf16", "bf16_src", &fb);
    SafeTensors sb;
    sb.open_dir(GGUF_FX + "gen_bf16");
    Config cb = config_read_json(GGUF_FX + "gen_bf16/config.json");
    size_t bad = 0, checked = 0;
    for (const ParamView& pv : param_views(cb)) {
        const TensorInfo& ti = sb.get(pv.name);
        const GgufTensor* t = gguf_tensor(fb, gguf_name_of(pv.name));
        REQUIRE(t);
        if (pv.shape.size() != 2 || pv.name.find("_proj") == std::string::npos || pv.name.find("q_proj") != std::string::npos ||
            pv.name.find("k_proj") != std::string::npos) continue;   // unpermuted matrices: one memcmp
        REQUIRE(ti.dtype == DType::BF16);
        bad += t->nbytes != ti.nbytes || memcmp(t->data, ti.data, ti.nbytes) != 0;
        checked++;
    }
    CHECK(checked > 0);
    CHECK(bad == 0);
    // a q8_0 model directory → Q8_0 GGUF: each block is the stored scale's bits and int8s (rows permuted for q/k)
    std::string q8dir = "build/test_tmp/gguf/gen_gqa_q8";
    run_cmd("rm -rf " + q8dir);
    CmdResult r = run_cmd(deepseek_bin() + " convert --model " + gguf_model32() + " --dtype q8_0 --out " + q8dir);
    REQUIRE_MESSAGE(r.rc == 0, r.out);
    run_cmd("cp " + GGUF_FX + "gen_gqa/tokenizer.json " + q8dir + "/");
    GgufFile fq;
    gguf_export(q8dir, "q8_0", "q8_src", &fq);
    SafeTensors sq;
    sq.open_dir(q8dir);
    Config c = config_read_json(q8dir + "/config.json");
    bad = 0;
    for (const ParamView& pv : param_views(c)) {
        if (pv.shape.size() != 2) continue;
        const TensorInfo& q = sq.get(pv.name);
        const TensorInfo& s = sq.q8_scale(pv.name);
        const GgufTensor* t = gguf_tensor(fq, gguf_name_of(pv.name));
        REQUIRE(t);
        REQUIRE(t->type == GGML_TYPE_Q8_0);
        bool perm = pv.name.find("q_proj") != std::string::npos || pv.name.find("k_proj") != std::string::npos;
        int64_t rows = pv.shape[0], cols = pv.shape[1], nb = cols / Q8_BLOCK;
        for (int64_t row = 0; row < rows; row++)
            for (int64_t b = 0; b < nb; b++) {
                int64_t sr = hf_row(row, perm, c.head_dim);
                const uint8_t* blk = t->data + (row * nb + b) * 34;
                bad += memcmp(blk, s.data + (sr * nb + b) * 2, 2) != 0 || memcmp(blk + 2, q.data + sr * cols + b * Q8_BLOCK, Q8_BLOCK) != 0;
            }
    }
    CHECK(bad == 0);
}

TEST_CASE("gguf: convert --to gguf refuses bad input in one error line and leaves no file") {
    std::string bin = deepseek_bin(), d = "build/test_tmp/gguf/notok", out = "build/test_tmp/gguf/bad.gguf";
    run_cmd("rm -rf " + d + " " + out + " " + out + ".tmp");
    make_dirs(d);
    run_cmd("cp " + GGUF_FX + "gen_gqa/config.json " + GGUF_FX + "gen_gqa/model.safetensors " + d + "/");
    CHECK(one_error_line(run_cmd(bin + " convert --model " + d + " --to gguf --out " + out), "pass --tokenizer FILE"));
    CHECK(one_error_line(run_cmd(bin + " convert --model " + GGUF_FX + "gen_gqa --to gguf --dtype q4_0 --out " + out), "--dtype must be f32, bf16 or q8_0"));
    CHECK(one_error_line(run_cmd(bin + " convert --model " + GGUF_FX + "gen_gqa --to onnx --out " + out), "--to must be gguf"));
    CHECK(one_error_line(run_cmd(bin + " convert --preset tiny --to gguf --out " + out), "give --model DIR"));
    CHECK(one_error_line(run_cmd(bin + " convert --model " + d + " --to gguf --tokenizer " + d + "/missing.json --out " + out), "missing.json"));
    CHECK(one_error_line(run_cmd(bin + " convert --model " + GGUF_FX + "gen_gqa --tokenizer x.json --out " + d + "/o"), "--tokenizer is for --to gguf"));
    // a tokenizer whose pre-tokenizer llama.cpp's "deepseek-llm" would not reproduce (GPT-2's ByteLevel regex)
    CHECK(one_error_line(run_cmd(bin + " convert --model " + d + " --to gguf --tokenizer tests/fixtures/tokenizer/variant_gpt2_bytelevel_regex.json --out " + out),
                         "not DeepSeek LLM's"));
    // a vocabulary larger than the model's embedding: the released one (100015 ids) against 384 rows
    CmdResult imp = run_cmd(bin + " tokenizer import-gguf data/vocab/deepseek-llm.gguf --out " + d + "/big.json");
    REQUIRE_MESSAGE(imp.rc == 0, imp.out);
    CHECK(one_error_line(run_cmd(bin + " convert --model " + d + " --to gguf --tokenizer " + d + "/big.json --out " + out), "embedding rows"));
    CHECK(!path_exists(out));
    CHECK(!path_exists(out + ".tmp"));
}
