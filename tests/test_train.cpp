// Pre-training tests: schedules, AdamW and clipping against PyTorch's fixtures, the scaling-law planner against the
// paper's own check, token shards and the data loader, exact resume, checkpoints under kill -9 and SIGINT, and the
// error paths of `deepseek data`, `deepseek plan` and `deepseek train`.
#include <doctest/doctest.h>  // TEST_CASE, CHECK, REQUIRE
#include <cmath>              // fabs
#include <cstring>            // memcpy
#include <set>                // std::set
#include <sstream>            // std::istringstream
#include <nlohmann/json.hpp>  // nlohmann::json (data.json, trainer_state.json, metrics.jsonl)
#ifdef _OPENMP
#include <omp.h>              // omp_set_num_threads
#endif
#include "../deepseek.h"      // shard_*, loader_*, adamw_*, clip_grad_norm, lr_at, scaling_plan, checkpoint files
#include "test_util.h"        // run_cmd, deepseek_bin

using json = nlohmann::json;

static std::string train_tmp(const std::string& name) { return tmp_dir("train_" + name); }

static std::vector<json> read_jsonl(const std::string& path) {
    std::vector<json> v;
    std::istringstream in(read_file(path));
    std::string line;
    while (std::getline(in, line))
        if (!line.empty()) v.push_back(json::parse(line));
    return v;
}

// ---------------------------------------------------------------------------- schedules

TEST_CASE("the multi-step schedule gives the paper's rates at its boundary steps") {
    const double peak = 4.2e-4;
    const long total = 1000, warmup = default_warmup_steps(total);
    CHECK(warmup == 50);                                           // 5% of a short run
    CHECK(default_warmup_steps(212000) == 2000);                   // the paper's 2000 at full scale
    CHECK(lr_at(LRSchedule::MULTISTEP, peak, 0, total, warmup) == doctest::Approx(peak / 50).epsilon(1e-12));
    CHECK(lr_at(LRSchedule::MULTISTEP, peak, 24, total, warmup) == doctest::Approx(peak / 2).epsilon(1e-12));
    CHECK(lr_at(LRSchedule::MULTISTEP, peak, 49, total, warmup) == doctest::Approx(peak).epsilon(1e-12));
    CHECK(lr_at(LRSchedule::MULTISTEP, peak, 50, total, warmup) == peak);
    // 80% of the training tokens: step 800 is the first taken after 800·batch tokens
    CHECK(lr_at(LRSchedule::MULTISTEP, peak, 799, total, warmup) == peak);
    CHECK(lr_at(LRSchedule::MULTISTEP, peak, 800, total, warmup) == doctest::Approx(0.316 * peak).epsilon(1e-12));
    CHECK(lr_at(LRSchedule::MULTISTEP, peak, 899, total, warmup) == doctest::Approx(0.316 * peak).epsilon(1e-12));
    CHECK(lr_at(LRSchedule::MULTISTEP, peak, 900, total, warmup) == doctest::Approx(0.1 * peak).epsilon(1e-12));
    CHECK(lr_at(LRSchedule::MULTISTEP, peak, 999, total, warmup) == doctest::Approx(0.1 * peak).epsilon(1e-12));
    // a total that is not a multiple of 10: the drop is at the first step ≥ 0.8·total
    CHECK(lr_at(LRSchedule::MULTISTEP, peak, 102, 128, 1) == peak);
    CHECK(lr_at(LRSchedule::MULTISTEP, peak, 103, 128, 1) == doctest::Approx(0.316 * peak).epsilon(1e-12));
    CHECK(lr_at(LRSchedule::MULTISTEP, peak, 115, 128, 1) == doctest::Approx(0.316 * peak).epsilon(1e-12));
    CHECK(lr_at(LRSchedule::MULTISTEP, peak, 116, 128, 1) == doctest::Approx(0.1 * peak).epsilon(1e-12));
}

TEST_CASE("the cosine schedule warms up like multistep and decays from the peak to 10% of it") {
    const double peak = 1e-3;
    const long total = 1000, warmup = 50;
    CHECK(lr_at(LRSchedule::COSINE, peak, 10, total, warmup) == lr_at(LRSchedule::MULTISTEP, peak, 10, total, warmup));
    CHECK(lr_at(LRSchedule::COSINE, peak, 50, total, warmup) == doctest::Approx(peak).epsilon(1e-12));
    CHECK(lr_at(LRSchedule::COSINE, peak, 525, total, warmup) == doctest::Approx(0.55 * peak).epsilon(1e-9));  // halfway
    CHECK(lr_at(LRSchedule::COSINE, peak, 1000, total, warmup) == doctest::Approx(0.1 * peak).epsilon(1e-12));
    double prev = 1;
    for (long s = warmup; s < total; s++) {
        double lr = lr_at(LRSchedule::COSINE, peak, s, total, warmup);
        REQUIRE(lr <= prev);
        prev = lr;
    }
}

// ---------------------------------------------------------------------------- AdamW and clipping vs PyTorch

static std::vector<float> read_vec(const SafeTensors& st, const std::string& name) {
    const TensorInfo& t = st.get(name);
    std::vector<float> v(t.numel());
    st.read_f32(name, t.shape, v.data());
    return v;
}
static double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    REQUIRE(a.size() == b.size());
    double w = 0;
    for (size_t i = 0; i < a.size(); i++) w = std::max(w, (double)fabs(a[i] - b[i]));
    return w;
}

TEST_CASE("AdamW matches torch.optim.AdamW over six steps within 1e-6 (decay on the matrix, none on the norm weight)") {
    SafeTensors st;
    st.open_file("tests/fixtures/train/adamw.safetensors");
    std::vector<double> lrs;
    std::istringstream in(st.metadata.at("lr"));
    for (double x; in >> x;) lrs.push_back(x);
    REQUIRE(lrs.size() == 6);
    for (const char* name : {"matrix", "norm"}) {
        std::string n = name;
        std::vector<float> p = read_vec(st, "init." + n), m(p.size(), 0.0f), v(p.size(), 0.0f);
        float wd = n == "matrix" ? 0.1f : 0.0f;
        for (int step = 0; step < 6; step++) {
            std::vector<float> g = read_vec(st, "grad." + std::to_string(step) + "." + n);
            adamw_step(p.data(), g.data(), m.data(), v.data(), p.size(), (float)lrs[step], wd, step + 1);
        }
        double ep = max_abs_diff(p, read_vec(st, "final." + n));
        double em = max_abs_diff(m, read_vec(st, "exp_avg." + n));
        double ev = max_abs_diff(v, read_vec(st, "exp_avg_sq." + n));
        MESSAGE(n << ": max |Δ| params " << ep << ", exp_avg " << em << ", exp_avg_sq " << ev);
        CHECK(ep < 1e-6);   // values O(1), fp32 arithmetic: a few ulps
        CHECK(em < 1e-6);
        CHECK(ev < 1e-6);
    }
}

TEST_CASE("adamw_update decays every matrix (embeddings and lm_head included) and never a norm weight") {
    Config c;
    REQUIRE(config_preset("tiny", &c));
    c.num_hidden_layers = 1;
    c.vocab_size = 50;
    Model m;
    model_build(&m, c);
    model_init_random(&m, 5, 0.02f);
    std::vector<float> before = m.params_memory;
    model_zero_grad(&m);   // zero gradient: the Adam term is exactly 0, only the decay acts
    AdamW opt;
    adamw_update(&m, &opt, 0.5f);
    CHECK(opt.t == 1);
    for (const ParamView& pv : param_views(c)) {
        size_t n = 1;
        for (auto d : pv.shape) n *= (size_t)d;
        size_t bad = 0;
        for (size_t i = pv.offset; i < pv.offset + n; i++) {
            float want = pv.is_matrix ? before[i] * (1.0f - 0.5f * 0.1f) : before[i];
            bad += m.params_memory[i] != want;
        }
        if (bad) MESSAGE(pv.name << ": " << bad << " entries not as expected");
        CHECK(bad == 0);
    }
}

TEST_CASE("gradient clipping matches torch.nn.utils.clip_grad_norm_ within 1e-6, clipped and untouched") {
    SafeTensors st;
    st.open_file("tests/fixtures/train/clip.safetensors");
    for (const char* cs : {"big", "small"}) {
        std::string c = cs;
        std::vector<float> all;
        std::vector<size_t> sizes;
        for (int i = 0; i < 3; i++) {
            auto g = read_vec(st, c + ".grad." + std::to_string(i));
            sizes.push_back(g.size());
            all.insert(all.end(), g.begin(), g.end());
        }
        std::vector<float> orig = all;
        double norm = clip_grad_norm(all.data(), all.size(), 1.0);
        float want_norm = read_vec(st, c + ".total_norm")[0];
        MESSAGE(c << ": norm " << norm << " vs torch " << want_norm);
        CHECK(fabs(norm - want_norm) / want_norm < 1e-6);
        size_t off = 0;
        for (int i = 0; i < 3; i++) {
            auto want = read_vec(st, c + ".clipped." + std::to_string(i));
            std::vector<float> got(all.begin() + off, all.begin() + off + sizes[i]);
            CHECK(max_abs_diff(got, want) < 1e-6);
            off += sizes[i];
        }
        if (c == "small") CHECK(all == orig);   // below the threshold: bit-for-bit untouched
    }
}

TEST_CASE("the global gradient norm does not depend on the thread count") {
    std::vector<float> g(300001);
    for (size_t i = 0; i < g.size(); i++) g[i] = (float)sin((double)i * 0.37) * (float)(1 + i % 7);
#ifdef _OPENMP
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    double a = grad_global_norm(g.data(), g.size());
    omp_set_num_threads(3);
    double b = grad_global_norm(g.data(), g.size());
    omp_set_num_threads(saved);
    CHECK(a == b);
#else
    CHECK(grad_global_norm(g.data(), g.size()) > 0);
#endif
}

TEST_CASE("sum_squares is Σx² to double rounding, with the same bits wherever the data sits in memory") {
    const size_t n = 100003;   // not a multiple of the 16 lanes
    std::vector<float> x(n + 16);
    for (size_t i = 0; i < x.size(); i++) x[i] = (float)cos((double)i * 0.11) * (float)(1 + i % 5);
    long double want = 0;
    for (size_t i = 0; i < n; i++) want += (long double)x[i] * x[i];
    double got = sum_squares(x.data(), n);
    CHECK(fabs((double)(got - want)) <= 1e-13 * (double)want);
    for (int shift = 1; shift < 16; shift++) {   // the same values at another alignment
        std::vector<float> y(x.size() + 16, 0.0f);
        memcpy(y.data() + shift, x.data(), n * sizeof(float));
        CHECK(sum_squares(y.data() + shift, n) == got);
    }
    CHECK(sum_squares(x.data(), 0) == 0.0);
    CHECK(sum_squares(x.data(), 3) == (double)x[0] * x[0] + (double)x[1] * x[1] + (double)x[2] * x[2]);
}

// ---------------------------------------------------------------------------- scaling laws

// the number after "KEY: " at the start of a line of the output (NaN if absent)
static double field(const std::string& out, const std::string& key) {
    size_t at = ("\n" + out).find("\n" + key + ": ");
    return at == std::string::npos ? NAN : atof(out.c_str() + at + key.size() + 2);
}

TEST_CASE("the planner reproduces the paper's 7B check: batch ≈ 9.22M tokens and η ≈ 4.25e-4") {
    // the paper: M = 4.228e10 FLOPs/token × 2.0T tokens → B_opt ≈ 9.22M tokens, η_opt ≈ 4.25e-4 (used: 9.44M, 4.2e-4)
    auto r = run_cmd(deepseek_bin() + " plan --flops-per-token 4.228e10 --tokens 2e12");
    REQUIRE(r.rc == 0);
    double B = field(r.out, "batch_tokens"), lr = field(r.out, "learning_rate");
    MESSAGE("batch_tokens " << B << ", learning_rate " << lr);
    CHECK(fabs(B - 9.22e6) / 9.22e6 < 0.005);
    CHECK(fabs(lr - 4.25e-4) / 4.25e-4 < 0.005);
    // --compute C gives the same plan, and M_opt·D_opt ≈ C (the fits' exponents sum to 1.0000)
    auto c = run_cmd(deepseek_bin() + " plan --compute 8.456e22");
    REQUIRE(c.rc == 0);
    CHECK(field(c.out, "batch_tokens") == B);
    double M = field(c.out, "flops_per_token"), D = field(c.out, "tokens");
    CHECK(fabs(M * D / 8.456e22 - 1) < 0.01);
}

TEST_CASE("the planned shape's FLOPs per token lie near M_opt across scales") {
    for (double C : {1e15, 1e18, 1e21, 1e24}) {
        ScalingPlan p = scaling_plan(C);
        Config s = plan_shape(p.flops_per_token, 2048, 32000);
        double M = config_flops_per_token(s, 2048);
        MESSAGE("C " << C << ": M_opt " << p.flops_per_token << ", shape M " << M << " (L " << s.num_hidden_layers << ", C "
                     << s.hidden_size << ")");
        CHECK(M / p.flops_per_token > 0.7);
        CHECK(M / p.flops_per_token < 1.4);
        CHECK(s.hidden_size % s.num_attention_heads == 0);
        CHECK(s.intermediate_size % 256 == 0);
    }
}

// ---------------------------------------------------------------------------- token shards and the data loader

TEST_CASE("token shards round-trip ids above 16 bits, and bad shards are rejected with a clear message") {
    std::string d = train_tmp("shards");
    std::vector<uint32_t> t = {0, 1, 70000, 102399, 5, 102399};
    shard_write(d + "/a.bin", t, 102400);
    {
        Shard s;
        shard_open(&s, d + "/a.bin", 102400);
        REQUIRE(s.n == t.size());
        CHECK(s.vocab_size == 102400);
        CHECK(std::vector<uint32_t>(s.tokens, s.tokens + s.n) == t);
    }
    auto err = [](const std::string& path, int max_vocab) -> std::string {
        try { Shard s; shard_open(&s, path, max_vocab); } catch (const DeepseekError& e) { return e.msg; }
        return "";
    };
    CHECK(err(d + "/a.bin", 4096).find("larger than the model's") != std::string::npos);
    std::string bytes = read_file(d + "/a.bin");
    std::string bad = bytes;
    bad[0] ^= 0x55;
    write_file_atomic(d + "/magic.bin", bad);
    CHECK(err(d + "/magic.bin", 0).find("magic") != std::string::npos);
    write_file_atomic(d + "/trunc.bin", bytes.substr(0, bytes.size() - 2));
    CHECK(err(d + "/trunc.bin", 0).find("truncated") != std::string::npos);
    write_file_atomic(d + "/tiny.bin", bytes.substr(0, 100));
    CHECK(err(d + "/tiny.bin", 0).find("not a token shard") != std::string::npos);
    shard_write(d + "/oob.bin", {1, 2, 99}, 50);
    CHECK(err(d + "/oob.bin", 0).find("outside the shard's vocabulary") != std::string::npos);
    CHECK(err(d + "/missing.bin", 0).find("cannot open") != std::string::npos);
}

TEST_CASE("the loader reads T+1-token windows, covers each window once per epoch, splits ranks disjointly, and resumes from its cursor") {
    std::string d = train_tmp("loader");
    const int V = 1000, T = 8, B = 3;
    std::vector<uint32_t> t(2000);
    for (size_t i = 0; i < t.size(); i++) t[i] = (uint32_t)(i % V);   // token value encodes its position
    shard_write(d + "/s.bin", t, V);
    // windows: inputs are T consecutive tokens, targets the same shifted by one
    DataLoader one;
    loader_init(&one, d + "/s.bin", B, T, 0, 1, 42, V, true);
    CHECK(one.num_windows == (t.size() - 1) / T);
    std::vector<int> in(B * T), tg(B * T);
    size_t steps = one.per_rank / B;
    for (size_t s = 0; s < steps; s++) {
        loader_next(&one, in.data(), tg.data());
        for (int b = 0; b < B; b++) {
            int first = in[b * T];
            CHECK(first % T == 0);
            for (int k = 0; k < T; k++) {
                CHECK(in[b * T + k] == (first + k) % V);
                CHECK(tg[b * T + k] == (first + k + 1) % V);
            }
        }
    }
    // one epoch visits every window exactly once: the permutation is a permutation
    std::vector<uint32_t> p = one.perm;
    std::sort(p.begin(), p.end());
    for (size_t i = 0; i < p.size(); i++) REQUIRE(p[i] == i);
    // two ranks read disjoint windows
    DataLoader r0, r1;
    loader_init(&r0, d + "/s.bin", B, T, 0, 2, 42, V, true);
    loader_init(&r1, d + "/s.bin", B, T, 1, 2, 42, V, true);
    std::set<size_t> w0, w1;
    for (size_t i = 0; i < r0.per_rank; i++) { w0.insert(r0.perm[i * 2]); w1.insert(r1.perm[i * 2 + 1]); }
    CHECK(w0.size() == r0.per_rank);
    for (size_t w : w0) CHECK(w1.count(w) == 0);
    CHECK(r0.perm == r1.perm);   // the same permutation, different residues
    // the seed changes the order; the epoch reshuffles
    DataLoader other;
    loader_init(&other, d + "/s.bin", B, T, 0, 1, 43, V, true);
    CHECK(other.perm != one.perm);
    std::vector<uint32_t> epoch0 = one.perm;
    loader_next(&one, in.data(), tg.data());   // crosses into epoch 1 if the epoch is used up
    for (size_t s = 0; s < steps; s++) loader_next(&one, in.data(), tg.data());
    CHECK(one.epoch >= 1);
    CHECK(one.perm != epoch0);
    // resume: a fresh loader sought to a saved cursor continues the identical stream
    uint64_t ep = one.epoch;
    size_t ix = one.index;
    std::vector<int> a(B * T), at(B * T), b(B * T), bt(B * T);
    DataLoader fresh;
    loader_init(&fresh, d + "/s.bin", B, T, 0, 1, 42, V, true);
    loader_seek(&fresh, ep, ix);
    for (int s = 0; s < 200; s++) {
        loader_next(&one, a.data(), at.data());
        loader_next(&fresh, b.data(), bt.data());
        REQUIRE(a == b);
        REQUIRE(at == bt);
    }
}

TEST_CASE("gradient accumulation over two micro-batches equals one batch of both") {
    Config c;
    c.vocab_size = 40; c.hidden_size = 16; c.num_hidden_layers = 1; c.num_attention_heads = 2; c.num_key_value_heads = 1;
    c.head_dim = 8; c.intermediate_size = 24; c.max_position_embeddings = 16;
    Model m;
    model_build(&m, c);
    model_init_random(&m, 3, 0.2f);
    Backend be(&m);   // the CPU backend: the objective runs on the host Model
    const int B = 4, T = 8;
    std::vector<uint32_t> s = markov_tokens(B * T + 1, c.vocab_size, 9);
    std::vector<int> in(B * T), tg(B * T);
    for (int i = 0; i < B * T; i++) { in[i] = (int)s[i]; tg[i] = (int)s[i + 1]; }
    std::vector<float> dl;
    model_zero_grad(&m);
    float full = pretrain_objective(&be, in.data(), tg.data(), B, T, &dl);
    model_backward(&m, dl.data());
    std::vector<float> g_full = m.grads_memory;
    model_zero_grad(&m);
    double acc = 0;
    for (int k = 0; k < 2; k++) {   // as the training loop does: each micro-batch's weights divided by accum
        acc += pretrain_objective(&be, in.data() + k * (B / 2) * T, tg.data() + k * (B / 2) * T, B / 2, T, &dl) / 2.0;
        for (float& w : dl) w /= 2.0f;
        model_backward(&m, dl.data());
    }
    CHECK(fabs(acc - full) < 1e-6 * fabs(full));
    double scale = 0;
    for (float x : g_full) scale = std::max(scale, (double)fabs(x));
    CHECK(max_abs_diff(m.grads_memory, g_full) < 1e-5 * scale);   // fp32 sums in another order
}

// ---------------------------------------------------------------------------- data prepare (needs the tokenizer)

TEST_CASE("data prepare: the shards decode to the text, split by whole documents, with honest counts") {
    std::string d = train_tmp("prepare");
    std::string text;
    for (int i = 0; i < 40; i++) {
        text += "Chapter " + std::to_string(i) + "\n";
        for (int k = 0; k <= i % 4; k++) text += "And the word " + std::to_string(k * i) + " was spoken unto them, saying hello.\n";
        text += "\n";
    }
    write_file_atomic(d + "/in.txt", text);
    auto r = run_cmd(deepseek_bin() + " data prepare --input " + d + "/in.txt --vocab-size 300 --out " + d + "/data --val-fraction 0.1");
    REQUIRE_MESSAGE(r.rc == 0, r.out);
    json dj = json::parse(read_file(d + "/data/data.json"));
    Tokenizer* tok = tokenizer_load(d + "/data/tokenizer.json");
    std::string decoded[2];
    const char* names[2] = {"train", "val"};
    for (int s = 0; s < 2; s++) {
        Shard sh;
        shard_open(&sh, d + "/data/" + names[s] + ".bin", 0);
        CHECK(sh.vocab_size == tokenizer_vocab_size(tok));
        CHECK(dj[names[s]]["tokens"].get<size_t>() == sh.n);
        REQUIRE(sh.n > 1);
        CHECK((int)sh.tokens[0] == tokenizer_bos_id(tok));   // BOS opens each file's part
        std::vector<int> ids(sh.tokens + 1, sh.tokens + sh.n);
        decoded[s] = tokenizer_decode(tok, ids);
        CHECK(dj[names[s]]["bytes"].get<size_t>() == decoded[s].size());
    }
    tokenizer_free(tok);
    // every document lands in exactly one split, in order; 10% of the 40 go to validation
    std::vector<std::string> docs;
    for (size_t pos = 0; pos < text.size();) {
        size_t e = text.find("\n\n", pos) + 2;
        docs.push_back(text.substr(pos, e - pos));
        pos = e;
    }
    std::string rebuilt_train, rebuilt_val;
    int nval = 0;
    for (auto& doc : docs) {
        bool in_val = decoded[1].find(doc) != std::string::npos, in_train = decoded[0].find(doc) != std::string::npos;
        CHECK(in_val != in_train);
        (in_val ? rebuilt_val : rebuilt_train) += doc;
        nval += in_val;
    }
    CHECK(nval == 4);
    CHECK(rebuilt_train == decoded[0]);
    CHECK(rebuilt_val == decoded[1]);
}

TEST_CASE("data prepare: a text without blank lines holds out its tail as validation (a line boundary, or inside one line)") {
    std::string d = train_tmp("prepare_tail");
    std::string lines, one;
    for (int i = 0; i < 60; i++) lines += "Line " + std::to_string(i) + ": and the word was spoken unto them, saying hello.\n";
    for (int i = 0; i < 120; i++) one += "mot" + std::to_string(i) + " \xc3\xa9t\xc3\xa9 ";   // one line, with 2-byte characters
    for (bool single : {false, true}) {
        const std::string& text = single ? one : lines;
        std::string in = d + (single ? "/one.txt" : "/lines.txt"), out = d + (single ? "/one" : "/lines");
        write_file_atomic(in, text);
        auto r = run_cmd(deepseek_bin() + " data prepare --input " + in + " --vocab-size 300 --out " + out + " --val-fraction 0.1");
        REQUIRE_MESSAGE(r.rc == 0, r.out);
        INFO(r.out);
        CHECK(r.out.find("note: data prepare: too few documents") != std::string::npos);
        CHECK(r.out.find(single ? "inside a line" : "at a line boundary") != std::string::npos);
        json dj = json::parse(read_file(out + "/data.json"));
        CHECK(dj["val_split"] == (single ? "tail, inside a line" : "tail, at a line boundary"));
        Tokenizer* tok = tokenizer_load(out + "/tokenizer.json");
        std::string decoded[2];
        const char* names[2] = {"train", "val"};
        for (int s = 0; s < 2; s++) {
            Shard sh;
            shard_open(&sh, out + "/" + names[s] + ".bin", 0);
            REQUIRE(sh.n > 1);
            CHECK((int)sh.tokens[0] == tokenizer_bos_id(tok));
            decoded[s] = tokenizer_decode(tok, std::vector<int>(sh.tokens + 1, sh.tokens + sh.n));
        }
        tokenizer_free(tok);
        // validation is the text's tail, training the rest: together the whole text
        CHECK(decoded[0] + decoded[1] == text);
        double share = (double)decoded[1].size() / text.size();
        CHECK(share > 0.05);
        CHECK(share < 0.2);
        if (!single) CHECK(decoded[0].back() == '\n');   // the cut is at a line's start
    }
}

// ---------------------------------------------------------------------------- the training command

static std::string train_cmd(const std::string& model, const std::string& data, const std::string& out, const std::string& extra) {
    return deepseek_bin() + " train --device cpu --model " + model + " --data " + data + " --out " + out +
           " --seq-len 16 --batch-tokens 128 --micro-batch 4 --lr 1e-2 --eval-windows 8 --threads 1 " + extra;
}

TEST_CASE("training resumes bit-exactly: 2K steps straight equal K steps, stop, resume, K more") {
    std::string d = train_tmp("resume");
    std::string data = synthetic_data(d + "/data", 64, 6000, 600), model = micro_model(d + "/model");
    const int K = asan() ? 2 : 3;
    auto a = run_cmd(train_cmd(model, data, d + "/straight", "--steps " + std::to_string(2 * K) + " --save-every " +
                                                                 std::to_string(K) + " --eval-every " + std::to_string(K)));
    REQUIRE_MESSAGE(a.rc == 0, a.out);
    std::string ck = d + "/straight/step_00000" + std::to_string(K);
    REQUIRE(dir_exists(ck));
    // a fresh process continues from the K-step checkpoint into another directory
    auto b = run_cmd(deepseek_bin() + " train --device cpu --resume " + ck + " --out " + d + "/resumed --threads 1");
    REQUIRE_MESSAGE(b.rc == 0, b.out);
    CHECK(b.out.find("resuming") != std::string::npos);
    for (const char* f : {"model.safetensors", "optimizer.safetensors"}) {
        bool same = read_file(d + "/straight/final/" + f) == read_file(d + "/resumed/final/" + f);
        if (!same) MESSAGE(f << " differs");
        CHECK(same);
    }
    // the losses of steps K+1..2K, as printed to metrics.jsonl, are identical
    auto ma = read_jsonl(d + "/straight/metrics.jsonl"), mb = read_jsonl(d + "/resumed/metrics.jsonl");
    std::map<long, std::string> la, lb;
    for (auto& j : ma) if (j.contains("loss")) la[j["step"]] = j["loss"].dump() + j["grad_norm"].dump();
    for (auto& j : mb) if (j.contains("loss")) lb[j["step"]] = j["loss"].dump() + j["grad_norm"].dump();
    REQUIRE(la.size() == (size_t)2 * K);
    for (long s = K + 1; s <= 2 * K; s++) {
        REQUIRE(lb.count(s));
        CHECK(la[s] == lb[s]);
    }
    // and the model learned something on the way: the loss fell
    double first = -1, last = -1;
    for (auto& j : ma) if (j.contains("loss")) { if (first < 0) first = j["loss"]; last = j["loss"]; }
    CHECK(last < first);
    json st = json::parse(read_file(d + "/resumed/final/trainer_state.json"));
    CHECK(st["step"] == 2 * K);
}

TEST_CASE("training lowers the validation loss on a learnable stream, and the final checkpoint is a model directory") {
    std::string d = train_tmp("learn");
    std::string data = synthetic_data(d + "/data", 64, 20000, 2000), model = micro_model(d + "/model");
    int steps = asan() ? 10 : 30;
    auto r = run_cmd(train_cmd(model, data, d + "/run", "--steps " + std::to_string(steps) + " --eval-every " + std::to_string(steps / 2)));
    REQUIRE_MESSAGE(r.rc == 0, r.out);
    std::vector<double> val;
    for (auto& j : read_jsonl(d + "/run/metrics.jsonl"))
        if (j.contains("val_loss")) val.push_back(j["val_loss"]);
    REQUIRE(val.size() == 3);   // before training, halfway, at the end
    MESSAGE("val loss " << val[0] << " → " << val[1] << " → " << val[2] << " (uniform: ln 64 = " << log(64.0) << ")");
    CHECK(val[2] < val[0] - 0.5);
    CHECK(r.out.find("final: " + d + "/run/final") != std::string::npos);
    Model m;
    model_load_dir(&m, d + "/run/final");   // a Hugging Face model directory
    CHECK(m.cfg.vocab_size == 64);
    CHECK(file_exists(d + "/run/final/generation_config.json"));
    // every step logged its line: step, loss, lr, norm, tokens/s, elapsed, ETA
    CHECK(r.out.find("step " + std::to_string(steps) + "/" + std::to_string(steps) + " | loss ") != std::string::npos);
    CHECK(r.out.find(" tok/s | ") != std::string::npos);
    CHECK(r.out.find("ETA") != std::string::npos);
}

TEST_CASE("train --compute without a model trains the planner's shape with the laws' batch size and learning rate") {
    std::string d = train_tmp("compute");
    std::string data = synthetic_data(d + "/data", 64, 6000, 600);
    auto plan = run_cmd(deepseek_bin() + " plan --compute 1e9 --seq-len 16 --vocab-size 64");
    REQUIRE(plan.rc == 0);
    auto r = run_cmd(deepseek_bin() + " train --device cpu --compute 1e9 --seq-len 16 --steps 2 --eval-every 0 --data " + data + " --out " +
                     d + "/run --threads 1");
    REQUIRE_MESSAGE(r.rc == 0, r.out);
    Config c = config_read_json(d + "/run/final/config.json");
    char shape[160];
    snprintf(shape, sizeof shape, "shape: layers %d, hidden_size %d, heads %d (head_dim %d), intermediate_size %d, vocab_size 64\n",
             c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.head_dim, c.intermediate_size);
    CHECK_MESSAGE(plan.out.find(shape) != std::string::npos, plan.out << " vs " << shape);
    json st = json::parse(read_file(d + "/run/final/trainer_state.json"));
    double B = field(plan.out, "batch_tokens"), lr = field(plan.out, "learning_rate");
    long bt = st["settings"]["batch_tokens"];
    CHECK(fabs(bt - B) <= 8);   // rounded to whole sequences of 16 tokens
    CHECK(fabs(st["settings"]["lr"].get<double>() - lr) / lr < 1e-3);   // plan prints 4 significant digits
}

TEST_CASE("SIGINT finishes the step, writes a checkpoint and exits cleanly; the run resumes from it") {
    std::string d = train_tmp("sigint");
    std::string data = synthetic_data(d + "/data", 64, 6000, 600), model = micro_model(d + "/model");
    // --foreground: timeout then signals only the child; by default it also signals its whole process group,
    // which delivers SIGINT twice — and a second SIGINT is meant to kill, as a second Ctrl-C does.
    auto r = run_cmd("timeout --foreground --preserve-status -s INT 1.5 " +
                     train_cmd(model, data, d + "/run", "--steps 1000000 --save-every 0 --eval-every 0"));
    CHECK(r.rc == 0);
    CHECK(r.out.find("stopped by signal") != std::string::npos);
    std::string latest = checkpoint_latest(d + "/run");
    REQUIRE_MESSAGE(!latest.empty(), r.out);
    json st = json::parse(read_file(latest + "/trainer_state.json"));
    long step = st["step"];
    CHECK(step >= 1);
    auto b = run_cmd(deepseek_bin() + " train --device cpu --resume " + d + "/run --steps " + std::to_string(step + 2) + " --threads 1");
    CHECK_MESSAGE(b.rc == 0, b.out);
    CHECK(dir_exists(d + "/run/final"));
}

TEST_CASE("kill -9 at random moments never leaves the newest complete checkpoint unreadable; resumed, the run ends bit for bit as a straight one") {
    std::string d = train_tmp("kill9");
    std::string data = synthetic_data(d + "/data", 64, 6000, 600), model = micro_model(d + "/model");
    const int N = 40;   // a checkpoint at every step: ~2 s straight
    std::string flags = "--steps " + std::to_string(N) + " --save-every 1 --keep 2 --eval-every 0";
    auto straight = run_cmd(train_cmd(model, data, d + "/straight", flags));
    REQUIRE_MESSAGE(straight.rc == 0, straight.out);
    std::string run = d + "/run";
    uint64_t s = 12345;
    int killed = 0, loaded = 0;
    for (int round = 0; round < 4; round++) {
        std::string latest = checkpoint_latest(run);
        if (latest == run + "/final") break;   // finished before a kill landed
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        int steps = 2 + (int)((s >> 33) % 6), delay_ms = (int)((s >> 45) % 40);
        // in the background; once it has logged `steps` steps, up to 40 ms more, so that the kill lands anywhere in a
        // step or a checkpoint write; then kill -9
        std::string cmd = latest.empty() ? train_cmd(model, data, run, flags)
                                         : deepseek_bin() + " train --device cpu --resume " + run + " --threads 1";
        std::string log = d + "/round" + std::to_string(round) + ".log";
        char wait_s[32];
        snprintf(wait_s, sizeof wait_s, "%.3f", delay_ms / 1000.0);
        auto r = run_cmd(": >" + log + "; " + cmd + " >" + log + " 2>&1 & P=$!; for i in $(seq 1000); do [ $(grep -c '^step ' " + log + ") -ge " +
                         std::to_string(steps) + " ] && break; kill -0 $P 2>/dev/null || break; sleep 0.01; done; sleep " +
                         wait_s + "; kill -9 $P 2>/dev/null; wait $P");
        INFO("round " << round << ": " << read_file(log));
        CHECK((r.rc == 137 || r.rc == 0));   // killed (or, rarely, finished first)
        killed += r.rc == 137;
        latest = checkpoint_latest(run);
        if (latest.empty()) continue;   // killed before the first checkpoint
        try {
            Model m;
            AdamW opt;
            long step = checkpoint_read(latest, &m, &opt);
            CHECK(step == opt.t);
            loaded++;
        } catch (const DeepseekError& e) {
            FAIL("round " << round << ": " << latest << " unreadable: " << e.msg);
        }
    }
    CHECK(killed >= 2);
    CHECK(loaded >= 2);
    auto r = run_cmd(deepseek_bin() + " train --device cpu --resume " + run + " --threads 1");
    REQUIRE_MESSAGE(r.rc == 0, r.out);
    REQUIRE(dir_exists(run + "/final"));
    for (const char* f : {"model.safetensors", "optimizer.safetensors"}) {
        bool same = read_file(d + "/straight/final/" + f) == read_file(run + "/final/" + f);
        if (!same) MESSAGE(f << " differs from the straight run's");
        CHECK(same);
    }
    // and every step's loss and gradient norm, as metrics.jsonl has them
    std::map<long, std::string> la, lb;
    for (auto& j : read_jsonl(d + "/straight/metrics.jsonl")) la[j["step"]] = j["loss"].dump() + j["grad_norm"].dump();
    for (auto& j : read_jsonl(run + "/metrics.jsonl")) lb[j["step"]] = j["loss"].dump() + j["grad_norm"].dump();
    CHECK(la.size() == (size_t)N);
    CHECK(la == lb);
}

TEST_CASE("a full disk while checkpointing is one error line; the earlier checkpoints stay intact and no .tmp is left") {
    std::string d = train_tmp("fulldisk");
    std::string data = synthetic_data(d + "/data", 64, 6000, 600), model = micro_model(d + "/model");
    auto a = run_cmd(train_cmd(model, data, d + "/run", "--steps 2 --save-every 1 --eval-every 0"));
    REQUIRE_MESSAGE(a.rc == 0, a.out);
    std::string before = read_file(d + "/run/final/model.safetensors");
    // files capped at ~40 KB (SIGXFSZ ignored: a write past the cap fails with EFBIG): the 90 KB model.safetensors
    // of the next checkpoint cannot be written
    auto r = run_cmd("sh -c \"trap '' XFSZ; ulimit -f 80; " + deepseek_bin() + " train --device cpu --resume " + d +
                     "/run --steps 4 --threads 1 >/dev/null\"");
    CHECK(one_error_line(r, "error writing"));
    auto ls = run_cmd("ls -a " + d + "/run");
    INFO(ls.out);
    CHECK(ls.out.find(".tmp") == std::string::npos);
    CHECK(read_file(d + "/run/final/model.safetensors") == before);
    Model m;
    AdamW opt;
    CHECK(checkpoint_read(d + "/run/step_000001", &m, &opt) == 1);
    CHECK(checkpoint_read(d + "/run/final", &m, &opt) == 2);
}

TEST_CASE("one run per --out: a second is refused, --overwrite starts over, --resume of a finished run goes on only with more --steps") {
    std::string d = train_tmp("outdir");
    std::string data = synthetic_data(d + "/data", 64, 6000, 600), model = micro_model(d + "/model");
    std::string run = d + "/run";
    REQUIRE(run_cmd(train_cmd(model, data, run, "--steps 4 --save-every 1 --eval-every 0")).rc == 0);
    // the same --out again: refused, and the run is untouched
    std::string final_model = read_file(run + "/final/model.safetensors");
    CHECK(one_error_line(run_cmd("(" + train_cmd(model, data, run, "--steps 3 --eval-every 0") + " 2>&1 >/dev/null)"),
                         "holds another run"));
    CHECK(read_file(run + "/final/model.safetensors") == final_model);
    // --resume RUN finds final/: finished, nothing to do (exit 0, one line saying so), the files unchanged
    CHECK(checkpoint_latest(run) == run + "/final");
    auto f = run_cmd(deepseek_bin() + " train --device cpu --resume " + run + " --threads 1");
    CHECK(f.rc == 0);
    CHECK(f.out.find("is finished (step 4 of 4); nothing to do") != std::string::npos);
    CHECK(read_file(run + "/final/model.safetensors") == final_model);
    // with more --steps it goes on from final/
    auto g = run_cmd(deepseek_bin() + " train --device cpu --resume " + run + " --steps 6 --threads 1");
    REQUIRE_MESSAGE(g.rc == 0, g.out);
    CHECK(g.out.find("resuming " + run + "/final at step 4") != std::string::npos);
    CHECK(json::parse(read_file(run + "/final/trainer_state.json"))["step"] == 6);
    // --overwrite: the earlier run's checkpoints and metrics are gone, the new run's alone remain
    auto o = run_cmd(train_cmd(model, data, run, "--steps 2 --save-every 0 --eval-every 0 --overwrite"));
    REQUIRE_MESSAGE(o.rc == 0, o.out);
    CHECK(o.out.find("note: --overwrite: removed the earlier run") != std::string::npos);
    CHECK(!dir_exists(run + "/step_000005"));
    auto m = read_jsonl(run + "/metrics.jsonl");
    CHECK(m.size() == 2);
    CHECK(json::parse(read_file(run + "/final/trainer_state.json"))["step"] == 2);
    // the lock file names its last holder
    std::string lock = read_file(run + "/.lock");
    CHECK(atol(lock.c_str()) > 0);
}

TEST_CASE("a non-finite loss stops training with a clear message and leaves the last good checkpoint intact") {
    std::string d = train_tmp("nonfinite");
    std::string data = synthetic_data(d + "/data", 64, 6000, 600), model = micro_model(d + "/model");
    // an absurd learning rate drives the weights to ~1e30 after one update; the next forward overflows
    std::string cmd = train_cmd(model, data, d + "/run", "--steps 50 --save-every 1 --eval-every 0 --warmup-steps 0");
    cmd.replace(cmd.find("--lr 1e-2"), 9, "--lr 1e36");   // (a flag given twice is an error: replaced, not repeated)
    auto r = run_cmd(cmd);
    // progress lines first, then exactly one error line, the last
    size_t at = r.out.find("error: ");
    REQUIRE_MESSAGE(at != std::string::npos, r.out);
    CHECK((at == 0 || r.out[at - 1] == '\n'));
    CHECK(one_error_line(CmdResult{r.rc, r.out.substr(at)}, "not finite"));
    std::string latest = checkpoint_latest(d + "/run");
    REQUIRE(!latest.empty());
    Model m;
    AdamW opt;
    checkpoint_read(latest, &m, &opt);
    for (float x : m.params_memory) REQUIRE(std::isfinite(x));
    CHECK(!dir_exists(d + "/run/final"));
}

// ---------------------------------------------------------------------------- bad input

TEST_CASE("bad input to data, plan and train gives one clear error line, never a crash") {
    std::string d = train_tmp("bad");
    std::string data = synthetic_data(d + "/data", 64, 3000, 300), model = micro_model(d + "/model");
    std::string big = synthetic_data(d + "/big", 100, 3000, 300);   // vocabulary 100 > the model's 64
    std::string magic = d + "/magic";
    run_cmd("cp -r " + data + " " + magic);
    std::string s = read_file(magic + "/train.bin");
    s[1] ^= 0x7f;
    write_file_atomic(magic + "/train.bin", s);
    std::string noshard = d + "/noshard";
    run_cmd("cp -r " + data + " " + noshard + " && rm " + noshard + "/train.bin");
    std::string t = deepseek_bin() + " train --device cpu --model " + model + " --out " + d + "/out --threads 1 ";
    CHECK(one_error_line(run_cmd(t + "--data " + d + "/nowhere"), "does not exist"));
    CHECK(one_error_line(run_cmd(t + "--data " + noshard), "train.bin is missing"));
    CHECK(one_error_line(run_cmd(t + "--data " + magic), "magic"));
    CHECK(one_error_line(run_cmd(t + "--data " + big), "larger than the model's"));
    CHECK(one_error_line(run_cmd(t + "--data " + data + " --seq-len 65"), "beyond the model's context"));
    CHECK(one_error_line(run_cmd(t + "--data " + data + " --seq-len 32 --batch-tokens 16"), "smaller than one sequence"));
    CHECK(one_error_line(run_cmd(t + "--data " + data + " --lr-schedule linear"), "multistep or cosine"));
    CHECK(one_error_line(run_cmd(t + "--data " + data + " --lr -1"), "--lr"));
    CHECK(one_error_line(run_cmd(t + "--data " + data + " --steps 0"), "--steps"));
    CHECK(one_error_line(run_cmd(deepseek_bin() + " train --data " + data + " --out " + d + "/o"), "--preset"));
    CHECK(one_error_line(run_cmd(deepseek_bin() + " train --device cpu --resume " + d + "/nothing_here"), "does not exist"));
    make_dirs(d + "/empty_run");
    CHECK(one_error_line(run_cmd(deepseek_bin() + " train --device cpu --resume " + d + "/empty_run"), "no complete checkpoint"));
    CHECK(one_error_line(run_cmd(deepseek_bin() + " plan"), "--compute"));
    CHECK(one_error_line(run_cmd(deepseek_bin() + " plan --compute lots"), "--compute"));
    CHECK(one_error_line(run_cmd(deepseek_bin() + " data prepare --input " + d + "/no.txt --vocab-size 300 --out " + d + "/p"),
                         "does not exist"));
    CHECK(one_error_line(run_cmd(deepseek_bin() + " data prepare --input " + d + "/no.txt --out " + d + "/p"), "--tokenizer"));
    CHECK(one_error_line(run_cmd(deepseek_bin() + " data shuffle"), "unknown subcommand"));
    for (const char* c : {"train", "plan", "data prepare"}) {
        auto h = run_cmd(deepseek_bin() + " " + c + " --help");
        CHECK(h.rc == 0);
        CHECK(h.out.find("usage: deepseek") != std::string::npos);
    }
}
