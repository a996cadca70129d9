// `deepseek sweep` tests: the fits recover known power laws from synthetic results (tolerances from the noise and
// the grid put into them), a tiny sweep runs end to end and, killed with -9 mid-run and started again, ends with the
// same results file as an uninterrupted one; bad results lines and impossible grids are one clear error line.
#include <doctest/doctest.h>  // TEST_CASE, CHECK, REQUIRE, MESSAGE
#include <algorithm>          // std::min
#include <cmath>              // log, exp, pow, sqrt
#include <cstdio>             // FILE
#include <random>             // std::mt19937_64, normal and uniform distributions (Draws)
#include <nlohmann/json.hpp>  // nlohmann::json
#include "../deepseek.h"      // sweep_fit, sweep_read_results, power_law_fit, SweepResult
#include "test_util.h"        // run_cmd, deepseek_bin, tmp_dir, synthetic_data, one_error_line

using json = nlohmann::json;

// a run directory with a checkpoint but no final/: a point the sweep is in the middle of
static bool mid_run(const std::string& out) {
    auto r = run_cmd("for d in " + out + "/runs/*/; do if [ ! -d \"$d/final\" ] && ls -d \"$d\"step_* >/dev/null 2>&1; "
                     "then echo MID; fi; done");
    return r.out.find("MID") != std::string::npos;
}
static std::string first_lines(const std::string& s, int n) {
    size_t pos = 0;
    for (int i = 0; i < n && pos != std::string::npos; i++) pos = s.find('\n', pos) + 1;
    return s.substr(0, pos);
}

// Budgets 1e17 … 1e20 in half-decades (7), as a study on real hardware would span.
static std::vector<double> budgets() {
    std::vector<double> c;
    for (int k = 0; k < 7; k++) c.push_back(1e17 * pow(10.0, k / 2.0));
    return c;
}
static double spread(const std::vector<double>& C) {   // Σ (ln C − mean)²: what a slope's variance divides by
    double m = 0, s = 0;
    for (double c : C) m += log(c) / C.size();
    for (double c : C) s += (log(c) - m) * (log(c) - m);
    return s;
}

// a synthetic run: what the fits read of a results line
static SweepResult run_at(const char* study, double C, double batch, double lr, double tokens, double params, double bpb) {
    SweepResult x;
    x.study = study; x.compute = C; x.batch_tokens = batch; x.learning_rate = lr;
    x.tokens = tokens; x.flops_per_token = C / tokens; x.params = params; x.val_bpb = bpb;
    return x;
}
// the random parts of a synthetic study: a shift of each budget's grid in [−½, ½) of a step, and N(0, 1) noise
struct Draws {
    std::mt19937_64 rng;
    std::uniform_real_distribution<double> shift_d{-0.5, 0.5};
    std::normal_distribution<double> noise_d{0.0, 1.0};
    explicit Draws(uint64_t seed) : rng(seed) {}
    double shift() { return shift_d(rng); }
    double noise() { return noise_d(rng); }
};

TEST_CASE("power_law_fit is least squares in log-log space: exact on an exact power law, NaN from one budget") {
    std::vector<double> C = {1e10, 1e11, 1e13}, y;
    for (double c : C) y.push_back(0.2920 * pow(c, 0.3271));
    PowerLaw p = power_law_fit(C, y);
    CHECK(p.exp == doctest::Approx(0.3271).epsilon(1e-9));
    CHECK(p.coef == doctest::Approx(0.2920).epsilon(1e-6));
    PowerLaw one = power_law_fit({1e10, 1e10}, {3.0, 4.0});
    CHECK(std::isnan(one.exp));
}

TEST_CASE("the hparams fit recovers B_opt = 0.2920·C^0.3271 and η_opt = 0.3118·C^-0.1250 from a noisy grid") {
    // Each budget: a 9 × 9 grid, spacing √2 in batch and learning rate, shifted by a random fraction of a step so the
    // optimum falls anywhere between grid points; bpb = L(C)·(1 + 0.02·Δ²_B + 0.02·Δ²_η) (Δ in ln units) times
    // (1 + 1e-4·noise). The near-optimal runs (within 0.25%) sit within ±0.35 of the optimum in ln B, and the mean of
    // a budget's set is off by a grid quantisation error of about h/√12 = 0.10 (h = ln √2). The slope through 7
    // budgets then has a standard error 0.10/√(Σ(ln C − mean)²) ≈ 0.016: the tolerance is four of them.
    Draws z(7);
    std::vector<SweepResult> r;
    std::vector<double> C = budgets();
    double h = log(sqrt(2.0));
    for (double c : C) {
        double lb = log(0.2920 * pow(c, 0.3271)), ll = log(0.3118 * pow(c, -0.1250)), L = 3.0 * pow(c, -0.05);
        double sb = z.shift(), sl = z.shift();
        for (int i = -4; i <= 4; i++)
            for (int j = -4; j <= 4; j++) {
                double db = (i + sb) * h, dl = (j + sl) * h;
                double bpb = L * (1 + 0.02 * db * db + 0.02 * dl * dl) * (1 + 1e-4 * z.noise());
                r.push_back(run_at("hparams", c, exp(lb + db), exp(ll + dl), c / 1e8, 1e7, bpb));
            }
    }
    SweepFits f = sweep_fit(r, 200, 1);
    double se = (h / sqrt(12.0)) / sqrt(spread(C)), tol = 4 * se;
    MESSAGE("batch exponent " << f.batch.exp << ", lr exponent " << f.lr.exp << " (tolerance " << tol << ")");
    CHECK(fabs(f.batch.exp - 0.3271) < tol);
    CHECK(fabs(f.lr.exp - (-0.1250)) < tol);
    // the coefficient is the law at C = 1, forty e-folds from the data: checked where the data are, at the middle
    // budget, where the error is the per-budget one over √7 (four of them: ln error < 0.15)
    double mid = C[3];
    CHECK(fabs(log(f.batch.coef * pow(mid, f.batch.exp)) - log(0.2920 * pow(mid, 0.3271))) < 4 * (h / sqrt(12.0)) / sqrt(7.0));
    CHECK(fabs(log(f.lr.coef * pow(mid, f.lr.exp)) - log(0.3118 * pow(mid, -0.1250))) < 4 * (h / sqrt(12.0)) / sqrt(7.0));
    CHECK(f.batch.exp_lo <= f.batch.exp);
    CHECK(f.batch.exp <= f.batch.exp_hi);
    CHECK(f.lr.exp_lo <= f.lr.exp);
    CHECK(f.lr.exp <= f.lr.exp_hi);
    CHECK(f.near_optimal.size() >= 7);
}

TEST_CASE("the isoflop fit recovers M_opt = 0.1715·C^0.5243 and D_opt = 5.8316·C^0.4757 from noisy parabolas") {
    // Each budget: 7 runs at D = D_opt·2^(k + s), k = −3 … 3, s a random shift in [−½, ½); bpb = E(C) +
    // 0.05·(ln D − ln D_opt)² + 0.002·noise. The least-squares parabola's linear term has a standard error
    // σ/√Σu² (u = ln D − its mean, Σu² ≈ 28·ln²2), so its vertex one of σ/(2·0.05·√Σu²) ≈ 0.0055 in ln D, and the
    // slope through 7 budgets one of 0.0055/√(Σ(ln C − mean)²) ≈ 0.0009: the tolerance is four of them (0.004).
    // The models' parameters are N = M/4, so 6N_opt follows M_opt's exponent.
    Draws z(11);
    std::vector<SweepResult> r;
    std::vector<double> C = budgets();
    const double sigma = 0.002, A = 0.05;
    for (double c : C) {
        double ld = log(5.8316 * pow(c, 0.4757)), E = 3.0 * pow(c, -0.05), s = z.shift();
        for (int k = -3; k <= 3; k++) {
            double u = (k + s) * log(2.0), D = exp(ld + u);
            r.push_back(run_at("isoflop", c, 1e6, 1e-3, D, c / D / 4, E + A * u * u + sigma * z.noise()));
        }
    }
    SweepFits f = sweep_fit(r, 200, 1);
    double su2 = 28 * log(2.0) * log(2.0);
    double tol = 4 * (sigma / (2 * A * sqrt(su2))) / sqrt(spread(C));
    MESSAGE("model exponent " << f.model.exp << ", data exponent " << f.data.exp << ", 6N exponent " << f.model_6n.exp
                              << " (tolerance " << tol << ")");
    CHECK(fabs(f.model.exp - 0.5243) < tol);
    CHECK(fabs(f.data.exp - 0.4757) < tol);
    CHECK(fabs(f.model_6n.exp - 0.5243) < tol);
    REQUIRE(f.minima.size() == 7);
    for (const IsoflopMin& m : f.minima) {
        CHECK(m.parabola);
        CHECK(m.inside);
        CHECK(m.m_opt * m.d_opt == doctest::Approx(m.compute).epsilon(1e-9));   // C = M·D
    }
    // the minima's bits per byte follow E(C) = 3·C^-0.05; each is off by about σ/√7 ≈ 0.0008 (of ~0.35): the slope
    // by 0.0008/0.35/√Σ(ln C − mean)² ≈ 4e-4, and the tolerance is four of them
    CHECK(fabs(f.loss.exp - (-0.05)) < 4 * (sigma / sqrt(7.0) / 0.35) / sqrt(spread(C)));
    CHECK(f.model.exp_lo <= f.model.exp);
    CHECK(f.model.exp <= f.model.exp_hi);
}

TEST_CASE("an IsoFLOP profile that is not convex, or has fewer than three sizes, falls back to its best run") {
    std::vector<SweepResult> r;
    for (int b = 0; b < 2; b++)
        for (int k = 0; k < 3; k++)   // budget 1e11 monotone, 1e12 concave
            r.push_back(run_at("isoflop", b ? 1e12 : 1e11, 1e3, 1e-3, 1e6 * (k + 1), 1e5,
                               b ? 2.0 - 0.1 * (k - 1) * (k - 1) : 2.0 + 0.1 * k));
    SweepFits f = sweep_fit(r, 0, 1);
    REQUIRE(f.minima.size() == 2);
    CHECK(f.minima[0].parabola);                 // the monotone one still fits a parabola opening upwards …
    CHECK_FALSE(f.minima[1].parabola);           // … the concave one does not: its best run stands
    CHECK(f.minima[1].d_opt == doctest::Approx(1e6));
    CHECK(f.minima[1].bpb_min == doctest::Approx(1.9));
}

TEST_CASE("sweep fit on a results file prints the exponents; bad lines are one error line naming the line") {
    std::string d = tmp_dir("sweep_fit");
    std::string good, file = d + "/results.jsonl";
    for (double c : {1e17, 1e18, 1e19})
        for (int i = -2; i <= 2; i++) {
            double B = 0.2920 * pow(c, 0.3271) * pow(2.0, i), lr = 0.3118 * pow(c, -0.125);
            good += json{{"study", "hparams"}, {"compute", c}, {"batch_tokens", B}, {"learning_rate", lr},
                         {"flops_per_token", 1e8}, {"tokens", c / 1e8}, {"val_bpb", 1.0 + 0.01 * i * i}, {"extra", "kept"}}.dump() + "\n";
        }
    write_file_atomic(file, good);
    auto r = run_cmd(deepseek_bin() + " sweep fit --results " + file + " --json " + d + "/fits.json");
    REQUIRE(r.rc == 0);
    CHECK(r.out.find("batch_exponent: 0.3271") != std::string::npos);   // the grid is centred on the law: exact
    CHECK(r.out.find("lr_exponent: -0.1250") != std::string::npos);
    CHECK(r.out.find("batch_coefficient: ") != std::string::npos);
    CHECK(r.out.find("model: (not fitted") != std::string::npos);
    json fj = json::parse(read_file(d + "/fits.json"));
    CHECK(fj["batch"]["exponent"].get<double>() == doctest::Approx(0.3271).epsilon(1e-6));

    struct Bad { std::string line, needle; };
    std::vector<Bad> bad = {
        {"{\"study\": \"hparams\", \"compute\": 1e17", ":4: not a JSON object"},
        {"[1, 2]", ":4: not a JSON object"},
        {"{\"study\": \"grid\", \"compute\": 1, \"batch_tokens\": 1, \"learning_rate\": 1, \"flops_per_token\": 1, \"tokens\": 1, \"val_bpb\": 1}",
         "field 'study' must be"},
        {"{\"study\": \"hparams\", \"batch_tokens\": 1, \"learning_rate\": 1, \"flops_per_token\": 1, \"tokens\": 1, \"val_bpb\": 1}",
         "'compute'"},
        {"{\"study\": \"hparams\", \"compute\": -5, \"batch_tokens\": 1, \"learning_rate\": 1, \"flops_per_token\": 1, \"tokens\": 1, \"val_bpb\": 1}",
         "'compute'"},
        {"{\"study\": \"isoflop\", \"compute\": 1, \"batch_tokens\": 1, \"learning_rate\": 1, \"flops_per_token\": 1, \"tokens\": 1, \"val_bpb\": \"low\"}",
         "'val_bpb'"},
    };
    std::string first3 = first_lines(good, 3);
    for (const Bad& b : bad) {
        write_file_atomic(file, first3 + b.line + "\n");
        CHECK(one_error_line(run_cmd(deepseek_bin() + " sweep fit --results " + file), b.needle));
    }
    write_file_atomic(file, "");
    CHECK(one_error_line(run_cmd(deepseek_bin() + " sweep fit --results " + file), "holds no hparams or isoflop results"));
    CHECK(one_error_line(run_cmd(deepseek_bin() + " sweep fit --results " + d + "/missing.jsonl"), "does not exist"));
}

TEST_CASE("impossible sweeps are one clear error line before any run starts") {
    std::string d = tmp_dir("sweep_bad");
    std::string data = synthetic_data(d + "/data", 64, 4000, 1000);
    std::string base = deepseek_bin() + " sweep run --data " + data + " --seq-len 16 ";
    CHECK(one_error_line(run_cmd(base + "--out " + d + "/a --grid 0x3"), "--grid must be BxL"));
    CHECK(one_error_line(run_cmd(base + "--out " + d + "/a --grid 3"), "--grid must be BxL"));
    CHECK(one_error_line(run_cmd(base + "--out " + d + "/a --budgets 1e9,abc"), "--budgets must be"));
    CHECK(one_error_line(run_cmd(base + "--out " + d + "/a --budgets 1e9,1e9"), "lists a budget twice"));
    CHECK(one_error_line(run_cmd(base + "--out " + d + "/a --budgets 1e5"), "less than two steps"));
    CHECK(one_error_line(run_cmd(base + "--out " + d + "/a --budgets 1e9 --check-budget 1e8"), "must be larger than the largest"));
    CHECK(one_error_line(run_cmd(base + "--out " + d + "/a --models 0"), "--models must be an integer"));
    CHECK(one_error_line(run_cmd(deepseek_bin() + " sweep bogus --out " + d + "/a"), "unknown step 'bogus'"));
    CHECK(one_error_line(run_cmd(deepseek_bin() + " sweep run --out " + d + "/b --seq-len 16"), "--data DIR is required"));
    CHECK(one_error_line(run_cmd(deepseek_bin() + " sweep report --out " + d + "/nothing"), "holds no sweep"));
    CHECK(!dir_exists(d + "/a/runs"));   // nothing ran
    // a sweep keeps its settings: a later command that contradicts them is refused
    auto r = run_cmd(base + "--out " + d + "/c --budgets 1e9,2e9 --grid 1x1 --models 1 --check-budget 4e9 --eval-windows 4 --bootstrap 10");
    REQUIRE(r.rc == 0);
    CHECK(one_error_line(run_cmd(base + "--out " + d + "/c --budgets 2e9"), "differs from this sweep's budgets"));
    CHECK(one_error_line(run_cmd(base + "--out " + d + "/c --models 2"), "differs from this sweep's models"));
}

static std::string sweep_cmd(const std::string& data, const std::string& out) {
    return deepseek_bin() + " sweep run --data " + data + " --out " + out + " --budgets 3e8,1e9 --grid 2x2 --models 3 "
           "--check-budget 3e9 --seq-len 16 --eval-windows 8 --bootstrap 50";
}
TEST_CASE("a tiny sweep runs end to end; killed with -9 mid-run and run again, it ends with the same results file") {
    std::string d = tmp_dir("sweep_e2e");
    std::string data = synthetic_data(d + "/data", 64, 20000, 2000);
    double t0 = now_seconds();
    auto r = run_cmd(sweep_cmd(data, d + "/straight"));
    MESSAGE("uninterrupted sweep: " << now_seconds() - t0 << " s");
    REQUIRE(r.rc == 0);
    std::string straight = read_file(d + "/straight/results.jsonl");
    std::vector<SweepResult> res = sweep_read_results(d + "/straight/results.jsonl");
    int hp = 0, iso = 0, check = 0;
    for (const SweepResult& x : res) { hp += x.study == "hparams"; iso += x.study == "isoflop"; check += x.study == "check"; }
    CHECK(hp == 8);                 // 2 budgets × 2 × 2
    CHECK(iso == 6);                // 2 budgets × 3 shapes
    CHECK(check == 1);
    for (const SweepResult& x : res) {
        CHECK(std::isfinite(x.val_bpb));
        CHECK(x.flops_per_token * x.tokens == doctest::Approx(x.compute).epsilon(0.5));   // C = M·D, up to whole steps
    }
    CHECK(r.out.find("batch_exponent: ") != std::string::npos);
    CHECK(r.out.find("model_exponent: ") != std::string::npos);
    std::string report = read_file(d + "/straight/report.md");
    CHECK(report.find("| batch size B_opt") != std::string::npos);
    CHECK(report.find("## The check run") != std::string::npos);
    CHECK(report.find("predicted") != std::string::npos);
    CHECK(file_exists(d + "/straight/fits.json"));
    if (run_cmd("command -v gnuplot").rc == 0)
        for (const char* png : {"hparams", "isoflop", "allocation", "loss_compute"})
            CHECK(file_exists(d + "/straight/plots/" + png + ".png"));
    // run again: everything is done, nothing runs, the file stays as it was
    auto again = run_cmd(sweep_cmd(data, d + "/straight"));
    REQUIRE(again.rc == 0);
    CHECK(again.out.find("0 to run") != std::string::npos);
    CHECK(read_file(d + "/straight/results.jsonl") == straight);

    // the same sweep, killed with -9 once a point is mid-run (it has a checkpoint and no final/), then run again
    std::string out = d + "/killed";
    run_cmd("(" + sweep_cmd(data, out) + " > " + d + "/killed.log 2>&1 & echo $! > " + d + "/pid)");
    std::string pid = read_file(d + "/pid");
    pid.erase(pid.find_last_not_of("\n") + 1);
    bool killed = false;
    for (int i = 0; i < 4000 && !killed; i++) {
        if (file_exists(out + "/results.jsonl") && count_lines(read_file(out + "/results.jsonl")) >= 2 && mid_run(out)) {
            run_cmd("kill -9 " + pid);
            killed = true;
        } else run_cmd("sleep 0.01");
    }
    REQUIRE(killed);
    // its run went with it (PR_SET_PDEATHSIG): wait until no process is left working in OUT
    std::string pattern = "[" + out.substr(0, 1) + "]" + out.substr(1);   // (so that pgrep's own shell does not match)
    for (int i = 0; i < 500 && run_cmd("pgrep -f '" + pattern + "'").rc == 0; i++) run_cmd("sleep 0.02");
    int before = count_lines(read_file(out + "/results.jsonl"));
    CHECK(before < (int)res.size());
    auto resumed = run_cmd(sweep_cmd(data, out));
    REQUIRE(resumed.rc == 0);
    // the finished points are skipped: 8 hparams points, those the killed sweep finished not run again
    int hp_left = 8 - std::min(before, 8);
    CHECK(resumed.out.find("sweep hparams: 8 points, " + std::to_string(hp_left) + " to run") != std::string::npos);
    CHECK(read_file(out + "/results.jsonl") == straight);
}

TEST_CASE("a run whose loss is not finite is recorded as diverged, left out of the fits, and the sweep goes on") {
    std::string d = tmp_dir("sweep_diverged");
    std::string data = synthetic_data(d + "/data", 64, 4000, 1000);
    // a learning rate 10⁴ times the paper's (~270): AdamW's steps of that size per weight make the gradients NaN
    auto r = run_cmd(deepseek_bin() + " sweep hparams --data " + data + " --out " + d + "/s --budgets 3e8 --grid 1x2 "
                     "--grid-factor 1e8 --seq-len 16 --eval-windows 4");
    REQUIRE(r.rc == 0);
    CHECK(r.out.find("diverged") != std::string::npos);
    std::vector<SweepResult> res = sweep_read_results(d + "/s/results.jsonl");
    REQUIRE(res.size() == 2);
    CHECK_FALSE(res[0].diverged);      // η/10⁴
    CHECK(std::isfinite(res[0].val_bpb));
    CHECK(res[1].diverged);            // 10⁴·η
    CHECK(std::isnan(res[1].val_bpb));
    SweepFits f = sweep_fit(res, 0, 1);
    REQUIRE(f.near_optimal.size() == 1);
    CHECK(f.near_optimal[0]->learning_rate == doctest::Approx(res[0].learning_rate));
}
