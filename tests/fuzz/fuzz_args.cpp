// libFuzzer target: the command-line flag parser (struct Args). The input is an argument list, split at NUL or
// newline bytes, after "deepseek fuzz"; the accepted flags are a fixed list of value flags and switches. Any input
// must parse or fail with a DeepseekError; then every accessor runs on every flag: str, has, flag, and integer()
// and real() over several ranges, each of which must return a value inside its range (or the default when the
// flag is absent) or fail with a DeepseekError.
#include "fuzz_util.h"
#include <climits>   // LLONG_MIN, LLONG_MAX
#include <cmath>     // std::isfinite

static const std::vector<std::string> VALUE_FLAGS = {"model", "steps", "lr", "n", "top-p", "seed", "out", "x"};
static const std::vector<std::string> SWITCHES = {"ids", "quiet", "huge-pages", "v"};

[[noreturn]] static void bad(const char* what, const std::string& flag, const std::string& value) {
    fuzz::fail("%s for --%s '%s'", what, flag.c_str(), value.c_str());
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::scratch();   // g_die_throws and the terminate handler
    std::vector<std::string> words = {"deepseek", "fuzz"};
    std::string cur;
    for (size_t i = 0; i <= size; i++) {
        if (i == size || data[i] == '\0' || data[i] == '\n') { words.push_back(cur); cur.clear(); }
        else cur += (char)data[i];
    }
    std::vector<char*> argv;
    for (std::string& w : words) argv.push_back(&w[0]);
    argv.push_back(nullptr);
    int argc = (int)words.size();
    is_help(argc, argv.data(), 2);
    try {
        Args a(argc, argv.data(), 2, "fuzz", nullptr, VALUE_FLAGS, SWITCHES, -1);
        for (const std::string& s : SWITCHES) a.flag(s);
        static const long long int_ranges[][2] = {{-10, 10}, {0, 1LL << 40}, {1, 1}, {LLONG_MIN, LLONG_MAX}};
        static const double real_ranges[][2] = {{0, 1}, {-1e300, 1e300}, {1e-12, 1e30}};
        for (const std::string& f : VALUE_FLAGS) {
            std::string v = a.str(f, "(absent)");
            if (a.has(f) != (a.values.count(f) > 0)) bad("has() disagrees", f, v);
            for (auto& r : int_ranges) {
                try {
                    long long x = a.integer(f, 7, r[0], r[1]);
                    if (a.has(f) ? (x < r[0] || x > r[1]) : x != 7) bad("integer() out of range", f, v);
                } catch (const DeepseekError&) {
                }
            }
            for (auto& r : real_ranges) {
                try {
                    double x = a.real(f, 0.5, r[0], r[1]);
                    if (a.has(f) ? (!std::isfinite(x) || x < r[0] || x > r[1]) : x != 0.5) bad("real() out of range", f, v);
                } catch (const DeepseekError&) {
                }
            }
        }
    } catch (const DeepseekError&) {
    }
    return 0;
}
