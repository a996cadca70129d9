// What tokenizer.cpp needs from deepseek.cu, for the fuzz targets only (built with clang, no model code):
// die() always throws, file helpers, and a minimal Args so that cmd_tokenizer links.
#include "../../deepseek.h"
#include <algorithm>   // std::find
#include <cstdarg>     // va_list
#include <cstdio>      // vsnprintf, fopen
#include <cstdlib>     // strtoll
#include <cstring>     // strcmp

bool g_die_throws = true;
void die(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    throw DeepseekError{buf};
}
std::string read_file(const std::string& path, size_t) {
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) die("cannot open %s", path.c_str());
    std::string s;
    char b[1 << 16];
    size_t n;
    while ((n = fread(b, 1, sizeof b, f)) > 0) s.append(b, n);
    fclose(f);
    return s;
}
void write_file_atomic(const std::string& path, const std::string& content) {
    FILE* f = fopen((path + ".tmp").c_str(), "wb");
    if (!f) die("cannot write %s", path.c_str());
    fwrite(content.data(), 1, content.size(), f);
    fclose(f);
    rename((path + ".tmp").c_str(), path.c_str());
}
bool is_help(int argc, char** argv, int first) {
    for (int i = first; i < argc; i++) if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return true;
    return false;
}
Args::Args(int argc, char** argv, int first, const std::string& cmd_, const std::vector<std::string>& value_flags,
           const std::vector<std::string>& switch_flags) : cmd(cmd_) {
    for (int i = first; i < argc; i++) {
        std::string a = argv[i];
        if (a.size() < 3 || a[0] != '-' || a[1] != '-') { positional.push_back(a); continue; }
        std::string name = a.substr(2);
        if (std::find(switch_flags.begin(), switch_flags.end(), name) != switch_flags.end()) switches[name] = true;
        else if (std::find(value_flags.begin(), value_flags.end(), name) != value_flags.end() && i + 1 < argc) values[name] = argv[++i];
        else die("%s: unknown flag %s", cmd.c_str(), a.c_str());
    }
}
bool Args::has(const std::string& name) const { return values.count(name) > 0; }
std::string Args::str(const std::string& name, const std::string& dflt) const { return has(name) ? values.at(name) : dflt; }
long long Args::integer(const std::string& name, long long dflt, long long lo, long long hi) const {
    if (!has(name)) return dflt;
    long long v = strtoll(values.at(name).c_str(), nullptr, 10);
    if (v < lo || v > hi) die("--%s out of range", name.c_str());
    return v;
}
bool Args::flag(const std::string& name) const { return switches.count(name) > 0; }
