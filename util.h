// util.h — the helpers every subcommand leans on, none of them about the model: one-line errors (die), file checks
// and bounded reads that refuse what is not a regular file, typed reads of JSON from outside ("WHERE: field 'KEY'
// must be …"), atomic writes (PATH.tmp + rename), command-line flags (Args) and --help, threads and a clock.
// defines: die, file_exists, dir_exists, path_exists, require_dir, require_file, open_regular_fd, read_file,
//          read_text_input, json_parse_file, json_field, json_int, json_num, json_bool, json_str, json_token_ids,
//          write_file_atomic, make_dirs, Args, is_help, num_threads, now_seconds
// #included by deepseek.cu (compiled as part of it, like kernels/); declared in deepseek.h for the other files.
#pragma once
#include <algorithm>     // std::find
#include <cerrno>        // errno
#include <chrono>        // steady_clock (now_seconds)
#include <climits>       // LLONG_MIN, LLONG_MAX
#include <cmath>         // std::isfinite, std::floor
#include <cstdarg>       // va_list
#include <cstdio>        // FILE, fopen, fread, vsnprintf
#include <cstring>       // strcmp, strerror
#include <fcntl.h>       // open, fcntl
#include <sys/stat.h>    // stat, lstat, mkdir
#include <unistd.h>      // close, unlink, fsync
#include <nlohmann/json.hpp>
#ifdef _OPENMP
#include <omp.h>         // omp_get_max_threads, omp_set_num_threads
#endif
#include "deepseek.h"

using json = nlohmann::json;

// ============================================================================

// errors and small file helpers

bool g_die_throws = false;

void die(const char* fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (g_die_throws) throw DeepseekError{buf};
    fflush(stdout);
    fprintf(stderr, "error: %s\n", buf);
    exit(1);
}

bool file_exists(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
bool dir_exists(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool path_exists(const std::string& path) {   // lstat: a dangling link "exists", and the read that follows says why it fails
    struct stat st;
    return lstat(path.c_str(), &st) == 0;
}
// What kind of thing PATH is, for messages: "does not exist", "is a directory", "is a file", ...
static std::string path_kind(const std::string& path) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0) return errno == ENOENT ? "does not exist" : std::string("cannot be read: ") + strerror(errno);
    if (S_ISDIR(st.st_mode)) return "is a directory";
    if (S_ISREG(st.st_mode)) return "is a file";
    return "is not a regular file or directory";
}
void require_dir(const std::string& path, const std::string& what) {
    if (!dir_exists(path)) {
        std::string k = path_kind(path);
        die("%s %s %s%s", what.c_str(), path.c_str(), k.c_str(), k == "is a file" ? ", not a directory" : "");
    }
}
void require_file(const std::string& path, const std::string& what) {
    if (!file_exists(path)) {
        std::string k = path_kind(path);
        die("%s %s %s%s", what.c_str(), path.c_str(), k.c_str(), k == "is a directory" ? ", not a file" : "");
    }
}
// Opens PATH for reading. Unless streams_ok, only a regular file: a directory, a FIFO, a device (/dev/zero) or a
// socket is refused with a line that says what it is (O_NONBLOCK so that opening a FIFO cannot block; cleared
// after). Files whose format this program defines are read this way; a user's text may come from a pipe.
static int open_for_read_fd(const std::string& path, bool streams_ok, size_t* size) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | (streams_ok ? 0 : O_NONBLOCK));
    if (fd < 0) {
        if (errno == ENOENT) die("%s does not exist", path.c_str());
        die("cannot read %s: %s", path.c_str(), strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) { close(fd); die("cannot read %s: %s", path.c_str(), strerror(errno)); }
    bool stream = S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode) || S_ISSOCK(st.st_mode);
    if (!S_ISREG(st.st_mode) && !(streams_ok && stream)) {
        close(fd);
        die("%s is %s, not a regular file", path.c_str(), S_ISDIR(st.st_mode) ? "a directory" : S_ISFIFO(st.st_mode) ? "a pipe (FIFO)" :
            S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device" : S_ISSOCK(st.st_mode) ? "a socket" : "special");
    }
    if (!streams_ok) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    *size = S_ISREG(st.st_mode) ? (size_t)st.st_size : 0;
    return fd;
}
int open_regular_fd(const std::string& path, size_t* size) { return open_for_read_fd(path, false, size); }
static FILE* open_for_read(const std::string& path, bool streams_ok, size_t* size) {
    int fd = open_for_read_fd(path, streams_ok, size);
    FILE* f = fdopen(fd, "rb");
    if (!f) { close(fd); die("cannot read %s: %s", path.c_str(), strerror(errno)); }
    return f;
}
bool read_stream(FILE* f, size_t max_bytes, std::string* s) {
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        s->append(buf, n);
        if (s->size() > max_bytes) return false;
    }
    return true;
}
static std::string read_whole(const std::string& path, size_t max_bytes, bool streams_ok) {
    size_t size = 0;
    FILE* f = open_for_read(path, streams_ok, &size);
    if (size > max_bytes) {
        fclose(f);
        die("%s is %zu bytes, more than the %zu this file may hold", path.c_str(), size, max_bytes);
    }
    std::string s;
    s.reserve(size);
    if (!read_stream(f, max_bytes, &s)) { fclose(f); die("%s holds more than the %zu bytes it may", path.c_str(), max_bytes); }
    bool bad = ferror(f);
    fclose(f);
    if (bad) die("error reading %s", path.c_str());
    return s;
}
std::string read_file(const std::string& path, size_t max_bytes) { return read_whole(path, max_bytes, false); }
std::string read_text_input(const std::string& path, size_t max_bytes) { return read_whole(path, max_bytes, true); }

// ---- typed reads of JSON read from outside: every miss is one line "WHERE: field 'KEY' must be …, got …"
static std::string json_short(const json& v) {
    std::string s = v.dump();
    return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}
json json_parse_file(const std::string& path, size_t max_bytes) {
    std::string text = read_file(path, max_bytes);
    try {
        return json::parse(text);
    } catch (const std::exception& e) {
        die("%s: malformed JSON (%s)", path.c_str(), e.what());
    }
}
const json* json_field(const json& obj, const char* key, const std::string& where, bool required) {
    if (!obj.is_object()) die("%s: expected a JSON object, got %s", where.c_str(), json_short(obj).c_str());
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) {
        if (required) die("%s: missing field '%s'", where.c_str(), key);
        return nullptr;
    }
    return &*it;
}
long long json_int(const json& obj, const char* key, const std::string& where, long long dflt, long long lo, long long hi,
                   bool required) {
    const json* v = json_field(obj, key, where, required);
    if (!v) return dflt;
    long long x = 0;
    if (v->is_number_unsigned()) {
        uint64_t u = v->get<uint64_t>();
        if (u > (uint64_t)hi) die("%s: field '%s' must be an integer in [%lld, %lld], got %s", where.c_str(), key, lo, hi, json_short(*v).c_str());
        x = (long long)u;
    } else if (v->is_number_integer()) {
        x = v->get<long long>();
    } else if (v->is_number_float() && std::isfinite(v->get<double>()) && v->get<double>() == std::floor(v->get<double>()) &&
               std::fabs(v->get<double>()) < 9.0e18) {
        x = (long long)v->get<double>();   // 2.0 written by a tool that stores every number as a float
    } else {
        die("%s: field '%s' must be an integer, got %s", where.c_str(), key, json_short(*v).c_str());
    }
    if (x < lo || x > hi) die("%s: field '%s' must be an integer in [%lld, %lld], got %s", where.c_str(), key, lo, hi, json_short(*v).c_str());
    return x;
}
double json_num(const json& obj, const char* key, const std::string& where, double dflt, double lo, double hi, bool required) {
    const json* v = json_field(obj, key, where, required);
    if (!v) return dflt;
    if (!v->is_number()) die("%s: field '%s' must be a number, got %s", where.c_str(), key, json_short(*v).c_str());
    double x = v->get<double>();
    if (!std::isfinite(x) || x < lo || x > hi) die("%s: field '%s' must be a number in [%g, %g], got %s", where.c_str(), key, lo, hi, json_short(*v).c_str());
    return x;
}
bool json_bool(const json& obj, const char* key, const std::string& where, bool dflt, bool required) {
    const json* v = json_field(obj, key, where, required);
    if (!v) return dflt;
    if (!v->is_boolean()) die("%s: field '%s' must be true or false, got %s", where.c_str(), key, json_short(*v).c_str());
    return v->get<bool>();
}
std::string json_str(const json& obj, const char* key, const std::string& where, const std::string& dflt, bool required) {
    const json* v = json_field(obj, key, where, required);
    if (!v) return dflt;
    if (!v->is_string()) die("%s: field '%s' must be a string, got %s", where.c_str(), key, json_short(*v).c_str());
    return v->get<std::string>();
}
// A token id field: an integer row of the embedding, [0, vocab_size). LIST: a list of ids is allowed too (EOS).
static long long json_token_id_value(const json& v, const char* key, const std::string& where, int vocab_size) {
    json one = {{key, v}};
    long long id = json_int(one, key, where, 0, LLONG_MIN, LLONG_MAX, true);
    if (id < 0 || id >= vocab_size)
        die("%s: field '%s' is %lld, not a token id of the vocabulary [0, %d) (vocab_size)", where.c_str(), key, id, vocab_size);
    return id;
}
std::vector<int> json_token_ids(const json& obj, const char* key, const std::string& where, int vocab_size, bool list) {
    const json* v = json_field(obj, key, where, false);
    std::vector<int> ids;
    if (!v) return ids;
    if (list && v->is_array()) {
        if (v->empty()) die("%s: field '%s' is an empty list", where.c_str(), key);
        for (const json& x : *v) ids.push_back((int)json_token_id_value(x, key, where, vocab_size));
    } else {
        ids.push_back((int)json_token_id_value(*v, key, where, vocab_size));
    }
    return ids;
}
// The last step of PATH.tmp + rename: a failed write or rename removes PATH.tmp before dying, so that no stray
// half-written .tmp file is left beside PATH.
static void commit_tmp(const std::string& tmp, const std::string& path, bool written) {
    if (!written) {
        int e = errno;
        unlink(tmp.c_str());
        die("error writing %s (%s)", tmp.c_str(), e == ENOSPC ? "disk full" : e ? strerror(e) : "disk full?");
    }
    if (rename(tmp.c_str(), path.c_str()) != 0) {
        int e = errno;
        unlink(tmp.c_str());
        die("cannot rename %s to %s: %s", tmp.c_str(), path.c_str(), strerror(e));
    }
}
void write_file_atomic(const std::string& path, const std::string& content) {
    std::string tmp = path + ".tmp";
    FILE* f = fopen(tmp.c_str(), "wb");
    if (!f) die("cannot write %s: %s", tmp.c_str(), strerror(errno));
    errno = 0;   // (what a failed write leaves here is its reason)
    bool ok = fwrite(content.data(), 1, content.size(), f) == content.size();
    ok = (fflush(f) == 0) && ok;
    ok = (fsync(fileno(f)) == 0) && ok;
    ok = (fclose(f) == 0) && ok;
    commit_tmp(tmp, path, ok);
}
void make_dirs(const std::string& path) {
    if (path.empty() || dir_exists(path)) return;
    size_t slash = path.find_last_of('/');
    if (slash != std::string::npos && slash > 0) make_dirs(path.substr(0, slash));
    if (mkdir(path.c_str(), 0755) != 0) {
        if (errno == EEXIST && dir_exists(path)) return;   // made meanwhile by another process
        if (errno == EEXIST) require_dir(path, "cannot create directory:");   // "… is a file, not a directory"
        die("cannot create directory %s: %s", path.c_str(), strerror(errno));
    }
}

// ============================================================================
// command-line flags

Args::Args(int argc, char** argv, int first, const std::string& cmd_, const char* usage,
           const std::vector<std::string>& value_flags, const std::vector<std::string>& switch_flags, int max_positional)
    : cmd(cmd_) {
    if (usage && is_help(argc, argv, first)) {   // a subcommand's --help, before anything else is checked
        fputs(usage, stdout);
        exit(0);
    }
    auto known = [](const std::vector<std::string>& v, const std::string& s) {
        return std::find(v.begin(), v.end(), s) != v.end();
    };
    for (int i = first; i < argc; i++) {
        std::string a = argv[i];
        if (a.size() < 2 || a[0] != '-' || (a[1] >= '0' && a[1] <= '9')) { positional.push_back(a); continue; }
        std::string name = a.substr(a[1] == '-' ? 2 : 1), value;
        bool has_value = false;
        size_t eq = name.find('=');
        if (eq != std::string::npos) { value = name.substr(eq + 1); name = name.substr(0, eq); has_value = true; }
        // a flag given twice is an error, not "the last one wins": `--steps 3 ... --steps 4` is a typo or a
        // script's default overridden by accident, and either reading would be a silent guess
        if (known(switch_flags, name) || known(value_flags, name))
            if (switches.count(name) || values.count(name)) die("%s: --%s is given twice", cmd.c_str(), name.c_str());
        if (known(switch_flags, name)) {
            if (has_value) die("%s: --%s takes no value", cmd.c_str(), name.c_str());
            switches[name] = true;
        } else if (known(value_flags, name)) {
            if (!has_value) {
                if (i + 1 >= argc) die("%s: --%s needs a value", cmd.c_str(), name.c_str());
                value = argv[++i];
            }
            values[name] = value;
        } else {
            die("%s: unknown flag %s (see deepseek %s --help)", cmd.c_str(), a.c_str(), cmd.c_str());
        }
    }
    if (max_positional >= 0 && (int)positional.size() > max_positional)
        die("%s: unexpected argument '%s'", cmd.c_str(), positional[max_positional].c_str());
#ifdef _OPENMP
    // --threads N, in every command that takes it: OpenMP's thread count from here on
    if (has("threads")) omp_set_num_threads((int)integer("threads", 1, 1, 1024));
#endif
}
bool Args::has(const std::string& name) const { return values.count(name) > 0; }
std::string Args::str(const std::string& name, const std::string& dflt) const {
    auto it = values.find(name);
    return it == values.end() ? dflt : it->second;
}
long long Args::integer(const std::string& name, long long dflt, long long lo, long long hi) const {
    auto it = values.find(name);
    if (it == values.end()) return dflt;
    const char* s = it->second.c_str();
    char* end = nullptr;
    errno = 0;
    double d = strtod(s, &end);  // accepts 1e6 as well as 1000000
    // range first: the cast to long long is defined only for finite values inside its range (nan, 1e300)
    if (end == s || *end != '\0' || errno != 0 || !std::isfinite(d) || d < (double)lo || d > (double)hi ||
        std::fabs(d) >= 9.2e18 || d != std::floor(d))
        die("%s: --%s must be an integer in [%lld, %lld], got '%s'", cmd.c_str(), name.c_str(), lo, hi, s);
    return (long long)d;
}
double Args::real(const std::string& name, double dflt, double lo, double hi) const {
    auto it = values.find(name);
    if (it == values.end()) return dflt;
    const char* s = it->second.c_str();
    char* end = nullptr;
    errno = 0;
    double d = strtod(s, &end);
    if (end == s || *end != '\0' || errno != 0 || !std::isfinite(d) || d < lo || d > hi)
        die("%s: --%s must be a number in [%g, %g], got '%s'", cmd.c_str(), name.c_str(), lo, hi, s);
    return d;
}
bool Args::flag(const std::string& name) const { return switches.count(name) > 0; }
bool is_help(int argc, char** argv, int first) {
    for (int i = first; i < argc; i++)
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return true;
    return false;
}

// ============================================================================
// threads and time

int num_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
double now_seconds() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
