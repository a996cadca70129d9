// sweep.cpp — `deepseek sweep`: the paper's scaling-law experiments (§3), end to end, at the scale of one machine.
//
// The method. Model scale M = non-embedding FLOPs per token (72·L·d² + 12·L·d·l_seq), compute C = M·D for D tokens.
//   hparams   at each compute budget C, a grid of batch size × learning rate around the paper's B_opt(C), η_opt(C),
//             on the shape nearest the paper's M_opt(C); the runs within 0.25% of the budget's best validation bits
//             per byte are near-optimal, and B_opt = a·C^b, η_opt = c·C^d are fitted to them (paper: 0.2920·C^0.3271,
//             0.3118·C^−0.1250).
//   isoflop   at each budget, several shapes (M around M_opt(C)) trained for D = C/M tokens with the batch size and
//             learning rate of the hparams fit; the minimum of a parabola in log D through each budget's profile
//             gives D_opt(C) and M_opt(C) = C/D_opt, fitted as power laws (paper: 0.1715·C^0.5243, 5.8316·C^0.4757).
//   check     the optimal runs' loss–compute curve, bpb = e·C^f, extrapolated to a larger budget, and a run there with
//             the fitted batch size, learning rate and allocation: the predicted bits per byte beside the measured.
// Every point is a real `deepseek train` run, a child process (one at a time, under --launcher for MPI), in
// SWEEP/runs/ID; SWEEP/results.jsonl gets one line per finished run. A killed sweep continues where it stopped:
// finished points are skipped, an interrupted one resumes from its newest checkpoint (train --resume, bit-exact).
// `sweep fit` fits results lines (least squares in log–log space, bootstrap intervals); `sweep report` writes the
// pictures (gnuplot) and SWEEP/report.md.
#include "deepseek.h"
#include <algorithm>     // std::sort, std::min, std::max
#include <cerrno>        // errno
#include <cmath>         // log, exp, pow, sqrt
#include <csignal>       // signal, kill
#include <cstdio>        // printf, snprintf
#include <cstdlib>       // system, getenv
#include <cstring>       // strerror
#include <map>           // std::map
#include <set>           // std::set
#include <sstream>       // std::istringstream (--launcher words)
#include <fcntl.h>       // open (the run's log)
#include <sys/prctl.h>   // prctl(PR_SET_PDEATHSIG)
#include <sys/wait.h>    // waitpid
#include <unistd.h>      // fork, execv, dup2
#include <nlohmann/json.hpp>

using json = nlohmann::json;

// The paper's fitted laws (§3), the yardstick the report sets our fits beside.
static const double PAPER_BATCH[2] = {0.2920, 0.3271}, PAPER_LR[2] = {0.3118, -0.1250};
static const double PAPER_MODEL[2] = {0.1715, 0.5243}, PAPER_DATA[2] = {5.8316, 0.4757};
static const double NEAR_OPTIMAL = 0.0025;   // within 0.25% of a budget's best bits per byte (the paper's criterion)

// ============================================================================
// shapes: a family of small LLaMA-style models, one per target M

// The family: d_model 8 … 1024 in steps of an eighth to a quarter of an octave, depth L = max(1, round(d/32)) (the
// aspect ratio of these small widths: plan_shape's d/L of 100 is for billions of parameters), head dim 8 below
// d_model 64, 16 below 256, else 32; MHA; SwiGLU width 8/3·d rounded up to a multiple of 8. Sorted by M, so the
// neighbours of a member are the next smaller and larger models.
static std::vector<Config> sweep_family(int seq_len, int vocab_size) {
    std::vector<Config> f;
    for (int d : {8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024}) {
        Config c;
        c.vocab_size = vocab_size; c.hidden_size = d; c.num_hidden_layers = std::max(1, (int)lround(d / 32.0));
        c.head_dim = d < 64 ? 8 : d < 256 ? 16 : 32;
        c.num_attention_heads = c.num_key_value_heads = d / c.head_dim;
        c.intermediate_size = (int)((8.0 * d / 3.0 + 7.0) / 8.0) * 8;
        c.max_position_embeddings = seq_len;
        f.push_back(c);
    }
    std::sort(f.begin(), f.end(), [&](const Config& a, const Config& b) {
        return config_flops_per_token(a, seq_len) < config_flops_per_token(b, seq_len);
    });
    return f;
}
static size_t family_nearest(const std::vector<Config>& f, double M_target, int seq_len) {
    size_t best = 0;
    for (size_t i = 1; i < f.size(); i++)
        if (fabs(log(config_flops_per_token(f[i], seq_len) / M_target)) <
            fabs(log(config_flops_per_token(f[best], seq_len) / M_target))) best = i;
    return best;
}
Config sweep_shape(double M_target, int seq_len, int vocab_size) {
    std::vector<Config> f = sweep_family(seq_len, vocab_size);
    return f[family_nearest(f, M_target, seq_len)];
}
static std::string shape_name(const Config& c) {
    char b[96];
    snprintf(b, sizeof b, "L%d-d%d-h%d-f%d-v%d", c.num_hidden_layers, c.hidden_size, c.num_attention_heads,
             c.intermediate_size, c.vocab_size);
    return b;
}

// ============================================================================
// results: SWEEP/results.jsonl, one finished run a line

// the non-blank lines of a file, with their line numbers
static std::vector<std::pair<int, std::string>> text_lines(const std::string& path) {
    std::vector<std::pair<int, std::string>> out;
    std::string text = read_file(path, (size_t)1 << 30);
    int line = 0;
    for (size_t pos = 0; pos < text.size();) {
        size_t nl = text.find('\n', pos);
        std::string s = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
        pos = nl == std::string::npos ? text.size() : nl + 1;
        line++;
        if (s.find_first_not_of(" \t\r") != std::string::npos) out.push_back({line, s});
    }
    return out;
}

// one results line, read strictly: WHERE names the file and line in messages
static SweepResult result_from_line(const std::string& s, int line, const std::string& where) {
    json j = json::parse(s, nullptr, false);
    if (j.is_discarded() || !j.is_object()) die("%s: not a JSON object", where.c_str());
    SweepResult r;
    r.line = line;
    r.study = json_str(j, "study", where, "", true);
    if (r.study != "hparams" && r.study != "isoflop" && r.study != "check")
        die("%s: field 'study' must be \"hparams\", \"isoflop\" or \"check\", got \"%s\"", where.c_str(), r.study.c_str());
    r.id = json_str(j, "id", where, "");
    r.compute = json_num(j, "compute", where, 0, 1e-300, 1e300, true);
    r.batch_tokens = json_num(j, "batch_tokens", where, 0, 1e-300, 1e300, true);
    r.learning_rate = json_num(j, "learning_rate", where, 0, 1e-300, 1e300, true);
    r.flops_per_token = json_num(j, "flops_per_token", where, 0, 1e-300, 1e300, true);
    r.tokens = json_num(j, "tokens", where, 0, 1e-300, 1e300, true);
    r.params = json_num(j, "params", where, 0, 0, 1e300);
    r.diverged = json_bool(j, "diverged", where, false);
    r.val_bpb = r.diverged ? NAN : json_num(j, "val_bpb", where, 0, 1e-300, 1e300, true);
    return r;
}

std::vector<SweepResult> sweep_read_results(const std::string& path) {
    std::vector<SweepResult> out;
    for (const auto& l : text_lines(path)) out.push_back(result_from_line(l.second, l.first, path + ":" + std::to_string(l.first)));
    return out;
}

// ============================================================================
// fits

// y = coef·C^exp by least squares on (ln C, ln y); fewer than two distinct C leave it NaN
PowerLaw power_law_fit(const std::vector<double>& C, const std::vector<double>& y) {
    PowerLaw p;
    size_t n = C.size();
    p.points = (int)n;
    if (n < 2) return p;
    double mx = 0, my = 0;
    for (size_t i = 0; i < n; i++) { mx += log(C[i]); my += log(y[i]); }
    mx /= n; my /= n;
    double sxx = 0, sxy = 0;
    for (size_t i = 0; i < n; i++) {
        double dx = log(C[i]) - mx;
        sxx += dx * dx;
        sxy += dx * (log(y[i]) - my);
    }
    if (sxx <= 1e-24 * n) return p;   // one budget only: no slope
    p.exp = sxy / sxx;
    p.coef = exp(my - p.exp * mx);
    return p;
}

// y = a0 + a1·x + a2·x² by least squares (x centred for the conditioning); false if fewer than three distinct x
static bool parabola_fit(const std::vector<double>& x, const std::vector<double>& y, double a[3]) {
    size_t n = x.size();
    std::set<double> distinct(x.begin(), x.end());
    if (distinct.size() < 3) return false;
    double m = 0;
    for (double v : x) m += v;
    m /= n;
    double S[5] = {0, 0, 0, 0, 0}, R[3] = {0, 0, 0};   // Σu^k, Σy·u^k with u = x − m
    for (size_t i = 0; i < n; i++) {
        double u = x[i] - m, p = 1;
        for (int k = 0; k < 5; k++) { S[k] += p; if (k < 3) R[k] += y[i] * p; p *= u; }
    }
    double A[3][4] = {{S[0], S[1], S[2], R[0]}, {S[1], S[2], S[3], R[1]}, {S[2], S[3], S[4], R[2]}};
    for (int c = 0; c < 3; c++) {   // Gaussian elimination with partial pivoting
        int piv = c;
        for (int r = c + 1; r < 3; r++) if (fabs(A[r][c]) > fabs(A[piv][c])) piv = r;
        if (fabs(A[piv][c]) < 1e-300) return false;
        for (int k = 0; k < 4; k++) std::swap(A[c][k], A[piv][k]);
        for (int r = 0; r < 3; r++) {
            if (r == c) continue;
            double f = A[r][c] / A[c][c];
            for (int k = 0; k < 4; k++) A[r][k] -= f * A[c][k];
        }
    }
    double b0 = A[0][3] / A[0][0], b1 = A[1][3] / A[1][1], b2 = A[2][3] / A[2][2];   // in u
    a[0] = b0 - b1 * m + b2 * m * m;
    a[1] = b1 - 2 * b2 * m;
    a[2] = b2;
    return true;
}

// One budget's IsoFLOP profile: the parabola's minimum in ln D (when it opens upwards), else the best point.
static IsoflopMin isoflop_minimum(double C, const std::vector<const SweepResult*>& pts) {
    IsoflopMin mn;
    mn.compute = C;
    std::vector<double> x, y, D, N;
    const SweepResult* best = pts[0];
    for (const SweepResult* p : pts) {
        x.push_back(log(p->tokens));
        y.push_back(p->val_bpb);
        D.push_back(p->tokens);
        N.push_back(std::max(p->params, 1.0));
        if (p->val_bpb < best->val_bpb) best = p;
    }
    mn.best_d = best->tokens; mn.best_m = best->flops_per_token; mn.best_bpb = best->val_bpb;
    mn.best_n = best->params;
    double a[3];
    double xs = log(best->tokens);
    if (parabola_fit(x, y, a) && a[2] > 0) {
        xs = -a[1] / (2 * a[2]);
        mn.parabola = true;
        mn.bpb_min = a[0] + a[1] * xs + a[2] * xs * xs;
        mn.inside = xs >= *std::min_element(x.begin(), x.end()) && xs <= *std::max_element(x.begin(), x.end());
        for (int k = 0; k < 3; k++) mn.coef[k] = a[k];
    } else {
        mn.bpb_min = best->val_bpb;
    }
    mn.d_opt = exp(xs);
    mn.m_opt = C / mn.d_opt;
    // all parameters at the optimum: N is near a power of D along a profile (N ∝ M roughly, M = C/D), so that law
    // through the profile's runs, read at D_opt (a profile of one size: its N)
    PowerLaw nd = power_law_fit(D, N);
    mn.n_opt = std::isfinite(nd.exp) ? nd.coef * pow(mn.d_opt, nd.exp) : N[0];
    return mn;
}

static std::map<double, std::vector<const SweepResult*>> by_budget(const std::vector<SweepResult>& r, const char* study) {
    std::map<double, std::vector<const SweepResult*>> g;
    for (const SweepResult& x : r) if (x.study == study && !x.diverged) g[x.compute].push_back(&x);   // (a diverged run has no loss)
    return g;
}

// The fits of one set of results (what sweep_fit computes once on the data and again on each bootstrap resample).
struct FitOnce { PowerLaw batch, lr, model, data, model_6n, loss; };
static FitOnce fit_once(const std::map<double, std::vector<const SweepResult*>>& hp,
                        const std::map<double, std::vector<const SweepResult*>>& iso, std::vector<const SweepResult*>* near,
                        std::vector<IsoflopMin>* minima) {
    FitOnce f;
    std::vector<double> c1, b1, l1;
    for (const auto& kv : hp) {
        double best = 1e300;
        for (const SweepResult* p : kv.second) best = std::min(best, p->val_bpb);
        for (const SweepResult* p : kv.second)
            if (p->val_bpb <= best * (1 + NEAR_OPTIMAL)) {
                c1.push_back(kv.first); b1.push_back(p->batch_tokens); l1.push_back(p->learning_rate);
                if (near) near->push_back(p);
            }
    }
    f.batch = power_law_fit(c1, b1);
    f.lr = power_law_fit(c1, l1);
    std::vector<double> c2, m2, d2, n2, e2;
    for (const auto& kv : iso) {
        IsoflopMin mn = isoflop_minimum(kv.first, kv.second);
        c2.push_back(kv.first); m2.push_back(mn.m_opt); d2.push_back(mn.d_opt); n2.push_back(6 * mn.n_opt);
        e2.push_back(mn.bpb_min);
        if (minima) minima->push_back(mn);
    }
    f.model = power_law_fit(c2, m2);
    f.data = power_law_fit(c2, d2);
    f.model_6n = power_law_fit(c2, n2);
    f.loss = power_law_fit(c2, e2);
    return f;
}

static uint64_t sweep_rng(uint64_t* s) {   // splitmix64
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static void interval(std::vector<double> v, double* lo, double* hi) {
    std::vector<double> ok;
    for (double x : v) if (std::isfinite(x)) ok.push_back(x);
    if (ok.size() < 2) { *lo = *hi = NAN; return; }
    std::sort(ok.begin(), ok.end());
    auto q = [&](double p) {   // linear interpolation between order statistics
        double r = p * (ok.size() - 1);
        size_t i = (size_t)r;
        return i + 1 < ok.size() ? ok[i] + (r - i) * (ok[i + 1] - ok[i]) : ok.back();
    };
    *lo = q(0.025); *hi = q(0.975);
}

SweepFits sweep_fit(const std::vector<SweepResult>& results, int bootstrap, uint64_t seed) {
    SweepFits out;
    auto hp = by_budget(results, "hparams"), iso = by_budget(results, "isoflop");
    FitOnce f = fit_once(hp, iso, &out.near_optimal, &out.minima);
    out.batch = f.batch; out.lr = f.lr; out.model = f.model; out.data = f.data; out.model_6n = f.model_6n; out.loss = f.loss;
    // bootstrap: resample the runs of each budget with replacement, refit, take the 2.5% and 97.5% quantiles
    PowerLaw FitOnce::*laws[] = {&FitOnce::batch, &FitOnce::lr, &FitOnce::model, &FitOnce::data, &FitOnce::model_6n,
                                 &FitOnce::loss};
    PowerLaw* dst[] = {&out.batch, &out.lr, &out.model, &out.data, &out.model_6n, &out.loss};
    std::vector<std::vector<double>> ex(6), co(6);
    uint64_t s = seed;
    for (int b = 0; b < bootstrap; b++) {
        auto resample = [&](const std::map<double, std::vector<const SweepResult*>>& g) {
            std::map<double, std::vector<const SweepResult*>> r;
            for (const auto& kv : g)
                for (size_t i = 0; i < kv.second.size(); i++) r[kv.first].push_back(kv.second[sweep_rng(&s) % kv.second.size()]);
            return r;
        };
        FitOnce fb = fit_once(resample(hp), resample(iso), nullptr, nullptr);
        for (int k = 0; k < 6; k++) { ex[k].push_back((fb.*laws[k]).exp); co[k].push_back((fb.*laws[k]).coef); }
    }
    for (int k = 0; k < 6; k++) {
        if (bootstrap <= 0) break;
        interval(ex[k], &dst[k]->exp_lo, &dst[k]->exp_hi);
        interval(co[k], &dst[k]->coef_lo, &dst[k]->coef_hi);
    }
    return out;
}

static json law_json(const PowerLaw& p) {
    auto num = [](double x) { return std::isfinite(x) ? json(x) : json(nullptr); };
    return {{"coefficient", num(p.coef)}, {"exponent", num(p.exp)}, {"coefficient_ci95", {num(p.coef_lo), num(p.coef_hi)}},
            {"exponent_ci95", {num(p.exp_lo), num(p.exp_hi)}}, {"points", p.points}};
}
static json fits_json(const SweepFits& f) {
    json j = {{"batch", law_json(f.batch)}, {"learning_rate", law_json(f.lr)}, {"model", law_json(f.model)},
              {"data", law_json(f.data)}, {"model_6n", law_json(f.model_6n)}, {"loss", law_json(f.loss)}};
    json mins = json::array();
    for (const IsoflopMin& m : f.minima)
        mins.push_back({{"compute", m.compute}, {"d_opt", m.d_opt}, {"m_opt", m.m_opt}, {"n_opt", m.n_opt},
                        {"bpb_min", m.bpb_min}, {"parabola", m.parabola}, {"inside", m.inside}, {"best_tokens", m.best_d},
                        {"best_flops_per_token", m.best_m}, {"best_val_bpb", m.best_bpb}});
    j["isoflop_minima"] = mins;
    return j;
}
static void print_law(const char* name, const PowerLaw& p, const char* what) {
    if (!std::isfinite(p.exp)) {
        printf("%s: (not fitted: %s needs results at two or more budgets)\n", name, what);
        return;
    }
    printf("%s_exponent: %.4f\n", name, p.exp);
    printf("%s_coefficient: %.4g\n", name, p.coef);
    if (std::isfinite(p.exp_lo))
        printf("%s_ci95: exponent [%.4f, %.4f], coefficient [%.4g, %.4g] (%d points)\n", name, p.exp_lo, p.exp_hi,
               p.coef_lo, p.coef_hi, p.points);
}

// ============================================================================
// the sweep directory: settings, points, runs

struct SweepSettings {
    std::string data, out, launcher, device = "auto";
    std::vector<double> budgets;
    double check_budget = 0;
    int grid_batch = 5, grid_lr = 5, models = 5, seq_len = 128, eval_windows = 0, bootstrap = 1000, threads = 0;
    double grid_factor = 2;
    uint64_t seed = 1;
};
static json settings_json(const SweepSettings& s) {
    return {{"data", s.data}, {"budgets", s.budgets}, {"check_budget", s.check_budget},
            {"grid", std::to_string(s.grid_batch) + "x" + std::to_string(s.grid_lr)}, {"grid_factor", s.grid_factor},
            {"models", s.models}, {"seq_len", s.seq_len}, {"eval_windows", s.eval_windows},
            {"seed", s.seed}};
}

struct Point {
    std::string study, id;
    double compute = 0, lr = 0;
    Config shape;
    int seqs = 0;             // sequences per step
    long steps = 0;
    double M = 0, N = 0;      // the shape's FLOPs per token (the paper's M) and all of its parameters
    double tokens() const { return (double)steps * seqs * shape.max_position_embeddings; }
};

static std::string budget_str(double C) {
    char b[32];
    snprintf(b, sizeof b, "%.3g", C);
    return b;
}
static Point make_point(const SweepSettings& s, const std::string& study, const std::string& id, double C, const Config& shape,
                        double batch_tokens, double lr) {
    Point p;
    p.study = study; p.id = id; p.compute = C; p.shape = shape; p.lr = lr;
    p.M = config_flops_per_token(shape, s.seq_len);
    p.N = (double)config_num_parameters(shape);
    p.seqs = std::max(1, (int)llround(batch_tokens / s.seq_len));
    double D = C / p.M;
    p.steps = (long)llround(D / ((double)p.seqs * s.seq_len));
    if (p.steps < 2)
        die("sweep: %s: budget %s on shape %s (M %.3g) is %.3g tokens, less than two steps of %d × %d tokens: raise the "
            "budget or lower --seq-len", id.c_str(), budget_str(C).c_str(), shape_name(shape).c_str(), p.M, D, p.seqs, s.seq_len);
    return p;
}

static int data_vocab(const SweepSettings& s, double* train_tokens) {
    std::string where = s.data + "/data.json";
    json dj = json_parse_file(where);
    if (!dj.is_object()) die("%s: not a JSON object", where.c_str());
    const json* tr = json_field(dj, "train", where, true);
    if (!tr->is_object()) die("%s: field 'train' must be an object", where.c_str());
    *train_tokens = json_num(*tr, "tokens", where + ": train", 0, 1, 1e18, true);
    return (int)json_int(dj, "vocab_size", where, 0, 2, 1 << 30, true);
}

// the grid around the paper's B_opt(C) and η_opt(C), on the shape nearest its M_opt(C)
static std::vector<Point> hparams_points(const SweepSettings& s, int V) {
    std::vector<Point> pts;
    for (double C : s.budgets) {
        ScalingPlan plan = scaling_plan(C);
        Config shape = sweep_shape(plan.flops_per_token, s.seq_len, V);
        for (int i = 0; i < s.grid_batch; i++)
            for (int j = 0; j < s.grid_lr; j++) {
                double B = plan.batch_tokens * pow(s.grid_factor, i - (s.grid_batch - 1) / 2.0);
                double lr = plan.learning_rate * pow(s.grid_factor, j - (s.grid_lr - 1) / 2.0);
                std::string id = "hparams-C" + budget_str(C) + "-b" + std::to_string(i) + "-l" + std::to_string(j);
                pts.push_back(make_point(s, "hparams", id, C, shape, B, lr));
            }
    }
    return pts;
}

// batch size and learning rate at C: our fit when there is one, else the paper's
static void hparams_at(const SweepFits& f, double C, double* B, double* lr, bool* fitted) {
    ScalingPlan plan = scaling_plan(C);
    *fitted = std::isfinite(f.batch.exp) && std::isfinite(f.lr.exp);
    *B = *fitted ? f.batch.coef * pow(C, f.batch.exp) : plan.batch_tokens;
    *lr = *fitted ? f.lr.coef * pow(C, f.lr.exp) : plan.learning_rate;
}

// at each budget, `models` consecutive members of the family centred on the one nearest the paper's M_opt(C)
static std::vector<Point> isoflop_points(const SweepSettings& s, int V, const SweepFits& f) {
    std::vector<Point> pts;
    std::vector<Config> fam = sweep_family(s.seq_len, V);
    if ((size_t)s.models > fam.size()) die("sweep: --models %d is more than the family's %zu shapes", s.models, fam.size());
    for (double C : s.budgets) {
        double B, lr;
        bool fitted;
        hparams_at(f, C, &B, &lr, &fitted);
        long first = (long)family_nearest(fam, scaling_plan(C).flops_per_token, s.seq_len) - (s.models - 1) / 2;
        first = std::max(0L, std::min(first, (long)fam.size() - s.models));   // the window slides at the family's ends
        for (long k = first; k < first + s.models; k++) {
            std::string id = "isoflop-C" + budget_str(C) + "-" + shape_name(fam[k]);
            pts.push_back(make_point(s, "isoflop", id, C, fam[k], B, lr));
        }
    }
    return pts;
}

static volatile sig_atomic_t g_sweep_signal = 0;
static pid_t g_child = 0;
static void on_sweep_signal(int sig) {
    g_sweep_signal = sig;
    if (g_child > 0) kill(g_child, SIGTERM);   // the run finishes its step, checkpoints and exits
}

// whether a run's log ends with train's refusal of a non-finite loss (the learning rate is too high for the batch)
static bool diverged(const std::string& log) {
    std::string text = read_file(log, (size_t)1 << 30);
    size_t at = text.rfind("error: ");
    return at != std::string::npos && text.find("the loss is not finite", at) != std::string::npos;
}

// Runs `deepseek train` for the point (resuming its run directory when it holds a checkpoint) as a child process,
// its output appended to SWEEP/runs/ID.log; returns the run's final validation bits per byte.
static double run_point(const SweepSettings& s, const Point& p, double* val_loss) {
    std::string runs = s.out + "/runs", run = runs + "/" + p.id, log = runs + "/" + p.id + ".log";
    make_dirs(runs);
    std::string model = s.out + "/models/" + shape_name(p.shape);
    if (!dir_exists(model)) {   // the shape's initial weights, once (the same for every run on it)
        Model m;
        model_build(&m, p.shape);
        model_init_random(&m, s.seed, 0.006f);
        model_save_dir(m, model + ".tmp", StoreDtype::F32);
        if (rename((model + ".tmp").c_str(), model.c_str()) != 0)
            die("sweep: cannot rename %s.tmp to %s: %s", model.c_str(), model.c_str(), strerror(errno));
    }
    std::vector<std::string> args;
    std::istringstream words(s.launcher);
    for (std::string w; words >> w;) args.push_back(w);
    char self[4096];   // this binary's own path: under a launcher, /proc/self/exe would name the launcher
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) die("sweep: cannot find this program's path: %s", strerror(errno));
    self[n] = 0;
    args.push_back(self);
    args.push_back("train");
    bool finished = dir_exists(run + "/final");
    std::string ckpt = finished ? "" : checkpoint_latest(run);
    if (!finished && !ckpt.empty()) {
        args.insert(args.end(), {"--resume", run, "--device", s.device});
    } else if (!finished) {
        int micro = p.seqs;   // the largest divisor of the batch that keeps a forward pass at 4096 tokens or fewer
        while (micro > 1 && (p.seqs % micro != 0 || (long)micro * s.seq_len > 4096)) micro--;
        char lr[32];
        snprintf(lr, sizeof lr, "%.6g", p.lr);
        long save = std::max(1L, p.steps / 4);
        args.insert(args.end(), {"--model", model, "--data", s.data, "--out", run, "--steps", std::to_string(p.steps),
                                 "--batch-tokens", std::to_string((long)p.seqs * s.seq_len), "--micro-batch", std::to_string(micro),
                                 "--seq-len", std::to_string(s.seq_len), "--lr", lr, "--eval-every", std::to_string(p.steps),
                                 "--eval-windows", std::to_string(s.eval_windows > 0 ? s.eval_windows : 1 << 20),
                                 "--save-every", std::to_string(save), "--keep", "1", "--sample-tokens", "0",
                                 "--seed", std::to_string(s.seed), "--device", s.device});
        if (dir_exists(run)) args.push_back("--overwrite");   // started, but killed before its first checkpoint
    }
    if (!finished) {
        if (s.threads > 0) args.insert(args.end(), {"--threads", std::to_string(s.threads)});
        std::vector<char*> argv;
        for (std::string& a : args) argv.push_back(&a[0]);
        argv.push_back(nullptr);
        fflush(stdout);
        fflush(stderr);
        pid_t parent = getpid();
        pid_t pid = fork();
        if (pid < 0) die("sweep: fork failed: %s", strerror(errno));
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);   // a sweep killed with -9 takes its run along (the run resumes later)
            if (getppid() != parent) _exit(1);   // (it died before the line above)
            int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
            if (fd >= 0) { dup2(fd, 1); dup2(fd, 2); }
            execvp(argv[0], argv.data());
            fprintf(stderr, "sweep: cannot run %s: %s\n", argv[0], strerror(errno));
            _exit(127);
        }
        g_child = pid;
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        g_child = 0;
        if (g_sweep_signal) {
            printf("sweep: stopped by signal %d during %s (checkpointed); run the same command again to continue\n",
                   (int)g_sweep_signal, p.id.c_str());
            exit(130);
        }
        if (WIFEXITED(status) && WEXITSTATUS(status) == 1 && diverged(log)) {   // a result too: this point is too hot
            *val_loss = NAN;
            return NAN;
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            die("sweep: %s failed (%s %d); its log: %s", p.id.c_str(), WIFEXITED(status) ? "exit status" : "signal",
                WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), log.c_str());
        if (!dir_exists(run + "/final")) die("sweep: %s stopped before its last step; its log: %s", p.id.c_str(), log.c_str());
    }
    double bpb = NAN;
    *val_loss = NAN;
    std::string mpath = run + "/metrics.jsonl";
    for (const auto& l : text_lines(mpath)) {   // the last evaluation's record
        json j = json::parse(l.second, nullptr, false);
        if (j.is_object() && j.contains("val_bpb") && j["val_bpb"].is_number()) {
            bpb = j["val_bpb"].get<double>();
            *val_loss = j.value("val_loss", NAN);
        }
    }
    if (!std::isfinite(bpb)) die("sweep: %s: no validation bits per byte in %s (does the data have a val split?)", p.id.c_str(), mpath.c_str());
    return bpb;
}

struct Sweep {
    SweepSettings s;
    std::string results_path;
    std::vector<SweepResult> results;
    std::vector<std::string> lines;   // results.jsonl as written
    double train_tokens = 0;
    int vocab = 0;
    bool done(const std::string& id) const {
        for (const SweepResult& r : results) if (r.id == id) return true;
        return false;
    }
};

static void run_points(Sweep* sw, const std::vector<Point>& pts, const char* what) {
    int todo = 0;
    for (const Point& p : pts) todo += !sw->done(p.id);
    printf("sweep %s: %zu points, %d to run\n", what, pts.size(), todo);
    int k = 0;
    for (const Point& p : pts) {
        k++;
        if (sw->done(p.id)) continue;
        printf("[%d/%zu] %s: shape %s (M %.3g, N %.3g), batch %d × %d, lr %.3g, %ld steps = %.3g tokens (%.2f epochs)\n", k,
               pts.size(), p.id.c_str(), shape_name(p.shape).c_str(), p.M, p.N, p.seqs, sw->s.seq_len, p.lr, p.steps,
               p.tokens(), p.tokens() / sw->train_tokens);
        double t0 = now_seconds(), val_loss;
        double bpb = run_point(sw->s, p, &val_loss);
        if (std::isfinite(bpb)) printf("        val bpb %.4f (%.1f s)\n", bpb, now_seconds() - t0);
        else printf("        diverged: the loss was not finite (%.1f s); recorded, left out of the fits\n", now_seconds() - t0);
        fflush(stdout);
        json j = {{"study", p.study}, {"id", p.id}, {"compute", p.compute}, {"batch_tokens", (double)p.seqs * sw->s.seq_len},
                  {"learning_rate", p.lr}, {"flops_per_token", p.M}, {"tokens", p.tokens()}, {"params", p.N},
                  {"steps", p.steps}, {"seq_len", sw->s.seq_len},
                  {"epochs", p.tokens() / sw->train_tokens},
                  {"shape", {{"layers", p.shape.num_hidden_layers}, {"hidden_size", p.shape.hidden_size},
                             {"heads", p.shape.num_attention_heads}, {"kv_heads", p.shape.num_key_value_heads},
                             {"intermediate_size", p.shape.intermediate_size}, {"vocab_size", p.shape.vocab_size}}}};
        if (std::isfinite(bpb)) { j["val_bpb"] = bpb; j["val_loss"] = val_loss; }
        else j["diverged"] = true;
        sw->lines.push_back(j.dump());
        std::string all;
        for (const std::string& l : sw->lines) all += l + "\n";
        write_file_atomic(sw->results_path, all);   // the whole file each time: never a half-written line
        int line = (int)sw->lines.size();
        sw->results.push_back(result_from_line(sw->lines.back(), line, sw->results_path + ":" + std::to_string(line)));
    }
}

// ============================================================================
// pictures (gnuplot) and the report

static bool run_gnuplot(const std::string& gp, const std::string& png) {
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) return false;
    std::string cmd = "gnuplot '" + gp + "' 2>/dev/null";
    if (system(cmd.c_str()) == 0 && file_exists(png)) return true;
    std::string script = read_file(gp);   // pngcairo may be missing from a minimal build; png is always there
    size_t at = script.find("pngcairo");
    if (at != std::string::npos) script.replace(at, 8, "png");
    write_file_atomic(gp, script);
    return system(cmd.c_str()) == 0 && file_exists(png);
}
static std::string g(double x) {
    char b[48];
    snprintf(b, sizeof b, "%.6g", x);
    return b;
}

// writes SWEEP/plots/*.tsv, *.gp and (with gnuplot) *.png; returns the PNGs made
static std::vector<std::string> write_pictures(const std::string& out, const std::vector<SweepResult>& r, const SweepFits& f,
                                               const SweepResult* check, double predicted) {
    std::string dir = out + "/plots";
    make_dirs(dir);
    std::vector<std::string> made;
    std::set<const SweepResult*> near(f.near_optimal.begin(), f.near_optimal.end());
    double cmin = 1e300, cmax = 0;   // every budget, the check's included, with half an octave of room on each side
    for (const SweepResult& x : r) { cmin = std::min(cmin, x.compute); cmax = std::max(cmax, x.compute); }
    std::string head = "set terminal pngcairo size 900,600 noenhanced\nset grid\nset logscale x\nset format x '%.0e'\n"
                       "set key opaque\n";
    std::string crange = "set xrange [" + g(cmin / 1.6) + ":" + g(cmax * 1.6) + "]\n";
    auto law = [](const PowerLaw& p) { return g(p.coef) + "*x**(" + g(p.exp) + ")"; };
    // Figure 3: the batch × learning-rate grid, near-optimal points, fitted and paper's lines
    {
        std::string all = "# compute\tbatch_tokens\tlearning_rate\tval_bpb\tnear_optimal\n";
        for (const SweepResult& x : r)
            if (x.study == "hparams" && !x.diverged)
                all += g(x.compute) + "\t" + g(x.batch_tokens) + "\t" + g(x.learning_rate) + "\t" + g(x.val_bpb) + "\t" +
                       (near.count(&x) ? "1" : "0") + "\n";
        write_file_atomic(dir + "/hparams.tsv", all);
        std::string png = dir + "/hparams.png", gp = dir + "/hparams.gp";
        std::string s = head + crange + "set output '" + png + "'\nset logscale y\nset multiplot layout 1,2 title "
                        "'hyper-parameters: the grid (grey), near-optimal runs (blue), fit (line), paper (dashed)'\n";
        s += "set xlabel 'compute C (FLOPs)'\nset ylabel 'batch size (tokens)'\nset key top left\n";
        s += "plot '" + dir + "/hparams.tsv' using 1:2 with points pt 6 lc rgb '#aaaaaa' title 'grid', '' using 1:($5>0?$2:1/0) "
             "with points pt 7 ps 1.3 lc rgb '#2060c0' title 'near-optimal'";
        if (std::isfinite(f.batch.exp)) s += ", " + law(f.batch) + " lw 2 lc rgb '#2060c0' title 'fit'";
        s += ", " + g(PAPER_BATCH[0]) + "*x**(" + g(PAPER_BATCH[1]) + ") dt 2 lc rgb '#c04020' title 'paper'\n";
        s += "set ylabel 'learning rate'\n";
        s += "plot '" + dir + "/hparams.tsv' using 1:3 with points pt 6 lc rgb '#aaaaaa' title 'grid', '' using 1:($5>0?$3:1/0) "
             "with points pt 7 ps 1.3 lc rgb '#2060c0' title 'near-optimal'";
        if (std::isfinite(f.lr.exp)) s += ", " + law(f.lr) + " lw 2 lc rgb '#2060c0' title 'fit'";
        s += ", " + g(PAPER_LR[0]) + "*x**(" + g(PAPER_LR[1]) + ") dt 2 lc rgb '#c04020' title 'paper'\nunset multiplot\n";
        write_file_atomic(gp, s);
        if (run_gnuplot(gp, png)) made.push_back(png);
    }
    // Figure 4: the IsoFLOP profiles, their parabolas and minima
    auto iso = by_budget(r, "isoflop");
    if (!iso.empty()) {
        std::string png = dir + "/isoflop.png", gp = dir + "/isoflop.gp";
        std::string s = head + "set output '" + png + "'\nset title 'IsoFLOP profiles: "
                        "bits per byte against tokens D per budget, parabolas in log D, minima'\n"
                        "set xlabel 'tokens D'\nset ylabel 'validation bits per byte'\nset key top right\n";
        std::string plot = "plot ";
        int k = 0;
        const char* colours[] = {"#2060c0", "#c04020", "#20a040", "#a020a0", "#c08000", "#008080", "#606060"};
        for (const auto& kv : iso) {
            std::string tsv = dir + "/isoflop_" + std::to_string(k) + ".tsv", t = "# tokens\tflops_per_token\tval_bpb\n";
            for (const SweepResult* p : kv.second) t += g(p->tokens) + "\t" + g(p->flops_per_token) + "\t" + g(p->val_bpb) + "\n";
            write_file_atomic(tsv, t);
            std::string col = colours[k % 7];
            plot += std::string(k ? ", " : "") + "'" + tsv + "' using 1:3 with points pt 7 lc rgb '" + col + "' title 'C " +
                    budget_str(kv.first) + "'";
            double lo = 1e300, hi = 0;   // the parabola over the profile's range of D
            for (const SweepResult* p : kv.second) { lo = std::min(lo, p->tokens); hi = std::max(hi, p->tokens); }
            for (const IsoflopMin& m : f.minima)
                if (m.compute == kv.first && m.parabola)
                    plot += ", (x >= " + g(lo / 1.5) + " && x <= " + g(hi * 1.5) + ") ? " + g(m.coef[0]) + " + " +
                            g(m.coef[1]) + "*log(x) + " + g(m.coef[2]) + "*log(x)**2 : 1/0 lc rgb '" + col + "' notitle";
            k++;
        }
        std::string mins = "# d_opt\tbpb_min\n";
        for (const IsoflopMin& m : f.minima) mins += g(m.d_opt) + "\t" + g(m.bpb_min) + "\n";
        write_file_atomic(dir + "/isoflop_minima.tsv", mins);
        plot += ", '" + dir + "/isoflop_minima.tsv' using 1:2 with points pt 3 ps 2.5 lw 2 lc rgb 'black' title 'minima'\n";
        s += "set samples 400\n" + plot;
        write_file_atomic(gp, s);
        if (run_gnuplot(gp, png)) made.push_back(png);
        // the fitted allocation M_opt(C), D_opt(C)
        std::string tsv = dir + "/allocation.tsv", t = "# compute\tm_opt\td_opt\n";
        for (const IsoflopMin& m : f.minima) t += g(m.compute) + "\t" + g(m.m_opt) + "\t" + g(m.d_opt) + "\n";
        write_file_atomic(tsv, t);
        png = dir + "/allocation.png"; gp = dir + "/allocation.gp";
        s = head + crange + "set output '" + png + "'\nset logscale y\nset multiplot layout 1,2 title 'optimal allocation: "
            "IsoFLOP minima (points), fit (line), paper (dashed)'\nset xlabel 'compute C (FLOPs)'\nset key top left\n";
        s += "set ylabel 'M_opt (FLOPs per token)'\nplot '" + tsv + "' using 1:2 with points pt 7 lc rgb '#2060c0' title 'minima'";
        if (std::isfinite(f.model.exp)) s += ", " + law(f.model) + " lw 2 lc rgb '#2060c0' title 'fit'";
        s += ", " + g(PAPER_MODEL[0]) + "*x**(" + g(PAPER_MODEL[1]) + ") dt 2 lc rgb '#c04020' title 'paper'\n";
        s += "set ylabel 'D_opt (tokens)'\nplot '" + tsv + "' using 1:3 with points pt 7 lc rgb '#2060c0' title 'minima'";
        if (std::isfinite(f.data.exp)) s += ", " + law(f.data) + " lw 2 lc rgb '#2060c0' title 'fit'";
        s += ", " + g(PAPER_DATA[0]) + "*x**(" + g(PAPER_DATA[1]) + ") dt 2 lc rgb '#c04020' title 'paper'\nunset multiplot\n";
        write_file_atomic(gp, s);
        if (run_gnuplot(gp, png)) made.push_back(png);
    }
    // Figure 5: the optimal runs' bits per byte against compute, the fitted curve, the prediction and the check run
    if (!f.minima.empty()) {
        std::string tsv = dir + "/loss_compute.tsv", t = "# compute\tbpb_min\n";
        for (const IsoflopMin& m : f.minima) t += g(m.compute) + "\t" + g(m.bpb_min) + "\n";
        write_file_atomic(tsv, t);
        std::string ct = dir + "/check.tsv", c = "# compute\tpredicted\tmeasured\n";
        if (check) c += g(check->compute) + "\t" + g(predicted) + "\t" + g(check->val_bpb) + "\n";
        write_file_atomic(ct, c);
        std::string png = dir + "/loss_compute.png", gp = dir + "/loss_compute.gp";
        std::string s = head + crange + "set output '" + png + "'\nset title 'loss against compute: the "
                        "IsoFLOP minima, the fitted power law, the prediction and the check run'\n"
                        "set xlabel 'compute C (FLOPs)'\nset ylabel 'validation bits per byte'\nset key top right\n";
        s += "plot '" + tsv + "' using 1:2 with points pt 7 lc rgb '#2060c0' title 'IsoFLOP minima'";
        if (std::isfinite(f.loss.exp)) s += ", " + law(f.loss) + " lw 2 lc rgb '#2060c0' title 'fit'";
        if (check)
            s += ", '" + ct + "' using 1:2 with points pt 6 ps 2.5 lw 2 lc rgb '#c04020' title 'predicted', '' using 1:3 with "
                 "points pt 7 ps 1.8 lc rgb '#c04020' title 'measured'";
        s += "\n";
        write_file_atomic(gp, s);
        if (run_gnuplot(gp, png)) made.push_back(png);
    }
    return made;
}

static std::string pct(double x) {
    char b[32];
    snprintf(b, sizeof b, "%+.2f%%", x);
    return b;
}
static std::string law_row(const char* what, const PowerLaw& p, const double* paper) {
    char b[512];
    auto ci = [](double lo, double hi, const char* fmt) {
        char c[96];
        if (!std::isfinite(lo)) return std::string("—");
        snprintf(c, sizeof c, fmt, lo, hi);
        return std::string(c);
    };
    std::string pe = paper ? g(paper[1]) : "—", pc = paper ? g(paper[0]) : "—";
    if (!std::isfinite(p.exp)) { snprintf(b, sizeof b, "| %s | not fitted | | | | %s | %s |\n", what, pe.c_str(), pc.c_str()); return b; }
    snprintf(b, sizeof b, "| %s | %.4f | %s | %.4g | %s | %s | %s |\n", what, p.exp, ci(p.exp_lo, p.exp_hi, "[%.4f, %.4f]").c_str(),
             p.coef, ci(p.coef_lo, p.coef_hi, "[%.3g, %.3g]").c_str(), pe.c_str(), pc.c_str());
    return b;
}

static void write_report(const Sweep& sw, const SweepFits& f, const SweepResult* check, double predicted,
                         const std::vector<std::string>& pngs) {
    const SweepSettings& s = sw.s;
    std::string r = "# Scaling-law sweep\n\n";
    r += "Data: `" + s.data + "` (" + g(sw.train_tokens) + " training tokens, vocabulary " + std::to_string(sw.vocab) +
         "); sequence length " + std::to_string(s.seq_len) + "; budgets";
    for (double C : s.budgets) r += " " + budget_str(C);
    r += " FLOPs (C = M·D, M = 72·L·d² + 12·L·d·l_seq); batch × learning-rate grid " + std::to_string(s.grid_batch) + "×" +
         std::to_string(s.grid_lr) + " (factor " + g(s.grid_factor) + "), " + std::to_string(s.models) +
         " neighbouring shapes per IsoFLOP profile. " + std::to_string(sw.results.size()) +
         " runs; near-optimal: within 0.25% of a budget's best validation bits per byte. Intervals: 95% bootstrap (" +
         std::to_string(s.bootstrap) + " resamples of the runs within each budget).\n\n";
    r += "## Fits\n\n| law | exponent | 95% interval | coefficient | 95% interval | paper's exponent | paper's coefficient |\n"
         "|---|---|---|---|---|---|---|\n";
    r += law_row("batch size B_opt = a·C^b", f.batch, PAPER_BATCH);
    r += law_row("learning rate η_opt = c·C^d", f.lr, PAPER_LR);
    r += law_row("model scale M_opt (the paper's M)", f.model, PAPER_MODEL);
    r += law_row("data D_opt = C / M_opt", f.data, PAPER_DATA);
    r += law_row("6N_opt (all parameters, embeddings included)", f.model_6n, nullptr);
    r += law_row("optimal bits per byte = e·C^f", f.loss, nullptr);
    r += "\nThe paper's M leaves the embeddings out; 6N counts every parameter. At this scale the vocabulary's embedding "
         "and output matrices are a large share of the model, so the two give different exponents (Pearce & Song 2024).\n\n";
    r += "## IsoFLOP minima\n\n| budget C | D_opt | M_opt | N_opt | bpb at the minimum | from | best run: D, M, bpb |\n"
         "|---|---|---|---|---|---|---|\n";
    for (const IsoflopMin& m : f.minima)
        r += "| " + budget_str(m.compute) + " | " + g(m.d_opt) + " | " + g(m.m_opt) + " | " + g(m.n_opt) + " | " +
             g(m.bpb_min) + " | " + (m.parabola ? (m.inside ? "parabola" : "parabola (outside the sampled range)") : "best run") +
             " | " + g(m.best_d) + ", " + g(m.best_m) + ", " + g(m.best_bpb) + " |\n";
    r += "\n## The check run\n\n";
    if (check)
        r += "At C = " + budget_str(check->compute) + ": predicted " + g(predicted) + " bits per byte, measured " +
             g(check->val_bpb) + " (" + pct(100.0 * (check->val_bpb - predicted) / predicted) + " off), with batch " +
             g(check->batch_tokens) + " tokens, learning rate " + g(check->learning_rate) + ", M " + g(check->flops_per_token) +
             ", " + g(check->tokens) + " tokens.\n";
    else r += "Not run yet (`deepseek sweep check`).\n";
    r += "\n## Runs\n\n| study | id | C | batch | lr | M | N | tokens | epochs | val bpb |\n|---|---|---|---|---|---|---|---|---|---|\n";
    for (const SweepResult& x : sw.results)
        r += "| " + x.study + " | " + x.id + " | " + budget_str(x.compute) + " | " + g(x.batch_tokens) + " | " +
             g(x.learning_rate) + " | " + g(x.flops_per_token) + " | " + g(x.params) + " | " + g(x.tokens) + " | " +
             g(x.tokens / sw.train_tokens) + " | " + (x.diverged ? std::string("diverged") : g(x.val_bpb)) + " |\n";
    if (!pngs.empty()) {
        r += "\n## Pictures\n\n";
        for (const std::string& p : pngs) {
            std::string rel = p.substr(s.out.size() + 1);
            r += "![" + rel + "](" + rel + ")\n";
        }
    }
    write_file_atomic(s.out + "/report.md", r);
}

// ============================================================================
// deepseek sweep

static const char* SWEEP_USAGE =
    "usage: deepseek sweep run --data DIR --out SWEEP [flags]     hparams, isoflop, check, then report\n"
    "       deepseek sweep hparams|isoflop|check --data DIR --out SWEEP [flags]   one step\n"
    "       deepseek sweep report --out SWEEP                       fits, pictures and SWEEP/report.md\n"
    "       deepseek sweep fit --results FILE.jsonl [--json FILE] [--bootstrap N]\n"
    "  The paper's scaling-law study: batch size and learning rate (hparams), model/data allocation (isoflop), and the\n"
    "  loss–compute curve's prediction checked by a larger run (check). Every point is a `deepseek train` run in\n"
    "  SWEEP/runs/ID (its output in SWEEP/runs/ID.log); SWEEP/results.jsonl gets a line per finished run. Run the same\n"
    "  command again after a stop or a kill: finished points are skipped, an interrupted one resumes.\n"
    "  --budgets C1,C2,...  compute budgets in FLOPs (default 1e10,3e10,1e11,3e11)\n"
    "  --check-budget C     the prediction's budget (default 3 × the largest)\n"
    "  --grid BxL           batch sizes × learning rates around the paper's B_opt(C), η_opt(C) (default 5x5)\n"
    "  --grid-factor F      their spacing (default 2)\n"
    "  --models K           shapes per IsoFLOP profile: neighbours in the sweep's family of small models (d_model 8 …\n"
    "                       1024, L = d/32), centred on the paper's M_opt(C) (default 5)\n"
    "  --seq-len T          (default 128)        --eval-windows N   validation windows per run (default 0: all)\n"
    "  --seed S             weights and data order (default 1)     --bootstrap N   resamples for the intervals (1000)\n"
    "  --threads N, --device auto|cpu|cuda       passed to each run\n"
    "  --launcher \"CMD\"     prefix of each run's command line, e.g. \"mpirun -np 4\" for data-parallel runs\n"
    "  A sweep keeps its settings in SWEEP/sweep.json: later commands on it take them from there.\n"
    "  fit: results lines need study (hparams|isoflop|check), compute, batch_tokens, learning_rate, flops_per_token,\n"
    "  tokens and val_bpb (params for the 6N fit); prints batch_/lr_/model_/data_/model_6n_/loss_exponent and _coefficient.\n";

static std::vector<double> parse_budgets(const std::string& s) {
    std::vector<double> v;
    size_t pos = 0;
    while (pos <= s.size()) {
        size_t c = s.find(',', pos);
        std::string w = s.substr(pos, c == std::string::npos ? std::string::npos : c - pos);
        char* end = nullptr;
        errno = 0;
        double x = strtod(w.c_str(), &end);
        if (w.empty() || *end || errno || !std::isfinite(x) || x < 1e3 || x > 1e30)
            die("sweep: --budgets must be a comma-separated list of FLOPs in [1e3, 1e30], got '%s'", s.c_str());
        v.push_back(x);
        if (c == std::string::npos) break;
        pos = c + 1;
    }
    std::sort(v.begin(), v.end());
    if (std::adjacent_find(v.begin(), v.end()) != v.end()) die("sweep: --budgets lists a budget twice: '%s'", s.c_str());
    return v;
}

static void print_fits(const SweepFits& f) {
    print_law("batch", f.batch, "the hparams study");
    print_law("lr", f.lr, "the hparams study");
    print_law("model", f.model, "the isoflop study");
    print_law("data", f.data, "the isoflop study");
    print_law("model_6n", f.model_6n, "the isoflop study");
    print_law("loss", f.loss, "the isoflop study");
    for (const IsoflopMin& m : f.minima)
        printf("isoflop C %s: D_opt %.4g, M_opt %.4g, bpb %.4f (%s; best run D %.4g, bpb %.4f)\n", budget_str(m.compute).c_str(),
               m.d_opt, m.m_opt, m.bpb_min, m.parabola ? (m.inside ? "parabola" : "parabola, outside the sampled range") : "best run",
               m.best_d, m.best_bpb);
}

static int sweep_fit_cmd(int argc, char** argv) {
    Args a(argc, argv, 3, "sweep fit", SWEEP_USAGE, {"results", "json", "bootstrap", "seed"}, {});
    if (!a.has("results")) die("sweep fit: --results FILE.jsonl is required");
    std::vector<SweepResult> r = sweep_read_results(a.str("results"));
    if (by_budget(r, "hparams").empty() && by_budget(r, "isoflop").empty())
        die("sweep fit: %s holds no hparams or isoflop results", a.str("results").c_str());
    SweepFits f = sweep_fit(r, (int)a.integer("bootstrap", 1000, 0, 1000000), (uint64_t)a.integer("seed", 1, 0, 1LL << 62));
    print_fits(f);
    if (a.has("json")) write_file_atomic(a.str("json"), fits_json(f).dump(2) + "\n");
    return 0;
}

// the check point at the check budget: batch, learning rate and shape from the fits
static Point check_point(const Sweep& sw, const SweepFits& f, double* predicted) {
    if (!std::isfinite(f.model.exp) || !std::isfinite(f.loss.exp))
        die("sweep check: needs the isoflop study at two or more budgets first (deepseek sweep isoflop)");
    double C = sw.s.check_budget, B, lr;
    bool fitted;
    hparams_at(f, C, &B, &lr, &fitted);
    if (!fitted) printf("note: no hparams fit: batch size and learning rate from the paper's laws\n");
    Config shape = sweep_shape(f.model.coef * pow(C, f.model.exp), sw.s.seq_len, sw.vocab);
    *predicted = f.loss.coef * pow(C, f.loss.exp);
    return make_point(sw.s, "check", "check-C" + budget_str(C), C, shape, B, lr);
}

static const SweepResult* find_check(const Sweep& sw) {
    for (const SweepResult& r : sw.results)
        if (r.study == "check" && r.compute == sw.s.check_budget && !r.diverged) return &r;
    return nullptr;
}

static void sweep_report(Sweep* sw) {
    SweepFits f = sweep_fit(sw->results, sw->s.bootstrap, sw->s.seed);
    print_fits(f);
    double predicted = NAN;
    const SweepResult* check = find_check(*sw);
    if (check && std::isfinite(f.loss.exp)) predicted = f.loss.coef * pow(check->compute, f.loss.exp);
    if (check) printf("check C %s: predicted %.4f bits per byte, measured %.4f\n", budget_str(check->compute).c_str(), predicted,
                      check->val_bpb);
    std::vector<std::string> pngs = write_pictures(sw->s.out, sw->results, f, check, predicted);
    write_file_atomic(sw->s.out + "/fits.json", fits_json(f).dump(2) + "\n");
    write_report(*sw, f, check, predicted, pngs);
    printf("report: %s/report.md\n", sw->s.out.c_str());
    printf("pictures: %s\n", pngs.empty() ? "(gnuplot not found: the data and scripts are in plots/)" : (sw->s.out + "/plots/*.png").c_str());
}

int cmd_sweep(int argc, char** argv) {
    if (argc < 3) { fputs(SWEEP_USAGE, stderr); return 1; }
    if (is_help(3, argv, 2)) { fputs(SWEEP_USAGE, stdout); return 0; }
    std::string step = argv[2];
    if (step == "fit") return sweep_fit_cmd(argc, argv);
    if (step != "run" && step != "hparams" && step != "isoflop" && step != "check" && step != "report")
        die("sweep: unknown step '%s' (run, hparams, isoflop, check, report, fit)", step.c_str());
    Args a(argc, argv, 3, "sweep " + step, SWEEP_USAGE,
           {"data", "out", "budgets", "check-budget", "grid", "grid-factor", "models", "seq-len", "eval-windows",
            "seed", "bootstrap", "threads", "device", "launcher"}, {});
    if (!a.has("out")) die("sweep %s: --out SWEEP is required", step.c_str());
    Sweep sw;
    SweepSettings& s = sw.s;
    s.out = a.str("out");
    std::string settings_path = s.out + "/sweep.json";
    json saved;
    if (path_exists(settings_path)) {
        saved = json_parse_file(settings_path);
        if (!saved.is_object()) die("%s: not a JSON object", settings_path.c_str());
    } else if (step == "report") die("sweep report: %s holds no sweep (no sweep.json)", s.out.c_str());
    // each setting: the flag, else the saved value, else the default; a flag that contradicts the saved value is refused
    // (given: the flag's parsed value, null when the flag is absent)
    auto pick = [&](const char* flag, const char* key, const json& given, const json& dflt) -> json {
        if (given.is_null()) return saved.contains(key) ? saved[key] : dflt;
        if (saved.contains(key) && saved[key] != given)
            die("sweep %s: --%s %s differs from this sweep's %s (%s): give the same, or a new --out", step.c_str(), flag,
                a.str(flag).c_str(), key, saved[key].dump().c_str());
        return given;
    };
    json jb = pick("budgets", "budgets", a.has("budgets") ? json(parse_budgets(a.str("budgets"))) : json(),
                   json(std::vector<double>{1e10, 3e10, 1e11, 3e11}));
    if (!jb.is_array() || jb.empty()) die("%s: field 'budgets' must be a non-empty list", settings_path.c_str());
    for (const json& x : jb) {
        if (!x.is_number() || !(x.get<double>() >= 1e3 && x.get<double>() <= 1e30))
            die("%s: field 'budgets' must hold FLOPs in [1e3, 1e30]", settings_path.c_str());
        s.budgets.push_back(x.get<double>());
    }
    json grid_given;
    if (a.has("grid")) {
        int gb = 0, gl = 0;
        char tail = 0;
        if (sscanf(a.str("grid").c_str(), "%dx%d%c", &gb, &gl, &tail) != 2 || gb < 1 || gl < 1 || gb > 50 || gl > 50)
            die("sweep: --grid must be BxL, batch sizes × learning rates, each 1 to 50 (e.g. 3x3), got '%s'", a.str("grid").c_str());
        grid_given = std::to_string(gb) + "x" + std::to_string(gl);
    }
    std::string grid = pick("grid", "grid", grid_given, "5x5").get<std::string>();
    if (sscanf(grid.c_str(), "%dx%d", &s.grid_batch, &s.grid_lr) != 2 || s.grid_batch < 1 || s.grid_lr < 1)
        die("%s: field 'grid' must be BxL", settings_path.c_str());
    auto num_flag = [&](const char* flag, const char* key, double dflt, double lo, double hi) {
        json v = pick(flag, key, a.has(flag) ? json(a.real(flag, dflt, lo, hi)) : json(), dflt);
        if (!v.is_number() || v.get<double>() < lo || v.get<double>() > hi)
            die("%s: field '%s' must be a number in [%g, %g]", settings_path.c_str(), key, lo, hi);
        return v.get<double>();
    };
    auto int_flag = [&](const char* flag, const char* key, long long dflt, long long lo, long long hi) {
        json v = pick(flag, key, a.has(flag) ? json(a.integer(flag, dflt, lo, hi)) : json(), dflt);
        if (!v.is_number_integer() || v.get<long long>() < lo || v.get<long long>() > hi)
            die("%s: field '%s' must be an integer in [%lld, %lld]", settings_path.c_str(), key, lo, hi);
        return v.get<long long>();
    };
    double largest = *std::max_element(s.budgets.begin(), s.budgets.end());
    s.check_budget = num_flag("check-budget", "check_budget", 3 * largest, 1e3, 1e30);
    s.grid_factor = num_flag("grid-factor", "grid_factor", 2, 1.01, 1e9);
    s.models = (int)int_flag("models", "models", 5, 1, 50);
    s.seq_len = (int)int_flag("seq-len", "seq_len", 128, 8, 65536);
    s.eval_windows = (int)int_flag("eval-windows", "eval_windows", 0, 0, 1 << 20);
    s.seed = (uint64_t)int_flag("seed", "seed", 1, 0, 1LL << 50);
    json jd = pick("data", "data", a.has("data") ? json(a.str("data")) : json(), json(""));
    s.data = jd.is_string() ? jd.get<std::string>() : "";
    if (s.data.empty() && step != "report") die("sweep %s: --data DIR is required", step.c_str());
    s.bootstrap = (int)a.integer("bootstrap", 1000, 0, 1000000);
    s.threads = (int)a.integer("threads", 0, 0, 1024);
    s.device = a.str("device", "auto");
    s.launcher = a.str("launcher", "");
    if (s.check_budget <= largest) die("sweep: --check-budget %g must be larger than the largest budget (%g)", s.check_budget, largest);
    if (!s.data.empty()) sw.vocab = data_vocab(s, &sw.train_tokens);
    // every hparams point is checked (shapes, steps) before the sweep directory is made
    std::vector<Point> hp;
    if (step != "report") hp = hparams_points(s, sw.vocab);
    make_dirs(s.out);
    if (!path_exists(settings_path)) write_file_atomic(settings_path, settings_json(s).dump(2) + "\n");
    sw.results_path = s.out + "/results.jsonl";
    if (path_exists(sw.results_path))
        for (const auto& l : text_lines(sw.results_path)) {
            sw.lines.push_back(l.second);
            sw.results.push_back(result_from_line(l.second, l.first, sw.results_path + ":" + std::to_string(l.first)));
        }
    if (step == "report") { sweep_report(&sw); return 0; }
    signal(SIGINT, on_sweep_signal);
    signal(SIGTERM, on_sweep_signal);
    printf("sweep: %s, data %s (%.3g training tokens), budgets", s.out.c_str(), s.data.c_str(), sw.train_tokens);
    for (double C : s.budgets) printf(" %s", budget_str(C).c_str());
    printf(", check at %s\n", budget_str(s.check_budget).c_str());
    if (step == "run" || step == "hparams") run_points(&sw, hp, "hparams");
    if (step == "run" || step == "isoflop") {
        SweepFits f = sweep_fit(sw.results, 0, s.seed);
        if (!std::isfinite(f.batch.exp)) printf("note: no hparams fit yet: the IsoFLOP runs use the paper's batch size and learning rate\n");
        run_points(&sw, isoflop_points(s, sw.vocab, f), "isoflop");
    }
    if (step == "run" || step == "check") {
        SweepFits f = sweep_fit(sw.results, 0, s.seed);
        double predicted;
        Point p = check_point(sw, f, &predicted);
        printf("check: predicted %.4f bits per byte at C %s\n", predicted, budget_str(s.check_budget).c_str());
        run_points(&sw, {p}, "check");
    }
    if (step == "run") sweep_report(&sw);
    return 0;
}
