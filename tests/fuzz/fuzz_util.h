// What the libFuzzer harnesses share: die() throws, a per-process scratch directory, the fuzz input as a file, the
// small real inputs a harness lays out once (a micro model directory, token shards, a data directory, a checkpoint),
// and subcommands called with an argv built from strings.
//
// A harness catches DeepseekError (the clean outcome: one clear line) and nothing else. Any other exception is a
// finding: on_terminate names it on the sanitizer's report stream (which libFuzzer keeps even with -close_fd_mask)
// and aborts before the stack unwinds, so the report's stack shows where it was thrown.
#pragma once
#include "../../deepseek.h"
#include <algorithm>                             // std::max
#include <cstdarg>                               // va_list (fail)
#include <cstring>                               // strlen
#include <cxxabi.h>                              // abi::__cxa_current_exception_type, __cxa_demangle
#include <dirent.h>                              // opendir (removing the scratch directory)
#include <exception>                             // std::set_terminate, std::current_exception
#include <sanitizer/common_interface_defs.h>     // __sanitizer_report_error_summary
#include <cstdio>                                // fopen, fwrite, snprintf
#include <cstdlib>                               // getenv, mkdtemp, abort, atexit
#include <string>                                // std::string
#include <typeinfo>                              // std::type_info
#include <unistd.h>                              // unlink, rmdir, access
#include <vector>                                // std::vector

namespace fuzz {

[[noreturn]] inline void on_terminate() {
    char msg[1200] = "SUMMARY: fuzz: uncaught exception";
    if (std::type_info* t = abi::__cxa_current_exception_type()) {
        int st = 0;
        char* name = abi::__cxa_demangle(t->name(), nullptr, nullptr, &st);
        std::string what;
        try { std::rethrow_exception(std::current_exception()); }
        catch (const std::exception& e) { what = e.what(); }
        catch (const DeepseekError& e) { what = e.msg; }
        catch (...) {}
        snprintf(msg, sizeof msg, "SUMMARY: fuzz: uncaught exception %s: %.1000s", st == 0 && name ? name : t->name(), what.c_str());
    }
    __sanitizer_report_error_summary(msg);   // "SUMMARY: fuzz: uncaught exception …" on the report stream
    abort();                                 // libFuzzer: "deadly signal", with the stack at the throw
}

// A property the harness checks does not hold: "SUMMARY: fuzz: WHAT" on the report stream, then abort (a finding).
[[noreturn]] inline void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline void fail(const char* fmt, ...) {
    char msg[1200] = "SUMMARY: fuzz: ";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + strlen(msg), sizeof msg - strlen(msg), fmt, ap);
    va_end(ap);
    __sanitizer_report_error_summary(msg);
    abort();
}

inline void remove_tree(const std::string& path) {
    if (DIR* d = opendir(path.c_str())) {
        while (struct dirent* e = readdir(d)) {
            std::string n = e->d_name;
            if (n != "." && n != "..") remove_tree(path + "/" + n);
        }
        closedir(d);
        rmdir(path.c_str());
    } else {
        unlink(path.c_str());
    }
}

// $TMPDIR/deepseek-fuzz.XXXXXX (TMPDIR unset: /dev/shm, else /tmp; on a disk, the files written per input and the
// checkpoints' fsync cost most of the time), made on first use and removed at a normal exit (kept, and
// named on stderr, with FUZZ_KEEP_SCRATCH=1: what a harness laid out gives seed inputs). Also sets g_die_throws
// and the terminate handler, so every harness gets them by asking for its directory.
inline const std::string& scratch() {
    static std::string* dir = [] {
        g_die_throws = true;
        std::set_terminate(on_terminate);
        const char* t = getenv("TMPDIR");
        std::string base = t && *t ? t : access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        std::string tmpl = base + "/deepseek-fuzz.XXXXXX";
        std::vector<char> b(tmpl.begin(), tmpl.end());
        b.push_back('\0');
        if (!mkdtemp(b.data())) { perror(tmpl.c_str()); abort(); }
        std::string* d = new std::string(b.data());   // never freed: lives until exit
        if (getenv("FUZZ_KEEP_SCRATCH")) fprintf(stderr, "fuzz: scratch directory %s (kept)\n", d->c_str());
        else atexit([] { remove_tree(scratch()); });
        return d;
    }();
    return *dir;
}

// With FUZZ_KEEP_SCRATCH set, a copy of a file the setup made (PATH.seed), before inputs overwrite it: the seeds of
// tests/fuzz/corpus come from there.
inline void keep_seed(const std::string& path) {
    if (getenv("FUZZ_KEEP_SCRATCH")) write_file_atomic(path + ".seed", read_file(path));
}

inline void write_bytes(const std::string& path, const void* data, size_t size) {
    FILE* f = fopen(path.c_str(), "wb");
    if (!f) { perror(path.c_str()); abort(); }
    if (size && fwrite(data, 1, size, f) != size) { perror(path.c_str()); abort(); }
    fclose(f);
}
inline void write_text(const std::string& path, const std::string& s) { write_bytes(path, s.data(), s.size()); }

// A subcommand with argv {"deepseek", args...}; returns its exit code (DeepseekError passes through).
inline int cli(int (*cmd)(int, char**), const std::vector<std::string>& args) {
    std::vector<std::string> store = {"deepseek"};
    store.insert(store.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& s : store) argv.push_back(&s[0]);
    argv.push_back(nullptr);
    return cmd((int)store.size(), argv.data());
}

// Setup that must work: a DeepseekError here is a broken harness, not a finding.
template <class F> void setup(const char* what, F f) {
    try { f(); } catch (const DeepseekError& e) { fprintf(stderr, "fuzz setup (%s) failed: %s\n", what, e.msg.c_str()); abort(); }
}

// A very small model directory (C 32, 2 layers, GQA 4/2) over V tokens, as tests/test_train.cpp makes it.
inline void micro_model(const std::string& dir, int V, int ctx = 64) {
    Config c;
    c.vocab_size = V; c.hidden_size = 32; c.num_hidden_layers = 2; c.num_attention_heads = 4; c.num_key_value_heads = 2;
    c.head_dim = 8; c.intermediate_size = 64; c.max_position_embeddings = ctx; c.bos_token_id = 0; c.eos_token_id = 1;
    Model m;
    model_build(&m, c);
    model_init_random(&m, 11, 0.02f);
    model_save_dir(m, dir, false);
}
// n tokens below V, a learnable stream (next = 5·prev + 3 + noise mod V)
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

// A data directory as `deepseek data prepare` writes it, minus the tokenizer: train.bin, val.bin, data.json.
inline void synthetic_data(const std::string& dir, int V, size_t n_train, size_t n_val) {
    make_dirs(dir);
    shard_write(dir + "/train.bin", markov_tokens(n_train, V, 1), V);
    shard_write(dir + "/val.bin", markov_tokens(n_val, V, 2), V);
    nlohmann::json j = {
        {"vocab_size", V},
        {"train", {{"file", "train.bin"}, {"tokens", n_train}, {"bytes", 4 * n_train}, {"bytes_per_token", 4.0}}},
        {"val", {{"file", "val.bin"}, {"tokens", n_val}, {"bytes", 4 * n_val}, {"bytes_per_token", 4.0}}}};
    write_file_atomic(dir + "/data.json", j.dump(2));
}

// The repository root holds the fixtures; the harnesses run from there (make fuzz) or name it in FUZZ_ROOT.
inline std::string repo_path(const std::string& rel) {
    const char* r = getenv("FUZZ_ROOT");
    return (r && *r ? std::string(r) + "/" : std::string()) + rel;
}

}  // namespace fuzz
