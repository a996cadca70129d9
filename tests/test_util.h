// Helpers shared by the test files (and the fuzz harnesses, tests/fuzz/fuzz_util.h): fixture paths, running the
// CLI, scratch directories, the micro model and synthetic token data, comparing tensors.
#pragma once
#include "../deepseek.h"  // make_dirs, shard_write, write_file_atomic, Config, Model, model_*
#include <cmath>      // fabs
#include <cstdio>     // popen
#include <cstdlib>    // getenv
#include <sys/wait.h> // WIFEXITED
#include <string>     // std::string
#include <vector>     // std::vector

extern int g_tests_skipped;
// under make test-asan (AddressSanitizer is ~10x slower): long cases do less work
inline bool asan() { return getenv("DEEPSEEK_ASAN") != nullptr; }  // tests that could not run here (e.g. no CUDA device) bump this and say why

// the binary under test (./deepseek, or the ASan build under make test-asan)
inline std::string deepseek_bin() {
    const char* b = getenv("DEEPSEEK_BIN");
    return b ? b : "./deepseek";
}
struct CmdResult { int rc; std::string out; };
// Runs a shell command, capturing stdout and stderr together.
inline CmdResult run_cmd(const std::string& cmd) {
    CmdResult r{-1, ""};
    FILE* f = popen((cmd + " 2>&1").c_str(), "r");
    if (!f) return r;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) r.out.append(buf, n);
    int st = pclose(f);
    r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return r;
}
inline int count_lines(const std::string& s) {
    int n = 0;
    for (char c : s) n += c == '\n';
    return n;
}
// A CLI refusal as the project promises it: exit status 1 and one stderr line "error: …" holding NEEDLE. Prints what
// came instead when it does not hold.
inline bool one_error_line(const CmdResult& r, const std::string& needle) {
    bool ok = r.rc == 1 && r.out.rfind("error: ", 0) == 0 && r.out.find(needle) != std::string::npos &&
              r.out.find('\n') == r.out.size() - 1;
    if (!ok) fprintf(stderr, "expected one error line holding \"%s\"; rc %d, output: %s\n", needle.c_str(), r.rc, r.out.c_str());
    return ok;
}
// max over elements of |a-b| / max(|b|, floor): relative error with an absolute floor
inline double max_rel_err(const float* a, const float* b, size_t n, double floor_) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = std::fabs((double)a[i] - b[i]) / std::fmax(std::fabs((double)b[i]), floor_);
        if (!(d <= worst)) worst = d;  // NaN propagates as failure
    }
    return worst;
}
// max_i |a_i − b_i| / bound_i: ≤ 1 when every element is within its bound (NaN fails)
inline double max_bound_ratio(const float* a, const float* b, const std::vector<double>& bound) {
    double worst = 0;
    for (size_t i = 0; i < bound.size(); i++) {
        double d = std::fabs((double)a[i] - b[i]) / bound[i];
        if (!(d <= worst)) worst = d;
    }
    return worst;
}
// Per-element error bounds for a bf16 attention kernel (the CUDA ones, on the GPU or emulated) against the fp32
// reference (attention_forward_ref's y and att = P [B,H,T,T], attention_backward_ref's dq, dk, dv), from bf16's unit
// roundoff u = 2⁻⁹ on bf16 inputs, with every rounding such a kernel may do, each counted twice (fp32's own
// summation and expf differences are far below):
//   y   = Σ_s P·v / l, P rounded before it multiplies V (tensor cores), l from the rounded P, y rounded:
//         |Δy| ≤ 2u·(Σ_s P|v| + |y|)
//   Dq  = dy·y with the kernel's y:   |ΔDq_t| ≤ Σ_d |dy|·bound(y)
//   dS  = P ⊙ (dP − Dq), rounded (tensor cores), P possibly rounded:   |ΔdS| ≤ P·|ΔDq| + 2u·|dS| + 2u·P·(|dP| + |Dq|)
//   dq  = scale·Σ_s dS·k, rounded:   |Δdq| ≤ scale·Σ_s |ΔdS|·|k| + 2u·|dq|;   dk likewise with q over t (and heads)
//   dv  = Σ_t P·dy, P possibly rounded, dv rounded:   |Δdv| ≤ 2u·(Σ_t P|dy| + |dv|)
// plus 1e-6 of each tensor's largest magnitude for fp32 accumulation.
struct AttentionBounds { std::vector<double> y, dq, dk, dv; };
inline AttentionBounds attention_bf16_bounds(const float* q, const float* k, const float* v, const float* dy, const float* att,
                                             const float* y, const float* dq, const float* dk, const float* dv, int B, int T,
                                             int H, int KV, int D) {
    const double u = 1.0 / 512, scale = 1.0 / std::sqrt((double)D);
    size_t nq = (size_t)B * T * H * D, nk = (size_t)B * T * KV * D;
    AttentionBounds r;
    r.y.assign(nq, 0.0); r.dq.assign(nq, 0.0); r.dk.assign(nk, 0.0); r.dv.assign(nk, 0.0);
    auto qi = [&](int b, int t, int h) { return (((size_t)b * T + t) * H + h) * D; };
    auto ki = [&](int b, int s, int kh) { return (((size_t)b * T + s) * KV + kh) * D; };
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int kh = h / (H / KV);
            for (int t = 0; t < T; t++) {
                const float* P = att + (((size_t)b * H + h) * T + t) * T;
                double Dq = 0, eDq = 0;
                for (int d = 0; d < D; d++) {
                    double spv = 0;
                    for (int s = 0; s <= t; s++) spv += P[s] * std::fabs(v[ki(b, s, kh) + d]);
                    r.y[qi(b, t, h) + d] = 2 * u * (spv + std::fabs(y[qi(b, t, h) + d]));
                    Dq += (double)dy[qi(b, t, h) + d] * y[qi(b, t, h) + d];
                    eDq += std::fabs(dy[qi(b, t, h) + d]) * r.y[qi(b, t, h) + d];
                }
                for (int s = 0; s <= t; s++) {
                    double dP = 0;
                    for (int d = 0; d < D; d++) dP += (double)dy[qi(b, t, h) + d] * v[ki(b, s, kh) + d];
                    double dS = P[s] * (dP - Dq);
                    double eS = P[s] * eDq + 2 * u * std::fabs(dS) + 2 * u * P[s] * (std::fabs(dP) + std::fabs(Dq));
                    for (int d = 0; d < D; d++) {
                        r.dq[qi(b, t, h) + d] += scale * eS * std::fabs(k[ki(b, s, kh) + d]);
                        r.dk[ki(b, s, kh) + d] += scale * eS * std::fabs(q[qi(b, t, h) + d]);
                        r.dv[ki(b, s, kh) + d] += 2 * u * P[s] * std::fabs(dy[qi(b, t, h) + d]);
                    }
                }
            }
        }
    auto finish = [](std::vector<double>& bd, const float* x, size_t n, bool add_rounding) {
        double mx = 0;
        for (size_t i = 0; i < n; i++) mx = std::fmax(mx, std::fabs(x[i]));
        for (size_t i = 0; i < n; i++) bd[i] += (add_rounding ? 2.0 / 512 * std::fabs(x[i]) : 0.0) + 1e-6 * mx + 1e-30;
    };
    finish(r.y, y, nq, false);
    finish(r.dq, dq, nq, true);
    finish(r.dk, dk, nk, true);
    finish(r.dv, dv, nk, true);
    return r;
}
// A fresh scratch directory build/test_tmp/NAME (emptied first); returns its path.
inline std::string tmp_dir(const std::string& name) {
    std::string d = "build/test_tmp/" + name;
    run_cmd("rm -rf " + d);
    make_dirs(d);
    return d;
}
// n tokens below V, a learnable stream: next = (5·prev + 3 + noise) mod V, noise ∈ {0, 1, 2}
inline std::vector<uint32_t> markov_tokens(size_t n, int V, uint64_t seed) {
    std::vector<uint32_t> t(n);
    uint64_t s = seed;
    t[0] = 1;
    for (size_t i = 1; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = (uint32_t)((5 * t[i - 1] + 3 + (s >> 33) % 3) % V);
    }
    return t;
}
// A data directory as `deepseek data prepare` writes it, minus the tokenizer: train.bin, val.bin, data.json (bits per
// byte from bytes_per_token). Returns dir.
inline std::string synthetic_data(const std::string& dir, int V, size_t n_train, size_t n_val) {
    make_dirs(dir);
    shard_write(dir + "/train.bin", markov_tokens(n_train, V, 1), V);
    shard_write(dir + "/val.bin", markov_tokens(n_val, V, 2), V);
    nlohmann::json j = {
        {"vocab_size", V},
        {"train", {{"file", "train.bin"}, {"tokens", n_train}, {"bytes", 4 * n_train}, {"bytes_per_token", 4.0}}},
        {"val", {{"file", "val.bin"}, {"tokens", n_val}, {"bytes", 4 * n_val}, {"bytes_per_token", 4.0}}}};
    write_file_atomic(dir + "/data.json", j.dump(2));
    return dir;
}
// A very small model directory (V 64 by default, C 32, 2 layers, GQA 4/2), so CLI training runs take milliseconds per
// step. Returns dir.
inline std::string micro_model(const std::string& dir, int V = 64, int ctx = 64) {
    Config c;
    c.vocab_size = V; c.hidden_size = 32; c.num_hidden_layers = 2; c.num_attention_heads = 4; c.num_key_value_heads = 2;
    c.head_dim = 8; c.intermediate_size = 64; c.max_position_embeddings = ctx; c.bos_token_id = 0; c.eos_token_id = 1;
    Model m;
    model_build(&m, c);
    model_init_random(&m, 11, 0.02f);
    model_save_dir(m, dir, StoreDtype::F32);
    return dir;
}
