// deepseek.cu — the DeepSeek LLM model: configuration and presets, the flat parameter layout, every layer's
// forward and backward pass (the CPU fp32 reference, the oracle every fast path and CUDA kernel is tested
// against), Hugging Face weights I/O (safetensors, config.json), the backends, and main().
//
// What it is: a plain, exact, readable implementation of a LLaMA-style decoder as DeepSeek LLM uses it —
// RMSNorm, rotary position embeddings in the Hugging Face rotate-half layout, causal grouped-query attention,
// SwiGLU MLP, untied lm_head, no biases. What it deliberately is not: fast. The CPU reference uses OpenMP
// over independent rows and nothing cleverer; speed lives in fast paths beside it, tested against it.
//
// Backward functions: the reference ones accumulate (+=) into their gradient outputs (callers zero them first), except
// crossentropy_backward_ref, which writes; the fast ones mostly write. deepseek.h's header ("Gradients") has the rule.
// Shapes: B batch, T time, C d_model, H heads, KV key/value heads, D head_dim, F intermediate, V vocab, L layers.
#include "deepseek.h"
#include <algorithm>     // std::max, std::min
#include <cerrno>        // errno
#include <cmath>         // expf, sqrtf, logf, cos, sin, pow
#include <cstdarg>       // va_list
#include <cstdio>        // printf, fprintf, FILE
#include <cstdlib>       // exit, strtoll, strtod
#include <cstring>       // memcpy, memset, strcmp, strerror
#include <cstdint>       // int32_t, uintptr_t
#include <fcntl.h>       // open
#include <sys/mman.h>    // mmap, munmap
#include <sys/stat.h>    // stat, mkdir
#include <unistd.h>      // close, getpid
#include <nlohmann/json.hpp>  // nlohmann::json: config.json and safetensors headers
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>  // _mm512_* / _mm256_*: the GEMM microkernels (fast CPU paths)
#endif
#ifdef _OPENMP
#include <omp.h>         // omp_get_max_threads, omp_set_num_threads
#endif
#ifdef DEEPSEEK_CUDA
#include <cuda_runtime.h>  // cudaGetDeviceCount, cudaGetDeviceProperties, cudaMalloc, kernels
#include <cuda_bf16.h>     // __nv_bfloat16, __float2bfloat16, __bfloat162float
#include <cublasLt.h>      // cublasLtMatmul and its descriptors, layouts, heuristics
#endif

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
static FILE* open_for_read(const std::string& path, bool streams_ok, size_t* size) {
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
    FILE* f = fdopen(fd, "rb");
    if (!f) { close(fd); die("cannot read %s: %s", path.c_str(), strerror(errno)); }
    *size = S_ISREG(st.st_mode) ? (size_t)st.st_size : 0;
    return f;
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
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        s.append(buf, n);
        if (s.size() > max_bytes) { fclose(f); die("%s holds more than the %zu bytes it may", path.c_str(), max_bytes); }
    }
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
void write_file_atomic(const std::string& path, const std::string& content) {
    std::string tmp = path + ".tmp";
    FILE* f = fopen(tmp.c_str(), "wb");
    if (!f) die("cannot write %s: %s", tmp.c_str(), strerror(errno));
    bool ok = fwrite(content.data(), 1, content.size(), f) == content.size();
    ok = (fflush(f) == 0) && ok;
    ok = (fsync(fileno(f)) == 0) && ok;
    ok = (fclose(f) == 0) && ok;
    if (!ok) die("error writing %s (disk full?)", tmp.c_str());
    if (rename(tmp.c_str(), path.c_str()) != 0) die("cannot rename %s to %s: %s", tmp.c_str(), path.c_str(), strerror(errno));
}
void make_dirs(const std::string& path) {
    if (path.empty() || dir_exists(path)) return;
    size_t slash = path.find_last_of('/');
    if (slash != std::string::npos && slash > 0) make_dirs(path.substr(0, slash));
    if (mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) die("cannot create directory %s: %s", path.c_str(), strerror(errno));
}

// ============================================================================
// command-line flags

Args::Args(int argc, char** argv, int first, const std::string& cmd_, const std::vector<std::string>& value_flags,
           const std::vector<std::string>& switch_flags) : cmd(cmd_) {
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
    if (end == s || *end != '\0' || errno != 0 || d != (double)(long long)d || d < lo || d > hi)
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
// configuration: presets, config.json, parameter count, the paper's FLOPs per token

static Config make_config(int V, int C, int L, int H, int KV, int F, int ctx) {
    Config c;
    c.vocab_size = V; c.hidden_size = C; c.num_hidden_layers = L; c.num_attention_heads = H;
    c.num_key_value_heads = KV; c.head_dim = C / H; c.intermediate_size = F; c.max_position_embeddings = ctx;
    return c;
}
// The released shapes (the paper, Table 2) and two small GQA shapes for CPU work.
bool config_preset(const std::string& name, Config* cfg) {
    if (name == "deepseek-llm-7b") *cfg = make_config(102400, 4096, 30, 32, 32, 11008, 4096);
    else if (name == "deepseek-llm-67b") *cfg = make_config(102400, 8192, 95, 64, 8, 22016, 4096);
    else if (name == "tiny") *cfg = make_config(4096, 128, 4, 4, 2, 384, 256);     // ~1.8M parameters
    else if (name == "small") *cfg = make_config(8192, 512, 8, 8, 2, 1408, 512);   // ~31M parameters
    else return false;
    if (name == "tiny" || name == "small") { cfg->bos_token_id = 0; cfg->eos_token_id = 1; }
    return true;
}
std::vector<std::string> config_preset_names() { return {"tiny", "small", "deepseek-llm-7b", "deepseek-llm-67b"}; }

void config_validate(const Config& c, const std::string& where) {
    auto check = [&](bool ok, const char* what, long long v) {
        if (!ok) die("%s: %s has an invalid value %lld", where.c_str(), what, v);
    };
    check(c.vocab_size >= 1 && c.vocab_size <= 4000000, "vocab_size", c.vocab_size);
    check(c.hidden_size >= 1 && c.hidden_size <= 65536, "hidden_size", c.hidden_size);
    check(c.num_hidden_layers >= 1 && c.num_hidden_layers <= 1024, "num_hidden_layers", c.num_hidden_layers);
    check(c.num_attention_heads >= 1 && c.num_attention_heads <= 4096, "num_attention_heads", c.num_attention_heads);
    check(c.num_key_value_heads >= 1 && c.num_key_value_heads <= c.num_attention_heads, "num_key_value_heads", c.num_key_value_heads);
    check(c.num_attention_heads % c.num_key_value_heads == 0, "num_key_value_heads (must divide num_attention_heads)", c.num_key_value_heads);
    check(c.head_dim >= 2 && c.head_dim % 2 == 0 && c.head_dim <= 1024, "head_dim", c.head_dim);
    check(c.intermediate_size >= 1 && c.intermediate_size <= 1048576, "intermediate_size", c.intermediate_size);
    check(c.max_position_embeddings >= 1 && c.max_position_embeddings <= 10000000, "max_position_embeddings", c.max_position_embeddings);
    if (!(c.rms_norm_eps > 0 && c.rms_norm_eps < 1)) die("%s: rms_norm_eps has an invalid value %g", where.c_str(), c.rms_norm_eps);
    if (!(c.rope_theta > 1 && std::isfinite(c.rope_theta))) die("%s: rope_theta has an invalid value %g", where.c_str(), c.rope_theta);
}

Config config_read_json(const std::string& path) {
    std::string text = read_file(path);
    json j;
    try { j = json::parse(text); } catch (const std::exception& e) { die("%s: malformed JSON (%s)", path.c_str(), e.what()); }
    if (!j.is_object()) die("%s: expected a JSON object", path.c_str());
    std::string mt = j.value("model_type", std::string("llama"));
    if (mt != "llama") die("%s: unsupported model_type '%s' (only llama / LlamaForCausalLM)", path.c_str(), mt.c_str());
    if (j.contains("architectures") && j["architectures"].is_array())
        for (auto& a : j["architectures"])
            if (!a.is_string() || a.get<std::string>() != "LlamaForCausalLM")
                die("%s: unsupported architecture %s (only LlamaForCausalLM)", path.c_str(), a.dump().c_str());
    auto get_int = [&](const char* key, bool required, int dflt) -> int {
        if (!j.contains(key) || j[key].is_null()) {
            if (required) die("%s: missing field '%s'", path.c_str(), key);
            return dflt;
        }
        const json& v = j[key];
        if (!v.is_number_integer() && !(v.is_number_float() && v.get<double>() == (double)(long long)v.get<double>()))
            die("%s: field '%s' must be an integer, got %s", path.c_str(), key, v.dump().c_str());
        double d = v.get<double>();
        if (d < -2147483648.0 || d > 2147483647.0) die("%s: field '%s' is out of range: %s", path.c_str(), key, v.dump().c_str());
        return (int)d;
    };
    auto get_float = [&](const json& obj, const char* key, double dflt) -> double {
        if (!obj.contains(key) || obj[key].is_null()) return dflt;
        if (!obj[key].is_number()) die("%s: field '%s' must be a number, got %s", path.c_str(), key, obj[key].dump().c_str());
        return obj[key].get<double>();
    };
    Config c;
    c.vocab_size = get_int("vocab_size", true, 0);
    c.hidden_size = get_int("hidden_size", true, 0);
    c.num_hidden_layers = get_int("num_hidden_layers", true, 0);
    c.num_attention_heads = get_int("num_attention_heads", true, 0);
    c.num_key_value_heads = get_int("num_key_value_heads", false, c.num_attention_heads);
    c.intermediate_size = get_int("intermediate_size", true, 0);
    c.max_position_embeddings = get_int("max_position_embeddings", false, 2048);
    if (c.num_attention_heads <= 0) die("%s: num_attention_heads has an invalid value %d", path.c_str(), c.num_attention_heads);
    c.head_dim = get_int("head_dim", false, c.hidden_size / c.num_attention_heads);
    c.rms_norm_eps = get_float(j, "rms_norm_eps", 1e-6);
    c.rope_theta = get_float(j, "rope_theta", 10000.0);
    // transformers ≥ 5 writes rope_parameters {rope_theta, rope_type}; older files write rope_theta (+ rope_scaling)
    if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
        const json& rp = j["rope_parameters"];
        c.rope_theta = get_float(rp, "rope_theta", c.rope_theta);
        std::string rt = rp.value("rope_type", std::string("default"));
        if (rt != "default") die("%s: unsupported rope_type '%s' (only default RoPE)", path.c_str(), rt.c_str());
    }
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) die("%s: rope_scaling is not supported", path.c_str());
    if (j.value("tie_word_embeddings", false)) die("%s: tie_word_embeddings=true is not supported (DeepSeek LLM unties lm_head)", path.c_str());
    if (j.value("attention_bias", false) || j.value("mlp_bias", false)) die("%s: attention/MLP biases are not supported", path.c_str());
    std::string act = j.value("hidden_act", std::string("silu"));
    if (act != "silu") die("%s: unsupported hidden_act '%s' (only silu)", path.c_str(), act.c_str());
    c.bos_token_id = get_int("bos_token_id", false, c.bos_token_id);
    c.eos_token_id = j.contains("eos_token_id") && j["eos_token_id"].is_array() ? c.eos_token_id : get_int("eos_token_id", false, c.eos_token_id);
    if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) c.torch_dtype = j["torch_dtype"];
    if (j.contains("dtype") && j["dtype"].is_string()) c.torch_dtype = j["dtype"];
    if (c.hidden_size != c.num_attention_heads * c.head_dim && !j.contains("head_dim"))
        die("%s: hidden_size %d is not divisible by num_attention_heads %d", path.c_str(), c.hidden_size, c.num_attention_heads);
    config_validate(c, path);
    return c;
}

void config_write_json(const Config& c, const std::string& path) {
    json j;
    j["architectures"] = {"LlamaForCausalLM"};
    j["model_type"] = "llama";
    j["attention_bias"] = false;
    j["attention_dropout"] = 0.0;
    j["bos_token_id"] = c.bos_token_id;
    j["eos_token_id"] = c.eos_token_id;
    j["head_dim"] = c.head_dim;
    j["hidden_act"] = "silu";
    j["hidden_size"] = c.hidden_size;
    j["intermediate_size"] = c.intermediate_size;
    j["max_position_embeddings"] = c.max_position_embeddings;
    j["mlp_bias"] = false;
    j["num_attention_heads"] = c.num_attention_heads;
    j["num_hidden_layers"] = c.num_hidden_layers;
    j["num_key_value_heads"] = c.num_key_value_heads;
    j["pretraining_tp"] = 1;
    j["rms_norm_eps"] = c.rms_norm_eps;
    j["rope_theta"] = c.rope_theta;      // read by transformers 4.x
    j["rope_scaling"] = nullptr;
    j["tie_word_embeddings"] = false;
    j["torch_dtype"] = c.torch_dtype;
    j["use_cache"] = true;
    j["vocab_size"] = c.vocab_size;
    write_file_atomic(path, j.dump(2) + "\n");
}

void param_sizes(const Config& c, size_t s[NUM_PARAM_TENSORS]) {
    size_t V = c.vocab_size, C = c.hidden_size, L = c.num_hidden_layers, F = c.intermediate_size;
    size_t QD = (size_t)c.num_attention_heads * c.head_dim, KVD = (size_t)c.num_key_value_heads * c.head_dim;
    s[0] = V * C;          // embed_tokens
    s[1] = L * C;          // input_layernorm
    s[2] = L * QD * C;     // q_proj
    s[3] = L * KVD * C;    // k_proj
    s[4] = L * KVD * C;    // v_proj
    s[5] = L * C * QD;     // o_proj
    s[6] = L * C;          // post_attention_layernorm
    s[7] = L * F * C;      // gate_proj
    s[8] = L * F * C;      // up_proj
    s[9] = L * C * F;      // down_proj
    s[10] = C;             // norm
    s[11] = V * C;         // lm_head
}
size_t config_num_parameters(const Config& c) {
    size_t s[NUM_PARAM_TENSORS], n = 0;
    param_sizes(c, s);
    for (size_t x : s) n += x;
    return n;
}
double config_flops_per_token(const Config& c, int seq_len) {
    double L = c.num_hidden_layers, C = c.hidden_size;
    return 72.0 * L * C * C + 12.0 * L * C * seq_len;
}

void param_point(ParameterTensors* p, float* mem, const size_t s[NUM_PARAM_TENSORS]) {
    float** ptrs[NUM_PARAM_TENSORS] = {&p->embed_tokens, &p->input_layernorm, &p->q_proj, &p->k_proj, &p->v_proj,
                                       &p->o_proj, &p->post_attention_layernorm, &p->gate_proj, &p->up_proj,
                                       &p->down_proj, &p->norm, &p->lm_head};
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) { *ptrs[i] = mem; mem += s[i]; }
}

std::vector<ParamView> param_views(const Config& c) {
    size_t s[NUM_PARAM_TENSORS], off[NUM_PARAM_TENSORS], o = 0;
    param_sizes(c, s);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) { off[i] = o; o += s[i]; }
    int64_t V = c.vocab_size, C = c.hidden_size, F = c.intermediate_size;
    int64_t QD = (int64_t)c.num_attention_heads * c.head_dim, KVD = (int64_t)c.num_key_value_heads * c.head_dim;
    std::vector<ParamView> v;
    v.push_back({"model.embed_tokens.weight", off[0], {V, C}, true});
    struct PerLayer { int idx; const char* name; std::vector<int64_t> shape; bool matrix; };
    std::vector<PerLayer> per = {
        {1, "input_layernorm.weight", {C}, false},           {2, "self_attn.q_proj.weight", {QD, C}, true},
        {3, "self_attn.k_proj.weight", {KVD, C}, true},       {4, "self_attn.v_proj.weight", {KVD, C}, true},
        {5, "self_attn.o_proj.weight", {C, QD}, true},        {6, "post_attention_layernorm.weight", {C}, false},
        {7, "mlp.gate_proj.weight", {F, C}, true},            {8, "mlp.up_proj.weight", {F, C}, true},
        {9, "mlp.down_proj.weight", {C, F}, true}};
    for (int l = 0; l < c.num_hidden_layers; l++)
        for (auto& p : per) {
            size_t n = s[p.idx] / c.num_hidden_layers;
            v.push_back({"model.layers." + std::to_string(l) + "." + p.name, off[p.idx] + l * n, p.shape, p.matrix});
        }
    v.push_back({"model.norm.weight", off[10], {C}, false});
    v.push_back({"lm_head.weight", off[11], {V, C}, true});
    return v;
}

// ============================================================================
// layers: the CPU fp32 reference. N = number of rows (B*T tokens).

// matmul: out[n,o] = Σ_i inp[n,i] · weight[o,i]   (weight in PyTorch's [out_features, in_features] layout)
void matmul_forward_ref(float* out, const float* inp, const float* weight, int N, int in, int out_dim) {
    #pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < N; n++)
        for (int o = 0; o < out_dim; o++) {
            const float* x = inp + (size_t)n * in;
            const float* w = weight + (size_t)o * in;
            float sum = 0.0f;
            #pragma omp simd reduction(+ : sum)
            for (int i = 0; i < in; i++) sum += x[i] * w[i];
            out[(size_t)n * out_dim + o] = sum;
        }
}
// dinp[n,i] += Σ_o dout[n,o] · weight[o,i];   dweight[o,i] += Σ_n dout[n,o] · inp[n,i]
// Each output element is owned by one thread and summed in a fixed order: results do not depend on threads.
void matmul_backward_ref(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                         int N, int in, int out_dim) {
    if (dinp) {
        #pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            float* dx = dinp + (size_t)n * in;
            const float* g = dout + (size_t)n * out_dim;
            for (int o = 0; o < out_dim; o++) {
                const float* w = weight + (size_t)o * in;
                float go = g[o];
                #pragma omp simd
                for (int i = 0; i < in; i++) dx[i] += go * w[i];
            }
        }
    }
    if (dweight) {
        #pragma omp parallel for schedule(static)
        for (int o = 0; o < out_dim; o++) {
            float* dw = dweight + (size_t)o * in;
            for (int n = 0; n < N; n++) {
                float go = dout[(size_t)n * out_dim + o];
                const float* x = inp + (size_t)n * in;
                #pragma omp simd
                for (int i = 0; i < in; i++) dw[i] += go * x[i];
            }
        }
    }
}

// RMSNorm: y = w ⊙ x · rstd,  rstd = 1/sqrt(mean(x²) + eps)     (Hugging Face LlamaRMSNorm)
void rmsnorm_forward_ref(float* out, float* rstd, const float* inp, const float* weight, int N, int C, float eps) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* x = inp + (size_t)n * C;
        float ss = 0.0f;
        for (int i = 0; i < C; i++) ss += x[i] * x[i];
        float r = 1.0f / sqrtf(ss / C + eps);
        if (rstd) rstd[n] = r;
        float* y = out + (size_t)n * C;
        for (int i = 0; i < C; i++) y[i] = weight[i] * (x[i] * r);
    }
}
// With x̂ = x·rstd and g = dy ⊙ w:  dx = rstd · (g − x̂ · mean(g ⊙ x̂)),  dw += Σ_n dy ⊙ x̂
void rmsnorm_backward_ref(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                             const float* rstd, int N, int C) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* x = inp + (size_t)n * C;
        const float* dy = dout + (size_t)n * C;
        float r = rstd[n], dot = 0.0f;
        for (int i = 0; i < C; i++) dot += dy[i] * weight[i] * x[i] * r;
        dot /= C;
        float* dx = dinp + (size_t)n * C;
        for (int i = 0; i < C; i++) dx[i] += r * (dy[i] * weight[i] - x[i] * r * dot);
    }
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < C; i++) {
        float acc = 0.0f;
        for (int n = 0; n < N; n++) acc += dout[(size_t)n * C + i] * inp[(size_t)n * C + i] * rstd[n];
        dweight[i] += acc;
    }
}

// RoPE, Hugging Face layout: dimension i pairs with i + D/2, angle = pos · θ^(−2i/D).
//   (x1, x2) → (x1·cos − x2·sin, x2·cos + x1·sin)
// inv_freq is computed in fp32 as transformers does; the rotation is linear, so backward rotates by −angle.
static void rope_rotate_ref(float* x, const int* pos, int N, int heads, int D, float theta, float sign) {
    int half = D / 2;
    std::vector<float> inv_freq(half);
    for (int i = 0; i < half; i++) inv_freq[i] = 1.0f / powf(theta, (float)(2 * i) / (float)D);
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        for (int i = 0; i < half; i++) {
            double angle = (double)pos[n] * (double)inv_freq[i];
            float c = (float)cos(angle), s = sign * (float)sin(angle);
            for (int h = 0; h < heads; h++) {
                float* v = x + ((size_t)n * heads + h) * D;
                float x1 = v[i], x2 = v[i + half];
                v[i] = x1 * c - x2 * s;
                v[i + half] = x2 * c + x1 * s;
            }
        }
    }
}
void rope_forward_ref(float* x, const int* pos, int N, int heads, int D, float theta) { rope_rotate_ref(x, pos, N, heads, D, theta, 1.0f); }
void rope_backward_ref(float* dx, const int* pos, int N, int heads, int D, float theta) { rope_rotate_ref(dx, pos, N, heads, D, theta, -1.0f); }

// Causal grouped-query attention. q [B,T,H,D], k/v [B,T,KV,D]; query head h reads kv head h / (H/KV).
//   att[b,h,t,s] = softmax_s≤t (q·k / sqrt(D)),   y[b,t,h] = Σ_s att · v[b,s,h/(H/KV)]
// The reference keeps att [B,H,T,T] for backward (entries above the diagonal are zero).
void attention_forward_ref(float* y, float* att, const float* q, const float* k, const float* v,
                              int B, int T, int H, int KV, int D) {
    int group = H / KV;
    float scale = 1.0f / sqrtf((float)D);
    #pragma omp parallel for collapse(3) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                int kh = h / group;
                const float* qt = q + (((size_t)b * T + t) * H + h) * D;
                float* a = att + (((size_t)b * H + h) * T + t) * T;
                float maxv = -INFINITY;
                for (int s = 0; s <= t; s++) {
                    const float* ks = k + (((size_t)b * T + s) * KV + kh) * D;
                    float dot = 0.0f;
                    for (int i = 0; i < D; i++) dot += qt[i] * ks[i];
                    a[s] = dot * scale;
                    maxv = std::max(maxv, a[s]);
                }
                float sum = 0.0f;
                for (int s = 0; s <= t; s++) { a[s] = expf(a[s] - maxv); sum += a[s]; }
                for (int s = 0; s <= t; s++) a[s] /= sum;
                for (int s = t + 1; s < T; s++) a[s] = 0.0f;
                float* yt = y + (((size_t)b * T + t) * H + h) * D;
                for (int i = 0; i < D; i++) yt[i] = 0.0f;
                for (int s = 0; s <= t; s++) {
                    const float* vs = v + (((size_t)b * T + s) * KV + kh) * D;
                    for (int i = 0; i < D; i++) yt[i] += a[s] * vs[i];
                }
            }
}
// datt = dy·vᵀ;  dpre = att ⊙ (datt − Σ_s att·datt);  dq += dpre·k·scale;  dk += dpreᵀ·q·scale;  dv += attᵀ·dy
// Parallel over (b, kv head): the query heads of one group write the same dk/dv rows, so they run in one thread.
void attention_backward_ref(float* dq, float* dk, float* dv, const float* dy, const float* att, const float* q,
                               const float* k, const float* v, int B, int T, int H, int KV, int D) {
    int group = H / KV;
    float scale = 1.0f / sqrtf((float)D);
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int kh = 0; kh < KV; kh++) {
            std::vector<float> dpre(T);
            for (int h = kh * group; h < (kh + 1) * group; h++)
                for (int t = 0; t < T; t++) {
                    const float* a = att + (((size_t)b * H + h) * T + t) * T;
                    const float* dyt = dy + (((size_t)b * T + t) * H + h) * D;
                    float dsum = 0.0f;
                    for (int s = 0; s <= t; s++) {
                        const float* vs = v + (((size_t)b * T + s) * KV + kh) * D;
                        float* dvs = dv + (((size_t)b * T + s) * KV + kh) * D;
                        float da = 0.0f;
                        for (int i = 0; i < D; i++) { da += dyt[i] * vs[i]; dvs[i] += a[s] * dyt[i]; }
                        dpre[s] = da;
                        dsum += a[s] * da;
                    }
                    const float* qt = q + (((size_t)b * T + t) * H + h) * D;
                    float* dqt = dq + (((size_t)b * T + t) * H + h) * D;
                    for (int s = 0; s <= t; s++) {
                        float g = a[s] * (dpre[s] - dsum) * scale;
                        const float* ks = k + (((size_t)b * T + s) * KV + kh) * D;
                        float* dks = dk + (((size_t)b * T + s) * KV + kh) * D;
                        for (int i = 0; i < D; i++) { dqt[i] += g * ks[i]; dks[i] += g * qt[i]; }
                    }
                }
        }
}

// SwiGLU: act = silu(gate) ⊙ up,  silu(x) = x·σ(x),  silu'(x) = σ(x)·(1 + x·(1 − σ(x)))
float silu(float x) { return x / (1.0f + expf(-x)); }
void swiglu_forward_ref(float* act, const float* gate, const float* up, size_t n) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) act[i] = silu(gate[i]) * up[i];
}
void swiglu_backward_ref(float* dgate, float* dup, const float* dact, const float* gate, const float* up, size_t n) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], sig = 1.0f / (1.0f + expf(-g));
        dgate[i] += dact[i] * up[i] * sig * (1.0f + g * (1.0f - sig));
        dup[i] += dact[i] * g * sig;
    }
}

// Cross-entropy per token: nll = logsumexp(logits) − logits[target]; masked tokens (target < 0) give 0.
void crossentropy_forward_ref(float* losses, const float* logits, const int* targets, int N, int V) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        if (targets[n] < 0) { losses[n] = 0.0f; continue; }
        const float* z = logits + (size_t)n * V;
        float maxv = -INFINITY;
        for (int i = 0; i < V; i++) maxv = std::max(maxv, z[i]);
        double sum = 0.0;
        for (int i = 0; i < V; i++) sum += exp((double)(z[i] - maxv));
        losses[n] = (float)(log(sum) + maxv - z[targets[n]]);
    }
}
// dlogits[n] = dloss[n] · (softmax(logits[n]) − onehot(target)); masked rows get exactly zero.
void crossentropy_backward_ref(float* dlogits, const float* logits, const int* targets, const float* dlosses, int N, int V) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float* dz = dlogits + (size_t)n * V;
        if (targets[n] < 0 || dlosses[n] == 0.0f) { for (int i = 0; i < V; i++) dz[i] = 0.0f; continue; }
        const float* z = logits + (size_t)n * V;
        float maxv = -INFINITY;
        for (int i = 0; i < V; i++) maxv = std::max(maxv, z[i]);
        double sum = 0.0;
        for (int i = 0; i < V; i++) sum += exp((double)(z[i] - maxv));
        float inv = (float)(1.0 / sum), w = dlosses[n];
        for (int i = 0; i < V; i++) dz[i] = w * expf(z[i] - maxv) * inv;
        dz[targets[n]] -= w;
    }
}

// ============================================================================
// fast CPU paths
//
// The layers above are the oracle; the functions below compute the same things faster and are tested against
// them in tests/test_fastpath.cpp. model_forward/model_backward use them unless g_cpu_reference is set.
// Plain C++ with OpenMP; intrinsics only inside the GEMM microkernel (and chosen at build time by -march).
//
// Determinism: every output element is computed by one thread, summing in an order that depends only on the
// shapes — never on the thread count or the OpenMP schedule. Results are bit-identical for any --threads.

bool g_cpu_reference = false;

static int omp_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// exp_poly (e^x in fp32 that vectorises) is defined in deepseek.h: the decode attention in infer.cu uses it too.

// ----------------------------------------------------------------------------
// GEMM: C[M,N] (+)= op(A)[M,K] · op(B)[K,N], fp32, row-major storage.
//   op(A)[m,k] = A[m·lda + k]  (a_trans false)  or  A[k·lda + m]  (a_trans true)
//   op(B)[k,n] = B[k·ldb + n]  (b_trans false)  or  B[n·ldb + k]  (b_trans true)
// The model's three products are all of this form (W is [out, in], X is [N, in], dY is [N, out]):
//   forward   Y  = X · Wᵀ      M=N,   N=out, K=in    B transposed
//   backward  dX += dY · W     M=N,   N=in,  K=out
//   backward  dW += dYᵀ · X    M=out, N=in,  K=N     A transposed
//
// Blocking: the loops, outermost first, and where their operands live on this machine
// (Xeon, Sapphire Rapids class: L1d 48 KiB and L2 2 MiB per core, L3 shared):
//   jc: NC columns of op(B)  ┐ pack op(B)[KC×NC] into NR-wide panels, shared by the threads:
//   pc: KC of the K axis     ┘   512·512·4 B = 1 MiB, in each core's L2
//   ir: MR rows of op(A)     — one strip of op(A), MR×KC = 14·512·4 B = 28 KiB, in L1 for the whole jr loop: read
//                              in place when A is row-major (its MR rows run along k: X and dY in forward and dX),
//                              packed [k·MR + r] into a per-thread buffer when it is transposed (dYᵀ for dW; all
//                              of a thread's strips once, ahead of the blocks, when N > NC: down_proj's dW +4%)
//   jr: NR columns           — the microkernel: an MR×NR tile of C in registers, KC rank-1 updates, its B panel
//                              (KC×NR = 64 KiB) streaming from L2
// The AVX-512 microkernel keeps a 14×32 tile in 28 zmm registers; each k step loads two vectors of B,
// broadcasts 14 scalars of A and issues 28 FMAs — 14 cycles on two FMA ports, while its loads (56 B of A
// from L1, 128 B of B from L2, prefetched 16 steps ahead) are well within what the caches deliver.
// Edge tiles run the same kernel instantiated for their row count, with masked columns.
// Why this order: at KC = 512 a B panel (64 KiB) does not fit L1 but an A strip does, and a smaller KC stores each
// C tile more often (KC = 256 measured −4%). The classic Goto order (an MC×KC block of A packed into L2, the B
// panel reused across it) was 1–10% slower on the products with a row-major A — packing A is most of the
// difference — and the same on dW. KC = 512 makes the model's K = C = 512 products one pass.
// Threads split the rows evenly (each share ending in a partial strip rather than one thread getting a whole extra
// strip: 1–2% on M = 1024), or the NR panels of each block when there are few rows.
// Each C element is one FMA chain over k in increasing order, started from C itself when accumulating —
// the same chain whatever the blocking or the thread count, so results do not depend on either.

#if defined(__AVX512F__)
static const int GEMM_MR = 14, GEMM_NR = 32;
static const char* GEMM_KERNEL = "avx512 14x32";
#elif defined(__AVX2__) && defined(__FMA__)
static const int GEMM_MR = 6, GEMM_NR = 16;
static const char* GEMM_KERNEL = "avx2 6x16";
#else
static const int GEMM_MR = 4, GEMM_NR = 16;
static const char* GEMM_KERNEL = "portable 4x16";
#endif
static const int GEMM_KC = 512, GEMM_NC = 512;  // the packed B block, KC×NC·4 B = 1 MiB
const char* gemm_kernel_name() { return GEMM_KERNEL; }

#if defined(__AVX512F__)
// 16×16 transpose in registers (row i = r[i] in, column i = r[i] out): pairs of rows interleaved as 32-bit,
// then 64-bit elements, then 128-bit lanes twice. gemm_pack_b uses it for a transposed B (the forward's W), which
// otherwise moves one float per load/store pair and costs a tenth of the GEMM on the model's shapes.
static inline void transpose16(__m512 r[16]) {
    const __mmask16 all = 0xFFFF;  // full masks: the masked forms keep GCC 12's headers free of -Wmaybe-uninitialized
    const __mmask8 half = 0xFF;
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) { t[i] = _mm512_maskz_unpacklo_ps(all, r[i], r[i + 1]); t[i + 1] = _mm512_maskz_unpackhi_ps(all, r[i], r[i + 1]); }
    for (int i = 0; i < 16; i += 4) {
        r[i]     = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(half, _mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 1] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(half, _mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 2] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(half, _mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
        r[i + 3] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(half, _mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
    for (int i = 0; i < 4; i++) {
        t[i]      = _mm512_maskz_shuffle_f32x4(all, r[i], r[i + 4], 0x88);
        t[i + 4]  = _mm512_maskz_shuffle_f32x4(all, r[i], r[i + 4], 0xdd);
        t[i + 8]  = _mm512_maskz_shuffle_f32x4(all, r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_maskz_shuffle_f32x4(all, r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 4; i++) {
        r[i]      = _mm512_maskz_shuffle_f32x4(all, t[i], t[i + 8], 0x88);
        r[i + 8]  = _mm512_maskz_shuffle_f32x4(all, t[i], t[i + 8], 0xdd);
        r[i + 4]  = _mm512_maskz_shuffle_f32x4(all, t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_maskz_shuffle_f32x4(all, t[i + 4], t[i + 12], 0xdd);
    }
}
#endif

// pack op(A)[m0.., k0..k0+kc) into panels of MR rows: panel p holds A[m0+p·MR+r, k0+k] at [p·MR·kc + k·MR + r],
// rows past M are zero (the microkernel always computes a whole tile; the extra rows are never stored)
static void gemm_pack_a(float* ap, const float* A, int lda, bool trans, int m0, int mc, int k0, int kc) {
    for (int p = 0; p < mc; p += GEMM_MR) {
        float* dst = ap + (size_t)p * kc;
        int rows = std::min(GEMM_MR, mc - p);
        if (trans) {
            for (int k = 0; k < kc; k++) {
                const float* src = A + (size_t)(k0 + k) * lda + m0 + p;
                if (rows == GEMM_MR) { memcpy(dst + k * GEMM_MR, src, sizeof(float) * GEMM_MR); continue; }  // fixed size: vector moves
                for (int r = 0; r < rows; r++) dst[k * GEMM_MR + r] = src[r];
                for (int r = rows; r < GEMM_MR; r++) dst[k * GEMM_MR + r] = 0.0f;
            }
        } else {
            // a row-major A: packed only by the AVX2 and portable builds (AVX-512 reads its strips in place)
            if (rows == GEMM_MR) {  // a transpose: MR row streams in, one contiguous stream out
                const float* src = A + (size_t)(m0 + p) * lda + k0;
                for (int k = 0; k < kc; k++)
                    #pragma GCC unroll 16
                    for (int r = 0; r < GEMM_MR; r++) dst[k * GEMM_MR + r] = src[(size_t)r * lda + k];
                continue;
            }
            for (int r = 0; r < GEMM_MR; r++) {
                if (r >= rows) { for (int k = 0; k < kc; k++) dst[k * GEMM_MR + r] = 0.0f; continue; }
                const float* src = A + (size_t)(m0 + p + r) * lda + k0;
                for (int k = 0; k < kc; k++) dst[k * GEMM_MR + r] = src[k];
            }
        }
    }
}
// pack one NR-wide panel of op(B)[k0..k0+kc, n0..n0+cols): [k·NR + c], columns past `cols` zero
static void gemm_pack_b(float* bp, const float* B, int ldb, bool trans, int k0, int kc, int n0, int cols) {
    if (trans && cols == GEMM_NR) {  // a transpose
        const float* src = B + (size_t)n0 * ldb + k0;
        int k = 0;
#if defined(__AVX512F__)
        for (; k + 16 <= kc; k += 16)  // two 16×16 squares: columns 0–15 and 16–31
            for (int half = 0; half < 2; half++) {
                __m512 r[16];
                for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + (size_t)(half * 16 + i) * ldb + k);
                transpose16(r);
                for (int j = 0; j < 16; j++) _mm512_store_ps(bp + (size_t)(k + j) * GEMM_NR + half * 16, r[j]);
            }
#endif
        for (; k < kc; k++)
            #pragma GCC unroll 32
            for (int c = 0; c < GEMM_NR; c++) bp[k * GEMM_NR + c] = src[(size_t)c * ldb + k];
    } else if (trans) {
        for (int c = 0; c < GEMM_NR; c++) {
            if (c >= cols) { for (int k = 0; k < kc; k++) bp[k * GEMM_NR + c] = 0.0f; continue; }
            const float* src = B + (size_t)(n0 + c) * ldb + k0;
            for (int k = 0; k < kc; k++) bp[k * GEMM_NR + c] = src[k];
        }
    } else {
        for (int k = 0; k < kc; k++) {
            const float* src = B + (size_t)(k0 + k) * ldb + n0;
            float* dst = bp + k * GEMM_NR;
            if (cols == GEMM_NR) { memcpy(dst, src, sizeof(float) * GEMM_NR); continue; }
            for (int c = 0; c < cols; c++) dst[c] = src[c];
            for (int c = cols; c < GEMM_NR; c++) dst[c] = 0.0f;
        }
    }
}

// the microkernel: C[rows×cols] (ldc) = (load ? C : 0) + Σ_k op(A)[r, k] · b[k·NR + c], as one FMA chain per
// element, with the strip of A packed (a[k·MR + r]) or, in place, row-major (a[r·lda + k]; AVX-512 only)
#if defined(__AVX512F__)
static const bool GEMM_A_IN_PLACE = true;
// R rows (R = MR inside C; fewer at its bottom edge, so no FMA is spent on padding rows) and the columns
// under the masks m0 (0–15), m1 (16–31): full except at C's right edge.
template <int R, bool IN_PLACE>
static void gemm_kernel_rows(int kc, const float* a, size_t lda, const float* b, float* C, int ldc, bool load,
                             __mmask16 m0, __mmask16 m1) {
    __m512 c0[R], c1[R];
    #pragma GCC unroll 14
    for (int r = 0; r < R; r++) {
        c0[r] = load ? _mm512_maskz_loadu_ps(m0, C + (size_t)r * ldc) : _mm512_setzero_ps();
        c1[r] = load ? _mm512_maskz_loadu_ps(m1, C + (size_t)r * ldc + 16) : _mm512_setzero_ps();
    }
    for (int k = 0; k < kc; k++, b += GEMM_NR) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        _mm_prefetch((const char*)(b + 16 * GEMM_NR), _MM_HINT_T0);
        _mm_prefetch((const char*)(b + 16 * GEMM_NR + 16), _MM_HINT_T0);
        #pragma GCC unroll 14
        for (int r = 0; r < R; r++) {
            __m512 ar = _mm512_set1_ps(IN_PLACE ? a[r * lda + k] : a[k * GEMM_MR + r]);
            c0[r] = _mm512_fmadd_ps(ar, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(ar, b1, c1[r]);
        }
    }
    #pragma GCC unroll 14
    for (int r = 0; r < R; r++) {
        _mm512_mask_storeu_ps(C + (size_t)r * ldc, m0, c0[r]);
        _mm512_mask_storeu_ps(C + (size_t)r * ldc + 16, m1, c1[r]);
    }
}
static void gemm_kernel(int kc, const float* a, size_t lda, bool in_place, const float* b, float* C, int ldc, bool load,
                        int rows, int cols) {
    __mmask16 m0 = (__mmask16)(cols >= 16 ? 0xFFFF : (1u << cols) - 1), m1 = (__mmask16)(cols >= 32 ? 0xFFFF : cols <= 16 ? 0 : (1u << (cols - 16)) - 1);
    using K = void (*)(int, const float*, size_t, const float*, float*, int, bool, __mmask16, __mmask16);
#define GEMM_ROWS(P) {nullptr, gemm_kernel_rows<1, P>, gemm_kernel_rows<2, P>, gemm_kernel_rows<3, P>, gemm_kernel_rows<4, P>, \
        gemm_kernel_rows<5, P>, gemm_kernel_rows<6, P>, gemm_kernel_rows<7, P>, gemm_kernel_rows<8, P>, gemm_kernel_rows<9, P>, \
        gemm_kernel_rows<10, P>, gemm_kernel_rows<11, P>, gemm_kernel_rows<12, P>, gemm_kernel_rows<13, P>, gemm_kernel_rows<14, P>}
    static const K by_rows[2][GEMM_MR + 1] = {GEMM_ROWS(false), GEMM_ROWS(true)};
#undef GEMM_ROWS
    by_rows[in_place][rows](kc, a, lda, b, C, ldc, load, m0, m1);
}
#else
static const bool GEMM_A_IN_PLACE = false;  // AVX2 and portable: the strip is always packed
#if defined(__AVX2__) && defined(__FMA__)
static void gemm_kernel_full(int kc, const float* a, const float* b, float* C, int ldc, bool load) {
    __m256 c0[GEMM_MR], c1[GEMM_MR];
    #pragma GCC unroll 6
    for (int r = 0; r < GEMM_MR; r++) {
        c0[r] = load ? _mm256_loadu_ps(C + (size_t)r * ldc) : _mm256_setzero_ps();
        c1[r] = load ? _mm256_loadu_ps(C + (size_t)r * ldc + 8) : _mm256_setzero_ps();
    }
    for (int k = 0; k < kc; k++, a += GEMM_MR, b += GEMM_NR) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        #pragma GCC unroll 6
        for (int r = 0; r < GEMM_MR; r++) {
            __m256 ar = _mm256_broadcast_ss(a + r);
            c0[r] = _mm256_fmadd_ps(ar, b0, c0[r]);
            c1[r] = _mm256_fmadd_ps(ar, b1, c1[r]);
        }
    }
    #pragma GCC unroll 6
    for (int r = 0; r < GEMM_MR; r++) {
        _mm256_storeu_ps(C + (size_t)r * ldc, c0[r]);
        _mm256_storeu_ps(C + (size_t)r * ldc + 8, c1[r]);
    }
}
#else
static void gemm_kernel_full(int kc, const float* a, const float* b, float* C, int ldc, bool load) {
    float acc[GEMM_MR][GEMM_NR];
    for (int r = 0; r < GEMM_MR; r++)
        for (int c = 0; c < GEMM_NR; c++) acc[r][c] = load ? C[(size_t)r * ldc + c] : 0.0f;
    for (int k = 0; k < kc; k++, a += GEMM_MR, b += GEMM_NR)
        for (int r = 0; r < GEMM_MR; r++)
            for (int c = 0; c < GEMM_NR; c++) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
    for (int r = 0; r < GEMM_MR; r++)
        for (int c = 0; c < GEMM_NR; c++) C[(size_t)r * ldc + c] = acc[r][c];
}
#endif
// a whole tile, or one at the edge of C (fewer than MR rows or NR columns) run on a full tile in scratch
static void gemm_kernel(int kc, const float* a, size_t lda, bool in_place, const float* b, float* C, int ldc, bool load,
                        int rows, int cols) {
    if (rows == GEMM_MR && cols == GEMM_NR) { gemm_kernel_full(kc, a, b, C, ldc, load); return; }
    alignas(64) float tile[GEMM_MR * GEMM_NR];
    for (int r = 0; r < GEMM_MR; r++)
        for (int c = 0; c < GEMM_NR; c++) tile[r * GEMM_NR + c] = (load && r < rows && c < cols) ? C[(size_t)r * ldc + c] : 0.0f;
    gemm_kernel_full(kc, a, b, tile, GEMM_NR, load);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) C[(size_t)r * ldc + c] = tile[r * GEMM_NR + c];
}
#endif

// aligned scratch that lives as long as the thread and only grows (the packed panels)
static float* gemm_scratch(std::vector<float>* v, size_t n) {
    if (v->size() < n + 16) v->resize(n + 16);
    return (float*)(((uintptr_t)v->data() + 63) & ~(uintptr_t)63);
}

void gemm_cpu(int M, int N, int K, const float* A, int lda, bool a_trans, const float* B, int ldb, bool b_trans,
              float* C, int ldc, Accum accum) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {  // an empty sum
        if (accum == Accum::Overwrite)
            for (int m = 0; m < M; m++) memset(C + (size_t)m * ldc, 0, (size_t)N * sizeof(float));
        return;
    }
    static thread_local std::vector<float> bpack_buf;  // per calling thread: callers may run in parallel
    float* bpack = gemm_scratch(&bpack_buf, (size_t)GEMM_KC * GEMM_NC);
    bool in_place = GEMM_A_IN_PLACE && !a_trans;  // read A's strips where they lie, or pack each one
    int P = omp_threads();
    int m_strips = (M + GEMM_MR - 1) / GEMM_MR;
    bool split_rows = m_strips >= 2 * P || N <= GEMM_NR;
    #pragma omp parallel num_threads(P)
    {
        static thread_local std::vector<float> astrip_buf, aall_buf;
        int t = 0, nt = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        // this thread's rows [m_lo, m_hi) or, with few rows, its share of each block's NR panels
        int m_lo = 0, m_hi = M;
        if (split_rows) {
            m_lo = (int)((long long)M * t / nt);
            m_hi = (int)((long long)M * (t + 1) / nt);
        }
        // A packed (transposed): with one column block, a strip at a time; with several, all of this thread's strips
        // for all of K once, ahead of the blocks (each strip [pc·S·MR + s·MR·kc], S strips), instead of once per block
        int S = (m_hi - m_lo + GEMM_MR - 1) / GEMM_MR;
        bool pack_once = !in_place && N > GEMM_NC;
        float* astrip = in_place ? nullptr : gemm_scratch(pack_once ? &aall_buf : &astrip_buf,
                                                          pack_once ? (size_t)K * S * GEMM_MR : (size_t)GEMM_KC * GEMM_MR);
        if (pack_once)
            for (int pc = 0; pc < K; pc += GEMM_KC)
                for (int s = 0; s < S; s++) {
                    int kc = std::min(GEMM_KC, K - pc), ir = m_lo + s * GEMM_MR;
                    gemm_pack_a(astrip + (size_t)pc * S * GEMM_MR + (size_t)s * GEMM_MR * kc, A, lda, a_trans, ir,
                                std::min(GEMM_MR, m_hi - ir), pc, kc);
                }
        for (int jc = 0; jc < N; jc += GEMM_NC) {
            int nc = std::min(GEMM_NC, N - jc), n_panels = (nc + GEMM_NR - 1) / GEMM_NR;
            int j_lo = split_rows ? 0 : (int)((long long)n_panels * t / nt);
            int j_hi = split_rows ? n_panels : (int)((long long)n_panels * (t + 1) / nt);
            for (int pc = 0; pc < K; pc += GEMM_KC) {
                int kc = std::min(GEMM_KC, K - pc);
                bool load = accum == Accum::Add || pc > 0;
                #pragma omp for schedule(static)
                for (int j = 0; j < n_panels; j++)
                    gemm_pack_b(bpack + (size_t)j * GEMM_NR * kc, B, ldb, b_trans, pc, kc, jc + j * GEMM_NR,
                                std::min(GEMM_NR, nc - j * GEMM_NR));
                // (implicit barrier: the packed B block is complete)
                for (int ir = m_lo; ir < m_hi; ir += GEMM_MR) {
                    int rows = std::min(GEMM_MR, m_hi - ir);
                    const float* a = A + (size_t)ir * lda + pc;  // in place: the strip's first row, at column pc
                    if (pack_once) {
                        a = astrip + (size_t)pc * S * GEMM_MR + (size_t)(ir - m_lo) / GEMM_MR * GEMM_MR * kc;
                    } else if (!in_place) {
                        gemm_pack_a(astrip, A, lda, a_trans, ir, rows, pc, kc);
                        a = astrip;
                    }
                    for (int j = j_lo; j < j_hi; j++) {
                        int n0 = jc + j * GEMM_NR;
                        gemm_kernel(kc, a, (size_t)lda, in_place, bpack + (size_t)j * GEMM_NR * kc, C + (size_t)ir * ldc + n0,
                                    ldc, load, rows, std::min(GEMM_NR, N - n0));
                    }
                }
                #pragma omp barrier
            }
        }
    }
}

// matmul on gemm_cpu: forward writes out; backward adds dW += dYᵀ·X and writes or adds dX = dY·W (dinp_accum).
// A handful of rows (generation: one token at a time) is a matrix-vector product, bound by reading the
// weights once: dot products straight from W beat packing it.
void matmul_forward_cpu(float* out, const float* inp, const float* weight, int N, int in, int out_dim) {
    if (N <= 4) {
        #pragma omp parallel for schedule(static)
        for (int o = 0; o < out_dim; o++) {
            const float* w = weight + (size_t)o * in;
            for (int n = 0; n < N; n++) {
                const float* x = inp + (size_t)n * in;
                float sum = 0.0f;
                #pragma omp simd reduction(+ : sum)
                for (int i = 0; i < in; i++) sum += x[i] * w[i];
                out[(size_t)n * out_dim + o] = sum;
            }
        }
        return;
    }
    gemm_cpu(N, out_dim, in, inp, in, false, weight, in, true, out, out_dim, Accum::Overwrite);
}
void matmul_backward_cpu(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                         int N, int in, int out_dim, Accum dinp_accum) {
    if (dinp) gemm_cpu(N, in, out_dim, dout, out_dim, false, weight, in, false, dinp, in, dinp_accum);
    if (dweight) gemm_cpu(out_dim, in, N, dout, out_dim, true, inp, in, false, dweight, in, Accum::Add);
}

// ----------------------------------------------------------------------------
// RMSNorm, fast: vectorised, and fused with the residual add that precedes it in the model.

// out = rmsnorm(inp) · w, as rmsnorm_forward_ref but summing x² in vector lanes
void rmsnorm_forward_cpu(float* out, float* rstd, const float* inp, const float* weight, int N, int C, float eps) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* x = inp + (size_t)n * C;
        float ss = 0.0f;
        #pragma omp simd reduction(+ : ss)
        for (int i = 0; i < C; i++) ss += x[i] * x[i];
        float r = 1.0f / sqrtf(ss / C + eps);
        if (rstd) rstd[n] = r;
        float* y = out + (size_t)n * C;
        #pragma omp simd
        for (int i = 0; i < C; i++) y[i] = weight[i] * (x[i] * r);
    }
}
// res += skip, then out = rmsnorm(res) · w — one pass over the row instead of two (the model's
// "h = x + attention(x); rmsnorm(h)" and "x' = h + mlp(h); rmsnorm(x')")
void residual_rmsnorm_forward_cpu(float* res, float* out, float* rstd, const float* skip, const float* weight, int N, int C, float eps) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float* x = res + (size_t)n * C;
        const float* s = skip + (size_t)n * C;
        float ss = 0.0f;
        #pragma omp simd reduction(+ : ss)
        for (int i = 0; i < C; i++) { x[i] += s[i]; ss += x[i] * x[i]; }
        float r = 1.0f / sqrtf(ss / C + eps);
        rstd[n] = r;
        float* y = out + (size_t)n * C;
        #pragma omp simd
        for (int i = 0; i < C; i++) y[i] = weight[i] * (x[i] * r);
    }
}
// dinp = dskip + rstd·(g − x̂·mean(g ⊙ x̂)) with g = dy ⊙ w (dskip: the gradient arriving around the norm
// through the residual connection; may equal dinp, i.e. accumulate, or be null); dw += Σ_n dy ⊙ x̂.
// The dw sum runs over rows in order inside each thread's block of columns: no atomics, fixed order.
void rmsnorm_backward_cpu(float* dinp, const float* dskip, float* dweight, const float* dout, const float* inp,
                           const float* weight, const float* rstd, int N, int C) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* x = inp + (size_t)n * C;
        const float* dy = dout + (size_t)n * C;
        float r = rstd[n], dot = 0.0f;
        #pragma omp simd reduction(+ : dot)
        for (int i = 0; i < C; i++) dot += dy[i] * weight[i] * x[i];
        dot *= r / C;
        float* dx = dinp + (size_t)n * C;
        const float* ds = dskip ? dskip + (size_t)n * C : nullptr;
        #pragma omp simd
        for (int i = 0; i < C; i++) dx[i] = (ds ? ds[i] : 0.0f) + r * (dy[i] * weight[i] - x[i] * r * dot);
    }
    const int CB = 64;  // columns per task
    #pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += CB) {
        int cw = std::min(CB, C - c0);
        float acc[CB] = {0};
        for (int n = 0; n < N; n++) {
            const float* dy = dout + (size_t)n * C + c0;
            const float* x = inp + (size_t)n * C + c0;
            float r = rstd[n];
            #pragma omp simd
            for (int i = 0; i < cw; i++) acc[i] += dy[i] * x[i] * r;
        }
        for (int i = 0; i < cw; i++) dweight[c0 + i] += acc[i];
    }
}

// ----------------------------------------------------------------------------
// RoPE, fast: the angles depend only on (position, i), so a table of cos/sin for positions 0..T−1 is
// computed once per forward (exactly as the reference computes them) and applied in place to q, k and,
// rotated back, to their gradients. Bit-identical to rope_rotate_ref.

void rope_table(float* cosv, float* sinv, int T, int D, float theta) {  // cosv, sinv: [T, D/2]
    int half = D / 2;
    std::vector<float> inv_freq(half);
    for (int i = 0; i < half; i++) inv_freq[i] = 1.0f / powf(theta, (float)(2 * i) / (float)D);
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            double angle = (double)t * (double)inv_freq[i];
            cosv[(size_t)t * half + i] = (float)cos(angle);
            sinv[(size_t)t * half + i] = (float)sin(angle);
        }
}
// x [N, heads, D] in place, row n at position pos[n]; sign −1 applies the inverse rotation (backward)
void rope_apply_cpu(float* x, const float* cosv, const float* sinv, const int* pos, int N, int heads, int D, float sign) {
    int half = D / 2;
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* cs = cosv + (size_t)pos[n] * half;
        const float* sn = sinv + (size_t)pos[n] * half;
        for (int h = 0; h < heads; h++) {
            float* v = x + ((size_t)n * heads + h) * D;
            #pragma omp simd
            for (int i = 0; i < half; i++) {
                float c = cs[i], s = sign * sn[i], x1 = v[i], x2 = v[i + half];
                v[i] = x1 * c - x2 * s;
                v[i + half] = x2 * c + x1 * s;
            }
        }
    }
}

// ----------------------------------------------------------------------------
// SwiGLU, fast: vectorised exp; backward computes σ once for both gradients. Backward WRITES (=) dgate, dup.

void swiglu_forward_cpu(float* act, const float* gate, const float* up, size_t n) {
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) act[i] = gate[i] / (1.0f + exp_poly(-gate[i])) * up[i];
}
void swiglu_backward_cpu(float* dgate, float* dup, const float* dact, const float* gate, const float* up, size_t n) {
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], sig = 1.0f / (1.0f + exp_poly(-g));
        dgate[i] = dact[i] * up[i] * sig * (1.0f + g * (1.0f - sig));
        dup[i] = dact[i] * g * sig;
    }
}

// ----------------------------------------------------------------------------
// Cross-entropy fused with the softmax. Forward: one pass per row for max, one for Σe^(z−max), with vector
// lanes; nll = lse − z[target]. Backward WRITES (=) dlogits = w·(e^(z − lse) − onehot) in a single pass: the
// log-sum-exp is not recomputed but recovered as lse = nll + z[target] (exact up to one rounding, ~1e-7).

#if defined(__AVX512F__)
// halving over 256-bit halves, 128-bit lanes, pairs and neighbours; every lane ends with the total (full masks,
// as in transpose16: GCC 12's unmasked forms, and its 512 → 256-bit cast, warn -Wmaybe-uninitialized)
static inline float hmax16(__m512 v) {
    const __mmask16 all = 0xFFFF;
    v = _mm512_maskz_max_ps(all, v, _mm512_maskz_shuffle_f32x4(all, v, v, 0x4E));
    v = _mm512_maskz_max_ps(all, v, _mm512_maskz_shuffle_f32x4(all, v, v, 0xB1));
    v = _mm512_maskz_max_ps(all, v, _mm512_maskz_shuffle_ps(all, v, v, 0x4E));
    v = _mm512_maskz_max_ps(all, v, _mm512_maskz_shuffle_ps(all, v, v, 0xB1));
    return _mm512_cvtss_f32(v);
}
static inline float hsum16(__m512 v) {
    const __mmask16 all = 0xFFFF;
    v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(all, v, v, 0x4E));
    v = _mm512_add_ps(v, _mm512_maskz_shuffle_f32x4(all, v, v, 0xB1));
    v = _mm512_add_ps(v, _mm512_maskz_shuffle_ps(all, v, v, 0x4E));
    v = _mm512_add_ps(v, _mm512_maskz_shuffle_ps(all, v, v, 0xB1));
    return _mm512_cvtss_f32(v);
}
#endif

// max of x[0..n) in 16 running lane maxima: GCC leaves a plain max reduction scalar (even under `omp simd`, and
// the lane form too), which had made this max pass 3/4 of the cross-entropy's time
static inline float max_vec(const float* x, int n) {
    int i = 0;
#if defined(__AVX512F__)
    __m512 vm = _mm512_set1_ps(-INFINITY);
    for (; i + 16 <= n; i += 16) vm = _mm512_maskz_max_ps(0xFFFF, vm, _mm512_loadu_ps(x + i));  // (maskz: see transpose16)
    float m = hmax16(vm);
#else
    float lane[16], m = -INFINITY;
    for (int l = 0; l < 16; l++) lane[l] = -INFINITY;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) lane[l] = x[i + l] > lane[l] ? x[i + l] : lane[l];
    for (int l = 0; l < 16; l++) m = lane[l] > m ? lane[l] : m;
#endif
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

void crossentropy_forward_cpu(float* losses, const float* logits, const int* targets, int N, int V) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        if (targets[n] < 0) { losses[n] = 0.0f; continue; }
        const float* z = logits + (size_t)n * V;
        float maxv = max_vec(z, V);
        float sum = 0.0f;
        #pragma omp simd reduction(+ : sum)
        for (int i = 0; i < V; i++) sum += exp_poly(z[i] - maxv);
        losses[n] = logf(sum) + maxv - z[targets[n]];
    }
}
void crossentropy_backward_cpu(float* dlogits, const float* logits, const float* losses, const int* targets,
                                const float* dlosses, int N, int V) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float* dz = dlogits + (size_t)n * V;
        if (targets[n] < 0 || dlosses[n] == 0.0f) { memset(dz, 0, (size_t)V * sizeof(float)); continue; }
        const float* z = logits + (size_t)n * V;
        float lse = losses[n] + z[targets[n]], w = dlosses[n];
        #pragma omp simd
        for (int i = 0; i < V; i++) dz[i] = w * exp_poly(z[i] - lse);
        dz[targets[n]] -= w;
    }
}

// ----------------------------------------------------------------------------
// Attention, fast: blockwise causal GQA attention with an online softmax (the FlashAttention recurrence);
// no T×T matrix is stored, only each row's log-sum-exp for backward, which recomputes the probabilities.
// For query row t and key blocks of ATT_BK, with running max mx, sum l and output o:
//   S_s = q_t·k_s/√D;  mx' = max(mx, max_s S_s);  l' = l·e^(mx−mx') + Σ_s e^(S_s−mx');
//   o' = o·e^(mx−mx') + Σ_s e^(S_s−mx')·v_s;   finally y_t = o/l, lse_t = mx + log l.
// A task is (b, kv head, block of ATT_BQ query rows): the key block, packed transposed [D, ATT_BK] so the
// scores vectorise over keys, serves every query head of the group. Each row is summed over keys in order.
//
// The block products are register-blocked like the GEMM microkernel, four query rows at a time (a fifth of
// the GEMM's speed before, when each row was done alone and its accumulators went through memory):
//   att_scores4   S[4, ≤ATT_BK] = Q4 · Kᵀ       16 vector accumulators; each packed key row serves four queries;
//                                                 only the keys up to the rows' causal limit
//   att_rows4     O4[4, D]     += P[4, nk] · V   (also dq += dS · K)      D in chunks of 64: 16 accumulators
//   att_outer4    G[nk, D]     += P[4, nk]ᵀ · X4 (dv += Pᵀ·dy, dk += dSᵀ·q) the four X rows stay in registers
// A short group of rows is padded with a row of zeros whose results go to scratch.

static const int ATT_BQ = 32, ATT_BK = 64, ATT_R = 4;

#if defined(__AVX512F__)
static inline __mmask16 att_mask(int n) { return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1); }
template <int NV>  // the first NV·16 keys of the block (the rest lie past every row's causal limit)
static void att_scores4_n(float* s, const float* const* q, const float* kt, int D) {
    __m512 a[ATT_R][NV];
    for (int r = 0; r < ATT_R; r++)
        for (int c = 0; c < NV; c++) a[r][c] = _mm512_setzero_ps();
    for (int d = 0; d < D; d++) {
        const float* kd = kt + (size_t)d * ATT_BK;
        __m512 kv[NV];
        for (int c = 0; c < NV; c++) kv[c] = _mm512_loadu_ps(kd + 16 * c);
        #pragma GCC unroll 4
        for (int r = 0; r < ATT_R; r++) {
            __m512 x = _mm512_set1_ps(q[r][d]);
            for (int c = 0; c < NV; c++) a[r][c] = _mm512_fmadd_ps(x, kv[c], a[r][c]);
        }
    }
    for (int r = 0; r < ATT_R; r++)
        for (int c = 0; c < NV; c++) _mm512_storeu_ps(s + r * ATT_BK + c * 16, a[r][c]);
}
// S[4, 0..nk) (at least; entries up to the next 16 may be written too, the rest are left as they were)
static void att_scores4(float* s, const float* const* q, const float* kt, int nk, int D) {
    switch ((nk + 15) / 16) {
        case 1: att_scores4_n<1>(s, q, kt, D); break;
        case 2: att_scores4_n<2>(s, q, kt, D); break;
        case 3: att_scores4_n<3>(s, q, kt, D); break;
        default: att_scores4_n<4>(s, q, kt, D); break;
    }
}
static void att_rows4(float* const* o, const float* p, const float* v, size_t vstride, int nk, int D) {
    for (int d0 = 0; d0 < D; d0 += 64) {
        __mmask16 m[4];
        for (int c = 0; c < 4; c++) m[c] = att_mask(D - d0 - 16 * c);
        __m512 a[ATT_R][4];
        for (int r = 0; r < ATT_R; r++)
            for (int c = 0; c < 4; c++) a[r][c] = _mm512_maskz_loadu_ps(m[c], o[r] + d0 + 16 * c);
        for (int j = 0; j < nk; j++) {
            const float* vj = v + (size_t)j * vstride + d0;
            __m512 v0 = _mm512_maskz_loadu_ps(m[0], vj), v1 = _mm512_maskz_loadu_ps(m[1], vj + 16),
                   v2 = _mm512_maskz_loadu_ps(m[2], vj + 32), v3 = _mm512_maskz_loadu_ps(m[3], vj + 48);
            #pragma GCC unroll 4
            for (int r = 0; r < ATT_R; r++) {
                __m512 x = _mm512_set1_ps(p[r * ATT_BK + j]);
                a[r][0] = _mm512_fmadd_ps(x, v0, a[r][0]);
                a[r][1] = _mm512_fmadd_ps(x, v1, a[r][1]);
                a[r][2] = _mm512_fmadd_ps(x, v2, a[r][2]);
                a[r][3] = _mm512_fmadd_ps(x, v3, a[r][3]);
            }
        }
        for (int r = 0; r < ATT_R; r++)
            for (int c = 0; c < 4; c++) _mm512_mask_storeu_ps(o[r] + d0 + 16 * c, m[c], a[r][c]);
    }
}
static void att_outer4(float* g, const float* p, const float* const* x, int nk, int D) {
    for (int d0 = 0; d0 < D; d0 += 64) {
        __mmask16 m[4];
        for (int c = 0; c < 4; c++) m[c] = att_mask(D - d0 - 16 * c);
        __m512 xr[ATT_R][4];
        for (int r = 0; r < ATT_R; r++)
            for (int c = 0; c < 4; c++) xr[r][c] = _mm512_maskz_loadu_ps(m[c], x[r] + d0 + 16 * c);
        for (int j = 0; j < nk; j++) {
            float* gj = g + (size_t)j * D + d0;
            __m512 a0 = _mm512_maskz_loadu_ps(m[0], gj), a1 = _mm512_maskz_loadu_ps(m[1], gj + 16),
                   a2 = _mm512_maskz_loadu_ps(m[2], gj + 32), a3 = _mm512_maskz_loadu_ps(m[3], gj + 48);
            #pragma GCC unroll 4
            for (int r = 0; r < ATT_R; r++) {
                __m512 w = _mm512_set1_ps(p[r * ATT_BK + j]);
                a0 = _mm512_fmadd_ps(w, xr[r][0], a0);
                a1 = _mm512_fmadd_ps(w, xr[r][1], a1);
                a2 = _mm512_fmadd_ps(w, xr[r][2], a2);
                a3 = _mm512_fmadd_ps(w, xr[r][3], a3);
            }
            _mm512_mask_storeu_ps(gj, m[0], a0);
            _mm512_mask_storeu_ps(gj + 16, m[1], a1);
            _mm512_mask_storeu_ps(gj + 32, m[2], a2);
            _mm512_mask_storeu_ps(gj + 48, m[3], a3);
        }
    }
}
#else
// portable twins: the same sums, left to the compiler to vectorise
static void att_scores4(float* s, const float* const* q, const float* kt, int nk, int D) {
    for (int r = 0; r < ATT_R; r++) {
        float* sr = s + r * ATT_BK;
        for (int j = 0; j < nk; j++) sr[j] = 0.0f;
        for (int d = 0; d < D; d++) {
            float x = q[r][d];
            const float* kd = kt + (size_t)d * ATT_BK;
            #pragma omp simd
            for (int j = 0; j < nk; j++) sr[j] = fmaf(x, kd[j], sr[j]);
        }
    }
}
static void att_rows4(float* const* o, const float* p, const float* v, size_t vstride, int nk, int D) {
    for (int r = 0; r < ATT_R; r++)
        for (int j = 0; j < nk; j++) {
            float w = p[r * ATT_BK + j];
            const float* vj = v + (size_t)j * vstride;
            #pragma omp simd
            for (int d = 0; d < D; d++) o[r][d] = fmaf(w, vj[d], o[r][d]);
        }
}
static void att_outer4(float* g, const float* p, const float* const* x, int nk, int D) {
    for (int j = 0; j < nk; j++)
        for (int r = 0; r < ATT_R; r++) {
            float w = p[r * ATT_BK + j];
            float* gj = g + (size_t)j * D;
            #pragma omp simd
            for (int d = 0; d < D; d++) gj[d] = fmaf(w, x[r][d], gj[d]);
        }
}
#endif

// One row of a score block, in place: s[j] ← e^(s[j]·scale − m') for j < n and 0 for n ≤ j < ATT_BK, with
// m' = max(m, max_j s[j]·scale) returned and Σ_j e^(s[j]·scale − m') in *sum. GCC leaves a loop's max and its
// sum's last lane reduction scalar, through memory: they were a third of the forward, so here both are halvings (hmax16, hsum16)
// in registers, and e^x is exp_poly's polynomial on 16 lanes (forward: 2.0 → 1.55 ms per layer at d512, T 256).
#if defined(__AVX512F__)
static inline __m512 exp16(__m512 x) {  // exp_poly (deepseek.h): the same operations on 16 lanes, the same bits
    const __mmask16 all = 0xFFFF;  // full masks: the masked forms keep GCC 12's headers free of -Wmaybe-uninitialized
    x = _mm512_maskz_min_ps(all, _mm512_maskz_max_ps(all, x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
    __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(12582912.0f)),
                             _mm512_set1_ps(12582912.0f));
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-6f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    __m512i bits = _mm512_maskz_slli_epi32(all, _mm512_add_epi32(_mm512_maskz_cvtps_epi32(all, n), _mm512_set1_epi32(127)), 23);  // 2^n
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}
static inline float att_softmax_row(float* s, int n, float scale, float m, float* sum) {
    static_assert(ATT_BK == 64, "four vectors per row");
    __m512 x[4], vm = _mm512_set1_ps(m), vs = _mm512_set1_ps(scale);
    __mmask16 k[4];
    for (int c = 0; c < 4; c++) {
        k[c] = att_mask(n - 16 * c);
        x[c] = _mm512_mul_ps(_mm512_maskz_loadu_ps(k[c], s + 16 * c), vs);
        vm = _mm512_mask_max_ps(vm, k[c], vm, x[c]);
    }
    m = hmax16(vm);
    __m512 vmax = _mm512_set1_ps(m), acc = _mm512_setzero_ps();
    for (int c = 0; c < 4; c++) {
        __m512 e = _mm512_maskz_mov_ps(k[c], exp16(_mm512_sub_ps(x[c], vmax)));
        _mm512_storeu_ps(s + 16 * c, e);
        acc = _mm512_add_ps(acc, e);
    }
    *sum = hsum16(acc);
    return m;
}
#else
static inline float att_softmax_row(float* s, int n, float scale, float m, float* sum) {
    for (int j = 0; j < n; j++) { s[j] *= scale; m = s[j] > m ? s[j] : m; }
    float total = 0.0f;
    #pragma omp simd reduction(+ : total)
    for (int j = 0; j < n; j++) { s[j] = exp_poly(s[j] - m); total += s[j]; }
    for (int j = n; j < ATT_BK; j++) s[j] = 0.0f;
    *sum = total;
    return m;
}
#endif

// q [B,T,H,D], k/v [B,T,KV,D] → y [B,T,H,D], lse [B,H,T]
void attention_forward_cpu(float* y, float* lse, const float* q, const float* k, const float* v,
                            int B, int T, int H, int KV, int D) {
    attention_forward_offset_cpu(y, lse, q, k, v, B, T, T, 0, H, KV, D);
}

// The same with the queries at absolute positions q0 … q0+Tq−1 over Tk = q0 + Tq keys (generation's prefill: the
// new tokens' queries over the KV cache, which already holds their keys). q/y [B,Tq,H,D], k/v [B,Tk,KV,D],
// lse [B,H,Tq] or nullptr.
void attention_forward_offset_cpu(float* y, float* lse, const float* q, const float* k, const float* v,
                              int B, int Tq, int Tk, int q0, int H, int KV, int D) {
    int T = Tq;   // query rows (the loops below index q, y and lse by row t; its position is q0 + t)
    int group = H / KV, nqb = (T + ATT_BQ - 1) / ATT_BQ, nkb = (Tk + ATT_BK - 1) / ATT_BK;
    float scale = 1.0f / sqrtf((float)D);
    // every key block packed transposed once, [B, KV, nkb][D, ATT_BK] (zero past Tk): each is read by all the
    // query blocks after it, which would otherwise pack it again each
    static thread_local std::vector<float> ktall;
    if (ktall.size() < (size_t)B * KV * nkb * D * ATT_BK) ktall.resize((size_t)B * KV * nkb * D * ATT_BK);
    float* kpack = ktall.data();  // the calling thread's buffer, shared with the team below
    #pragma omp parallel for collapse(3) schedule(static)
    for (int b = 0; b < B; b++)
        for (int kh = 0; kh < KV; kh++)
            for (int kb = 0; kb < nkb; kb++) {
                float* kt = kpack + (((size_t)b * KV + kh) * nkb + kb) * D * ATT_BK;
                int s0 = kb * ATT_BK, nk = std::min(ATT_BK, Tk - s0);
                for (int j = 0; j < ATT_BK; j++) {
                    const float* ks = k + (((size_t)b * Tk + s0 + (j < nk ? j : 0)) * KV + kh) * D;
                    for (int d = 0; d < D; d++) kt[(size_t)d * ATT_BK + j] = j < nk ? ks[d] : 0.0f;
                }
            }
    #pragma omp parallel
    {
        std::vector<float> s(ATT_R * ATT_BK), zero(D, 0.0f), junk(D);
        std::vector<float> mx((size_t)group * ATT_BQ), l((size_t)group * ATT_BQ), acc((size_t)group * ATT_BQ * D);
        #pragma omp for collapse(3) schedule(static)
        for (int b = 0; b < B; b++)
            for (int kh = 0; kh < KV; kh++)
                for (int qb = 0; qb < nqb; qb++) {
                    int t0 = qb * ATT_BQ, t1 = std::min(T, t0 + ATT_BQ);
                    std::fill(mx.begin(), mx.end(), -INFINITY);
                    std::fill(l.begin(), l.end(), 0.0f);
                    std::fill(acc.begin(), acc.end(), 0.0f);
                    for (int s0 = 0; s0 < q0 + t1; s0 += ATT_BK) {
                        int nk = std::min(ATT_BK, Tk - s0);
                        const float* kt = kpack + (((size_t)b * KV + kh) * nkb + s0 / ATT_BK) * D * ATT_BK;
                        for (int h = kh * group; h < (kh + 1) * group; h++)
                            for (int tr = std::max(t0, s0 - q0); tr < t1; tr += ATT_R) {  // rows tr .. tr+3
                                int rows = std::min(ATT_R, t1 - tr);
                                const float* qr[ATT_R];
                                float* orow[ATT_R];
                                for (int r = 0; r < ATT_R; r++) {
                                    size_t ri = (size_t)(h - kh * group) * ATT_BQ + (tr + r - t0);
                                    qr[r] = r < rows ? q + (((size_t)b * T + tr + r) * H + h) * D : zero.data();
                                    orow[r] = r < rows ? acc.data() + ri * D : junk.data();
                                }
                                int nvmax = std::min(nk, q0 + tr + rows - 1 - s0 + 1);  // keys any of the rows sees
                                att_scores4(s.data(), qr, kt, nvmax, D);
                                for (int r = 0; r < ATT_R; r++) {
                                    float* sp = s.data() + r * ATT_BK;
                                    if (r >= rows) { for (int j = 0; j < ATT_BK; j++) sp[j] = 0.0f; continue; }
                                    int nv = std::min(nk, q0 + tr + r - s0 + 1);  // causal: keys s0 .. q0 + t
                                    size_t ri = (size_t)(h - kh * group) * ATT_BQ + (tr + r - t0);
                                    float m_old = mx[ri], sum;
                                    float m_new = att_softmax_row(sp, nv, scale, m_old, &sum);
                                    float corr = exp_poly(m_old - m_new);  // m_old = −inf → ~0, times 0
                                    mx[ri] = m_new;
                                    l[ri] = l[ri] * corr + sum;
                                    float* ar = orow[r];
                                    #pragma omp simd
                                    for (int d = 0; d < D; d++) ar[d] *= corr;
                                }
                                att_rows4(orow, s.data(), v + (((size_t)b * Tk + s0) * KV + kh) * D, (size_t)KV * D, nvmax, D);
                            }
                    }
                    for (int h = kh * group; h < (kh + 1) * group; h++)
                        for (int t = t0; t < t1; t++) {
                            size_t r = (size_t)(h - kh * group) * ATT_BQ + (t - t0);
                            float inv = 1.0f / l[r];
                            float* yt = y + (((size_t)b * T + t) * H + h) * D;
                            const float* ar = acc.data() + r * D;
                            #pragma omp simd
                            for (int d = 0; d < D; d++) yt[d] = ar[d] * inv;
                            if (lse) lse[((size_t)b * H + h) * T + t] = mx[r] + logf(l[r]);
                        }
                }
    }
}

// Backward, recomputing P = e^(S − lse) blockwise. With δ_t = dy_t·y_t (= Σ_s P_ts dP_ts):
//   dP = dy·vᵀ;  dS = P ⊙ (dP − δ)/√D;  dq += dS·k;  dk += dSᵀ·q;  dv += Pᵀ·dy      (all ACCUMULATE)
// A task is (b, kv head): it owns the dk/dv rows of its kv head and the dq rows of its query heads, so
// nothing is shared; within it, key blocks go in order, and queries t ≥ block start in order, four at a time.
void attention_backward_cpu(float* dq, float* dk, float* dv, const float* dy, const float* y, const float* lse,
                             const float* q, const float* k, const float* v, int B, int T, int H, int KV, int D) {
    int group = H / KV;
    float scale = 1.0f / sqrtf((float)D);
    #pragma omp parallel
    {
        std::vector<float> kt((size_t)D * ATT_BK), vt((size_t)D * ATT_BK), p(ATT_R * ATT_BK), ds(ATT_R * ATT_BK),
            dkb((size_t)ATT_BK * D), dvb((size_t)ATT_BK * D), delta((size_t)group * T), zero(D, 0.0f), junk(D);
        #pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++)
            for (int kh = 0; kh < KV; kh++) {
                for (int h = kh * group; h < (kh + 1) * group; h++)
                    for (int t = 0; t < T; t++) {
                        const float* dyt = dy + (((size_t)b * T + t) * H + h) * D;
                        const float* yt = y + (((size_t)b * T + t) * H + h) * D;
                        float sum = 0.0f;
                        #pragma omp simd reduction(+ : sum)
                        for (int d = 0; d < D; d++) sum += dyt[d] * yt[d];
                        delta[(size_t)(h - kh * group) * T + t] = sum;
                    }
                for (int s0 = 0; s0 < T; s0 += ATT_BK) {
                    int nk = std::min(ATT_BK, T - s0);
                    for (int j = 0; j < ATT_BK; j++) {
                        for (int d = 0; d < D; d++) {
                            bool in = j < nk;
                            kt[(size_t)d * ATT_BK + j] = in ? k[(((size_t)b * T + s0 + j) * KV + kh) * D + d] : 0.0f;
                            vt[(size_t)d * ATT_BK + j] = in ? v[(((size_t)b * T + s0 + j) * KV + kh) * D + d] : 0.0f;
                        }
                    }
                    std::fill(dkb.begin(), dkb.end(), 0.0f);
                    std::fill(dvb.begin(), dvb.end(), 0.0f);
                    for (int h = kh * group; h < (kh + 1) * group; h++)
                        for (int tr = s0; tr < T; tr += ATT_R) {
                            int rows = std::min(ATT_R, T - tr);
                            const float *qr[ATT_R], *dyr[ATT_R];
                            float* dqr[ATT_R];
                            for (int r = 0; r < ATT_R; r++) {
                                size_t at = (((size_t)b * T + tr + r) * H + h) * D;
                                qr[r] = r < rows ? q + at : zero.data();
                                dyr[r] = r < rows ? dy + at : zero.data();
                                dqr[r] = r < rows ? dq + at : junk.data();
                            }
                            int nvmax = std::min(nk, tr + rows - 1 - s0 + 1);  // keys any of the rows sees
                            att_scores4(p.data(), qr, kt.data(), nvmax, D);
                            att_scores4(ds.data(), dyr, vt.data(), nvmax, D);   // dP, turned into dS below
                            for (int r = 0; r < ATT_R; r++) {
                                float* pr = p.data() + r * ATT_BK;
                                float* dr = ds.data() + r * ATT_BK;
                                int nv = r < rows ? std::min(nk, tr + r - s0 + 1) : 0;
                                float L = r < rows ? lse[((size_t)b * H + h) * T + tr + r] : 0.0f;
                                float dl = r < rows ? delta[(size_t)(h - kh * group) * T + tr + r] : 0.0f;
                                #pragma omp simd
                                for (int j = 0; j < nv; j++) {
                                    pr[j] = exp_poly(pr[j] * scale - L);
                                    dr[j] = pr[j] * (dr[j] - dl) * scale;  // dS
                                }
                                for (int j = nv; j < ATT_BK; j++) { pr[j] = 0.0f; dr[j] = 0.0f; }
                            }
                            att_outer4(dvb.data(), p.data(), dyr, nvmax, D);
                            att_outer4(dkb.data(), ds.data(), qr, nvmax, D);
                            att_rows4(dqr, ds.data(), k + (((size_t)b * T + s0) * KV + kh) * D, (size_t)KV * D, nvmax, D);
                        }
                    for (int j = 0; j < nk; j++) {
                        float* dks = dk + (((size_t)b * T + s0 + j) * KV + kh) * D;
                        float* dvs = dv + (((size_t)b * T + s0 + j) * KV + kh) * D;
                        const float* dkj = dkb.data() + (size_t)j * D;
                        const float* dvj = dvb.data() + (size_t)j * D;
                        #pragma omp simd
                        for (int d = 0; d < D; d++) { dks[d] += dkj[d]; dvs[d] += dvj[d]; }
                    }
                }
            }
    }
}

// ============================================================================
// the model

// acts.att is the reference's softmax [L,B,H,T,T], or the fast path's row log-sum-exp [L,B,H,T]
static size_t att_row_size(int T) { return g_cpu_reference ? (size_t)T : 1; }

// returns the element count; with allocate = false it only computes it (to check the layout in backward)
static size_t model_alloc_acts(Model* m, int B, int T, bool allocate = true) {
    const Config& c = m->cfg;
    size_t BT = (size_t)B * T, L = c.num_hidden_layers, C = c.hidden_size, F = c.intermediate_size;
    size_t QD = (size_t)c.num_attention_heads * c.head_dim, KVD = (size_t)c.num_key_value_heads * c.head_dim;
    size_t sizes[] = {(L + 1) * BT * C, L * BT * C, L * BT, L * BT * QD, L * BT * KVD, L * BT * KVD,
                      L * B * c.num_attention_heads * (size_t)T * att_row_size(T), L * BT * QD, L * BT * C, L * BT * C, L * BT,
                      L * BT * F, L * BT * F, L * BT * F, BT * C, BT, BT * c.vocab_size, BT};
    float** ptrs[] = {&m->acts.residual, &m->acts.ln1, &m->acts.ln1_rstd, &m->acts.q, &m->acts.k, &m->acts.v,
                      &m->acts.att, &m->acts.atty, &m->acts.resid_mid, &m->acts.ln2, &m->acts.ln2_rstd,
                      &m->acts.gate, &m->acts.up, &m->acts.act, &m->acts.lnf, &m->acts.lnf_rstd, &m->acts.logits,
                      &m->acts.losses};
    size_t total = 0;
    for (size_t s : sizes) total += s;
    if (!allocate || (m->B == B && m->T == T && m->acts_memory.size() == total)) return total;
    reserve_huge(&m->acts_memory, total);
    m->acts_memory.assign(total, 0.0f);
    float* p = m->acts_memory.data();
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) { *ptrs[i] = sizes[i] ? p : nullptr; p += sizes[i]; }
    m->B = B;
    m->T = T;
    return total;
}

// A training step streams ~0.5 GB through parameters, gradients, Adam moments and activations; with 2 MiB pages
// instead of 4 KiB it ran 2% faster on the benchmark model. madvise is advice: where THP is off, nothing changes.
// The advice must come before the first touch, hence reserve (untouched memory) → madvise → assign/resize.
void reserve_huge(std::vector<float>* v, size_t n) {
    if (v->capacity() >= n) return;
    std::vector<float>().swap(*v);  // release the old buffer first
    v->reserve(n);
    if (n * sizeof(float) < ((size_t)8 << 20)) return;
    uintptr_t lo = ((uintptr_t)v->data() + 4095) & ~(uintptr_t)4095, hi = (uintptr_t)(v->data() + n) & ~(uintptr_t)4095;
    if (hi > lo) madvise((void*)lo, hi - lo, MADV_HUGEPAGE);
}

void model_build(Model* m, const Config& cfg) {
    config_validate(cfg, "model");
    m->cfg = cfg;
    param_sizes(cfg, m->param_sizes);
    m->num_parameters = config_num_parameters(cfg);
    reserve_huge(&m->params_memory, m->num_parameters);
    m->params_memory.assign(m->num_parameters, 0.0f);
    param_point(&m->params, m->params_memory.data(), m->param_sizes);
    m->grads_memory.clear();
    m->B = m->T = 0;
}

// splitmix64 → uniform → Box–Muller: a small deterministic RNG so runs reproduce from the seed alone
static uint64_t splitmix64(uint64_t* s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
void model_init_random(Model* m, uint64_t seed, float std) {
    uint64_t s = seed;
    for (const ParamView& pv : param_views(m->cfg)) {
        size_t n = 1;
        for (int64_t d : pv.shape) n *= (size_t)d;
        float* w = m->params_memory.data() + pv.offset;
        if (!pv.is_matrix) { for (size_t i = 0; i < n; i++) w[i] = 1.0f; continue; }  // RMSNorm weights start at 1
        for (size_t i = 0; i < n; i += 2) {
            double u1 = ((splitmix64(&s) >> 11) + 1.0) / 9007199254740993.0, u2 = (splitmix64(&s) >> 11) / 9007199254740992.0;
            double r = sqrt(-2.0 * log(u1));
            w[i] = (float)(std * r * cos(2 * M_PI * u2));
            if (i + 1 < n) w[i + 1] = (float)(std * r * sin(2 * M_PI * u2));
        }
    }
}

// Layer l's slice of each per-layer activation stack, for the B×T of the current forward (m->B, m->T); x and out are
// the residual stream entering and leaving the layer. The fp32 parameters' view is layer_weights (deepseek.h).
struct LayerActs {
    float *x, *ln1, *ln1_rstd, *q, *k, *v, *att, *atty, *mid, *ln2, *ln2_rstd, *gate, *up, *act, *out;
};
static LayerActs layer_acts(const Model* m, int l) {
    const Config& c = m->cfg;
    const ActivationTensors& a = m->acts;
    size_t i = (size_t)l, BT = (size_t)m->B * m->T, C = c.hidden_size, F = c.intermediate_size;
    size_t QD = (size_t)c.num_attention_heads * c.head_dim, KVD = (size_t)c.num_key_value_heads * c.head_dim;
    size_t att = (size_t)m->B * c.num_attention_heads * m->T * att_row_size(m->T);   // one layer's acts.att
    return {a.residual + i * BT * C, a.ln1 + i * BT * C, a.ln1_rstd + i * BT, a.q + i * BT * QD, a.k + i * BT * KVD,
            a.v + i * BT * KVD, a.att + i * att, a.atty + i * BT * QD, a.resid_mid + i * BT * C, a.ln2 + i * BT * C,
            a.ln2_rstd + i * BT, a.gate + i * BT * F, a.up + i * BT * F, a.act + i * BT * F, a.residual + (i + 1) * BT * C};
}

// The reference forward: the decoder as the paper draws it (and transformers' LlamaForCausalLM computes it), one _ref
// layer per step. Fills m->acts; the losses only when there are targets.
static void model_forward_ref(Model* m, const int* inputs, const int* targets, int B, int T) {
    const Config& c = m->cfg;
    size_t BT = (size_t)B * T;
    int C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim, F = c.intermediate_size;
    int QD = H * D, KVD = KV * D, V = c.vocab_size;
    ParameterTensors& p = m->params;
    ActivationTensors& a = m->acts;
    std::vector<int> pos(BT);   // each row's position in its sequence
    for (size_t i = 0; i < BT; i++) pos[i] = (int)(i % T);

    // token embedding: the residual stream entering layer 0 holds each token's row of embed_tokens
    for (size_t i = 0; i < BT; i++) memcpy(a.residual + i * C, p.embed_tokens + (size_t)inputs[i] * C, C * sizeof(float));
    for (int l = 0; l < c.num_hidden_layers; l++) {
        const LayerWeights<float> w = layer_weights(p, c, l);
        const LayerActs la = layer_acts(m, l);
        // ---- attention block: mid = x + o_proj(attention(rope(q_proj(ln1)), rope(k_proj(ln1)), v_proj(ln1)))
        // ln1 = input_layernorm(x)
        rmsnorm_forward_ref(la.ln1, la.ln1_rstd, la.x, w.input_layernorm, BT, C, c.rms_norm_eps);
        // the query, key and value projections (KV ≤ H heads: grouped-query attention)
        matmul_forward_ref(la.q, la.ln1, w.q_proj, BT, C, QD);
        matmul_forward_ref(la.k, la.ln1, w.k_proj, BT, C, KVD);
        matmul_forward_ref(la.v, la.ln1, w.v_proj, BT, C, KVD);
        // RoPE rotates q and k by their positions
        rope_forward_ref(la.q, pos.data(), BT, H, D, c.rope_theta);
        rope_forward_ref(la.k, pos.data(), BT, KV, D, c.rope_theta);
        // causal attention: atty = softmax(q·kᵀ/√D) · v, each query head reading its group's kv head
        attention_forward_ref(la.atty, la.att, la.q, la.k, la.v, B, T, H, KV, D);
        // o_proj, and the residual connection
        matmul_forward_ref(la.mid, la.atty, w.o_proj, BT, QD, C);
        for (size_t i = 0; i < BT * C; i++) la.mid[i] += la.x[i];
        // ---- MLP block: out = mid + down_proj(silu(gate_proj(ln2)) ⊙ up_proj(ln2))
        // ln2 = post_attention_layernorm(mid)
        rmsnorm_forward_ref(la.ln2, la.ln2_rstd, la.mid, w.post_attention_layernorm, BT, C, c.rms_norm_eps);
        // the gate and up projections
        matmul_forward_ref(la.gate, la.ln2, w.gate_proj, BT, C, F);
        matmul_forward_ref(la.up, la.ln2, w.up_proj, BT, C, F);
        // SwiGLU: act = silu(gate) ⊙ up
        swiglu_forward_ref(la.act, la.gate, la.up, BT * F);
        // down_proj, and the residual connection: the stream entering the next layer
        matmul_forward_ref(la.out, la.act, w.down_proj, BT, F, C);
        for (size_t i = 0; i < BT * C; i++) la.out[i] += la.mid[i];
    }
    // the final norm
    rmsnorm_forward_ref(a.lnf, a.lnf_rstd, a.residual + (size_t)c.num_hidden_layers * BT * C, p.norm, BT, C, c.rms_norm_eps);
    // lm_head: the next-token logits
    matmul_forward_ref(a.logits, a.lnf, p.lm_head, BT, C, V);
    // the loss: each token's negative log-likelihood of its target
    if (targets) crossentropy_forward_ref(a.losses, a.logits, targets, BT, V);
}

void model_mean_loss_weights(const int* targets, int n, std::vector<float>* w) {
    int count = 0;
    for (int i = 0; i < n; i++) count += targets[i] >= 0;
    w->assign(n, 0.0f);
    for (int i = 0; i < n; i++)
        if (targets[i] >= 0) (*w)[i] = 1.0f / count;
}

// memset across the threads: one thread alone writes ~80 MB of gradients at a fraction of the bandwidth
static void parallel_zero(float* x, size_t n) {
    const size_t CHUNK = 1 << 16;
    #pragma omp parallel for schedule(static)
    for (size_t c = 0; c < (n + CHUNK - 1) / CHUNK; c++) memset(x + c * CHUNK, 0, std::min(CHUNK, n - c * CHUNK) * sizeof(float));
}

void model_zero_grad(Model* m) {
    if (m->grads_memory.size() != m->num_parameters) {
        reserve_huge(&m->grads_memory, m->num_parameters);
        m->grads_memory.assign(m->num_parameters, 0.0f);
        param_point(&m->grads, m->grads_memory.data(), m->param_sizes);
    } else {
        parallel_zero(m->grads_memory.data(), m->grads_memory.size());
    }
}

// The reference backward: model_forward_ref's steps in reverse, each an _ref backward. The activation gradients of
// one layer at a time live in scratch, zeroed before each _ref backward adds into them.
static void model_backward_ref(Model* m, const float* dlosses) {
    const Config& c = m->cfg;
    int B = m->B, T = m->T, BT = B * T;
    int C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim, F = c.intermediate_size;
    int QD = H * D, KVD = KV * D, V = c.vocab_size, L = c.num_hidden_layers;
    ParameterTensors& p = m->params;
    ParameterTensors& g = m->grads;
    ActivationTensors& a = m->acts;
    std::vector<int> pos(BT);
    for (int i = 0; i < BT; i++) pos[i] = i % T;
    // scratch for the activation gradients of one layer at a time
    std::vector<float> dlogits((size_t)BT * V), dres((size_t)BT * C, 0.0f), dmid((size_t)BT * C), dln((size_t)BT * C),
        dq((size_t)BT * QD), dk((size_t)BT * KVD), dv((size_t)BT * KVD), datty((size_t)BT * QD), dact((size_t)BT * F),
        dgate((size_t)BT * F), dup((size_t)BT * F);

    // the loss, lm_head and the final norm
    crossentropy_backward_ref(dlogits.data(), a.logits, m->targets.data(), dlosses, BT, V);
    std::fill(dln.begin(), dln.end(), 0.0f);
    matmul_backward_ref(dln.data(), g.lm_head, dlogits.data(), a.lnf, p.lm_head, BT, C, V);
    rmsnorm_backward_ref(dres.data(), g.norm, dln.data(), a.residual + (size_t)L * BT * C, p.norm, a.lnf_rstd, BT, C);
    for (int l = L - 1; l >= 0; l--) {
        const LayerWeights<float> w = layer_weights(p, c, l), gw = layer_weights(g, c, l);
        const LayerActs la = layer_acts(m, l);
        // MLP block: dres is the gradient of the layer's output; it flows to mid directly and through the MLP
        std::fill(dact.begin(), dact.end(), 0.0f);
        matmul_backward_ref(dact.data(), gw.down_proj, dres.data(), la.act, w.down_proj, BT, F, C);
        std::fill(dgate.begin(), dgate.end(), 0.0f);
        std::fill(dup.begin(), dup.end(), 0.0f);
        swiglu_backward_ref(dgate.data(), dup.data(), dact.data(), la.gate, la.up, (size_t)BT * F);
        std::fill(dln.begin(), dln.end(), 0.0f);
        matmul_backward_ref(dln.data(), gw.gate_proj, dgate.data(), la.ln2, w.gate_proj, BT, C, F);
        matmul_backward_ref(dln.data(), gw.up_proj, dup.data(), la.ln2, w.up_proj, BT, C, F);
        dmid = dres;
        rmsnorm_backward_ref(dmid.data(), gw.post_attention_layernorm, dln.data(), la.mid, w.post_attention_layernorm,
                             la.ln2_rstd, BT, C);
        // attention block
        std::fill(datty.begin(), datty.end(), 0.0f);
        matmul_backward_ref(datty.data(), gw.o_proj, dmid.data(), la.atty, w.o_proj, BT, QD, C);
        std::fill(dq.begin(), dq.end(), 0.0f);
        std::fill(dk.begin(), dk.end(), 0.0f);
        std::fill(dv.begin(), dv.end(), 0.0f);
        attention_backward_ref(dq.data(), dk.data(), dv.data(), datty.data(), la.att, la.q, la.k, la.v, B, T, H, KV, D);
        rope_backward_ref(dq.data(), pos.data(), BT, H, D, c.rope_theta);
        rope_backward_ref(dk.data(), pos.data(), BT, KV, D, c.rope_theta);
        std::fill(dln.begin(), dln.end(), 0.0f);
        matmul_backward_ref(dln.data(), gw.q_proj, dq.data(), la.ln1, w.q_proj, BT, C, QD);
        matmul_backward_ref(dln.data(), gw.k_proj, dk.data(), la.ln1, w.k_proj, BT, C, KVD);
        matmul_backward_ref(dln.data(), gw.v_proj, dv.data(), la.ln1, w.v_proj, BT, C, KVD);
        dres = dmid;
        rmsnorm_backward_ref(dres.data(), gw.input_layernorm, dln.data(), la.x, w.input_layernorm, la.ln1_rstd, BT, C);
    }
    // embedding: scatter-add, serial over tokens so repeated tokens add in a fixed order
    for (int i = 0; i < BT; i++) {
        float* dst = g.embed_tokens + (size_t)m->inputs[i] * C;
        const float* src = dres.data() + (size_t)i * C;
        for (int j = 0; j < C; j++) dst[j] += src[j];
    }
}

// The fast forward: model_forward_ref's steps on the _cpu layers, with two changes of form that leave the math as it
// is: each residual add runs inside the RMSNorm that follows it (residual_rmsnorm_forward_cpu: one pass over the row
// instead of two), and RoPE rotates by a cos/sin table made once per call (rope_table).
static void model_forward_cpu(Model* m, const int* inputs, const int* targets, int B, int T) {
    const Config& c = m->cfg;
    size_t BT = (size_t)B * T;
    int C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim, F = c.intermediate_size;
    int QD = H * D, KVD = KV * D, V = c.vocab_size, L = c.num_hidden_layers;
    ParameterTensors& p = m->params;
    ActivationTensors& a = m->acts;
    std::vector<int> pos(BT);
    for (size_t i = 0; i < BT; i++) pos[i] = (int)(i % T);

    // token embedding → residual stream
    for (size_t i = 0; i < BT; i++) memcpy(a.residual + i * C, p.embed_tokens + (size_t)inputs[i] * C, C * sizeof(float));
    // the RoPE table for positions 0..T-1
    std::vector<float> rope_cos((size_t)T * (D / 2)), rope_sin((size_t)T * (D / 2));
    rope_table(rope_cos.data(), rope_sin.data(), T, D, c.rope_theta);
    // layer 0's input_layernorm (every later norm runs fused with the residual add before it)
    rmsnorm_forward_cpu(a.ln1, a.ln1_rstd, a.residual, p.input_layernorm, BT, C, c.rms_norm_eps);
    for (int l = 0; l < L; l++) {
        const LayerWeights<float> w = layer_weights(p, c, l);
        const LayerActs la = layer_acts(m, l);
        // attention block: q, k, v from ln1 (made by the norm that ended the previous layer), RoPE, attention, o_proj
        matmul_forward_cpu(la.q, la.ln1, w.q_proj, BT, C, QD);
        matmul_forward_cpu(la.k, la.ln1, w.k_proj, BT, C, KVD);
        matmul_forward_cpu(la.v, la.ln1, w.v_proj, BT, C, KVD);
        rope_apply_cpu(la.q, rope_cos.data(), rope_sin.data(), pos.data(), BT, H, D, 1.0f);
        rope_apply_cpu(la.k, rope_cos.data(), rope_sin.data(), pos.data(), BT, KV, D, 1.0f);
        attention_forward_cpu(la.atty, la.att, la.q, la.k, la.v, B, T, H, KV, D);
        matmul_forward_cpu(la.mid, la.atty, w.o_proj, BT, QD, C);
        // mid += x, and ln2 = post_attention_layernorm(mid)
        residual_rmsnorm_forward_cpu(la.mid, la.ln2, la.ln2_rstd, la.x, w.post_attention_layernorm, BT, C, c.rms_norm_eps);
        // MLP block: gate and up projections, SwiGLU, down_proj
        matmul_forward_cpu(la.gate, la.ln2, w.gate_proj, BT, C, F);
        matmul_forward_cpu(la.up, la.ln2, w.up_proj, BT, C, F);
        swiglu_forward_cpu(la.act, la.gate, la.up, BT * F);
        matmul_forward_cpu(la.out, la.act, w.down_proj, BT, F, C);
        // out += mid, and the next norm: the next layer's input_layernorm, or the final norm
        if (l + 1 < L) {
            const LayerActs next = layer_acts(m, l + 1);
            residual_rmsnorm_forward_cpu(la.out, next.ln1, next.ln1_rstd, la.mid, layer_weights(p, c, l + 1).input_layernorm,
                                         BT, C, c.rms_norm_eps);
        } else {
            residual_rmsnorm_forward_cpu(la.out, a.lnf, a.lnf_rstd, la.mid, p.norm, BT, C, c.rms_norm_eps);
        }
    }
    // lm_head and the per-token loss
    matmul_forward_cpu(a.logits, a.lnf, p.lm_head, BT, C, V);
    if (targets) crossentropy_forward_cpu(a.losses, a.logits, targets, BT, V);
}

// The fast backward: model_backward_ref's steps on the _cpu backwards, which write their activation gradients (an
// Accum::Add where two paths meet) instead of adding into zeroed scratch, and fuse the residual's gradient into
// the RMSNorm backward (dskip).
static void model_backward_cpu(Model* m, const float* dlosses) {
    const Config& c = m->cfg;
    int B = m->B, T = m->T, BT = B * T;
    int C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim, F = c.intermediate_size;
    int QD = H * D, KVD = KV * D, V = c.vocab_size, L = c.num_hidden_layers;
    ParameterTensors& p = m->params;
    ParameterTensors& g = m->grads;
    ActivationTensors& a = m->acts;
    std::vector<int> pos(BT);
    for (int i = 0; i < BT; i++) pos[i] = i % T;
    std::vector<float> rope_cos((size_t)T * (D / 2)), rope_sin((size_t)T * (D / 2));
    rope_table(rope_cos.data(), rope_sin.data(), T, D, c.rope_theta);
    // scratch for the activation gradients of one layer at a time (each is overwritten before it is read); kept
    // between calls, so that a training step does not fault in ~50 MB of fresh pages every time
    static thread_local std::vector<float> dlogits, dres, dmid, dln, dq, dk, dv, datty, dact, dgate, dup;
    std::pair<std::vector<float>*, size_t> scratch[] = {{&dlogits, (size_t)BT * V}, {&dres, (size_t)BT * C},
        {&dmid, (size_t)BT * C}, {&dln, (size_t)BT * C}, {&dq, (size_t)BT * QD}, {&dk, (size_t)BT * KVD}, {&dv, (size_t)BT * KVD},
        {&datty, (size_t)BT * QD}, {&dact, (size_t)BT * F}, {&dgate, (size_t)BT * F}, {&dup, (size_t)BT * F}};
    for (auto& s : scratch) {
        reserve_huge(s.first, s.second);  // (only when it grows; the contents are overwritten before they are read)
        s.first->resize(s.second);
    }

    // the loss, lm_head and the final norm
    crossentropy_backward_cpu(dlogits.data(), a.logits, a.losses, m->targets.data(), dlosses, BT, V);
    matmul_backward_cpu(dln.data(), g.lm_head, dlogits.data(), a.lnf, p.lm_head, BT, C, V, Accum::Overwrite);
    rmsnorm_backward_cpu(dres.data(), nullptr, g.norm, dln.data(), a.residual + (size_t)L * BT * C, p.norm, a.lnf_rstd, BT, C);
    for (int l = L - 1; l >= 0; l--) {
        const LayerWeights<float> w = layer_weights(p, c, l), gw = layer_weights(g, c, l);
        const LayerActs la = layer_acts(m, l);
        // MLP block: dres is the gradient of the layer's output; it flows to mid directly and through the MLP
        matmul_backward_cpu(dact.data(), gw.down_proj, dres.data(), la.act, w.down_proj, BT, F, C, Accum::Overwrite);
        swiglu_backward_cpu(dgate.data(), dup.data(), dact.data(), la.gate, la.up, (size_t)BT * F);
        matmul_backward_cpu(dln.data(), gw.gate_proj, dgate.data(), la.ln2, w.gate_proj, BT, C, F, Accum::Overwrite);
        matmul_backward_cpu(dln.data(), gw.up_proj, dup.data(), la.ln2, w.up_proj, BT, C, F, Accum::Add);
        rmsnorm_backward_cpu(dmid.data(), dres.data(), gw.post_attention_layernorm, dln.data(), la.mid, w.post_attention_layernorm,
                             la.ln2_rstd, BT, C);
        // attention block
        matmul_backward_cpu(datty.data(), gw.o_proj, dmid.data(), la.atty, w.o_proj, BT, QD, C, Accum::Overwrite);
        parallel_zero(dq.data(), dq.size());
        parallel_zero(dk.data(), dk.size());
        parallel_zero(dv.data(), dv.size());
        attention_backward_cpu(dq.data(), dk.data(), dv.data(), datty.data(), la.atty, la.att, la.q, la.k, la.v, B, T, H, KV, D);
        rope_apply_cpu(dq.data(), rope_cos.data(), rope_sin.data(), pos.data(), BT, H, D, -1.0f);
        rope_apply_cpu(dk.data(), rope_cos.data(), rope_sin.data(), pos.data(), BT, KV, D, -1.0f);
        matmul_backward_cpu(dln.data(), gw.q_proj, dq.data(), la.ln1, w.q_proj, BT, C, QD, Accum::Overwrite);
        matmul_backward_cpu(dln.data(), gw.k_proj, dk.data(), la.ln1, w.k_proj, BT, C, KVD, Accum::Add);
        matmul_backward_cpu(dln.data(), gw.v_proj, dv.data(), la.ln1, w.v_proj, BT, C, KVD, Accum::Add);
        rmsnorm_backward_cpu(dres.data(), dmid.data(), gw.input_layernorm, dln.data(), la.x, w.input_layernorm, la.ln1_rstd, BT, C);
    }
    // embedding: scatter-add, serial over tokens so repeated tokens add in a fixed order
    for (int i = 0; i < BT; i++) {
        float* dst = g.embed_tokens + (size_t)m->inputs[i] * C;
        const float* src = dres.data() + (size_t)i * C;
        #pragma omp simd
        for (int j = 0; j < C; j++) dst[j] += src[j];
    }
}

// The tier dispatch: the checks and the activation buffers both tiers need, then the tier g_cpu_reference picks.
float model_forward(Model* m, const int* inputs, const int* targets, int B, int T) {
    const Config& c = m->cfg;
    if (B < 1 || T < 1) die("forward: empty batch (B=%d, T=%d)", B, T);
    if (T > c.max_position_embeddings) die("forward: sequence length %d exceeds the model's context %d", T, c.max_position_embeddings);
    size_t BT = (size_t)B * T;
    for (size_t i = 0; i < BT; i++) {
        if (inputs[i] < 0 || inputs[i] >= c.vocab_size) die("forward: token id %d out of range [0, %d)", inputs[i], c.vocab_size);
        if (targets && targets[i] >= c.vocab_size) die("forward: target id %d out of range [0, %d)", targets[i], c.vocab_size);
    }
    model_alloc_acts(m, B, T);
    m->inputs.assign(inputs, inputs + BT);
    if (targets) m->targets.assign(targets, targets + BT); else m->targets.assign(BT, -1);
    if (g_cpu_reference) model_forward_ref(m, inputs, targets, B, T);
    else model_forward_cpu(m, inputs, targets, B, T);
    if (!targets) return 0.0f;
    double sum = 0.0;
    size_t count = 0;
    for (size_t i = 0; i < BT; i++)
        if (targets[i] >= 0) { sum += m->acts.losses[i]; count++; }
    return count ? (float)(sum / count) : 0.0f;
}

void model_backward(Model* m, const float* dlosses) {
    if (m->B == 0 || m->inputs.empty()) die("backward: call forward first");
    if (m->grads_memory.size() != m->num_parameters) model_zero_grad(m);
    if (model_alloc_acts(m, m->B, m->T, false) != m->acts_memory.size())  // acts.att's layout differs between the tiers
        die("backward: g_cpu_reference changed between forward and backward");
    if (g_cpu_reference) model_backward_ref(m, dlosses);
    else model_backward_cpu(m, dlosses);
}

// ============================================================================
// the CUDA backend: bf16 parameters and activations, fp32 master weights, fp32 gradients and AdamW moments,
// cuBLASLt for every matrix multiply, our own kernels for the rest. Each kernel sits under the same math title
// as its CPU twin above, in the same order; the CPU layer is the oracle tests/test_cuda.cpp compares it with.
//
// Precision: bf16 keeps 8 significant bits (relative rounding 2^-9). Every kernel reads bf16, computes in fp32
// and rounds its output once. Reductions (norms, softmax sums, the loss) are fp32; parameter gradients
// accumulate in fp32 (cuBLASLt with an fp32 C/D and beta = 1). Activation gradients are bf16 except the
// residual stream's, which is fp32 (dres) with a bf16 copy (dres16) for the matmuls.
// Determinism: no kernel races with atomics; every sum runs in a fixed order, so a run reproduces bit-exactly.
// One line naming the backend a subcommand runs on, e.g. "cuda (NVIDIA H200, 139.8 GiB)" or "cpu (16 threads)",
// so that --device auto says what it picked.
std::string device_describe(Device dev) {
    char buf[256];
    if (dev == Device::CUDA) {
#ifdef DEEPSEEK_CUDA
        cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, 0) == cudaSuccess) {
            snprintf(buf, sizeof buf, ", %.1f GiB, sm_%d%d)", p.totalGlobalMem / 1073741824.0, p.major, p.minor);
            return "cuda (" + std::string(p.name) + buf;
        }
#endif
        return "cuda";
    }
#ifdef _OPENMP
    snprintf(buf, sizeof buf, "cpu (%d threads)", omp_get_max_threads());
#else
    snprintf(buf, sizeof buf, "cpu (1 thread)");
#endif
    return buf;
}

#ifdef DEEPSEEK_CUDA

typedef __nv_bfloat16 bf16;

static void cuda_check(cudaError_t e, const char* file, int line) {
    if (e != cudaSuccess) die("CUDA error at %s:%d: %s", file, line, cudaGetErrorString(e));
}
static void cublas_check(cublasStatus_t s, const char* file, int line) {
    if (s != CUBLAS_STATUS_SUCCESS) die("cuBLASLt error at %s:%d: status %d", file, line, (int)s);
}
#define cudaCheck(x) cuda_check((x), __FILE__, __LINE__)
#define cublasCheck(x) cublas_check((x), __FILE__, __LINE__)

static inline int ceil_div(long long a, long long b) { return (int)((a + b - 1) / b); }
__device__ inline float bf2f(bf16 x) { return __bfloat162float(x); }
__device__ inline bf16 f2bf(float x) { return __float2bfloat16(x); }   // round to nearest even

// warp-level and block-level reductions (blockDim.x a multiple of 32, ≤ 1024)
__device__ inline float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ inline float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
__device__ float block_sum(float x, float* shared32) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    x = warp_sum(x);
    __syncthreads();                 // shared32 may still be read by a previous call
    if (lane == 0) shared32[warp] = x;
    __syncthreads();
    float r = 0.0f;
    for (int i = 0; i < nw; i++) r += shared32[i];   // same order in every thread: identical results
    return r;
}
__device__ float block_max(float x, float* shared32) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    x = warp_max(x);
    __syncthreads();
    if (lane == 0) shared32[warp] = x;
    __syncthreads();
    float r = -INFINITY;
    for (int i = 0; i < nw; i++) r = fmaxf(r, shared32[i]);
    return r;
}

// ----------------------------------------------------------------------------
// embedding: residual[n] = embed_tokens[token[n]];  d embed_tokens[v] += Σ_{n: token[n]=v} dres[n]

__global__ void embedding_forward_kernel(bf16* out, const int* tokens, const bf16* wte, int N, int C) {
    int n = blockIdx.x;
    const bf16* row = wte + (size_t)tokens[n] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) out[(size_t)n * C + c] = row[c];
}
// Deterministic backward: the host groups positions by token (counting sort, positions ascending); one block per
// distinct token sums its rows in that fixed order and owns its gradient row, so repeated tokens never race.
__global__ void embedding_backward_kernel(float* dwte, const float* dres, const int* uniq, const int* starts,
                                          const int* order, int C) {
    int u = blockIdx.x, begin = starts[u], end = starts[u + 1];
    float* dst = dwte + (size_t)uniq[u] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = 0.0f;
        for (int i = begin; i < end; i++) acc += dres[(size_t)order[i] * C + c];
        dst[c] += acc;
    }
}
// host side of the grouping: uniq[U], starts[U+1], order[N] (positions sorted by token, stable)
static void embedding_group(const int* tokens, int N, int V, std::vector<int>* uniq, std::vector<int>* starts,
                            std::vector<int>* order) {
    std::vector<int> count(V + 1, 0);
    for (int i = 0; i < N; i++) count[tokens[i] + 1]++;
    for (int v = 0; v < V; v++) count[v + 1] += count[v];
    order->assign(N, 0);
    std::vector<int> fill(count.begin(), count.end() - 1);
    for (int i = 0; i < N; i++) (*order)[fill[tokens[i]]++] = i;
    uniq->clear();
    starts->clear();
    for (int v = 0; v < V; v++)
        if (count[v + 1] > count[v]) { uniq->push_back(v); starts->push_back(count[v]); }
    starts->push_back(N);
}

// ----------------------------------------------------------------------------
// matmul through cuBLASLt: bf16 A and B, fp32 accumulation, a bf16 or fp32 D. cuBLASLt is column-major; our
// row-major [rows, cols] matrix is its [cols, rows] matrix, which turns each product below into one call:
//   forward   out[N,OUT]  = inp[N,IN] · W[OUT,IN]ᵀ (+ residual)      → D(OUT×N) = Wᵀ(OUT×IN) · inp(IN×N)
//   backward  dinp[N,IN]  = dout[N,OUT] · W[OUT,IN]                 → D(IN×N)  = W(IN×OUT) · dout(OUT×N)
//             dW[OUT,IN] += dout[N,OUT]ᵀ · inp[N,IN]   (fp32)       → D(IN×OUT) = inp(IN×N) · doutᵀ(N×OUT)
// Fused epilogue: the residual add is cuBLASLt's D = A·B + β·C with C the residual stream (C ≠ D), so the
// o_proj / down_proj outputs land in the residual stream without a separate pass.

struct GemmPlan {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
};
struct CudaBlas {
    cublasLtHandle_t lt = nullptr;
    void* workspace = nullptr;
    size_t workspace_size = 32u << 20;
    std::map<std::vector<long long>, GemmPlan> plans;   // one plan per shape/layout/alignment, found once
};
static CudaBlas g_blas;

static int ptr_alignment(const void* p) {
    uintptr_t u = (uintptr_t)p;
    int a = 256;
    while (a > 2 && (u % a) != 0) a /= 2;
    return a;
}
// D[m×n] = op(A)[m×k] · op(B)[k×n] + beta · C   (column-major; C = D when c is null)
static void gemm_cuda(bool ta, bool tb, int m, int n, int k, const bf16* A, int lda, const bf16* B, int ldb, void* D,
                      cudaDataType_t dtype, int ldd, float beta, const void* c = nullptr) {
    if (m == 0 || n == 0) return;
    if (!g_blas.lt) {
        cublasCheck(cublasLtCreate(&g_blas.lt));
        cudaCheck(cudaMalloc(&g_blas.workspace, g_blas.workspace_size));
    }
    const void* C = c ? c : D;
    int alA = ptr_alignment(A), alB = ptr_alignment(B), alC = ptr_alignment(C), alD = ptr_alignment(D);
    std::vector<long long> key = {ta, tb, m, n, k, lda, ldb, ldd, (long long)dtype, alA, alB, std::min(alC, alD)};
    auto it = g_blas.plans.find(key);
    if (it == g_blas.plans.end()) {
        GemmPlan p;
        cublasCheck(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        cublasOperation_t opA = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opB = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
        cublasCheck(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof opA));
        cublasCheck(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof opB));
        cublasCheck(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, ta ? k : m, ta ? m : k, lda));
        cublasCheck(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, tb ? n : k, tb ? k : n, ldb));
        cublasCheck(cublasLtMatrixLayoutCreate(&p.d, dtype, m, n, ldd));
        cublasLtMatmulPreference_t pref;
        cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                         &g_blas.workspace_size, sizeof g_blas.workspace_size));
        // slices of per-layer tensors are not always 256-byte aligned: tell the heuristic what they are
        uint32_t a32[4] = {(uint32_t)alA, (uint32_t)alB, (uint32_t)std::min(alC, alD), (uint32_t)std::min(alC, alD)};
        cublasLtMatmulPreferenceAttributes_t which[4] = {
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
        for (int i = 0; i < 4; i++) cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, which[i], &a32[i], sizeof a32[i]));
        cublasLtMatmulHeuristicResult_t res;
        int found = 0;
        cublasCheck(cublasLtMatmulAlgoGetHeuristic(g_blas.lt, p.op, p.a, p.b, p.d, p.d, pref, 1, &res, &found));
        cublasLtMatmulPreferenceDestroy(pref);
        if (found == 0) die("cuBLASLt: no algorithm for a %dx%dx%d matmul", m, n, k);
        p.algo = res.algo;
        it = g_blas.plans.emplace(key, p).first;
    }
    const GemmPlan& p = it->second;
    float alpha = 1.0f;
    cublasCheck(cublasLtMatmul(g_blas.lt, p.op, &alpha, A, p.a, B, p.b, &beta, C, p.d, D, p.d, &p.algo,
                               g_blas.workspace, g_blas.workspace_size, 0));
}
// out[N,OUT] = inp[N,IN] · W[OUT,IN]ᵀ (+ residual[N,OUT] when given)
static void matmul_forward_cuda(bf16* out, const bf16* inp, const bf16* w, int N, int IN, int OUT, const bf16* residual = nullptr) {
    gemm_cuda(true, false, OUT, N, IN, w, IN, inp, IN, out, CUDA_R_16BF, OUT, residual ? 1.0f : 0.0f, residual);
}
// dinp[N,IN] = dout[N,OUT] · W (dinp_accum: = or +=);  dW[OUT,IN] += doutᵀ · inp in fp32 (either may be null)
static void matmul_backward_cuda(bf16* dinp, float* dw, const bf16* dout, const bf16* inp, const bf16* w, int N, int IN,
                                 int OUT, Accum dinp_accum) {
    if (dw) gemm_cuda(false, true, IN, OUT, N, inp, IN, dout, OUT, dw, CUDA_R_32F, IN, 1.0f);
    if (dinp) gemm_cuda(false, false, IN, N, OUT, w, IN, dout, OUT, dinp, CUDA_R_16BF, IN, dinp_accum == Accum::Add ? 1.0f : 0.0f);
}

// ----------------------------------------------------------------------------
// RMSNorm: y = w ⊙ x · rstd,  rstd = 1/sqrt(mean(x²) + eps). One warp per row.
// Backward, fused with the residual add: dres += rstd · (g − x̂ · mean(g ⊙ x̂)) with g = dy ⊙ w, x̂ = x·rstd;
// it also writes the bf16 copy of dres the next matmul reads. dw += Σ_n dy ⊙ x̂ runs as a two-pass column
// sum (fixed chunks of rows, then the chunks in order): deterministic, no atomics.

__global__ void rmsnorm_forward_kernel(bf16* out, float* rstd, const bf16* inp, const bf16* weight, int N, int C, float eps) {
    int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const bf16* x = inp + (size_t)n * C;
    float ss = 0.0f;
    for (int i = lane; i < C; i += 32) { float v = bf2f(x[i]); ss += v * v; }
    float r = rsqrtf(warp_sum(ss) / C + eps);
    if (rstd && lane == 0) rstd[n] = r;
    bf16* y = out + (size_t)n * C;
    for (int i = lane; i < C; i += 32) y[i] = f2bf(bf2f(weight[i]) * (bf2f(x[i]) * r));
}
__global__ void rmsnorm_backward_kernel(float* dres, bf16* dres16, const bf16* dout, const bf16* inp, const bf16* weight,
                                        const float* rstd, int N, int C) {
    int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const bf16* x = inp + (size_t)n * C;
    const bf16* dy = dout + (size_t)n * C;
    float r = rstd[n], dot = 0.0f;
    for (int i = lane; i < C; i += 32) dot += bf2f(dy[i]) * bf2f(weight[i]) * bf2f(x[i]) * r;
    dot = warp_sum(dot) / C;
    float* dx = dres + (size_t)n * C;
    for (int i = lane; i < C; i += 32) {
        float v = dx[i] + r * (bf2f(dy[i]) * bf2f(weight[i]) - bf2f(x[i]) * r * dot);
        dx[i] = v;
        if (dres16) dres16[(size_t)n * C + i] = f2bf(v);
    }
}
#define RMS_CHUNK 64   // rows per partial column sum
__global__ void rmsnorm_dweight_partial_kernel(float* partial, const bf16* dout, const bf16* inp, const float* rstd, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, n0 = blockIdx.y * RMS_CHUNK;
    if (c >= C) return;
    float acc = 0.0f;
    for (int n = n0; n < min(n0 + RMS_CHUNK, N); n++) acc += bf2f(dout[(size_t)n * C + c]) * bf2f(inp[(size_t)n * C + c]) * rstd[n];
    partial[(size_t)blockIdx.y * C + c] = acc;
}
__global__ void column_sum_accumulate_kernel(float* dst, const float* partial, int chunks, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float acc = 0.0f;
    for (int i = 0; i < chunks; i++) acc += partial[(size_t)i * C + c];
    dst[c] += acc;
}
static void rmsnorm_forward_cuda(bf16* out, float* rstd, const bf16* inp, const bf16* w, int N, int C, float eps) {
    rmsnorm_forward_kernel<<<ceil_div(N, 4), 128>>>(out, rstd, inp, w, N, C, eps);
    cudaCheck(cudaGetLastError());
}
// partial: scratch of ceil(N / RMS_CHUNK) · C floats
static void rmsnorm_backward_cuda(float* dres, bf16* dres16, float* dweight, float* partial, const bf16* dout, const bf16* inp,
                                  const bf16* w, const float* rstd, int N, int C) {
    rmsnorm_backward_kernel<<<ceil_div(N, 4), 128>>>(dres, dres16, dout, inp, w, rstd, N, C);
    int chunks = ceil_div(N, RMS_CHUNK);
    rmsnorm_dweight_partial_kernel<<<dim3(ceil_div(C, 256), chunks), 256>>>(partial, dout, inp, rstd, N, C);
    column_sum_accumulate_kernel<<<ceil_div(C, 256), 256>>>(dweight, partial, chunks, C);
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// RoPE, Hugging Face rotate-half layout: (x1, x2) → (x1·cos − x2·sin, x2·cos + x1·sin), in place; sign = −1 rotates
// back (the backward). The cos/sin table [positions, D/2] is the CPU's rope_table, uploaded once, so both
// backends rotate by the same fp32 factors. Position of row n: pos0 + n % T.

__global__ void rope_kernel(bf16* x, const float* cos_t, const float* sin_t, int N, int heads, int D, int T, int pos0, float sign) {
    int half = D / 2;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x, total = (size_t)N * heads * half;
    if (idx >= total) return;
    int i = (int)(idx % half);
    size_t nh = idx / half;
    int n = (int)(nh / heads);
    int pos = pos0 + n % T;
    float c = cos_t[(size_t)pos * half + i], s = sign * sin_t[(size_t)pos * half + i];
    bf16* v = x + nh * D;
    float x1 = bf2f(v[i]), x2 = bf2f(v[i + half]);
    v[i] = f2bf(x1 * c - x2 * s);
    v[i + half] = f2bf(x2 * c + x1 * s);
}
static void rope_apply_cuda(bf16* x, const float* cos_t, const float* sin_t, int N, int heads, int D, int T, int pos0, float sign) {
    size_t total = (size_t)N * heads * (D / 2);
    rope_kernel<<<ceil_div((long long)total, 256), 256>>>(x, cos_t, sin_t, N, heads, D, T, pos0, sign);
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// Causal grouped-query attention, fused flash-attention style: K/V tiles in shared memory, an online softmax,
// no T×T matrix anywhere. q [B,T,H,D], k/v [B,T,KV,D]; query head h reads kv head h / (H/KV) directly (native
// GQA, no K/V replication). One warp per query row, ATT_WARPS rows of one head per block; lane j owns key j of
// each 32-key tile for the scores and dims lane, lane+32, … of the output.
//   forward:  m, l running max/sum;  y = Σ_s exp(s·k/√D − m) v / l;  lse = m + log l kept for backward
//   backward: P = exp(q·k/√D − lse),  Dq = dy·y,  dS = P ⊙ (dy·vᵀ − Dq)
//             dq = dS·k/√D  (one warp per query row)     dk = dSᵀ·q/√D,  dv = Pᵀ·dy  (one warp per key row,
//             looping over the group's query heads) — two kernels that each own their outputs: no atomics.
// Shared-memory rows are padded to D+1 floats so that 32 lanes reading 32 different rows hit 32 banks.
#define ATT_WARPS 8
#define ATT_TILE 32
#define ATT_MAXD 256

static size_t attention_forward_smem(int D) { return ((size_t)ATT_TILE * (D + 1) + (size_t)ATT_TILE * D + (size_t)ATT_WARPS * D) * sizeof(float); }
static size_t attention_dq_smem(int D) { return ((size_t)2 * ATT_TILE * (D + 1) + (size_t)2 * ATT_WARPS * D) * sizeof(float); }
static size_t attention_dkv_smem(int D) { return ((size_t)2 * ATT_TILE * (D + 1) + 2 * ATT_TILE + (size_t)2 * ATT_WARPS * D) * sizeof(float); }

__global__ void attention_forward_kernel(bf16* y, float* lse, const bf16* q, const bf16* k, const bf16* v,
                                         int T, int H, int KV, int D, float scale) {
    extern __shared__ float smem[];
    float* ks = smem;                              // [TILE][D+1]
    float* vs = ks + ATT_TILE * (D + 1);           // [TILE][D]
    float* qs = vs + ATT_TILE * D;                 // [WARPS][D], pre-scaled by 1/√D
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int b = blockIdx.y / H, h = blockIdx.y % H, kh = h / (H / KV);
    int t0 = blockIdx.x * ATT_WARPS, t = t0 + warp;
    bool active = t < T;
    float* qw = qs + warp * D;
    for (int d = lane; d < D; d += 32) qw[d] = active ? bf2f(q[(((size_t)b * T + t) * H + h) * D + d]) * scale : 0.0f;
    float m = -INFINITY, l = 0.0f, o[ATT_MAXD / 32];
    #pragma unroll
    for (int i = 0; i < ATT_MAXD / 32; i++) o[i] = 0.0f;
    int t_last = min(t0 + ATT_WARPS, T) - 1;
    for (int s0 = 0; s0 <= t_last; s0 += ATT_TILE) {
        __syncthreads();   // the previous tile is consumed (and qs is written)
        for (int i = threadIdx.x; i < ATT_TILE * D; i += blockDim.x) {
            int j = i / D, d = i % D, s = s0 + j;
            float kk = 0.0f, vv = 0.0f;
            if (s < T) {
                size_t off = (((size_t)b * T + s) * KV + kh) * D + d;
                kk = bf2f(k[off]);
                vv = bf2f(v[off]);
            }
            ks[j * (D + 1) + d] = kk;
            vs[j * D + d] = vv;
        }
        __syncthreads();
        if (!active || s0 > t) continue;   // warp-uniform; the loop bounds are block-uniform, so every thread syncs
        int s = s0 + lane;
        float score = -INFINITY;
        if (s <= t) {
            float dot = 0.0f;
            for (int d = 0; d < D; d++) dot += qw[d] * ks[lane * (D + 1) + d];
            score = dot;
        }
        float m_new = fmaxf(m, warp_max(score));
        float p = s <= t ? expf(score - m_new) : 0.0f;
        float alpha = expf(m - m_new);     // 0 on the first tile (m = −∞)
        l = l * alpha + warp_sum(p);
        #pragma unroll
        for (int i = 0; i < ATT_MAXD / 32; i++) o[i] *= alpha;
        int jn = min(ATT_TILE, t - s0 + 1);
        for (int j = 0; j < jn; j++) {
            float pj = __shfl_sync(0xffffffffu, p, j);
            #pragma unroll
            for (int i = 0; i < ATT_MAXD / 32; i++) {
                int d = lane + 32 * i;
                if (d < D) o[i] += pj * vs[j * D + d];
            }
        }
        m = m_new;
    }
    if (!active) return;
    float inv = 1.0f / l;
    #pragma unroll
    for (int i = 0; i < ATT_MAXD / 32; i++) {
        int d = lane + 32 * i;
        if (d < D) y[(((size_t)b * T + t) * H + h) * D + d] = f2bf(o[i] * inv);
    }
    if (lane == 0) lse[((size_t)b * H + h) * T + t] = m + logf(l);
}
// Dq[b,h,t] = Σ_d dy·y  (= Σ_s P·(dy·v), the softmax backward's row term). One warp per row.
__global__ void attention_dsum_kernel(float* dsum, const bf16* dy, const bf16* y, int B, int T, int H, int D) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;   // row = (b·T + t)·H + h
    if (row >= B * T * H) return;
    float acc = 0.0f;
    for (int d = lane; d < D; d += 32) acc += bf2f(dy[(size_t)row * D + d]) * bf2f(y[(size_t)row * D + d]);
    acc = warp_sum(acc);
    int h = row % H, bt = row / H, b = bt / T, t = bt % T;
    if (lane == 0) dsum[((size_t)b * H + h) * T + t] = acc;
}
__global__ void attention_backward_dq_kernel(bf16* dq, const bf16* dy, const float* lse, const float* dsum, const bf16* q,
                                             const bf16* k, const bf16* v, int T, int H, int KV, int D, float scale) {
    extern __shared__ float smem[];
    float* ks = smem;                              // [TILE][D+1]
    float* vs = ks + ATT_TILE * (D + 1);           // [TILE][D+1]
    float* qs = vs + ATT_TILE * (D + 1);           // [WARPS][D], pre-scaled
    float* dys = qs + ATT_WARPS * D;               // [WARPS][D]
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int b = blockIdx.y / H, h = blockIdx.y % H, kh = h / (H / KV);
    int t0 = blockIdx.x * ATT_WARPS, t = t0 + warp;
    bool active = t < T;
    float* qw = qs + warp * D;
    float* dyw = dys + warp * D;
    size_t row = (((size_t)b * T + t) * H + h) * D;
    for (int d = lane; d < D; d += 32) {
        qw[d] = active ? bf2f(q[row + d]) * scale : 0.0f;
        dyw[d] = active ? bf2f(dy[row + d]) : 0.0f;
    }
    float L = active ? lse[((size_t)b * H + h) * T + t] : 0.0f, Dq = active ? dsum[((size_t)b * H + h) * T + t] : 0.0f;
    float acc[ATT_MAXD / 32];
    #pragma unroll
    for (int i = 0; i < ATT_MAXD / 32; i++) acc[i] = 0.0f;
    int t_last = min(t0 + ATT_WARPS, T) - 1;
    for (int s0 = 0; s0 <= t_last; s0 += ATT_TILE) {
        __syncthreads();
        for (int i = threadIdx.x; i < ATT_TILE * D; i += blockDim.x) {
            int j = i / D, d = i % D, s = s0 + j;
            float kk = 0.0f, vv = 0.0f;
            if (s < T) {
                size_t off = (((size_t)b * T + s) * KV + kh) * D + d;
                kk = bf2f(k[off]);
                vv = bf2f(v[off]);
            }
            ks[j * (D + 1) + d] = kk;
            vs[j * (D + 1) + d] = vv;
        }
        __syncthreads();
        if (!active || s0 > t) continue;
        int s = s0 + lane;
        float ds = 0.0f;
        if (s <= t) {
            float dot = 0.0f, dp = 0.0f;
            for (int d = 0; d < D; d++) {
                dot += qw[d] * ks[lane * (D + 1) + d];
                dp += dyw[d] * vs[lane * (D + 1) + d];
            }
            ds = expf(dot - L) * (dp - Dq);
        }
        int jn = min(ATT_TILE, t - s0 + 1);
        for (int j = 0; j < jn; j++) {
            float dsj = __shfl_sync(0xffffffffu, ds, j);
            #pragma unroll
            for (int i = 0; i < ATT_MAXD / 32; i++) {
                int d = lane + 32 * i;
                if (d < D) acc[i] += dsj * ks[j * (D + 1) + d];
            }
        }
    }
    if (!active) return;
    #pragma unroll
    for (int i = 0; i < ATT_MAXD / 32; i++) {
        int d = lane + 32 * i;
        if (d < D) dq[row + d] = f2bf(acc[i] * scale);
    }
}
// One warp per key row s of kv head kh; the block's ATT_WARPS keys share tiles of 32 queries (q, dy, lse, Dq)
// of every query head of the group.
__global__ void attention_backward_dkv_kernel(bf16* dk, bf16* dv, const bf16* dy, const float* lse, const float* dsum,
                                              const bf16* q, const bf16* k, const bf16* v, int T, int H, int KV, int D, float scale) {
    extern __shared__ float smem[];
    float* qs = smem;                              // [TILE][D+1]  queries, pre-scaled
    float* dys = qs + ATT_TILE * (D + 1);          // [TILE][D+1]
    float* ls = dys + ATT_TILE * (D + 1);          // [TILE] lse
    float* dss = ls + ATT_TILE;                    // [TILE] Dq
    float* kws = dss + ATT_TILE;                   // [WARPS][D]
    float* vws = kws + ATT_WARPS * D;              // [WARPS][D]
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int b = blockIdx.y / KV, kh = blockIdx.y % KV, group = H / KV;
    int s_first = blockIdx.x * ATT_WARPS, s = s_first + warp;
    bool active = s < T;
    size_t krow = (((size_t)b * T + s) * KV + kh) * D;
    float* kw = kws + warp * D;
    float* vw = vws + warp * D;
    for (int d = lane; d < D; d += 32) {
        kw[d] = active ? bf2f(k[krow + d]) : 0.0f;
        vw[d] = active ? bf2f(v[krow + d]) : 0.0f;
    }
    float dka[ATT_MAXD / 32], dva[ATT_MAXD / 32];
    #pragma unroll
    for (int i = 0; i < ATT_MAXD / 32; i++) dka[i] = dva[i] = 0.0f;
    for (int h = kh * group; h < (kh + 1) * group; h++)
        for (int t0 = s_first; t0 < T; t0 += ATT_TILE) {
            __syncthreads();
            for (int i = threadIdx.x; i < ATT_TILE * D; i += blockDim.x) {
                int j = i / D, d = i % D, t = t0 + j;
                float qq = 0.0f, gg = 0.0f;
                if (t < T) {
                    size_t off = (((size_t)b * T + t) * H + h) * D + d;
                    qq = bf2f(q[off]) * scale;
                    gg = bf2f(dy[off]);
                }
                qs[j * (D + 1) + d] = qq;
                dys[j * (D + 1) + d] = gg;
            }
            for (int j = threadIdx.x; j < ATT_TILE; j += blockDim.x) {
                int t = t0 + j;
                ls[j] = t < T ? lse[((size_t)b * H + h) * T + t] : 0.0f;
                dss[j] = t < T ? dsum[((size_t)b * H + h) * T + t] : 0.0f;
            }
            __syncthreads();
            if (!active) continue;
            int t = t0 + lane;
            float p = 0.0f, ds = 0.0f;
            if (t < T && t >= s) {
                float dot = 0.0f, dp = 0.0f;
                for (int d = 0; d < D; d++) {
                    dot += kw[d] * qs[lane * (D + 1) + d];
                    dp += vw[d] * dys[lane * (D + 1) + d];
                }
                p = expf(dot - ls[lane]);
                ds = p * (dp - dss[lane]);
            }
            int jn = min(ATT_TILE, T - t0);
            for (int j = 0; j < jn; j++) {
                float pj = __shfl_sync(0xffffffffu, p, j), dsj = __shfl_sync(0xffffffffu, ds, j);
                #pragma unroll
                for (int i = 0; i < ATT_MAXD / 32; i++) {
                    int d = lane + 32 * i;
                    if (d < D) {
                        dva[i] += pj * dys[j * (D + 1) + d];
                        dka[i] += dsj * qs[j * (D + 1) + d];   // qs holds q/√D: the scale of dk is already in
                    }
                }
            }
        }
    if (!active) return;
    #pragma unroll
    for (int i = 0; i < ATT_MAXD / 32; i++) {
        int d = lane + 32 * i;
        if (d < D) { dk[krow + d] = f2bf(dka[i]); dv[krow + d] = f2bf(dva[i]); }
    }
}
static void attention_check_dims(int D) {
    if (D > ATT_MAXD) die("cuda: head_dim %d exceeds the attention kernels' maximum %d", D, ATT_MAXD);
    static int configured_for = 0;   // opt in to > 48 KiB of shared memory once per head size
    if (configured_for == D) return;
    cudaCheck(cudaFuncSetAttribute(attention_forward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)attention_forward_smem(D)));
    cudaCheck(cudaFuncSetAttribute(attention_backward_dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)attention_dq_smem(D)));
    cudaCheck(cudaFuncSetAttribute(attention_backward_dkv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)attention_dkv_smem(D)));
    configured_for = D;
}
static void attention_forward_cuda(bf16* y, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H, int KV, int D) {
    attention_check_dims(D);
    dim3 grid(ceil_div(T, ATT_WARPS), B * H);
    attention_forward_kernel<<<grid, 32 * ATT_WARPS, attention_forward_smem(D)>>>(y, lse, q, k, v, T, H, KV, D, 1.0f / sqrtf((float)D));
    cudaCheck(cudaGetLastError());
}
// dsum: scratch [B,H,T]
static void attention_backward_cuda(bf16* dq, bf16* dk, bf16* dv, float* dsum, const bf16* dy, const bf16* y, const float* lse,
                                    const bf16* q, const bf16* k, const bf16* v, int B, int T, int H, int KV, int D) {
    attention_check_dims(D);
    float scale = 1.0f / sqrtf((float)D);
    attention_dsum_kernel<<<ceil_div((long long)B * T * H, 8), 256>>>(dsum, dy, y, B, T, H, D);
    attention_backward_dq_kernel<<<dim3(ceil_div(T, ATT_WARPS), B * H), 32 * ATT_WARPS, attention_dq_smem(D)>>>(
        dq, dy, lse, dsum, q, k, v, T, H, KV, D, scale);
    attention_backward_dkv_kernel<<<dim3(ceil_div(T, ATT_WARPS), B * KV), 32 * ATT_WARPS, attention_dkv_smem(D)>>>(
        dk, dv, dy, lse, dsum, q, k, v, T, H, KV, D, scale);
    cudaCheck(cudaGetLastError());
}

// Batch-1 decode attention over the KV cache: the query at position pos attends to cache rows 0..pos.
// q [H,D], cache [Tmax,KV,D] (one layer). One block per query head: scores in shared memory (one warp per key,
// lanes over D), a block softmax, then thread d sums P·v[:,d] (coalesced over d).
__global__ void decode_attention_kernel(bf16* y, const bf16* q, const bf16* kc, const bf16* vc, int pos, int H, int KV, int D, float scale) {
    extern __shared__ float scores[];             // [pos+1]
    __shared__ float red[32];
    int h = blockIdx.x, kh = h / (H / KV), warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
    const bf16* qh = q + (size_t)h * D;
    for (int s = warp; s <= pos; s += nw) {
        const bf16* ks = kc + ((size_t)s * KV + kh) * D;
        float dot = 0.0f;
        for (int d = lane; d < D; d += 32) dot += bf2f(qh[d]) * bf2f(ks[d]);
        dot = warp_sum(dot);
        if (lane == 0) scores[s] = dot * scale;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int s = threadIdx.x; s <= pos; s += blockDim.x) mx = fmaxf(mx, scores[s]);
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int s = threadIdx.x; s <= pos; s += blockDim.x) { float e = expf(scores[s] - mx); scores[s] = e; sum += e; }
    sum = block_sum(sum, red);   // its __syncthreads also publishes the exponentials
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s <= pos; s++) acc += scores[s] * bf2f(vc[((size_t)s * KV + kh) * D + d]);
        y[(size_t)h * D + d] = f2bf(acc / sum);
    }
}
static void decode_attention_cuda(bf16* y, const bf16* q, const bf16* kc, const bf16* vc, int pos, int H, int KV, int D) {
    size_t smem = (size_t)(pos + 1) * sizeof(float);
    if (smem > 48 * 1024) {
        static size_t configured = 0;
        if (smem > configured) {
            cudaCheck(cudaFuncSetAttribute(decode_attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
            configured = smem;
        }
    }
    decode_attention_kernel<<<H, 128, smem>>>(y, q, kc, vc, pos, H, KV, D, 1.0f / sqrtf((float)D));
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// SwiGLU: act = silu(gate) ⊙ up,  silu'(x) = σ(x)·(1 + x·(1 − σ(x))).
// The backward runs in place: gate and up are overwritten by dgate and dup (they are not needed afterwards).

__global__ void swiglu_forward_kernel(bf16* act, const bf16* gate, const bf16* up, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = bf2f(gate[i]);
    act[i] = f2bf(g / (1.0f + expf(-g)) * bf2f(up[i]));
}
__global__ void swiglu_backward_kernel(bf16* gate_dgate, bf16* up_dup, const bf16* dact, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = bf2f(gate_dgate[i]), u = bf2f(up_dup[i]), da = bf2f(dact[i]), sig = 1.0f / (1.0f + expf(-g));
    gate_dgate[i] = f2bf(da * u * sig * (1.0f + g * (1.0f - sig)));
    up_dup[i] = f2bf(da * g * sig);
}
static void swiglu_forward_cuda(bf16* act, const bf16* gate, const bf16* up, size_t n) {
    swiglu_forward_kernel<<<ceil_div((long long)n, 256), 256>>>(act, gate, up, n);
    cudaCheck(cudaGetLastError());
}
static void swiglu_backward_cuda(bf16* gate_dgate, bf16* up_dup, const bf16* dact, size_t n) {
    swiglu_backward_kernel<<<ceil_div((long long)n, 256), 256>>>(gate_dgate, up_dup, dact, n);
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// Cross-entropy from bf16 logits, in fp32: lse = log Σ exp(z), nll = lse − z[target]; masked (target < 0) → 0.
// The paper's in-place cross-entropy: the backward overwrites the logits with their gradient
//   dz = dloss · (exp(z − lse) − onehot(target)),  masked rows or dloss = 0 → exactly 0,
// so the [N,V] logits buffer is the only one of its size. One block per row.

__global__ void crossentropy_forward_kernel(float* losses, float* lse_out, const bf16* logits, const int* targets, int V) {
    __shared__ float red[32];
    int n = blockIdx.x;
    if (targets[n] < 0) {   // block-uniform
        if (threadIdx.x == 0) { losses[n] = 0.0f; lse_out[n] = 0.0f; }
        return;
    }
    const bf16* z = logits + (size_t)n * V;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, bf2f(z[i]));
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) sum += expf(bf2f(z[i]) - mx);
    sum = block_sum(sum, red);
    if (threadIdx.x == 0) {
        float lse = mx + logf(sum);
        lse_out[n] = lse;
        losses[n] = lse - bf2f(z[targets[n]]);
    }
}
__global__ void crossentropy_backward_inplace_kernel(bf16* logits, const float* lse, const int* targets, const float* dlosses, int V) {
    int n = blockIdx.x, tgt = targets[n];
    float w = tgt < 0 ? 0.0f : dlosses[n], L = lse[n];
    bf16* z = logits + (size_t)n * V;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float g = w == 0.0f ? 0.0f : w * (expf(bf2f(z[i]) - L) - (i == tgt ? 1.0f : 0.0f));
        z[i] = f2bf(g);
    }
}

// ----------------------------------------------------------------------------
// AdamW on the fp32 master weights (torch.optim.AdamW, with the same arithmetic as the CPU's adamw_step), then
// the bf16 parameters are refreshed from them:
//   g = grad·grad_scale;  m += (1−β1)·(g − m);  v = β2·v + (1−β2)·g²
//   w = w·(1 − lr·wd) − lr/(1−β1^t) · m / (sqrt(v)/sqrt(1−β2^t) + eps)     (wd only on matrices);  param = bf16(w)

__global__ void adamw_kernel(float* master, bf16* param, float* m, float* v, const float* grad, size_t n, float step_size,
                             float bc2_sqrt, float decay, float beta1, float beta2, float eps, float grad_scale) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = grad[i] * grad_scale;
    float mi = m[i] + (1.0f - beta1) * (g - m[i]), vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    float w = master[i] * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    master[i] = w;
    param[i] = f2bf(w);
}
static void adamw_cuda(float* master, bf16* param, float* m, float* v, const float* grad, size_t n, float lr, float beta1,
                       float beta2, float eps, float wd, float grad_scale, int step) {
    double bc1 = 1.0 - pow((double)beta1, (double)step), bc2 = 1.0 - pow((double)beta2, (double)step);
    adamw_kernel<<<ceil_div((long long)n, 256), 256>>>(master, param, m, v, grad, n, (float)(lr / bc1), (float)sqrt(bc2),
                                                       1.0f - lr * wd, beta1, beta2, eps, grad_scale);
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// global gradient norm: sqrt(Σ g²). A fixed grid of blocks writes partial sums; the host adds them in order
// in double: deterministic.
#define NORM_BLOCKS 512
__global__ void sumsq_partial_kernel(float* partial, const float* g, size_t n) {
    __shared__ float red[32];
    float acc = 0.0f;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) acc += g[i] * g[i];
    acc = block_sum(acc, red);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}
static float grad_norm_cuda(const float* g, size_t n, float* partial_dev) {
    sumsq_partial_kernel<<<NORM_BLOCKS, 512>>>(partial_dev, g, n);
    cudaCheck(cudaGetLastError());
    float h[NORM_BLOCKS];
    cudaCheck(cudaMemcpy(h, partial_dev, sizeof h, cudaMemcpyDeviceToHost));
    double s = 0.0;
    for (int i = 0; i < NORM_BLOCKS; i++) s += h[i];
    return (float)sqrt(s);
}

// fp32 ↔ bf16 conversions on the device
__global__ void f32_to_bf16_kernel(bf16* out, const float* in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f2bf(in[i]);
}
__global__ void bf16_to_f32_kernel(float* out, const bf16* in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = bf2f(in[i]);
}

// ----------------------------------------------------------------------------
// the CUDA model: one allocation per kind, sized up front by cuda_model_create.
//   parameters bf16 (2 bytes/param), master weights fp32 (4), gradients fp32 (4), AdamW m and v fp32 (8),
//   activations: one byte buffer carved into the tensors below (bf16 unless noted).
// With recompute, ln1, ln2 and act keep one layer's slot and backward recomputes them from the residual stream
// and gate/up.

struct CudaParams {   // bf16 views of the 12 tensors, same layout as ParameterTensors
    bf16 *embed_tokens, *input_layernorm, *q_proj, *k_proj, *v_proj, *o_proj, *post_attention_layernorm,
        *gate_proj, *up_proj, *down_proj, *norm, *lm_head;
};
struct CudaActs {
    bf16* residual;      // [L+1, N, C]   the residual stream entering each layer, and the final one
    bf16* resid_mid;     // [L, N, C]     after the attention block
    bf16* ln1;           // [L or 1, N, C]
    float* ln1_rstd;     // [L, N]
    bf16* q;             // [L, N, H*D]   after RoPE
    bf16* k;             // [L, N, KV*D]  after RoPE
    bf16* v;             // [L, N, KV*D]
    bf16* atty;          // [L, N, H*D]   attention output
    float* att_lse;      // [L, B, H, T]  attention log-sum-exp, for backward
    bf16* ln2;           // [L or 1, N, C]
    float* ln2_rstd;     // [L, N]
    bf16* gate;          // [L, N, F]     (dgate after backward)
    bf16* up;            // [L, N, F]     (dup after backward)
    bf16* act;           // [L or 1, N, F] (dact during backward)
    bf16* lnf;           // [N, C]
    float* lnf_rstd;     // [N]
    bf16* logits;        // [N, V]        (dlogits after backward: in-place cross-entropy)
    float* logits_lse;   // [N]
    float* losses;       // [N]
    // backward scratch
    float* dres;         // [N, C] fp32 gradient of the residual stream
    bf16* dres16;        // [N, C] its bf16 copy
    bf16* dln;           // [N, C]
    bf16* datty;         // [N, H*D]
    bf16* dq;            // [N, H*D]
    bf16* dk;            // [N, KV*D]
    bf16* dv;            // [N, KV*D]
    float* att_dsum;     // [B, H, T]
    float* partial;      // [ceil(N/RMS_CHUNK), C] and the norm's NORM_BLOCKS partial sums
    int* inputs;         // [N]
    int* targets;        // [N]
    float* dlosses;      // [N]
    int* emb_groups;     // [3N+1] the embedding backward's grouping of positions by token
};

struct CudaModel {
    Config cfg;
    int Bmax = 0, Tmax = 0, B = 0, T = 0;
    bool recompute = false, have_forward = false;
    size_t num_parameters = 0, sizes[NUM_PARAM_TENSORS];
    bf16* params_mem = nullptr;
    float *master = nullptr, *grads_mem = nullptr, *adam_mem = nullptr;   // adam_mem: m then v
    void* acts_mem = nullptr;
    size_t acts_bytes = 0;
    CudaParams p;
    ParameterTensors g;                  // fp32 gradients on the device
    CudaActs a;
    float *rope_cos = nullptr, *rope_sin = nullptr;
    std::vector<int> inputs, targets;    // host copies of the last forward's tokens
    std::vector<std::pair<size_t, size_t>> decay, no_decay;   // AdamW ranges (offset, count) from param_views
};

// Layer l's slices of the activations for the current B×T (m->B, m->T); with recompute, ln1, ln2 and act are the one
// slot all layers share. The parameters' and gradients' view is layer_weights (deepseek.h).
struct CudaLayerActs {
    bf16 *x, *mid, *out, *ln1, *ln2, *act, *q, *k, *v, *atty, *gate, *up;
    float *ln1_rstd, *ln2_rstd, *att_lse;
};
static CudaLayerActs cuda_layer_acts(const CudaModel* m, int l) {
    const Config& c = m->cfg;
    const CudaActs& a = m->a;
    size_t i = (size_t)l, r = m->recompute ? 0 : i, N = (size_t)m->B * m->T, NC = N * c.hidden_size, NF = N * c.intermediate_size;
    size_t QD = (size_t)c.num_attention_heads * c.head_dim, KVD = (size_t)c.num_key_value_heads * c.head_dim;
    return {a.residual + i * NC, a.resid_mid + i * NC, a.residual + (i + 1) * NC, a.ln1 + r * NC, a.ln2 + r * NC,
            a.act + r * NF, a.q + i * N * QD, a.k + i * N * KVD, a.v + i * N * KVD, a.atty + i * N * QD, a.gate + i * NF,
            a.up + i * NF, a.ln1_rstd + i * N, a.ln2_rstd + i * N, a.att_lse + i * N * c.num_attention_heads};
}

static void cuda_params_point(CudaParams* p, bf16* mem, const size_t s[NUM_PARAM_TENSORS]) {
    bf16** ptrs[NUM_PARAM_TENSORS] = {&p->embed_tokens, &p->input_layernorm, &p->q_proj, &p->k_proj, &p->v_proj,
                                      &p->o_proj, &p->post_attention_layernorm, &p->gate_proj, &p->up_proj,
                                      &p->down_proj, &p->norm, &p->lm_head};
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) { *ptrs[i] = mem; mem += s[i]; }
}
static void upload_bf16(bf16* dst, const float* src, size_t n) {
    std::vector<uint16_t> h(n);
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16(src[i]);
    cudaCheck(cudaMemcpy(dst, h.data(), n * 2, cudaMemcpyHostToDevice));
}
static void download_bf16(float* dst, const bf16* src, size_t n) {
    std::vector<uint16_t> h(n);
    cudaCheck(cudaMemcpy(h.data(), src, n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(h[i]);
}

static void cuda_select_device() {
    if (cuda_device_count() == 0) die("cuda: no CUDA device is available");
    cudaCheck(cudaSetDevice(0));
}

CudaModel* cuda_model_create(const Model& host, int Bmax, int Tmax, bool recompute, bool verbose) {
    cuda_select_device();
    const Config& c = host.cfg;
    if (Bmax < 1 || Tmax < 1) die("cuda: empty batch (B=%d, T=%d)", Bmax, Tmax);
    if (Tmax > c.max_position_embeddings) die("cuda: sequence length %d exceeds the model's context %d", Tmax, c.max_position_embeddings);
    if (c.head_dim > ATT_MAXD) die("cuda: head_dim %d exceeds the attention kernels' maximum %d", c.head_dim, ATT_MAXD);
    CudaModel* m = new CudaModel;
    m->cfg = c;
    m->Bmax = Bmax;
    m->Tmax = Tmax;
    m->recompute = recompute;
    param_sizes(c, m->sizes);
    m->num_parameters = config_num_parameters(c);
    size_t P = m->num_parameters;
    // parameters, master weights, gradients, AdamW moments: one allocation each
    cudaCheck(cudaMalloc(&m->params_mem, P * sizeof(bf16)));
    cudaCheck(cudaMalloc(&m->master, P * sizeof(float)));
    cudaCheck(cudaMalloc(&m->grads_mem, P * sizeof(float)));
    cudaCheck(cudaMalloc(&m->adam_mem, 2 * P * sizeof(float)));
    cudaCheck(cudaMemcpy(m->master, host.params_memory.data(), P * sizeof(float), cudaMemcpyHostToDevice));
    upload_bf16(m->params_mem, host.params_memory.data(), P);
    cudaCheck(cudaMemset(m->grads_mem, 0, P * sizeof(float)));
    cudaCheck(cudaMemset(m->adam_mem, 0, 2 * P * sizeof(float)));
    cuda_params_point(&m->p, m->params_mem, m->sizes);
    param_point(&m->g, m->grads_mem, m->sizes);
    // AdamW ranges: weight decay on matrices only, merged where neighbours agree
    std::vector<ParamView> views = param_views(c);
    std::sort(views.begin(), views.end(), [](const ParamView& x, const ParamView& y) { return x.offset < y.offset; });
    for (const ParamView& pv : views) {
        size_t n = 1;
        for (int64_t d : pv.shape) n *= (size_t)d;
        auto& list = pv.is_matrix ? m->decay : m->no_decay;
        if (!list.empty() && list.back().first + list.back().second == pv.offset) list.back().second += n;
        else list.push_back({pv.offset, n});
    }
    // activations: one byte buffer, every tensor aligned to 256 bytes
    size_t N = (size_t)Bmax * Tmax, L = c.num_hidden_layers, C = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
    size_t QD = (size_t)c.num_attention_heads * c.head_dim, KVD = (size_t)c.num_key_value_heads * c.head_dim;
    size_t Ls = recompute ? 1 : L, H = c.num_attention_heads;
    size_t chunks = (size_t)ceil_div((long long)N, RMS_CHUNK);
    struct Slot { void** ptr; size_t bytes; };
    CudaActs& a = m->a;
    std::vector<Slot> slots = {
        {(void**)&a.residual, (L + 1) * N * C * 2}, {(void**)&a.resid_mid, L * N * C * 2}, {(void**)&a.ln1, Ls * N * C * 2},
        {(void**)&a.ln1_rstd, L * N * 4},           {(void**)&a.q, L * N * QD * 2},          {(void**)&a.k, L * N * KVD * 2},
        {(void**)&a.v, L * N * KVD * 2},            {(void**)&a.atty, L * N * QD * 2},      {(void**)&a.att_lse, L * N * H * 4},
        {(void**)&a.ln2, Ls * N * C * 2},           {(void**)&a.ln2_rstd, L * N * 4},       {(void**)&a.gate, L * N * F * 2},
        {(void**)&a.up, L * N * F * 2},             {(void**)&a.act, Ls * N * F * 2},       {(void**)&a.lnf, N * C * 2},
        {(void**)&a.lnf_rstd, N * 4},               {(void**)&a.logits, N * V * 2},         {(void**)&a.logits_lse, N * 4},
        {(void**)&a.losses, N * 4},                 {(void**)&a.dres, N * C * 4},           {(void**)&a.dres16, N * C * 2},
        {(void**)&a.dln, N * C * 2},                {(void**)&a.datty, N * QD * 2},         {(void**)&a.dq, N * QD * 2},
        {(void**)&a.dk, N * KVD * 2},               {(void**)&a.dv, N * KVD * 2},           {(void**)&a.att_dsum, N * H * 4},
        {(void**)&a.partial, std::max(chunks * C, (size_t)NORM_BLOCKS) * 4},
        {(void**)&a.inputs, N * 4},                 {(void**)&a.targets, N * 4},            {(void**)&a.dlosses, N * 4},
        {(void**)&a.emb_groups, (3 * N + 1) * 4}};
    size_t total = 0;
    for (auto& s : slots) total += (s.bytes + 255) / 256 * 256;
    m->acts_bytes = total;
    cudaError_t e = cudaMalloc(&m->acts_mem, total);
    if (e != cudaSuccess) {
        cudaGetLastError();
        die("cuda: cannot allocate %.2f GiB of activations for B=%d T=%d (%s); lower the batch or use --recompute",
            total / 1073741824.0, Bmax, Tmax, cudaGetErrorString(e));
    }
    char* ptr = (char*)m->acts_mem;
    for (auto& s : slots) { *s.ptr = ptr; ptr += (s.bytes + 255) / 256 * 256; }
    std::vector<float> cs((size_t)Tmax * (c.head_dim / 2)), sn(cs.size());
    rope_table(cs.data(), sn.data(), Tmax, c.head_dim, (float)c.rope_theta);
    cudaCheck(cudaMalloc(&m->rope_cos, cs.size() * 4));
    cudaCheck(cudaMalloc(&m->rope_sin, sn.size() * 4));
    cudaCheck(cudaMemcpy(m->rope_cos, cs.data(), cs.size() * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(m->rope_sin, sn.data(), sn.size() * 4, cudaMemcpyHostToDevice));
    if (verbose) {
        double GiB = 1073741824.0;
        printf("cuda: %s, %zu parameters; memory: params bf16 %.2f GiB, master fp32 %.2f GiB, grads fp32 %.2f GiB, "
               "AdamW m+v %.2f GiB, activations %.2f GiB (B=%d T=%d%s) — total %.2f GiB\n",
               cuda_device_name(0).c_str(), P, P * 2 / GiB, P * 4 / GiB, P * 4 / GiB, P * 8 / GiB, total / GiB, Bmax, Tmax,
               recompute ? ", recompute" : "", (P * 18 + total) / GiB);
    }
    return m;
}

void cuda_model_free(CudaModel* m) {
    if (!m) return;
    cudaFree(m->params_mem);
    cudaFree(m->master);
    cudaFree(m->grads_mem);
    cudaFree(m->adam_mem);
    cudaFree(m->acts_mem);
    cudaFree(m->rope_cos);
    cudaFree(m->rope_sin);
    delete m;
}

// Forward over tokens [B,T], like model_forward: returns the mean loss over unmasked targets (0 if none / null).
float cuda_model_forward(CudaModel* m, const int* inputs, const int* targets, int B, int T) {
    const Config& c = m->cfg;
    if (B < 1 || T < 1) die("forward: empty batch (B=%d, T=%d)", B, T);
    if ((size_t)B * T > (size_t)m->Bmax * m->Tmax || T > m->Tmax)
        die("cuda forward: B=%d T=%d exceeds the allocated B=%d T=%d", B, T, m->Bmax, m->Tmax);
    int N = B * T;
    for (int i = 0; i < N; i++) {
        if (inputs[i] < 0 || inputs[i] >= c.vocab_size) die("forward: token id %d out of range [0, %d)", inputs[i], c.vocab_size);
        if (targets && targets[i] >= c.vocab_size) die("forward: target id %d out of range [0, %d)", targets[i], c.vocab_size);
    }
    m->B = B;
    m->T = T;
    m->inputs.assign(inputs, inputs + N);
    if (targets) m->targets.assign(targets, targets + N); else m->targets.assign(N, -1);
    CudaActs& a = m->a;
    const CudaParams& p = m->p;
    cudaCheck(cudaMemcpy(a.inputs, m->inputs.data(), N * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(a.targets, m->targets.data(), N * 4, cudaMemcpyHostToDevice));
    int C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim, F = c.intermediate_size;
    int QD = H * D, KVD = KV * D, V = c.vocab_size, L = c.num_hidden_layers;
    float eps = (float)c.rms_norm_eps;
    size_t NC = (size_t)N * C, NF = (size_t)N * F;

    embedding_forward_kernel<<<N, 256>>>(a.residual, a.inputs, p.embed_tokens, N, C);
    cudaCheck(cudaGetLastError());
    for (int l = 0; l < L; l++) {
        const LayerWeights<bf16> w = layer_weights(p, c, l);
        const CudaLayerActs la = cuda_layer_acts(m, l);
        // attention block: x + o_proj(attention(rope(q_proj(ln1)), rope(k_proj(ln1)), v_proj(ln1)))
        rmsnorm_forward_cuda(la.ln1, la.ln1_rstd, la.x, w.input_layernorm, N, C, eps);
        matmul_forward_cuda(la.q, la.ln1, w.q_proj, N, C, QD);
        matmul_forward_cuda(la.k, la.ln1, w.k_proj, N, C, KVD);
        matmul_forward_cuda(la.v, la.ln1, w.v_proj, N, C, KVD);
        rope_apply_cuda(la.q, m->rope_cos, m->rope_sin, N, H, D, T, 0, 1.0f);
        rope_apply_cuda(la.k, m->rope_cos, m->rope_sin, N, KV, D, T, 0, 1.0f);
        attention_forward_cuda(la.atty, la.att_lse, la.q, la.k, la.v, B, T, H, KV, D);
        matmul_forward_cuda(la.mid, la.atty, w.o_proj, N, QD, C, la.x);   // + x: fused residual add
        // MLP block: mid + down_proj(silu(gate_proj(ln2)) ⊙ up_proj(ln2))
        rmsnorm_forward_cuda(la.ln2, la.ln2_rstd, la.mid, w.post_attention_layernorm, N, C, eps);
        matmul_forward_cuda(la.gate, la.ln2, w.gate_proj, N, C, F);
        matmul_forward_cuda(la.up, la.ln2, w.up_proj, N, C, F);
        swiglu_forward_cuda(la.act, la.gate, la.up, NF);
        matmul_forward_cuda(la.out, la.act, w.down_proj, N, F, C, la.mid);  // + mid
    }
    rmsnorm_forward_cuda(a.lnf, a.lnf_rstd, a.residual + (size_t)L * NC, p.norm, N, C, eps);
    matmul_forward_cuda(a.logits, a.lnf, p.lm_head, N, C, V);
    crossentropy_forward_kernel<<<N, 512>>>(a.losses, a.logits_lse, a.logits, a.targets, V);
    cudaCheck(cudaGetLastError());
    m->have_forward = true;
    if (!targets) return 0.0f;
    std::vector<float> losses(N);
    cudaCheck(cudaMemcpy(losses.data(), a.losses, N * 4, cudaMemcpyDeviceToHost));
    double sum = 0.0;
    size_t count = 0;
    for (int i = 0; i < N; i++)
        if (targets[i] >= 0) { sum += losses[i]; count++; }
    return count ? (float)(sum / count) : 0.0f;
}

// Backward of Σ_t dlosses[t]·nll_t, accumulating (+=) into the fp32 gradients, like model_backward.
// Once per forward: it consumes the logits (in place) and gate/up.
void cuda_model_backward(CudaModel* m, const float* dlosses) {
    if (!m->have_forward) die("backward: call forward first (once per forward on the CUDA backend)");
    m->have_forward = false;
    const Config& c = m->cfg;
    int B = m->B, T = m->T, N = B * T;
    int C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim, F = c.intermediate_size;
    int QD = H * D, KVD = KV * D, V = c.vocab_size, L = c.num_hidden_layers;
    float eps = (float)c.rms_norm_eps;
    size_t NC = (size_t)N * C, NF = (size_t)N * F;
    CudaActs& a = m->a;
    const CudaParams& p = m->p;
    ParameterTensors& g = m->g;
    cudaCheck(cudaMemcpy(a.dlosses, dlosses, N * 4, cudaMemcpyHostToDevice));

    crossentropy_backward_inplace_kernel<<<N, 512>>>(a.logits, a.logits_lse, a.targets, a.dlosses, V);
    cudaCheck(cudaGetLastError());
    bf16* dlogits = a.logits;
    matmul_backward_cuda(a.dln, g.lm_head, dlogits, a.lnf, p.lm_head, N, C, V, Accum::Overwrite);
    cudaCheck(cudaMemset(a.dres, 0, NC * 4));
    rmsnorm_backward_cuda(a.dres, a.dres16, g.norm, a.partial, a.dln, a.residual + (size_t)L * NC, p.norm, a.lnf_rstd, N, C);
    for (int l = L - 1; l >= 0; l--) {
        const LayerWeights<bf16> w = layer_weights(p, c, l);
        const LayerWeights<float> gw = layer_weights(g, c, l);
        const CudaLayerActs la = cuda_layer_acts(m, l);
        // MLP block: dres16 is the gradient of the layer's output; it flows to mid directly and through the MLP
        if (m->recompute) {
            rmsnorm_forward_cuda(la.ln2, nullptr, la.mid, w.post_attention_layernorm, N, C, eps);
            swiglu_forward_cuda(la.act, la.gate, la.up, NF);
        }
        matmul_backward_cuda(nullptr, gw.down_proj, a.dres16, la.act, nullptr, N, F, C, Accum::Overwrite);
        matmul_backward_cuda(la.act, nullptr, a.dres16, nullptr, w.down_proj, N, F, C, Accum::Overwrite);  // act ← dact
        swiglu_backward_cuda(la.gate, la.up, la.act, NF);                                                  // gate ← dgate, up ← dup
        matmul_backward_cuda(a.dln, gw.gate_proj, la.gate, la.ln2, w.gate_proj, N, C, F, Accum::Overwrite);
        matmul_backward_cuda(a.dln, gw.up_proj, la.up, la.ln2, w.up_proj, N, C, F, Accum::Add);
        rmsnorm_backward_cuda(a.dres, a.dres16, gw.post_attention_layernorm, a.partial, a.dln, la.mid, w.post_attention_layernorm,
                              la.ln2_rstd, N, C);
        // attention block
        matmul_backward_cuda(a.datty, gw.o_proj, a.dres16, la.atty, w.o_proj, N, QD, C, Accum::Overwrite);
        attention_backward_cuda(a.dq, a.dk, a.dv, a.att_dsum, a.datty, la.atty, la.att_lse, la.q, la.k, la.v, B, T, H, KV, D);
        rope_apply_cuda(a.dq, m->rope_cos, m->rope_sin, N, H, D, T, 0, -1.0f);
        rope_apply_cuda(a.dk, m->rope_cos, m->rope_sin, N, KV, D, T, 0, -1.0f);
        if (m->recompute) rmsnorm_forward_cuda(la.ln1, nullptr, la.x, w.input_layernorm, N, C, eps);
        matmul_backward_cuda(a.dln, gw.q_proj, a.dq, la.ln1, w.q_proj, N, C, QD, Accum::Overwrite);
        matmul_backward_cuda(a.dln, gw.k_proj, a.dk, la.ln1, w.k_proj, N, C, KVD, Accum::Add);
        matmul_backward_cuda(a.dln, gw.v_proj, a.dv, la.ln1, w.v_proj, N, C, KVD, Accum::Add);
        rmsnorm_backward_cuda(a.dres, a.dres16, gw.input_layernorm, a.partial, a.dln, la.x, w.input_layernorm, la.ln1_rstd, N, C);
    }
    // embedding: one block per distinct token, positions in a fixed order
    std::vector<int> uniq, starts, order;
    embedding_group(m->inputs.data(), N, V, &uniq, &starts, &order);
    int* d_uniq = a.emb_groups;   // uniq | starts | order: at most N + (N+1) + N ints
    int* d_starts = d_uniq + uniq.size();
    int* d_order = d_starts + starts.size();
    cudaCheck(cudaMemcpy(d_uniq, uniq.data(), uniq.size() * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(d_starts, starts.data(), starts.size() * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(d_order, order.data(), order.size() * 4, cudaMemcpyHostToDevice));
    embedding_backward_kernel<<<(int)uniq.size(), 256>>>(g.embed_tokens, a.dres, d_uniq, d_starts, d_order, C);
    cudaCheck(cudaGetLastError());
}

void cuda_model_zero_grad(CudaModel* m) { cudaCheck(cudaMemset(m->grads_mem, 0, m->num_parameters * sizeof(float))); }

float cuda_model_grad_norm(CudaModel* m) { return grad_norm_cuda(m->grads_mem, m->num_parameters, m->a.partial); }

void cuda_model_adamw(CudaModel* m, float lr, float beta1, float beta2, float eps, float weight_decay, float grad_scale, int step) {
    if (step < 1) die("adamw: step must be ≥ 1, got %d", step);
    float* mm = m->adam_mem;
    float* vv = m->adam_mem + m->num_parameters;
    for (auto& r : m->decay)
        adamw_cuda(m->master + r.first, m->params_mem + r.first, mm + r.first, vv + r.first, m->grads_mem + r.first, r.second,
                   lr, beta1, beta2, eps, weight_decay, grad_scale, step);
    for (auto& r : m->no_decay)
        adamw_cuda(m->master + r.first, m->params_mem + r.first, mm + r.first, vv + r.first, m->grads_mem + r.first, r.second,
                   lr, beta1, beta2, eps, 0.0f, grad_scale, step);
}

void cuda_model_get_params(CudaModel* m, Model* host) {
    if (host->num_parameters != m->num_parameters) model_build(host, m->cfg);
    cudaCheck(cudaMemcpy(host->params_memory.data(), m->master, m->num_parameters * 4, cudaMemcpyDeviceToHost));
}
void cuda_model_set_params(CudaModel* m, const Model& host) {
    if (host.num_parameters != m->num_parameters) die("cuda: set_params with a model of a different size");
    cudaCheck(cudaMemcpy(m->master, host.params_memory.data(), m->num_parameters * 4, cudaMemcpyHostToDevice));
    upload_bf16(m->params_mem, host.params_memory.data(), m->num_parameters);
}
void cuda_model_get_grads(CudaModel* m, float* host_grads) {
    cudaCheck(cudaMemcpy(host_grads, m->grads_mem, m->num_parameters * 4, cudaMemcpyDeviceToHost));
}
void cuda_model_get_adam_state(CudaModel* m, float* host_m, float* host_v) {
    cudaCheck(cudaMemcpy(host_m, m->adam_mem, m->num_parameters * 4, cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(host_v, m->adam_mem + m->num_parameters, m->num_parameters * 4, cudaMemcpyDeviceToHost));
}
void cuda_model_set_adam_state(CudaModel* m, const float* host_m, const float* host_v) {
    cudaCheck(cudaMemcpy(m->adam_mem, host_m, m->num_parameters * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(m->adam_mem + m->num_parameters, host_v, m->num_parameters * 4, cudaMemcpyHostToDevice));
}
// the last forward's logits [B,T,V] as fp32 (before backward, which overwrites them)
void cuda_model_get_logits(CudaModel* m, float* host_logits) {
    if (!m->have_forward) die("cuda: logits are only available between forward and backward");
    download_bf16(host_logits, m->a.logits, (size_t)m->B * m->T * m->cfg.vocab_size);
}
void cuda_model_get_losses(CudaModel* m, float* host_losses) {
    cudaCheck(cudaMemcpy(host_losses, m->a.losses, (size_t)m->B * m->T * 4, cudaMemcpyDeviceToHost));
}
size_t cuda_model_memory_bytes(const CudaModel* m) { return m->num_parameters * 18 + m->acts_bytes; }
void cuda_synchronize() { cudaCheck(cudaDeviceSynchronize()); }

// ----------------------------------------------------------------------------
// batch-1 decoding with a KV cache: one token at a time through the same kernels (N = 1), K and V written
// straight into the cache, attention by decode_attention_kernel.

struct CudaDecode {
    CudaModel* m;
    int Tmax;
    bf16 *kcache, *vcache;              // [L, Tmax, KV, D]
    bf16 *x, *mid, *out, *ln, *q, *atty, *gate, *up, *act, *logits;   // one token's activations
    float* logits32;                    // [V]
    int* token;
    float *rope_cos, *rope_sin;         // [Tmax, D/2]
    std::vector<float> host_logits;
};

CudaDecode* cuda_decode_create(CudaModel* m, int Tmax) {
    const Config& c = m->cfg;
    if (Tmax < 1 || Tmax > c.max_position_embeddings) die("cuda decode: context %d outside [1, %d]", Tmax, c.max_position_embeddings);
    CudaDecode* d = new CudaDecode;
    d->m = m;
    d->Tmax = Tmax;
    size_t L = c.num_hidden_layers, KVD = (size_t)c.num_key_value_heads * c.head_dim, C = c.hidden_size, F = c.intermediate_size;
    size_t QD = (size_t)c.num_attention_heads * c.head_dim, V = c.vocab_size;
    cudaCheck(cudaMalloc(&d->kcache, 2 * L * Tmax * KVD * sizeof(bf16)));
    d->vcache = d->kcache + L * Tmax * KVD;
    size_t n = 4 * C + 2 * QD + 3 * F + V;
    bf16* base;
    cudaCheck(cudaMalloc(&base, (n + 64 * 10) * sizeof(bf16)));   // + room to align each of the 10 slices
    auto take = [&](size_t count) { bf16* r = base; base += (count + 63) / 64 * 64; return r; };
    d->x = take(C); d->mid = take(C); d->out = take(C); d->ln = take(C); d->q = take(QD); d->atty = take(QD);
    d->gate = take(F); d->up = take(F); d->act = take(F); d->logits = take(V);
    cudaCheck(cudaMalloc(&d->logits32, V * 4));
    cudaCheck(cudaMalloc(&d->token, 4));
    std::vector<float> cs((size_t)Tmax * (c.head_dim / 2)), sn(cs.size());
    rope_table(cs.data(), sn.data(), Tmax, c.head_dim, (float)c.rope_theta);
    cudaCheck(cudaMalloc(&d->rope_cos, cs.size() * 8));
    d->rope_sin = d->rope_cos + cs.size();
    cudaCheck(cudaMemcpy(d->rope_cos, cs.data(), cs.size() * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(d->rope_sin, sn.data(), sn.size() * 4, cudaMemcpyHostToDevice));
    d->host_logits.resize(V);
    return d;
}
void cuda_decode_free(CudaDecode* d) {
    if (!d) return;
    cudaFree(d->kcache);
    cudaFree(d->x);
    cudaFree(d->logits32);
    cudaFree(d->token);
    cudaFree(d->rope_cos);
    delete d;
}
// Feeds `token` at position `pos` (positions 0..pos-1 must already be in the cache); returns the next-token
// logits [V] (fp32, host memory owned by the decoder), or null when want_logits is false (prefill).
const float* cuda_decode_step(CudaDecode* d, int token, int pos, bool want_logits) {
    CudaModel* m = d->m;
    const Config& c = m->cfg;
    if (pos < 0 || pos >= d->Tmax) die("cuda decode: position %d outside the cache [0, %d)", pos, d->Tmax);
    if (token < 0 || token >= c.vocab_size) die("cuda decode: token id %d out of range [0, %d)", token, c.vocab_size);
    int C = c.hidden_size, H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim, F = c.intermediate_size;
    int QD = H * D, KVD = KV * D, V = c.vocab_size, L = c.num_hidden_layers;
    float eps = (float)c.rms_norm_eps;
    const CudaParams& p = m->p;
    cudaCheck(cudaMemcpy(d->token, &token, 4, cudaMemcpyHostToDevice));
    embedding_forward_kernel<<<1, 256>>>(d->x, d->token, p.embed_tokens, 1, C);
    for (int l = 0; l < L; l++) {
        const LayerWeights<bf16> w = layer_weights(p, c, l);
        bf16* kc = d->kcache + (size_t)l * d->Tmax * KVD;
        bf16* vc = d->vcache + (size_t)l * d->Tmax * KVD;
        rmsnorm_forward_cuda(d->ln, nullptr, d->x, w.input_layernorm, 1, C, eps);
        matmul_forward_cuda(d->q, d->ln, w.q_proj, 1, C, QD);
        matmul_forward_cuda(kc + (size_t)pos * KVD, d->ln, w.k_proj, 1, C, KVD);
        matmul_forward_cuda(vc + (size_t)pos * KVD, d->ln, w.v_proj, 1, C, KVD);
        rope_apply_cuda(d->q, d->rope_cos, d->rope_sin, 1, H, D, 1, pos, 1.0f);
        rope_apply_cuda(kc + (size_t)pos * KVD, d->rope_cos, d->rope_sin, 1, KV, D, 1, pos, 1.0f);
        decode_attention_cuda(d->atty, d->q, kc, vc, pos, H, KV, D);
        matmul_forward_cuda(d->mid, d->atty, w.o_proj, 1, QD, C, d->x);
        rmsnorm_forward_cuda(d->ln, nullptr, d->mid, w.post_attention_layernorm, 1, C, eps);
        matmul_forward_cuda(d->gate, d->ln, w.gate_proj, 1, C, F);
        matmul_forward_cuda(d->up, d->ln, w.up_proj, 1, C, F);
        swiglu_forward_cuda(d->act, d->gate, d->up, F);
        matmul_forward_cuda(d->x, d->act, w.down_proj, 1, F, C, d->mid);   // x ← mid + mlp
    }
    if (!want_logits) return nullptr;
    rmsnorm_forward_cuda(d->ln, nullptr, d->x, p.norm, 1, C, eps);
    matmul_forward_cuda(d->logits, d->ln, p.lm_head, 1, C, V);
    bf16_to_f32_kernel<<<ceil_div(V, 256), 256>>>(d->logits32, d->logits, V);
    cudaCheck(cudaMemcpy(d->host_logits.data(), d->logits32, (size_t)V * 4, cudaMemcpyDeviceToHost));
    return d->host_logits.data();
}

// ----------------------------------------------------------------------------
// single kernels on host arrays, for tests/test_cuda.cpp: inputs are rounded to bf16 where the kernel reads
// bf16, outputs come back as fp32. Each names its CPU twin.

struct DevBuf {   // a device buffer freed at scope exit
    void* p = nullptr;
    explicit DevBuf(size_t bytes) { cudaCheck(cudaMalloc(&p, bytes ? bytes : 1)); }
    ~DevBuf() { cudaFree(p); }
    DevBuf(const DevBuf&) = delete;
    DevBuf& operator=(const DevBuf&) = delete;
    bf16* b() const { return (bf16*)p; }
    float* f() const { return (float*)p; }
    int* i() const { return (int*)p; }
};
static void up_f32(float* d, const float* h, size_t n) { cudaCheck(cudaMemcpy(d, h, n * 4, cudaMemcpyHostToDevice)); }
static void down_f32(float* h, const float* d, size_t n) { cudaCheck(cudaMemcpy(h, d, n * 4, cudaMemcpyDeviceToHost)); }

void cuda_op_embedding(float* out, float* dwte, const int* tokens, const float* wte, const float* dres, int N, int V, int C) {
    cuda_select_device();
    DevBuf t(N * 4), w((size_t)V * C * 2), o((size_t)N * C * 2), dw((size_t)V * C * 4), dr((size_t)N * C * 4);
    cudaCheck(cudaMemcpy(t.p, tokens, N * 4, cudaMemcpyHostToDevice));
    upload_bf16(w.b(), wte, (size_t)V * C);
    embedding_forward_kernel<<<N, 256>>>(o.b(), t.i(), w.b(), N, C);
    download_bf16(out, o.b(), (size_t)N * C);
    up_f32(dw.f(), dwte, (size_t)V * C);
    up_f32(dr.f(), dres, (size_t)N * C);
    std::vector<int> uniq, starts, order;
    embedding_group(tokens, N, V, &uniq, &starts, &order);
    DevBuf du(uniq.size() * 4), ds(starts.size() * 4), dor(order.size() * 4);
    cudaCheck(cudaMemcpy(du.p, uniq.data(), uniq.size() * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(ds.p, starts.data(), starts.size() * 4, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(dor.p, order.data(), order.size() * 4, cudaMemcpyHostToDevice));
    embedding_backward_kernel<<<(int)uniq.size(), 256>>>(dw.f(), dr.f(), du.i(), ds.i(), dor.i(), C);
    cudaCheck(cudaGetLastError());
    down_f32(dwte, dw.f(), (size_t)V * C);
}
// twin: matmul_forward_ref / matmul_backward_ref. dinp is overwritten (bf16), dweight accumulates (fp32).
void cuda_op_matmul(float* out, float* dinp, float* dweight, const float* inp, const float* weight, const float* dout,
                    int N, int in, int out_dim) {
    cuda_select_device();
    DevBuf x((size_t)N * in * 2), w((size_t)out_dim * in * 2), o((size_t)N * out_dim * 2), go((size_t)N * out_dim * 2),
        dx((size_t)N * in * 2), dw((size_t)out_dim * in * 4);
    upload_bf16(x.b(), inp, (size_t)N * in);
    upload_bf16(w.b(), weight, (size_t)out_dim * in);
    upload_bf16(go.b(), dout, (size_t)N * out_dim);
    up_f32(dw.f(), dweight, (size_t)out_dim * in);
    matmul_forward_cuda(o.b(), x.b(), w.b(), N, in, out_dim);
    matmul_backward_cuda(dx.b(), dw.f(), go.b(), x.b(), w.b(), N, in, out_dim, Accum::Overwrite);
    download_bf16(out, o.b(), (size_t)N * out_dim);
    download_bf16(dinp, dx.b(), (size_t)N * in);
    down_f32(dweight, dw.f(), (size_t)out_dim * in);
}
// twin: rmsnorm_forward_ref / rmsnorm_backward_ref. dinp (fp32) and dweight accumulate.
void cuda_op_rmsnorm(float* out, float* rstd, float* dinp, float* dweight, const float* inp, const float* weight,
                     const float* dout, int N, int C, float eps) {
    cuda_select_device();
    DevBuf x((size_t)N * C * 2), w((size_t)C * 2), o((size_t)N * C * 2), r((size_t)N * 4), go((size_t)N * C * 2),
        dx((size_t)N * C * 4), dw((size_t)C * 4), part((size_t)ceil_div(N, RMS_CHUNK) * C * 4);
    upload_bf16(x.b(), inp, (size_t)N * C);
    upload_bf16(w.b(), weight, C);
    upload_bf16(go.b(), dout, (size_t)N * C);
    up_f32(dx.f(), dinp, (size_t)N * C);
    up_f32(dw.f(), dweight, C);
    rmsnorm_forward_cuda(o.b(), r.f(), x.b(), w.b(), N, C, eps);
    rmsnorm_backward_cuda(dx.f(), nullptr, dw.f(), part.f(), go.b(), x.b(), w.b(), r.f(), N, C);
    download_bf16(out, o.b(), (size_t)N * C);
    down_f32(rstd, r.f(), N);
    down_f32(dinp, dx.f(), (size_t)N * C);
    down_f32(dweight, dw.f(), C);
}
// twin: rope_forward_ref (sign 1) / rope_backward_ref (sign −1); x [N, heads, D] in place, position n % T
void cuda_op_rope(float* x, int N, int T, int heads, int D, float theta, float sign) {
    cuda_select_device();
    std::vector<float> cs((size_t)T * (D / 2)), sn(cs.size());
    rope_table(cs.data(), sn.data(), T, D, theta);
    DevBuf xb((size_t)N * heads * D * 2), c(cs.size() * 4), s(sn.size() * 4);
    upload_bf16(xb.b(), x, (size_t)N * heads * D);
    up_f32(c.f(), cs.data(), cs.size());
    up_f32(s.f(), sn.data(), sn.size());
    rope_apply_cuda(xb.b(), c.f(), s.f(), N, heads, D, T, 0, sign);
    download_bf16(x, xb.b(), (size_t)N * heads * D);
}
// twin: attention_forward_ref / attention_backward_ref (the CPU keeps att [B,H,T,T]; the kernels never form it)
void cuda_op_attention(float* y, float* dq, float* dk, float* dv, const float* q, const float* k, const float* v,
                       const float* dy, int B, int T, int H, int KV, int D) {
    cuda_select_device();
    size_t nq = (size_t)B * T * H * D, nk = (size_t)B * T * KV * D;
    DevBuf qb(nq * 2), kb(nk * 2), vb(nk * 2), yb(nq * 2), lse((size_t)B * H * T * 4), dyb(nq * 2), dqb(nq * 2), dkb(nk * 2),
        dvb(nk * 2), dsum((size_t)B * H * T * 4);
    upload_bf16(qb.b(), q, nq);
    upload_bf16(kb.b(), k, nk);
    upload_bf16(vb.b(), v, nk);
    upload_bf16(dyb.b(), dy, nq);
    attention_forward_cuda(yb.b(), lse.f(), qb.b(), kb.b(), vb.b(), B, T, H, KV, D);
    attention_backward_cuda(dqb.b(), dkb.b(), dvb.b(), dsum.f(), dyb.b(), yb.b(), lse.f(), qb.b(), kb.b(), vb.b(), B, T, H, KV, D);
    download_bf16(y, yb.b(), nq);
    download_bf16(dq, dqb.b(), nq);
    download_bf16(dk, dkb.b(), nk);
    download_bf16(dv, dvb.b(), nk);
}
// twin: attention_forward_ref's row t = pos for one sequence; q [H,D] at position pos, kc/vc [pos+1, KV, D]
void cuda_op_decode_attention(float* y, const float* q, const float* kc, const float* vc, int pos, int H, int KV, int D) {
    cuda_select_device();
    size_t nk = (size_t)(pos + 1) * KV * D;
    DevBuf qb((size_t)H * D * 2), kb(nk * 2), vb(nk * 2), yb((size_t)H * D * 2);
    upload_bf16(qb.b(), q, (size_t)H * D);
    upload_bf16(kb.b(), kc, nk);
    upload_bf16(vb.b(), vc, nk);
    decode_attention_cuda(yb.b(), qb.b(), kb.b(), vb.b(), pos, H, KV, D);
    download_bf16(y, yb.b(), (size_t)H * D);
}
// twin: swiglu_forward_ref / swiglu_backward_ref (dgate, dup overwritten)
void cuda_op_swiglu(float* act, float* dgate, float* dup, const float* gate, const float* up, const float* dact, size_t n) {
    cuda_select_device();
    DevBuf g(n * 2), u(n * 2), a(n * 2), da(n * 2);
    upload_bf16(g.b(), gate, n);
    upload_bf16(u.b(), up, n);
    upload_bf16(da.b(), dact, n);
    swiglu_forward_cuda(a.b(), g.b(), u.b(), n);
    swiglu_backward_cuda(g.b(), u.b(), da.b(), n);
    download_bf16(act, a.b(), n);
    download_bf16(dgate, g.b(), n);
    download_bf16(dup, u.b(), n);
}
// twin: crossentropy_forward_ref / crossentropy_backward_ref; dlogits is the logits buffer after the in-place backward
void cuda_op_crossentropy(float* losses, float* dlogits, const float* logits, const int* targets, const float* dlosses, int N, int V) {
    cuda_select_device();
    DevBuf z((size_t)N * V * 2), t(N * 4), l(N * 4), lse(N * 4), dl(N * 4);
    upload_bf16(z.b(), logits, (size_t)N * V);
    cudaCheck(cudaMemcpy(t.p, targets, N * 4, cudaMemcpyHostToDevice));
    up_f32(dl.f(), dlosses, N);
    crossentropy_forward_kernel<<<N, 512>>>(l.f(), lse.f(), z.b(), t.i(), V);
    crossentropy_backward_inplace_kernel<<<N, 512>>>(z.b(), lse.f(), t.i(), dl.f(), V);
    cudaCheck(cudaGetLastError());
    down_f32(losses, l.f(), N);
    download_bf16(dlogits, z.b(), (size_t)N * V);
}
// AdamW on host arrays (master, m, v updated in place; param = the bf16 parameters as fp32)
void cuda_op_adamw(float* master, float* param, float* m, float* v, const float* grad, size_t n, float lr, float beta1,
                   float beta2, float eps, float weight_decay, float grad_scale, int step) {
    cuda_select_device();
    DevBuf w(n * 4), pb(n * 2), mb(n * 4), vb(n * 4), gb(n * 4);
    up_f32(w.f(), master, n);
    up_f32(mb.f(), m, n);
    up_f32(vb.f(), v, n);
    up_f32(gb.f(), grad, n);
    adamw_cuda(w.f(), pb.b(), mb.f(), vb.f(), gb.f(), n, lr, beta1, beta2, eps, weight_decay, grad_scale, step);
    down_f32(master, w.f(), n);
    download_bf16(param, pb.b(), n);
    down_f32(m, mb.f(), n);
    down_f32(v, vb.f(), n);
}
float cuda_op_grad_norm(const float* g, size_t n) {
    cuda_select_device();
    DevBuf gb(n * 4), part(NORM_BLOCKS * 4);
    up_f32(gb.f(), g, n);
    return grad_norm_cuda(gb.f(), n, part.f());
}
#else  // ---- built without CUDA: the backend API exists and says so

[[noreturn]] static void no_cuda() { die("this binary was built without CUDA (run `make` with nvcc on PATH)"); }
CudaModel* cuda_model_create(const Model&, int, int, bool, bool) { no_cuda(); }
void cuda_model_free(CudaModel*) {}
float cuda_model_forward(CudaModel*, const int*, const int*, int, int) { no_cuda(); }
void cuda_model_backward(CudaModel*, const float*) { no_cuda(); }
void cuda_model_zero_grad(CudaModel*) { no_cuda(); }
float cuda_model_grad_norm(CudaModel*) { no_cuda(); }
void cuda_model_adamw(CudaModel*, float, float, float, float, float, float, int) { no_cuda(); }
void cuda_model_get_params(CudaModel*, Model*) { no_cuda(); }
void cuda_model_set_params(CudaModel*, const Model&) { no_cuda(); }
void cuda_model_get_grads(CudaModel*, float*) { no_cuda(); }
void cuda_model_get_adam_state(CudaModel*, float*, float*) { no_cuda(); }
void cuda_model_set_adam_state(CudaModel*, const float*, const float*) { no_cuda(); }
void cuda_model_get_logits(CudaModel*, float*) { no_cuda(); }
void cuda_model_get_losses(CudaModel*, float*) { no_cuda(); }
size_t cuda_model_memory_bytes(const CudaModel*) { return 0; }
CudaDecode* cuda_decode_create(CudaModel*, int) { no_cuda(); }
void cuda_decode_free(CudaDecode*) {}
const float* cuda_decode_step(CudaDecode*, int, int, bool) { no_cuda(); }
void cuda_synchronize() { no_cuda(); }

#endif  // DEEPSEEK_CUDA

// ============================================================================
// number formats

float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // NaN stays a (quiet) NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
    return (uint16_t)(u >> 16);
}
float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, u;
    if (exp == 0) {
        if (mant == 0) u = sign;
        else {  // subnormal: normalise
            int e = -1;
            do { e++; mant <<= 1; } while (!(mant & 0x400));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) u = sign | 0x7f800000u | (mant << 13);
    else u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// ============================================================================
// safetensors: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, the data

const char* dtype_name(DType t) {
    switch (t) {
        case DType::F32: return "F32";
        case DType::BF16: return "BF16";
        case DType::F16: return "F16";
        case DType::I32: return "I32";
        case DType::I64: return "I64";
        case DType::U8: return "U8";
    }
    return "?";
}
size_t dtype_size(DType t) {
    switch (t) {
        case DType::F32: case DType::I32: return 4;
        case DType::BF16: case DType::F16: return 2;
        case DType::I64: return 8;
        case DType::U8: return 1;
    }
    return 0;
}
static bool dtype_parse(const std::string& s, DType* t) {
    static const std::pair<const char*, DType> names[] = {{"F32", DType::F32}, {"BF16", DType::BF16}, {"F16", DType::F16},
                                                          {"I32", DType::I32}, {"I64", DType::I64},  {"U8", DType::U8}};
    for (auto& n : names)
        if (s == n.first) { *t = n.second; return true; }
    return false;
}
size_t TensorInfo::numel() const {
    size_t n = 1;
    for (int64_t d : shape) n *= (size_t)d;
    return n;
}
static std::string shape_str(const std::vector<int64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
}

SafeTensors::~SafeTensors() {
    for (auto& m : maps) munmap(m.first, m.second);
}

// A whole file read into anonymous memory, 2 MiB-aligned and advised to be backed by transparent huge pages
// (generate/chat --huge-pages). Why: decoding reads every weight once per token, and with the page cache's 4 KiB
// pages the TLB misses and the hardware prefetcher (which stops at page boundaries) cost 5–10% of decode speed on
// this machine (110M-parameter model, mapped vs here: fp32 57 → 61, bf16 97 → 105 tokens/s). Not the default: the
// copy, and the first touch of fresh memory (up to ~1 s for 0.5 GB in this VM), slow the start by more than a short
// generation gains. The mapping is made read-only once filled.
static void* read_into_huge_pages(int fd, size_t size, const std::string& path) {
    const size_t huge = (size_t)2 << 20;
    size_t rounded = (size + huge - 1) / huge * huge;
    char* raw = (char*)mmap(nullptr, rounded + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) die("cannot allocate %zu MiB for %s: %s", size >> 20, path.c_str(), strerror(errno));
    char* p = (char*)(((uintptr_t)raw + huge - 1) & ~(uintptr_t)(huge - 1));
    if (p > raw) munmap(raw, p - raw);                  // trim to the aligned [p, p + rounded)
    if (raw + huge > p) munmap(p + rounded, raw + huge - p);
#ifdef MADV_HUGEPAGE
    madvise(p, rounded, MADV_HUGEPAGE);                 // advice only: without THP it is ordinary memory
#endif
    for (size_t got = 0; got < size;) {
        ssize_t r = pread(fd, p + got, std::min(size - got, (size_t)1 << 30), (off_t)got);
        if (r <= 0) die("cannot read %s: %s", path.c_str(), r == 0 ? "unexpected end of file" : strerror(errno));
        got += (size_t)r;
    }
    mprotect(p, rounded, PROT_READ);
    return p;
}

void SafeTensors::open_file(const std::string& path) {
    int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) die("cannot open %s: %s", path.c_str(), strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) { close(fd); die("cannot stat %s", path.c_str()); }
    size_t size = (size_t)st.st_size;
    if (size < 8) { close(fd); die("%s: truncated safetensors file (%zu bytes)", path.c_str(), size); }
    void* map = in_ram ? read_into_huge_pages(fd, size, path) : mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) die("cannot map %s: %s", path.c_str(), strerror(errno));
    maps.push_back({map, size});
    const uint8_t* base = (const uint8_t*)map;
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)base[i] << (8 * i);
    if (hlen > size - 8) die("%s: truncated safetensors file (header says %llu bytes, file has %zu)", path.c_str(), (unsigned long long)hlen, size);
    json h;
    try { h = json::parse(base + 8, base + 8 + hlen); } catch (const std::exception& e) {
        die("%s: malformed safetensors header (%s)", path.c_str(), e.what());
    }
    if (!h.is_object()) die("%s: safetensors header is not a JSON object", path.c_str());
    const uint8_t* data = base + 8 + hlen;
    size_t data_size = size - 8 - hlen;
    for (auto it = h.begin(); it != h.end(); ++it) {
        const std::string& name = it.key();
        const json& t = it.value();
        if (name == "__metadata__") {
            if (t.is_object())
                for (auto m = t.begin(); m != t.end(); ++m)
                    if (m.value().is_string()) metadata[m.key()] = m.value();
            continue;
        }
        TensorInfo ti;
        ti.name = name;
        if (!t.is_object() || !t.contains("dtype") || !t["dtype"].is_string() || !t.contains("shape") || !t["shape"].is_array() ||
            !t.contains("data_offsets") || !t["data_offsets"].is_array() || t["data_offsets"].size() != 2)
            die("%s: tensor '%s' has a malformed header entry", path.c_str(), name.c_str());
        if (!dtype_parse(t["dtype"], &ti.dtype))
            die("%s: tensor '%s' has unsupported dtype %s", path.c_str(), name.c_str(), t["dtype"].dump().c_str());
        size_t numel = 1;
        for (auto& d : t["shape"]) {
            if (!d.is_number_unsigned() || d.get<uint64_t>() > (1ull << 40))
                die("%s: tensor '%s' has an invalid shape %s", path.c_str(), name.c_str(), t["shape"].dump().c_str());
            ti.shape.push_back(d.get<int64_t>());
            numel *= d.get<size_t>();
            if (numel > (1ull << 40)) die("%s: tensor '%s' is absurdly large", path.c_str(), name.c_str());
        }
        const json& off = t["data_offsets"];
        if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
            die("%s: tensor '%s' has invalid data_offsets", path.c_str(), name.c_str());
        uint64_t b = off[0], e = off[1];
        if (b > e || e > data_size)
            die("%s: tensor '%s' data_offsets [%llu, %llu] lie outside the %zu data bytes (truncated or corrupt file)",
                path.c_str(), name.c_str(), (unsigned long long)b, (unsigned long long)e, data_size);
        if (e - b != numel * dtype_size(ti.dtype))
            die("%s: tensor '%s' has %llu bytes but shape %s of %s needs %zu", path.c_str(), name.c_str(),
                (unsigned long long)(e - b), shape_str(ti.shape).c_str(), dtype_name(ti.dtype), numel * dtype_size(ti.dtype));
        ti.data = data + b;
        ti.nbytes = e - b;
        if (tensors.count(name)) die("%s: tensor '%s' appears twice", path.c_str(), name.c_str());
        tensors[name] = ti;
    }
}

// MemAvailable from /proc/meminfo, in bytes (0 when unknown)
static size_t memory_available() {
    FILE* f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    fclose(f);
    return (size_t)kb << 10;
}

void SafeTensors::open_dir(const std::string& dir, bool ram_if_fits) {
    std::string single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
    std::vector<std::string> files;
    json j;
    if (file_exists(index)) {
        try { j = json::parse(read_file(index)); } catch (const std::exception& e) { die("%s: malformed JSON (%s)", index.c_str(), e.what()); }
        if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
            die("%s: missing weight_map", index.c_str());
        for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
            if (!it.value().is_string()) die("%s: weight_map entries must be file names", index.c_str());
            std::string f = it.value();
            if (f.find('/') != std::string::npos) die("%s: shard name '%s' must be a plain file name", index.c_str(), f.c_str());
            if (std::find(files.begin(), files.end(), dir + "/" + f) == files.end()) files.push_back(dir + "/" + f);
        }
    } else if (file_exists(single)) {
        files.push_back(single);
    } else {
        die("%s: no model.safetensors or model.safetensors.index.json", dir.c_str());
    }
    if (ram_if_fits) {  // in RAM when the files take under half of the available memory; memory-mapped otherwise
        size_t total = 0;
        struct stat st;
        for (const std::string& f : files)
            if (stat(f.c_str(), &st) == 0) total += (size_t)st.st_size;
        in_ram = total < memory_available() / 2;
    }
    for (const std::string& f : files) open_file(f);
    if (!j.is_null())
        for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it)
            if (!tensors.count(it.key())) die("%s: tensor '%s' is listed but missing from its shard", index.c_str(), it.key().c_str());
}

const TensorInfo& SafeTensors::get(const std::string& name) const {
    auto it = tensors.find(name);
    if (it == tensors.end()) die("missing tensor '%s' in safetensors", name.c_str());
    return it->second;
}

void SafeTensors::read_f32(const std::string& name, const std::vector<int64_t>& shape, float* out) const {
    const TensorInfo& t = get(name);
    if (t.shape != shape)
        die("tensor '%s' has shape %s, expected %s", name.c_str(), shape_str(t.shape).c_str(), shape_str(shape).c_str());
    size_t n = t.numel();
    switch (t.dtype) {
        case DType::F32: memcpy(out, t.data, n * 4); break;
        case DType::BF16:
            #pragma omp parallel for schedule(static)
            for (size_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, t.data + 2 * i, 2); out[i] = bf16_to_f32(h); }
            break;
        case DType::F16:
            #pragma omp parallel for schedule(static)
            for (size_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, t.data + 2 * i, 2); out[i] = f16_to_f32(h); }
            break;
        default: die("tensor '%s' has dtype %s; expected F32, BF16 or F16", name.c_str(), dtype_name(t.dtype));
    }
}

void safetensors_write(const std::string& path, const std::vector<TensorOut>& tensors, bool store_bf16,
                       const std::map<std::string, std::string>& metadata) {
    json h = json::object();
    if (!metadata.empty()) h["__metadata__"] = metadata;
    size_t off = 0;
    std::vector<DType> stored;
    for (auto& t : tensors) {
        DType d = (store_bf16 && t.dtype == DType::F32) ? DType::BF16 : t.dtype;
        size_t n = 1;
        for (int64_t x : t.shape) n *= (size_t)x;
        h[t.name] = {{"dtype", dtype_name(d)}, {"shape", t.shape}, {"data_offsets", {off, off + n * dtype_size(d)}}};
        off += n * dtype_size(d);
        stored.push_back(d);
    }
    std::string hs = h.dump();
    while ((hs.size() + 8) % 8) hs += ' ';  // align the data to 8 bytes, as the reference writer does
    std::string tmp = path + ".tmp";
    FILE* f = fopen(tmp.c_str(), "wb");
    if (!f) die("cannot write %s: %s", tmp.c_str(), strerror(errno));
    uint64_t hl = hs.size();
    uint8_t le[8];
    for (int i = 0; i < 8; i++) le[i] = (uint8_t)(hl >> (8 * i));
    bool ok = fwrite(le, 1, 8, f) == 8 && fwrite(hs.data(), 1, hs.size(), f) == hs.size();
    std::vector<uint16_t> buf;
    for (size_t i = 0; i < tensors.size() && ok; i++) {
        const TensorOut& t = tensors[i];
        size_t n = 1;
        for (int64_t x : t.shape) n *= (size_t)x;
        if (stored[i] == t.dtype) {
            ok = fwrite(t.data, dtype_size(t.dtype), n, f) == n;
        } else {
            buf.resize(n);
            const float* src = (const float*)t.data;
            for (size_t j = 0; j < n; j++) buf[j] = f32_to_bf16(src[j]);
            ok = fwrite(buf.data(), 2, n, f) == n;
        }
    }
    ok = (fflush(f) == 0) && ok;
    ok = (fsync(fileno(f)) == 0) && ok;
    ok = (fclose(f) == 0) && ok;
    if (!ok) die("error writing %s (disk full?)", tmp.c_str());
    if (rename(tmp.c_str(), path.c_str()) != 0) die("cannot rename %s: %s", tmp.c_str(), strerror(errno));
}

// ============================================================================
// model directories (Hugging Face layout)

void model_load_dir(Model* m, const std::string& dir) {
    require_dir(dir, "model directory");
    Config cfg = config_read_json(dir + "/config.json");
    SafeTensors st;
    st.open_dir(dir);
    model_build(m, cfg);
    for (const ParamView& pv : param_views(cfg)) st.read_f32(pv.name, pv.shape, m->params_memory.data() + pv.offset);
}

void model_save_dir(const Model& m, const std::string& dir, bool bf16) {
    make_dirs(dir);
    Config cfg = m.cfg;
    cfg.torch_dtype = bf16 ? "bfloat16" : "float32";
    std::vector<TensorOut> ts;
    for (const ParamView& pv : param_views(cfg)) ts.push_back({pv.name, DType::F32, pv.shape, m.params_memory.data() + pv.offset});
    safetensors_write(dir + "/model.safetensors", ts, bf16, {{"format", "pt"}});
    config_write_json(cfg, dir + "/config.json");
    json gen = {{"bos_token_id", cfg.bos_token_id}, {"eos_token_id", cfg.eos_token_id}, {"_from_model_config", false}};
    write_file_atomic(dir + "/generation_config.json", gen.dump(2) + "\n");
}

void model_from_args(Model* m, const Args& a, uint64_t seed) {
    if (a.has("preset") == a.has("model")) die("%s: give exactly one of --preset NAME or --model DIR", a.cmd.c_str());
    if (a.has("model")) { model_load_dir(m, a.str("model")); return; }
    Config cfg;
    if (!config_preset(a.str("preset"), &cfg)) {
        std::string names;
        for (auto& n : config_preset_names()) names += (names.empty() ? "" : ", ") + n;
        die("%s: unknown preset '%s' (known: %s)", a.cmd.c_str(), a.str("preset").c_str(), names.c_str());
    }
    model_build(m, cfg);
    model_init_random(m, seed, 0.006f);
}

// ============================================================================
// backends

int cuda_device_count() {
#ifdef DEEPSEEK_CUDA
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) { cudaGetLastError(); return 0; }
    return n;
#else
    return 0;
#endif
}
std::string cuda_device_name(int i) {
#ifdef DEEPSEEK_CUDA
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, i) == cudaSuccess) return p.name;
#endif
    return "";
}
Device device_select(const std::string& flag) {
    if (flag == "cpu") return Device::CPU;
    if (flag == "auto") return cuda_device_count() > 0 ? Device::CUDA : Device::CPU;
    if (flag == "cuda") {
#ifndef DEEPSEEK_CUDA
        die("--device cuda: this binary was built without CUDA (run `make` with nvcc on PATH)");
#else
        if (cuda_device_count() == 0) die("--device cuda: no CUDA device is available");
        return Device::CUDA;
#endif
    }
    die("--device must be auto, cpu or cuda, got '%s'", flag.c_str());
}
void set_threads(const Args& a) {
#ifdef _OPENMP
    if (a.has("threads")) omp_set_num_threads((int)a.integer("threads", 1, 1, 1024));
#endif
}
int num_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// ============================================================================
// subcommands: info, convert

static void print_config(const Config& c) {
    printf("vocab_size: %d\nhidden_size: %d\nnum_hidden_layers: %d\nnum_attention_heads: %d\nnum_key_value_heads: %d\n"
           "head_dim: %d\nintermediate_size: %d\nmax_position_embeddings: %d\nrms_norm_eps: %g\nrope_theta: %g\n",
           c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
           c.intermediate_size, c.max_position_embeddings, c.rms_norm_eps, c.rope_theta);
}

int cmd_info(int argc, char** argv) {
    if (is_help(argc, argv, 2)) {
        printf("usage: deepseek info (--preset NAME | --model DIR) [--seq-len T] [--device auto|cpu|cuda]\n"
               "  prints the shapes, the exact parameter count, the paper's non-embedding FLOPs per token M\n"
               "  (72·L·C² + 12·L·C·l_seq) and the memory for weights, gradients and AdamW state.\n"
               "  presets: tiny, small, deepseek-llm-7b, deepseek-llm-67b\n");
        return 0;
    }
    Args a(argc, argv, 2, "info", {"preset", "model", "seq-len", "device", "threads"}, {});
    if (!a.positional.empty()) die("info: unexpected argument '%s'", a.positional[0].c_str());
    set_threads(a);
    Device dev = device_select(a.str("device", "auto"));
    Config cfg;
    if (a.has("preset") == a.has("model")) die("info: give exactly one of --preset NAME or --model DIR");
    if (a.has("model")) cfg = config_read_json(a.str("model") + "/config.json");
    else if (!config_preset(a.str("preset"), &cfg)) {
        Model dummy;
        model_from_args(&dummy, a, 0);  // dies with the list of presets
    }
    int seq = (int)a.integer("seq-len", cfg.max_position_embeddings, 1, 10000000);
    size_t n = config_num_parameters(cfg);
    size_t emb = 2 * (size_t)cfg.vocab_size * cfg.hidden_size;
    printf("model: %s\n", a.has("model") ? a.str("model").c_str() : a.str("preset").c_str());
    print_config(cfg);
    printf("parameters: %zu\n", n);
    printf("non_embedding_parameters: %zu\n", n - emb);
    printf("flops_per_token: %.4g (non-embedding, context %d; 6N = %.4g)\n", config_flops_per_token(cfg, seq), seq, 6.0 * n);
    double GiB = 1024.0 * 1024.0 * 1024.0;
    printf("memory_weights: fp32 %.2f GiB, bf16 %.2f GiB\n", n * 4 / GiB, n * 2 / GiB);
    printf("memory_gradients: fp32 %.2f GiB, bf16 %.2f GiB\n", n * 4 / GiB, n * 2 / GiB);
    printf("memory_adamw_state: fp32 m+v %.2f GiB (+ fp32 master weights %.2f GiB when training in bf16)\n", n * 8 / GiB, n * 4 / GiB);
    printf("memory_training: fp32 %.2f GiB (weights+grads+m+v), bf16 mixed precision %.2f GiB (bf16 weights, fp32 master+grads+m+v)\n",
           n * 16 / GiB, n * 18 / GiB);
    printf("device: %s", dev == Device::CUDA ? "cuda" : "cpu");
    if (dev == Device::CUDA) printf(" (%s)", cuda_device_name(0).c_str());
    else printf(" (%d threads)", num_threads());
    printf("\n");
    return 0;
}

// convert: a model directory from a preset, a config.json (random init) or another model directory (re-save)
static int cmd_convert(int argc, char** argv) {
    if (is_help(argc, argv, 2)) {
        printf("usage: deepseek convert (--preset NAME | --config config.json | --model DIR) --out DIR\n"
               "                        [--dtype f32|bf16] [--seed S] [--init-std X]\n"
               "  writes a Hugging Face model directory (config.json, model.safetensors, generation_config.json);\n"
               "  --preset/--config initialise randomly (normal(0, init-std), the paper's 0.006 by default).\n");
        return 0;
    }
    Args a(argc, argv, 2, "convert", {"preset", "config", "model", "out", "dtype", "seed", "init-std", "threads"}, {});
    set_threads(a);
    if (!a.has("out")) die("convert: --out DIR is required");
    std::string dt = a.str("dtype", "f32");
    if (dt != "f32" && dt != "bf16") die("convert: --dtype must be f32 or bf16, got '%s'", dt.c_str());
    int sources = a.has("preset") + a.has("config") + a.has("model");
    if (sources != 1) die("convert: give exactly one of --preset, --config or --model");
    uint64_t seed = (uint64_t)a.integer("seed", 1337, 0, (1ll << 62));
    float std = (float)a.real("init-std", 0.006, 0.0, 10.0);
    Model m;
    if (a.has("model")) model_load_dir(&m, a.str("model"));
    else {
        Config cfg;
        if (a.has("config")) cfg = config_read_json(a.str("config"));
        else if (!config_preset(a.str("preset"), &cfg)) die("convert: unknown preset '%s'", a.str("preset").c_str());
        model_build(&m, cfg);
        model_init_random(&m, seed, std);
    }
    model_save_dir(m, a.str("out"), dt == "bf16");
    printf("wrote %s (%zu parameters, %s)\n", a.str("out").c_str(), m.num_parameters, dt.c_str());
    return 0;
}

// ============================================================================
// main

#ifndef DEEPSEEK_TEST  // (the test binary instead weakens this main() with objcopy; see the Makefile)
static void usage() {
    printf("deepseek — the DeepSeek LLM recipe (tokenizer, model, pre-training, SFT, DPO, generation) in one binary\n\n"
           "usage: deepseek COMMAND [flags]   (deepseek COMMAND --help for each)\n\n"
           "  info       shapes, parameter count, FLOPs per token, memory      (--preset NAME | --model DIR)\n"
           "  convert    write a model directory (random init or re-save)\n"
           "  plan       the paper's scaling laws for a compute budget         (--compute C)\n"
           "  tokenizer  train | encode | decode | import-gguf | info\n"
           "  data       prepare: text → token shards\n"
           "  train      pre-training       sft   supervised fine-tuning      dpo   preference optimisation\n"
           "  eval       loss, bits per byte, exact-match accuracy, repetition ratio\n"
           "  generate   complete a prompt   chat  talk with a chat model\n\n"
           "common flags: --device auto|cpu|cuda, --threads N, --seed S\n");
}

static int run_command(int argc, char** argv);
// No exception escapes main: every input is validated where it is read, and anything that still throws (a
// library's exception on input nobody foresaw) ends as one error line, not an abort.
int main(int argc, char** argv) {
    try {
        return run_command(argc, argv);
    } catch (const DeepseekError& e) {
        die("%s", e.msg.c_str());
    } catch (const std::bad_alloc&) {
        die("out of memory");
    } catch (const std::exception& e) {
        die("unexpected error: %s", e.what());
    }
}
static int run_command(int argc, char** argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage();
        return argc < 2 ? 1 : 0;
    }
    std::string cmd = argv[1];
    if (cmd == "--version") { printf("deepseek 0.1 (%s)\n", cuda_device_count() >= 0 ?
#ifdef DEEPSEEK_CUDA
        "cuda+cpu"
#else
        "cpu"
#endif
        : ""); return 0; }
    if (cmd == "info") return cmd_info(argc, argv);
    if (cmd == "convert") return cmd_convert(argc, argv);
    if (cmd == "plan") return cmd_plan(argc, argv);
    if (cmd == "tokenizer") return cmd_tokenizer(argc, argv);
    if (cmd == "data") return cmd_data(argc, argv);
    if (cmd == "train") return cmd_train(argc, argv);
    if (cmd == "sft") return cmd_sft(argc, argv);
    if (cmd == "dpo") return cmd_dpo(argc, argv);
    if (cmd == "eval") return cmd_eval(argc, argv);
    if (cmd == "generate") return cmd_generate(argc, argv);
    if (cmd == "chat") return cmd_chat(argc, argv);
    die("unknown command '%s' (see deepseek --help)", cmd.c_str());
}
#endif
