// What the libFuzzer harnesses share: die() throws, a per-process scratch directory, the fuzz input as a file, the
// small real inputs a harness lays out once (a micro model directory, token shards, a data directory, a checkpoint),
// and subcommands called with an argv built from strings.
//
// A harness catches DeepseekError (the clean outcome: one clear line) and nothing else. Any other exception is a
// finding: on_terminate names it on the sanitizer's report stream (which libFuzzer keeps even with -close_fd_mask)
// and aborts before the stack unwinds, so the report's stack shows where it was thrown.
#pragma once
#include "../../deepseek.h"
#include "../test_util.h"                          // markov_tokens, micro_model, synthetic_data
#include <algorithm>                             // std::max
#include <cstdarg>                               // va_list (fail)
#include <cstring>                               // strlen
#include <cxxabi.h>                              // abi::__cxa_current_exception_type, __cxa_demangle
#include <dirent.h>                              // opendir (removing the scratch directory)
#include <exception>                             // std::set_terminate, std::current_exception
#include <initializer_list>                      // std::initializer_list (exercise_tokenizer)
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

// the micro model and the synthetic token data, as the doctest tests make them (tests/test_util.h)
using ::markov_tokens;
using ::micro_model;
using ::synthetic_data;

// A chat reader's count of skipped lines: never negative, and 0 when reading strictly.
inline void check_skipped(int skipped, bool skip_bad) {
    if (skipped < 0 || (!skip_bad && skipped != 0)) fail("skipped = %d", skipped);
}
// A rendered chat sequence (from the example on `line`): one mask entry per token, at least one token trained.
inline void check_trained(int line, const std::vector<int>& ids, const std::vector<uint8_t>& trained) {
    bool any = false;
    for (uint8_t t : trained) any |= t != 0;
    if (ids.size() != trained.size() || !any)
        fail("line %d: %zu tokens, %zu mask entries, %s trained", line, ids.size(), trained.size(), any ? "some" : "none");
}
// What a parsed tokenizer must do (a DeepseekError is fine for each): encode and decode each sample, write
// tokenizer.json. Then frees it. (A template: tokenizer_to_json is static in tokenizer.cpp, which only the two
// tokenizer harnesses #include; it is looked up where they instantiate this.)
template <class Tok> void exercise_tokenizer(Tok* t, std::initializer_list<const char*> samples) {
    for (const char* s : samples) {
        try {
            std::vector<int> ids = tokenizer_encode(t, s, true);
            tokenizer_decode(t, ids);
        } catch (const DeepseekError&) {
        }
    }
    try {
        tokenizer_to_json(t);
    } catch (const DeepseekError&) {
    }
    tokenizer_free(t);
}

// The repository root holds the fixtures; the harnesses run from there (make fuzz) or name it in FUZZ_ROOT.
inline std::string repo_path(const std::string& rel) {
    const char* r = getenv("FUZZ_ROOT");
    return (r && *r ? std::string(r) + "/" : std::string()) + rel;
}

// The chat-data harnesses' frame: the fixture tokenizer (loaded once), and each input written to a file and read
// strictly, then with skip_bad — read(path, skip_bad) either reads it or throws a DeepseekError, which is fine.
inline Tokenizer* chat_tokenizer() {
    static Tokenizer* tok = nullptr;
    if (!tok) setup("tokenizer", [] { tok = tokenizer_load(repo_path("tests/fixtures/infer/tokenizer.json")); });
    return tok;
}
template <class F> void read_both_ways(const uint8_t* data, size_t size, F read) {
    static const std::string path = scratch() + "/in.jsonl";
    write_bytes(path, data, size);
    for (bool skip_bad : {false, true}) {
        try {
            read(path, skip_bad);
        } catch (const DeepseekError&) {
        }
    }
}

}  // namespace fuzz
