// Helpers shared by the test files: fixture paths, running the CLI, comparing tensors.
#pragma once
#include <cmath>      // fabs
#include <cstdio>     // popen
#include <cstdlib>    // getenv
#include <sys/wait.h> // WIFEXITED
#include <string>     // std::string
#include <vector>     // std::vector

extern int g_tests_skipped;  // tests that could not run here (e.g. no CUDA device) bump this and say why

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
// max over elements of |a-b| / max(|b|, floor): relative error with an absolute floor
inline double max_rel_err(const float* a, const float* b, size_t n, double floor_) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = std::fabs((double)a[i] - b[i]) / std::fmax(std::fabs((double)b[i]), floor_);
        if (!(d <= worst)) worst = d;  // NaN propagates as failure
    }
    return worst;
}
