// deepseek.cu — the DeepSeek LLM model, read top to bottom as the paper draws it: configuration and presets, the
// flat parameter layout, every layer's forward and backward in plain fp32 (the reference: the oracle that the fast
// CPU path and the CUDA kernels are tested against), the model built from them (allocation, init, the reference
// forward and backward, the dispatch between the tiers), Hugging Face weights I/O (safetensors, config.json, model
// directories), the backends, the info and convert subcommands, and main().
//
// What the model is: a LLaMA-style decoder as DeepSeek LLM uses it — RMSNorm, rotary position embeddings in the
// Hugging Face rotate-half layout, causal grouped-query attention, SwiGLU MLP, untied lm_head, no biases. The
// reference layers here are plain, exact and meant to be read: OpenMP over independent rows and nothing cleverer.
// The speed is in kernels/, #included here and compiled as part of this file (as llm.c's train_gpt2.cu includes
// llmc/*.cuh): cpu_*.h, the fast CPU path the model runs by default, and cuda_*.cuh, the CUDA backend. util.h,
// included the same way, holds the helpers no subcommand is about (errors, file reads, JSON fields, flags).
//
// deepseek.h's header has the naming rule of the three tiers (X_ref here, X_cpu, X_cuda) and what each tier's
// backward functions do with their gradients (the _ref ones accumulate, +=; callers zero them first).
// Shapes: B batch, T time, C d_model, H heads, KV key/value heads, D head_dim, F intermediate, V vocab, L layers.
#include "deepseek.h"
#include <algorithm>     // std::max, std::min
#include <cerrno>        // errno
#include <cmath>         // expf, sqrtf, logf, cos, sin, pow
#include <cstdio>        // printf, fprintf, FILE
#include <cstdlib>       // exit, malloc
#include <cstring>       // memcpy, memset, strcmp, strerror
#include <csignal>       // sigaction: SIGBUS from a mapped file truncated in use
#include <cstdint>       // int32_t, uintptr_t
#include <memory>        // std::unique_ptr (the tokenizer in model_export_gguf)
#include <set>           // std::set (safetensors names)
#include <fcntl.h>       // open
#include <sys/mman.h>    // mmap, munmap
#include <sys/stat.h>    // stat, mkdir
#include <unistd.h>      // close, read
#include <nlohmann/json.hpp>  // nlohmann::json: config.json and safetensors headers
#ifdef _OPENMP
#include <omp.h>         // omp_get_max_threads (device_describe)
#endif
#ifdef DEEPSEEK_CUDA
#include <cuda_runtime.h>  // cudaGetDeviceCount, cudaGetDeviceProperties (the backends); kernels/cuda_*.cuh include the rest
#endif

using json = nlohmann::json;

#include "util.h"   // die, file checks and bounded reads, typed JSON reads, atomic writes, Args, threads, the clock

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

// config.json, every field read typed (a wrong type, a value out of range or an unsupported feature is one line
// naming the file and the field). Ranges are config_validate's, so the message gives them.
Config config_read_json(const std::string& path) {
    json j = json_parse_file(path);
    if (!j.is_object()) die("%s: expected a JSON object", path.c_str());
    std::string mt = json_str(j, "model_type", path, "llama");
    if (mt != "llama") die("%s: unsupported model_type '%s' (only llama / LlamaForCausalLM)", path.c_str(), mt.c_str());
    if (const json* arch = json_field(j, "architectures", path, false)) {
        if (!arch->is_array()) die("%s: field 'architectures' must be a list of strings, got %s", path.c_str(), json_short(*arch).c_str());
        for (const json& a : *arch) {
            if (!a.is_string()) die("%s: field 'architectures' must be a list of strings, got an element %s", path.c_str(), json_short(a).c_str());
            if (a.get<std::string>() != "LlamaForCausalLM")
                die("%s: unsupported architecture %s (only LlamaForCausalLM)", path.c_str(), a.dump().c_str());
        }
    }
    const char* w = path.c_str();
    auto get_int = [&](const char* key, bool required, long long dflt, long long lo, long long hi) -> int {
        return (int)json_int(j, key, w, dflt, lo, hi, required);
    };
    Config c;
    c.vocab_size = get_int("vocab_size", true, 0, 1, 4000000);
    c.hidden_size = get_int("hidden_size", true, 0, 1, 65536);
    c.num_hidden_layers = get_int("num_hidden_layers", true, 0, 1, 1024);
    c.num_attention_heads = get_int("num_attention_heads", true, 0, 1, 4096);
    c.num_key_value_heads = get_int("num_key_value_heads", false, c.num_attention_heads, 1, c.num_attention_heads);
    c.intermediate_size = get_int("intermediate_size", true, 0, 1, 1048576);
    c.max_position_embeddings = get_int("max_position_embeddings", false, 2048, 1, 10000000);
    bool has_head_dim = json_field(j, "head_dim", w, false) != nullptr;
    c.head_dim = get_int("head_dim", false, c.hidden_size / c.num_attention_heads, 2, 1024);
    c.rms_norm_eps = json_num(j, "rms_norm_eps", w, 1e-6, 0, 1);
    c.rope_theta = json_num(j, "rope_theta", w, 10000.0, 1, 1e30);
    // transformers ≥ 5 writes rope_parameters {rope_theta, rope_type}; older files write rope_theta (+ rope_scaling)
    if (const json* rp = json_field(j, "rope_parameters", w, false)) {
        if (!rp->is_object()) die("%s: field 'rope_parameters' must be an object, got %s", w, json_short(*rp).c_str());
        std::string rw = path + ": rope_parameters";
        c.rope_theta = json_num(*rp, "rope_theta", rw, c.rope_theta, 1, 1e30);
        std::string rt = json_str(*rp, "rope_type", rw, "default");
        if (rt != "default") die("%s: unsupported rope_type '%s' (only default RoPE)", w, rt.c_str());
    }
    // rope_scaling: null, or a no-op {"rope_type" (or the older "type"): "default"}; any real scaling is refused
    if (const json* rs = json_field(j, "rope_scaling", w, false)) {
        if (!rs->is_object()) die("%s: field 'rope_scaling' must be an object or null, got %s", w, json_short(*rs).c_str());
        std::string sw = path + ": rope_scaling";
        std::string rt = json_str(*rs, "rope_type", sw, json_str(*rs, "type", sw, ""));
        if (rt != "default") die("%s: rope_scaling %s is not supported (only default RoPE)", w, json_short(*rs).c_str());
    }
    if (json_bool(j, "tie_word_embeddings", w, false))
        die("%s: tie_word_embeddings=true is not supported (DeepSeek LLM unties lm_head)", w);
    if (json_bool(j, "attention_bias", w, false) || json_bool(j, "mlp_bias", w, false))
        die("%s: attention/MLP biases are not supported", w);
    std::string act = json_str(j, "hidden_act", w, "silu");
    if (act != "silu") die("%s: unsupported hidden_act '%s' (only silu)", w, act.c_str());
    // BOS/EOS ids must name rows of the embedding. Absent (or null, as transformers allows), the DeepSeek default
    // is kept when the vocabulary holds it, else there is none (-1).
    // An EOS list (transformers allows one): the first is the model's (generation_config.json lists them all).
    std::vector<int> bos = json_token_ids(j, "bos_token_id", path, c.vocab_size, false);
    std::vector<int> eos = json_token_ids(j, "eos_token_id", path, c.vocab_size, true);
    c.bos_token_id = !bos.empty() ? bos[0] : c.bos_token_id < c.vocab_size ? c.bos_token_id : -1;
    c.eos_token_id = !eos.empty() ? eos[0] : c.eos_token_id < c.vocab_size ? c.eos_token_id : -1;
    c.torch_dtype = json_str(j, "torch_dtype", w, c.torch_dtype);
    c.torch_dtype = json_str(j, "dtype", w, c.torch_dtype);
    if (const json* q = json_field(j, "quantization_config", w, false)) {
        if (!q->is_object()) die("%s: field 'quantization_config' must be an object, got %s", w, json_short(*q).c_str());
        std::string qw = path + ": quantization_config";
        c.quantization = json_str(*q, "quant_method", qw, "");
        if (c.quantization != "q8_0")
            die("%s: quantization_config %s is not supported (only q8_0, as convert --dtype q8_0 writes)", w, json_short(*q).c_str());
        if (json_int(*q, "group_size", qw, Q8_BLOCK, 1, 1 << 20) != Q8_BLOCK)
            die("%s: q8_0 group_size must be %d", w, Q8_BLOCK);
    }
    if (c.hidden_size != c.num_attention_heads * c.head_dim && !has_head_dim)
        die("%s: hidden_size %d is not divisible by num_attention_heads %d", w, c.hidden_size, c.num_attention_heads);
    config_validate(c, path);
    return c;
}

// a BOS/EOS id as written: null for none (-1) or for an id outside the vocabulary (a Config's DeepSeek default
// 100000 on a smaller model), which config_read_json would refuse
static json config_token_json(const Config& c, int id) { return id >= 0 && id < c.vocab_size ? json(id) : json(nullptr); }
void config_write_json(const Config& c, const std::string& path) {
    json j;
    j["architectures"] = {"LlamaForCausalLM"};
    j["model_type"] = "llama";
    j["attention_bias"] = false;
    j["attention_dropout"] = 0.0;
    j["bos_token_id"] = config_token_json(c, c.bos_token_id);
    j["eos_token_id"] = config_token_json(c, c.eos_token_id);
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
    // (transformers refuses an unknown quant_method by name: better than loading int8 weights as if they were floats)
    if (!c.quantization.empty()) j["quantization_config"] = {{"quant_method", c.quantization}, {"group_size", Q8_BLOCK}};
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
// the model

bool g_cpu_reference = false;   // the tier model_forward/model_backward run: the _ref layers, or the _cpu ones

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

// ----------------------------------------------------------------------------
// the fast CPU tier (kernels/cpu_*.h, compiled as part of this file): the _ref layers' contracts computed faster —
// blocked, vectorised, fused — and tested against them in tests/test_fastpath.cpp. Plain C++ with OpenMP;
// intrinsics, chosen at build time by -march, in the GEMM microkernel, the attention block products and a few
// reductions. Determinism: every output element is computed by one thread, summing in an order that depends only
// on the shapes — never on the thread count or the OpenMP schedule. Results are bit-identical for any --threads.
#include "kernels/cpu_gemm.h"       // gemm_cpu, matmul_forward_cpu, matmul_backward_cpu
#include "kernels/cpu_layers.h"     // RMSNorm (+ the fused residual add), the RoPE table, SwiGLU, cross-entropy
#include "kernels/cpu_attention.h"  // blockwise causal GQA attention with an online softmax
#include "kernels/cpu_model.h"      // model_forward_cpu, model_backward_cpu

// ----------------------------------------------------------------------------
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
// number formats

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
// fp32 → fp16, round to nearest even (as the F16C instruction vcvtps2ph): overflow gives ±Inf, tiny values round
// into fp16's subnormals (steps of 2^-24) or to ±0, NaN stays a quiet NaN.
uint16_t f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00 | (uint16_t)((a >> 13) & 0x3ff);   // NaN (quiet)
    if (a >= 0x477ff000u) return sign | 0x7c00;   // ≥ 65520 (half-way past 65504, the largest fp16) → Inf
    if (a >= 0x38800000u) {   // normal in fp16 (≥ 2^-14): rebias the exponent, round the 13 dropped bits
        uint32_t r = a - ((127u - 15u) << 23);
        r += 0xfffu + ((r >> 13) & 1u);
        return sign | (uint16_t)(r >> 13);
    }
    if (a < 0x33000000u) return sign;   // < 2^-25 (half the smallest subnormal, and ties go to even 0) → ±0
    // subnormal: the significand with its implicit bit, shifted to units of 2^-24, rounded to nearest even
    uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u, shift = 126 - e;   // 14..24 for e in 102..112
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return sign | (uint16_t)q;
}

// q8_0: blocks of 32 weights, each stored as 32 int8 and one fp16 scale d, as GGUF's Q8_0. The rule is the one
// llama.cpp's reference quantiser uses, so a GGUF written from these blocks is what llama.cpp itself would make:
//   d = max|x| / 127,  q_i = round(x_i / d) (half away from zero, through 1/d in fp32),  stored d = fp16(d)
// A weight comes back as q_i · fp16(d): within d/2 (plus fp16's rounding of d) of the original.
// Generation quantises every activation vector this way (once per linear input and token), so the block is done
// in AVX2 registers where the CPU has them: the same operations, the same results (the maximum does not depend on
// its order; round half away from zero is trunc(v) + 1·sign(v) when |v − trunc(v)| ≥ 0.5, v − trunc(v) exact).
// libm's roundf, called per element, made this ~4 µs per 768 values: as long as a 768×768 q8_0 product per thread.
void q8_0_quantize(const float* x, size_t n, int8_t* q, uint16_t* d) {
    for (size_t b = 0; b < n / Q8_BLOCK; b++) {
        const float* xb = x + b * Q8_BLOCK;
        int8_t* qb = q + b * Q8_BLOCK;
#if defined(__AVX2__)
        const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        __m256 v[4], m = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(xb + 8 * k);
            m = _mm256_max_ps(m, _mm256_and_ps(v[k], abs_mask));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        float s = amax / 127.0f, inv = s != 0.0f ? 1.0f / s : 0.0f;
        d[b] = f32_to_f16(s);
        const __m256 vinv = _mm256_set1_ps(inv), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
        const __m256 sign_mask = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
        __m256i r[4];
        for (int k = 0; k < 4; k++) {
            __m256 y = _mm256_mul_ps(v[k], vinv);
            __m256 t = _mm256_round_ps(y, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            __m256 up = _mm256_and_ps(_mm256_cmp_ps(_mm256_and_ps(_mm256_sub_ps(y, t), abs_mask), half, _CMP_GE_OQ), one);
            r[k] = _mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_or_ps(up, _mm256_and_ps(y, sign_mask))));
        }
        // int32 → int16 → int8 (|values| ≤ 127: no saturation); the packs interleave 128-bit lanes, the permute
        // puts the 32 bytes back in order
        __m256i w = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
        w = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i*)qb, w);
#else
        float amax = 0.0f;
        for (int i = 0; i < Q8_BLOCK; i++) amax = std::max(amax, fabsf(xb[i]));
        float s = amax / 127.0f, inv = s != 0.0f ? 1.0f / s : 0.0f;
        d[b] = f32_to_f16(s);
        for (int i = 0; i < Q8_BLOCK; i++) qb[i] = (int8_t)roundf(xb[i] * inv);
#endif
    }
}
// (prefill widens q8_0 weights with it as the GEMM packs them: F16C for the scale where the CPU has it)
void q8_0_dequantize(const int8_t* q, const uint16_t* d, size_t n, float* out) {
    for (size_t b = 0; b < n / Q8_BLOCK; b++) {
#if defined(__F16C__) && defined(__AVX2__)
        float s = _cvtsh_ss(d[b]);
#else
        float s = f16_to_f32(d[b]);
#endif
        const int8_t* qb = q + b * Q8_BLOCK;
        float* ob = out + b * Q8_BLOCK;
        #pragma omp simd
        for (int i = 0; i < Q8_BLOCK; i++) ob[i] = (float)qb[i] * s;
    }
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
        case DType::I8: return "I8";
    }
    return "?";
}
size_t dtype_size(DType t) {
    switch (t) {
        case DType::F32: case DType::I32: return 4;
        case DType::BF16: case DType::F16: return 2;
        case DType::I64: return 8;
        case DType::U8: case DType::I8: return 1;
    }
    return 0;
}
static bool dtype_parse(const std::string& s, DType* t) {
    static const std::pair<const char*, DType> names[] = {{"F32", DType::F32}, {"BF16", DType::BF16}, {"F16", DType::F16},
                                                          {"I32", DType::I32}, {"I64", DType::I64},  {"U8", DType::U8},
                                                          {"I8", DType::I8}};
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

// safetensors' own rules (the Rust reference's validate()): a header of at most 100 MB; each tensor an object
// {dtype, shape, data_offsets}, the shape non-negative integers whose product × the dtype's size fits 64 bits and
// equals end − begin; sorted by begin, the tensors' byte ranges follow each other from 0 with no gap or overlap
// and end exactly at the end of the file. Every size is checked 64-bit arithmetic: a hostile header cannot wrap.
static const uint64_t SAFETENSORS_HEADER_MAX = 100000000;
static bool mul_u64(uint64_t a, uint64_t b, uint64_t* r) {   // *r = a·b; false if it does not fit in 64 bits
    if (b != 0 && a > UINT64_MAX / b) return false;
    *r = a * b;
    return true;
}
void SafeTensors::open_file(const std::string& path) {
    if (source.empty()) source = path;
    size_t size = 0;
    int fd = open_regular_fd(path, &size);   // a directory, FIFO or device is refused by name (a FIFO never blocks)
    if (size < 8) { close(fd); die("%s: truncated safetensors file (%zu bytes)", path.c_str(), size); }
    void* map = in_ram ? read_into_huge_pages(fd, size, path) : mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) die("cannot map %s: %s", path.c_str(), strerror(errno));
    maps.push_back({map, size});
    const uint8_t* base = (const uint8_t*)map;
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)base[i] << (8 * i);
    if (hlen > size - 8)   // size ≥ 8: no wrap; 8 + hlen ≤ size below
        die("%s: truncated safetensors file (header says %llu bytes, file has %zu)", path.c_str(), (unsigned long long)hlen, size);
    if (hlen > SAFETENSORS_HEADER_MAX)
        die("%s: safetensors header of %llu bytes is larger than the format's limit of 100 MB", path.c_str(), (unsigned long long)hlen);
    // the top-level names are collected while parsing: a JSON object keeps only the last of duplicate keys
    std::set<std::string> names;
    std::string dup;
    json::parser_callback_t note_names = [&](int depth, json::parse_event_t ev, json& parsed) {
        if (depth == 1 && ev == json::parse_event_t::key && parsed.is_string() && !names.insert(parsed.get<std::string>()).second &&
            dup.empty())
            dup = parsed.get<std::string>();
        return true;
    };
    json h;
    try { h = json::parse(base + 8, base + 8 + hlen, note_names); } catch (const std::exception& e) {
        die("%s: malformed safetensors header (%s)", path.c_str(), e.what());
    }
    if (!h.is_object()) die("%s: safetensors header is not a JSON object", path.c_str());
    if (!dup.empty()) die("%s: tensor '%s' appears twice in the header", path.c_str(), dup.c_str());
    const uint8_t* data = base + 8 + hlen;
    uint64_t data_size = size - 8 - hlen;
    struct Range { uint64_t begin, end; const std::string* name; };
    std::vector<Range> ranges;
    for (auto it = h.begin(); it != h.end(); ++it) {
        const std::string& name = it.key();
        const json& t = it.value();
        if (name == "__metadata__") {   // a map of strings to strings, as the format says
            if (!t.is_object()) die("%s: __metadata__ must be an object of strings, got %s", path.c_str(), json_short(t).c_str());
            for (auto m = t.begin(); m != t.end(); ++m) {
                if (!m.value().is_string())
                    die("%s: __metadata__ field '%s' must be a string, got %s", path.c_str(), m.key().c_str(), json_short(m.value()).c_str());
                metadata[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        std::string where = path + ": tensor '" + name + "'";
        if (!t.is_object() || !t.contains("dtype") || !t.contains("shape") || !t.contains("data_offsets"))
            die("%s has a malformed header entry %s (expected {dtype, shape, data_offsets})", where.c_str(), json_short(t).c_str());
        TensorInfo ti;
        ti.name = name;
        ti.file = path;
        std::string dt = json_str(t, "dtype", where, "", true);
        if (!dtype_parse(dt, &ti.dtype)) die("%s has unsupported dtype \"%s\" (F32, BF16, F16, I32, I64, U8)", where.c_str(), dt.c_str());
        const json* shape = json_field(t, "shape", where, true);
        if (!shape->is_array()) die("%s: shape must be a list of non-negative integers, got %s", where.c_str(), json_short(*shape).c_str());
        uint64_t numel = 1;
        bool overflow = false;
        for (const json& d : *shape) {
            if (!d.is_number_unsigned() || d.get<uint64_t>() > (uint64_t)INT64_MAX)
                die("%s: shape %s must be a list of non-negative integers", where.c_str(), json_short(*shape).c_str());
            ti.shape.push_back((int64_t)d.get<uint64_t>());
            overflow = overflow || !mul_u64(numel, d.get<uint64_t>(), &numel);
        }
        uint64_t nbytes = 0;
        if (overflow || !mul_u64(numel, (uint64_t)dtype_size(ti.dtype), &nbytes))
            die("%s: shape %s overflows: its size in bytes does not fit in 64 bits", where.c_str(), shape_str(ti.shape).c_str());
        const json* off = json_field(t, "data_offsets", where, true);
        if (!off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned())
            die("%s: data_offsets must be [begin, end], two non-negative integers, got %s", where.c_str(), json_short(*off).c_str());
        uint64_t b = (*off)[0].get<uint64_t>(), e = (*off)[1].get<uint64_t>();
        if (b > e || e > data_size)
            die("%s: data_offsets [%llu, %llu] lie outside the %llu data bytes (truncated or corrupt file)", where.c_str(),
                (unsigned long long)b, (unsigned long long)e, (unsigned long long)data_size);
        if (e - b != nbytes)
            die("%s has %llu bytes but shape %s of %s needs %llu", where.c_str(), (unsigned long long)(e - b),
                shape_str(ti.shape).c_str(), dtype_name(ti.dtype), (unsigned long long)nbytes);
        ti.data = data + b;
        ti.nbytes = e - b;
        auto prev = tensors.find(name);
        if (prev != tensors.end()) die("%s appears twice (also in %s)", where.c_str(), prev->second.file.c_str());
        auto ins = tensors.emplace(name, ti).first;
        ranges.push_back({b, e, &ins->first});
    }
    std::sort(ranges.begin(), ranges.end(), [](const Range& x, const Range& y) {
        return x.begin != y.begin ? x.begin < y.begin : x.end < y.end;
    });
    uint64_t pos = 0;
    const std::string* before = nullptr;
    for (const Range& r : ranges) {
        if (r.begin < pos)
            die("%s: tensor '%s' data_offsets [%llu, %llu] overlap tensor '%s', which ends at %llu", path.c_str(), r.name->c_str(),
                (unsigned long long)r.begin, (unsigned long long)r.end, before->c_str(), (unsigned long long)pos);
        if (r.begin > pos)
            die("%s: a gap of %llu bytes before tensor '%s' (data_offsets [%llu, %llu]; %s ends at %llu): tensors must be contiguous",
                path.c_str(), (unsigned long long)(r.begin - pos), r.name->c_str(), (unsigned long long)r.begin,
                (unsigned long long)r.end, before ? ("'" + *before + "'").c_str() : "the header", (unsigned long long)pos);
        pos = r.end;
        before = r.name;
    }
    if (pos != data_size)
        die("%s: %llu bytes after the last tensor (the tensors end at %llu of the %llu data bytes): corrupt file", path.c_str(),
            (unsigned long long)(data_size - pos), (unsigned long long)pos, (unsigned long long)data_size);
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
    require_dir(dir, "model directory");
    source = dir;
    std::string single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
    std::vector<std::string> files;
    std::map<std::string, std::string> listed;   // the index's weight_map: tensor → the path of its shard
    if (path_exists(index)) {
        json j = json_parse_file(index);
        if (!j.is_object()) die("%s: expected a JSON object", index.c_str());
        const json* wm = json_field(j, "weight_map", index, true);
        if (!wm->is_object())
            die("%s: field 'weight_map' must be an object {tensor name: shard file name}, got %s", index.c_str(), json_short(*wm).c_str());
        if (wm->empty()) die("%s: weight_map is empty", index.c_str());
        if (const json* md = json_field(j, "metadata", index, false))
            if (!md->is_object()) die("%s: field 'metadata' must be an object, got %s", index.c_str(), json_short(*md).c_str());
        for (auto it = wm->begin(); it != wm->end(); ++it) {
            if (!it.value().is_string())
                die("%s: weight_map['%s'] must be a shard file name (a string), got %s", index.c_str(), it.key().c_str(), json_short(it.value()).c_str());
            std::string f = it.value().get<std::string>();
            // a plain name inside DIR: an index cannot point the loader at another directory
            if (f.empty() || f.find('/') != std::string::npos || f.find("..") != std::string::npos || f.find('\0') != std::string::npos)
                die("%s: shard name '%s' (for '%s') must be a plain file name inside %s, without '/' or '..'", index.c_str(), f.c_str(),
                    it.key().c_str(), dir.c_str());
            std::string fp = dir + "/" + f;
            listed[it.key()] = fp;
            if (std::find(files.begin(), files.end(), fp) == files.end()) files.push_back(fp);
        }
        for (const std::string& f : files) require_file(f, index + ": shard");
    } else if (path_exists(single)) {
        files.push_back(single);   // (a directory or FIFO of that name is refused by name when opened)
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
    source = dir;
    // the index and its shards agree: each listed tensor is in the shard the index names, and no shard holds a
    // tensor the index leaves out (a mix of two checkpoints' files)
    if (!listed.empty()) {
        for (const auto& l : listed) {
            auto t = tensors.find(l.first);
            if (t == tensors.end()) die("%s: tensor '%s' is listed but missing from its shard %s", index.c_str(), l.first.c_str(), l.second.c_str());
            if (t->second.file != l.second)
                die("%s: tensor '%s' is in %s, but the index says %s", index.c_str(), l.first.c_str(), t->second.file.c_str(), l.second.c_str());
        }
        for (const auto& t : tensors)
            if (!listed.count(t.first))
                die("%s: tensor '%s' in %s is not listed in the index's weight_map", index.c_str(), t.first.c_str(), t.second.file.c_str());
    }
}

const TensorInfo& SafeTensors::get(const std::string& name) const {
    auto it = tensors.find(name);
    if (it == tensors.end()) die("missing tensor '%s' in %s", name.c_str(), source.empty() ? "safetensors" : source.c_str());
    return it->second;
}

// An I8 matrix NAME [rows, cols] (q8_0, convert --dtype q8_0) has its scales in NAME_scale: F16 [rows, cols/32].
const TensorInfo& SafeTensors::q8_scale(const std::string& name) const {
    const TensorInfo& t = get(name);
    auto it = tensors.find(name + "_scale");
    if (it == tensors.end())
        die("%s: tensor '%s' is I8 but '%s_scale' is missing (a q8_0 matrix needs its scales)", t.file.c_str(), name.c_str(), name.c_str());
    const TensorInfo& s = it->second;
    if (t.shape.size() != 2 || t.shape[1] % Q8_BLOCK != 0)
        die("%s: I8 tensor '%s' has shape %s: q8_0 matrices are 2-D with rows a multiple of %d long", t.file.c_str(),
            name.c_str(), shape_str(t.shape).c_str(), Q8_BLOCK);
    std::vector<int64_t> want = {t.shape[0], t.shape[1] / Q8_BLOCK};
    if (s.dtype != DType::F16 || s.shape != want)
        die("%s: tensor '%s_scale' is %s %s; expected F16 %s (one scale per %d weights of '%s')", s.file.c_str(), name.c_str(),
            dtype_name(s.dtype), shape_str(s.shape).c_str(), shape_str(want).c_str(), Q8_BLOCK, name.c_str());
    return s;
}

void SafeTensors::read_f32(const std::string& name, const std::vector<int64_t>& shape, float* out) const {
    const TensorInfo& t = get(name);
    if (t.shape != shape)
        die("%s: tensor '%s' has shape %s, expected %s", t.file.c_str(), name.c_str(), shape_str(t.shape).c_str(), shape_str(shape).c_str());
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
        case DType::I8: {   // q8_0: int8 × its block's fp16 scale
            const TensorInfo& sc = q8_scale(name);
            size_t nb = n / Q8_BLOCK;
            #pragma omp parallel for schedule(static)
            for (size_t b = 0; b < nb; b++) {
                uint16_t h;
                memcpy(&h, sc.data + 2 * b, 2);
                float d = f16_to_f32(h);
                for (int i = 0; i < Q8_BLOCK; i++) out[b * Q8_BLOCK + i] = (float)(int8_t)t.data[b * Q8_BLOCK + i] * d;
            }
            break;
        }
        default: die("%s: tensor '%s' has dtype %s; expected F32, BF16 or F16", t.file.c_str(), name.c_str(), dtype_name(t.dtype));
    }
}

// The first element of a tensor that is NaN or ±Inf (its exponent all ones), or -1. One pass over the stored bits,
// the same for F32, BF16 and F16 and for every load path (copied or memory-mapped): the largest |bits| is a max
// reduction that vectorises; only a tensor that has one is searched again for where.
template <typename U>
static long long first_nonfinite_bits(const uint8_t* p, size_t n, U abs_mask, U inf) {
    U worst = 0;
    #pragma omp parallel for simd reduction(max : worst) schedule(static) if (n >= ((size_t)1 << 20))
    for (size_t i = 0; i < n; i++) {
        U u;
        memcpy(&u, p + i * sizeof(U), sizeof(U));
        U a = u & abs_mask;
        worst = a > worst ? a : worst;
    }
    if (worst < inf) return -1;
    for (size_t i = 0; i < n; i++) {
        U u;
        memcpy(&u, p + i * sizeof(U), sizeof(U));
        if ((U)(u & abs_mask) >= inf) return (long long)i;
    }
    return -1;
}
static long long first_nonfinite(const TensorInfo& t, float* value) {
    long long i = -1;
    switch (t.dtype) {
        case DType::F32: i = first_nonfinite_bits<uint32_t>(t.data, t.numel(), 0x7fffffffu, 0x7f800000u); break;
        case DType::BF16: i = first_nonfinite_bits<uint16_t>(t.data, t.numel(), 0x7fff, 0x7f80); break;
        case DType::F16: i = first_nonfinite_bits<uint16_t>(t.data, t.numel(), 0x7fff, 0x7c00); break;
        default: return -1;
    }
    if (i >= 0) {
        uint16_t h = 0;
        if (t.dtype == DType::F32) memcpy(value, t.data + 4 * i, 4);
        else { memcpy(&h, t.data + 2 * i, 2); *value = t.dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h); }
    }
    return i;
}

// rotary_emb.inv_freq: a buffer older transformers saved with each layer; recomputed here from rope_theta
static bool ignorable_tensor(const std::string& name) {
    const std::string suffix = ".rotary_emb.inv_freq";
    return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A tensor the model does not use is an error, not a warning (transformers' from_pretrained only warns about
// "unexpected keys"): here it almost always means that config.json does not describe the weights (more layers than
// num_hidden_layers, a q_proj.bias under attention_bias false, an lm_head under another name), and loading the rest
// would run, silently, a different model than the checkpoint's. The same rule holds wherever a model directory is
// loaded (model_load_dir, infer_load) or checked (info). The one exception is rotary_emb.inv_freq, a buffer older
// transformers saved: it is a function of rope_theta, recomputed here, so it is ignored, as transformers ignores it.
void model_check_tensors(const SafeTensors& st, const Config& cfg, bool values) {
    std::set<std::string> used;
    for (const ParamView& pv : param_views(cfg)) {
        const TensorInfo& t = st.get(pv.name);
        used.insert(pv.name);
        if (t.shape != pv.shape)
            die("%s: tensor '%s' has shape %s, expected %s (from config.json)", t.file.c_str(), pv.name.c_str(),
                shape_str(t.shape).c_str(), shape_str(pv.shape).c_str());
        const TensorInfo* checked = &t;   // for I8 (q8_0), its scales are what can be non-finite
        if (t.dtype == DType::I8 && pv.shape.size() == 2) {
            checked = &st.q8_scale(pv.name);
            used.insert(pv.name + "_scale");
        } else if (t.dtype != DType::F32 && t.dtype != DType::BF16 && t.dtype != DType::F16)
            die("%s: tensor '%s' has dtype %s; expected F32, BF16 or F16 (or I8 with scales, for a matrix)", t.file.c_str(),
                pv.name.c_str(), dtype_name(t.dtype));
        float bad = 0;
        long long at = values ? first_nonfinite(*checked, &bad) : -1;
        if (at >= 0)
            die("%s: tensor '%s' holds %s at element %lld: the weights must be finite", t.file.c_str(), checked->name.c_str(),
                std::isnan(bad) ? "NaN" : bad > 0 ? "+Inf" : "-Inf", at);
    }
    for (const auto& t : st.tensors)
        if (!used.count(t.first) && !ignorable_tensor(t.first))
            die("%s: tensor '%s' is not part of the model config.json describes (a LlamaForCausalLM with %d layers, no "
                "biases, an untied lm_head): config.json does not match the weights", t.second.file.c_str(), t.first.c_str(),
                cfg.num_hidden_layers);
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
    errno = 0;   // (what a failed write leaves here is its reason)
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
    commit_tmp(tmp, path, ok);
}

// ============================================================================
// model directories (Hugging Face layout)

void model_load_dir(Model* m, const std::string& dir) {
    require_dir(dir, "model directory");
    Config cfg = config_read_json(dir + "/config.json");
    SafeTensors st;
    st.open_dir(dir);
    model_check_tensors(st, cfg, true);
    model_build(m, cfg);
    for (const ParamView& pv : param_views(cfg)) st.read_f32(pv.name, pv.shape, m->params_memory.data() + pv.offset);
}

// q8_0 needs every matrix's rows (hidden, heads × head_dim, intermediate) to split into whole blocks of 32
static void q8_0_require_blocks(const Config& cfg) {
    for (const ParamView& pv : param_views(cfg))
        if (pv.shape.size() == 2 && pv.shape[1] % Q8_BLOCK != 0)
            die("q8_0: '%s' has rows of %lld weights, not a multiple of %d (the block size)", pv.name.c_str(),
                (long long)pv.shape[1], Q8_BLOCK);
}

void model_save_dir(const Model& m, const std::string& dir, StoreDtype dtype) {
    Config cfg = m.cfg;
    bool q8 = dtype == StoreDtype::Q8_0;
    if (q8) q8_0_require_blocks(cfg);
    make_dirs(dir);
    cfg.torch_dtype = dtype == StoreDtype::BF16 ? "bfloat16" : "float32";   // (q8_0: the norms stay fp32)
    cfg.quantization = q8 ? "q8_0" : "";
    std::vector<TensorOut> ts;
    // q8_0: each matrix as int8 NAME and fp16 NAME_scale (SafeTensors::q8_scale); the norms stay fp32
    std::vector<std::vector<int8_t>> qs;
    std::vector<std::vector<uint16_t>> ds;
    std::vector<std::string> scale_names;
    const std::vector<ParamView> views = param_views(cfg);
    if (q8) { qs.reserve(views.size()); ds.reserve(views.size()); scale_names.reserve(views.size()); }
    for (const ParamView& pv : views) {
        const float* w = m.params_memory.data() + pv.offset;
        if (!q8 || pv.shape.size() != 2) { ts.push_back({pv.name, DType::F32, pv.shape, w}); continue; }
        size_t n = (size_t)pv.shape[0] * pv.shape[1];
        qs.emplace_back(n);
        ds.emplace_back(n / Q8_BLOCK);
        q8_0_quantize(w, n, qs.back().data(), ds.back().data());
        scale_names.push_back(pv.name + "_scale");
        ts.push_back({pv.name, DType::I8, pv.shape, qs.back().data()});
        ts.push_back({scale_names.back(), DType::F16, {pv.shape[0], pv.shape[1] / Q8_BLOCK}, ds.back().data()});
    }
    safetensors_write(dir + "/model.safetensors", ts, dtype == StoreDtype::BF16, {{"format", "pt"}});
    config_write_json(cfg, dir + "/config.json");
    json gen = {{"bos_token_id", config_token_json(cfg, cfg.bos_token_id)}, {"eos_token_id", config_token_json(cfg, cfg.eos_token_id)},
                {"_from_model_config", false}};
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
// GGUF: llama.cpp's format (the layout is in deepseek.h). The vocabulary import (tokenizer.cpp) and gguf_read share
// the cursor; model_export_gguf writes a "llama" architecture file with our weights and tokenizer.

size_t gguf_scalar_size(uint32_t type) {
    switch (type) {
        case GGUF_U8: case GGUF_I8: case GGUF_BOOL: return 1;
        case GGUF_U16: case GGUF_I16: return 2;
        case GGUF_U32: case GGUF_I32: case GGUF_F32: return 4;
        case GGUF_U64: case GGUF_I64: case GGUF_F64: return 8;
        default: return 0;
    }
}
bool ggml_type_bytes(uint32_t type, uint64_t n, size_t* bytes) {
    switch (type) {
        case GGML_TYPE_F32: *bytes = n * 4; return true;
        case GGML_TYPE_F16: case GGML_TYPE_BF16: *bytes = n * 2; return true;
        case GGML_TYPE_Q8_0: *bytes = n / Q8_BLOCK * Q8_0_BLOCK_BYTES; return n % Q8_BLOCK == 0;
        default: return false;
    }
}

long long GgufReader::scalar_int(uint32_t type) {
    size_t sz = gguf_scalar_size(type);
    if (!sz || type == GGUF_F32 || type == GGUF_F64) die("%s: expected an integer value in GGUF", where.c_str());
    need(sz);
    long long v = 0;
    switch (type) {
        case GGUF_U8: case GGUF_BOOL: v = p[pos]; break;
        case GGUF_I8: v = (int8_t)p[pos]; break;
        case GGUF_U16: { uint16_t x; memcpy(&x, p + pos, 2); v = x; break; }
        case GGUF_I16: { int16_t x; memcpy(&x, p + pos, 2); v = x; break; }
        case GGUF_U32: { uint32_t x; memcpy(&x, p + pos, 4); v = x; break; }
        case GGUF_I32: { int32_t x; memcpy(&x, p + pos, 4); v = x; break; }
        case GGUF_U64: { uint64_t x; memcpy(&x, p + pos, 8); v = (long long)x; break; }
        case GGUF_I64: { int64_t x; memcpy(&x, p + pos, 8); v = x; break; }
    }
    pos += sz;
    return v;
}
double GgufReader::scalar_float(uint32_t type) {
    if (type == GGUF_F32) { need(4); float x; memcpy(&x, p + pos, 4); pos += 4; return x; }
    if (type == GGUF_F64) { need(8); double x; memcpy(&x, p + pos, 8); pos += 8; return x; }
    return (double)scalar_int(type);
}
void GgufReader::skip(uint32_t type, int depth) {
    if (depth > 4) die("%s: GGUF arrays nested too deep", where.c_str());
    if (type == GGUF_STRING) { str(); return; }
    if (type == GGUF_ARRAY) {
        uint32_t et = u32();
        uint64_t cnt = u64();
        for (uint64_t i = 0; i < cnt; i++) skip(et, depth + 1);
        return;
    }
    size_t sz = gguf_scalar_size(type);
    if (!sz) die("%s: unknown GGUF value type %u", where.c_str(), type);
    need(sz);
    pos += sz;
}

static void gguf_put_string(std::string& b, const std::string& s) {
    uint64_t l = s.size();
    b.append((const char*)&l, 8);
    b += s;
}
template <typename T> static void gguf_put_raw(std::string& b, T v) { b.append((const char*)&v, sizeof(T)); }
static void gguf_put_key(GgufMeta* m, const std::string& key, uint32_t type) {
    gguf_put_string(m->bytes, key);
    gguf_put_raw<uint32_t>(m->bytes, type);
    m->count++;
}
void GgufMeta::put_str(const std::string& key, const std::string& v) { gguf_put_key(this, key, GGUF_STRING); gguf_put_string(bytes, v); }
void GgufMeta::put_u32(const std::string& key, uint32_t v) { gguf_put_key(this, key, GGUF_U32); gguf_put_raw(bytes, v); }
void GgufMeta::put_f32(const std::string& key, float v) { gguf_put_key(this, key, GGUF_F32); gguf_put_raw(bytes, v); }
void GgufMeta::put_bool(const std::string& key, bool v) { gguf_put_key(this, key, GGUF_BOOL); gguf_put_raw<uint8_t>(bytes, v ? 1 : 0); }
void GgufMeta::put_str_array(const std::string& key, const std::vector<std::string>& v) {
    gguf_put_key(this, key, GGUF_ARRAY);
    gguf_put_raw<uint32_t>(bytes, GGUF_STRING);
    gguf_put_raw<uint64_t>(bytes, v.size());
    for (const std::string& s : v) gguf_put_string(bytes, s);
}
void GgufMeta::put_i32_array(const std::string& key, const std::vector<int32_t>& v) {
    gguf_put_key(this, key, GGUF_ARRAY);
    gguf_put_raw<uint32_t>(bytes, GGUF_I32);
    gguf_put_raw<uint64_t>(bytes, v.size());
    bytes.append((const char*)v.data(), v.size() * 4);
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

void gguf_read(const std::string& path, GgufFile* f) {
    f->bytes = read_file(path, (size_t)1 << 40);
    GgufReader r{(const unsigned char*)f->bytes.data(), f->bytes.size(), 0, path};
    r.need(4);
    if (memcmp(f->bytes.data(), "GGUF", 4) != 0) die("%s: not a GGUF file (bad magic)", path.c_str());
    r.pos = 4;
    f->version = r.u32();
    if (f->version < 2 || f->version > 3) die("%s: GGUF version %u is not supported (2 or 3)", path.c_str(), f->version);
    uint64_t ntensors = r.u64(), nkv = r.u64();
    if (ntensors > r.n || nkv > r.n) die("%s: GGUF counts %llu tensors, %llu keys: more than the file holds", path.c_str(),
                                         (unsigned long long)ntensors, (unsigned long long)nkv);
    for (uint64_t k = 0; k < nkv; k++) {
        std::string key = r.str();
        GgufValue v;
        v.type = r.u32();
        if (v.type == GGUF_STRING) v.s = r.str();
        else if (v.type == GGUF_ARRAY) {
            v.elem_type = r.u32();
            uint64_t cnt = r.u64();
            if (cnt > r.n - r.pos) die("%s: '%s' has %llu entries, more than the file holds", path.c_str(), key.c_str(), (unsigned long long)cnt);
            for (uint64_t i = 0; i < cnt; i++) {
                if (v.elem_type == GGUF_STRING) v.strs.push_back(r.str());
                else if (v.elem_type == GGUF_F32 || v.elem_type == GGUF_F64) v.floats.push_back(r.scalar_float(v.elem_type));
                else if (gguf_scalar_size(v.elem_type)) v.ints.push_back(r.scalar_int(v.elem_type));
                else r.skip(v.elem_type, 1);   // arrays of arrays: kept as nothing
            }
        } else if (v.type == GGUF_F32 || v.type == GGUF_F64) v.f = r.scalar_float(v.type);
        else v.i = r.scalar_int(v.type);
        if (!f->kv.emplace(key, v).second) die("%s: key '%s' appears twice", path.c_str(), key.c_str());
    }
    if (const GgufValue* a = f->find("general.alignment")) {
        if (a->type != GGUF_U32 || a->i == 0 || (a->i & (a->i - 1)))
            die("%s: general.alignment must be a u32 power of two", path.c_str());
        f->alignment = (uint32_t)a->i;
    }
    for (uint64_t t = 0; t < ntensors; t++) {
        GgufTensor ti;
        ti.name = r.str();
        uint32_t nd = r.u32();
        if (nd == 0 || nd > 4) die("%s: tensor '%s' has %u dimensions (1 to 4)", path.c_str(), ti.name.c_str(), nd);
        uint64_t n = 1;
        for (uint32_t d = 0; d < nd; d++) {
            ti.ne.push_back(r.u64());
            if (ti.ne.back() == 0 || ti.ne.back() > r.n || n > r.n / ti.ne.back())
                die("%s: tensor '%s' has a bad dimension", path.c_str(), ti.name.c_str());
            n *= ti.ne.back();
        }
        ti.type = r.u32();
        ti.offset = r.u64();
        if (!ggml_type_bytes(ti.type, n, &ti.nbytes) || (ti.type == GGML_TYPE_Q8_0 && ti.ne[0] % Q8_BLOCK))
            die("%s: tensor '%s' has ggml type %u (known: F32 0, F16 1, Q8_0 8 with rows in blocks of %d, BF16 30)",
                path.c_str(), ti.name.c_str(), ti.type, Q8_BLOCK);
        f->tensors.push_back(ti);
    }
    f->data_offset = align_up(r.pos, f->alignment);
    for (GgufTensor& ti : f->tensors) {
        if (ti.offset % f->alignment) die("%s: tensor '%s' is not aligned to %u bytes", path.c_str(), ti.name.c_str(), f->alignment);
        if (f->data_offset > f->bytes.size() || ti.offset > f->bytes.size() - f->data_offset ||
            ti.nbytes > f->bytes.size() - f->data_offset - ti.offset)
            die("%s: tensor '%s' runs past the end of the file", path.c_str(), ti.name.c_str());
        ti.data = (const uint8_t*)f->bytes.data() + f->data_offset + ti.offset;
    }
}

// llama.cpp's tensor names for ours (Hugging Face's)
static std::string gguf_tensor_name(const std::string& hf) {
    if (hf == "model.embed_tokens.weight") return "token_embd.weight";
    if (hf == "model.norm.weight") return "output_norm.weight";
    if (hf == "lm_head.weight") return "output.weight";
    static const std::pair<const char*, const char*> per_layer[] = {
        {"input_layernorm.weight", "attn_norm.weight"}, {"self_attn.q_proj.weight", "attn_q.weight"},
        {"self_attn.k_proj.weight", "attn_k.weight"},   {"self_attn.v_proj.weight", "attn_v.weight"},
        {"self_attn.o_proj.weight", "attn_output.weight"}, {"post_attention_layernorm.weight", "ffn_norm.weight"},
        {"mlp.gate_proj.weight", "ffn_gate.weight"},    {"mlp.up_proj.weight", "ffn_up.weight"},
        {"mlp.down_proj.weight", "ffn_down.weight"}};
    const std::string pre = "model.layers.";
    size_t dot = hf.find('.', pre.size());
    for (auto& p : per_layer)
        if (hf.compare(0, pre.size(), pre) == 0 && dot != std::string::npos && hf.substr(dot + 1) == p.first)
            return "blk." + hf.substr(pre.size(), dot - pre.size()) + "." + p.second;
    die("gguf: no llama.cpp name for tensor '%s'", hf.c_str());
}

// RoPE's pairing: Hugging Face's Llama rotates dimension i with i + D/2 (the two halves of a head), llama.cpp's
// "llama" architecture rotates 2i with 2i+1. So q_proj's and k_proj's rows are reordered within each head: GGUF row
// 2i is our row i, GGUF row 2i+1 our row D/2 + i. (heads = 0: no reordering.)
static int64_t gguf_source_row(int64_t r, int heads, int64_t D) {
    if (heads == 0) return r;
    int64_t h = r / D, j = r % D;
    return h * D + (j % 2) * (D / 2) + j / 2;
}

// One tensor's bytes as TYPE, rows reordered for q/k. Reads the source in its own dtype: bf16 → BF16 and
// q8_0 → Q8_0 are copies of the stored bits, everything else goes through fp32.
static void gguf_tensor_data(const SafeTensors& st, const ParamView& pv, uint32_t type, int heads, int64_t D,
                             std::string* out) {
    const TensorInfo& t = st.get(pv.name);
    int64_t rows = pv.shape.size() == 2 ? pv.shape[0] : 1, cols = pv.shape.back();
    size_t n = (size_t)rows * cols, bytes = 0;
    ggml_type_bytes(type, n, &bytes);
    out->resize(bytes);
    char* o = &(*out)[0];
    if (type == GGML_TYPE_BF16 && t.dtype == DType::BF16) {
        for (int64_t r = 0; r < rows; r++) memcpy(o + r * cols * 2, t.data + gguf_source_row(r, heads, D) * cols * 2, cols * 2);
        return;
    }
    int64_t nb = cols / Q8_BLOCK;
    // one row's Q8_0 blocks, from its int8 weights q and fp16 scales d (bytes: d may be unaligned in the file)
    auto put_q8_row = [&](int64_t r, const void* q, const void* d) {
        for (int64_t b = 0; b < nb; b++) {
            char* blk = o + (r * nb + b) * Q8_0_BLOCK_BYTES;
            memcpy(blk, (const char*)d + b * 2, 2);
            memcpy(blk + 2, (const char*)q + b * Q8_BLOCK, Q8_BLOCK);
        }
    };
    if (type == GGML_TYPE_Q8_0 && t.dtype == DType::I8) {
        const TensorInfo& sc = st.q8_scale(pv.name);
        for (int64_t r = 0; r < rows; r++) {
            int64_t s = gguf_source_row(r, heads, D);
            put_q8_row(r, t.data + s * cols, sc.data + s * nb * 2);
        }
        return;
    }
    std::vector<float> w(n);
    st.read_f32(pv.name, pv.shape, w.data());
    if (type == GGML_TYPE_F32) {
        for (int64_t r = 0; r < rows; r++) memcpy(o + r * cols * 4, w.data() + gguf_source_row(r, heads, D) * cols, cols * 4);
    } else if (type == GGML_TYPE_BF16) {
        #pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const float* src = w.data() + gguf_source_row(r, heads, D) * cols;
            for (int64_t c = 0; c < cols; c++) { uint16_t h = f32_to_bf16(src[c]); memcpy(o + (r * cols + c) * 2, &h, 2); }
        }
    } else {   // Q8_0: blocks never cross rows (cols % 32 == 0), so a row's blocks move with it
        #pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            std::vector<int8_t> q(cols);
            std::vector<uint16_t> d(nb);
            q8_0_quantize(w.data() + gguf_source_row(r, heads, D) * cols, cols, q.data(), d.data());
            put_q8_row(r, q.data(), d.data());
        }
    }
}

void model_export_gguf(const std::string& dir, const std::string& tokenizer_path, const std::string& default_chat_template,
                       const std::string& out, StoreDtype dtype) {
    require_dir(dir, "convert: model directory");
    Config cfg = config_read_json(dir + "/config.json");
    SafeTensors st;
    st.open_dir(dir);
    model_check_tensors(st, cfg, true);
    const std::vector<ParamView> views = param_views(cfg);
    if (dtype == StoreDtype::Q8_0) q8_0_require_blocks(cfg);
    std::unique_ptr<Tokenizer, void (*)(Tokenizer*)> tok(tokenizer_load(tokenizer_path), tokenizer_free);

    GgufMeta kv;
    std::string name = dir;
    while (name.size() > 1 && name.back() == '/') name.pop_back();
    name = name.substr(name.find_last_of('/') == std::string::npos ? 0 : name.find_last_of('/') + 1);
    kv.put_str("general.architecture", "llama");
    kv.put_str("general.name", name);
    kv.put_u32("general.alignment", GGUF_DEFAULT_ALIGNMENT);
    kv.put_u32("general.file_type", dtype == StoreDtype::Q8_0 ? GGUF_FTYPE_MOSTLY_Q8_0
                                    : dtype == StoreDtype::BF16 ? GGUF_FTYPE_MOSTLY_BF16 : GGUF_FTYPE_ALL_F32);
    kv.put_u32("llama.context_length", cfg.max_position_embeddings);
    kv.put_u32("llama.embedding_length", cfg.hidden_size);
    kv.put_u32("llama.block_count", cfg.num_hidden_layers);
    kv.put_u32("llama.feed_forward_length", cfg.intermediate_size);
    kv.put_u32("llama.attention.head_count", cfg.num_attention_heads);
    kv.put_u32("llama.attention.head_count_kv", cfg.num_key_value_heads);
    if (cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size) {   // llama.cpp assumes C / H otherwise
        kv.put_u32("llama.attention.key_length", cfg.head_dim);
        kv.put_u32("llama.attention.value_length", cfg.head_dim);
    }
    kv.put_u32("llama.rope.dimension_count", cfg.head_dim);
    kv.put_f32("llama.rope.freq_base", (float)cfg.rope_theta);
    kv.put_f32("llama.attention.layer_norm_rms_epsilon", (float)cfg.rms_norm_eps);
    kv.put_u32("llama.vocab_size", cfg.vocab_size);
    tokenizer_gguf_metadata(tok.get(), cfg.vocab_size, &kv);
    std::string chat_template = default_chat_template;
    if (file_exists(dir + "/tokenizer_config.json")) {   // its chat template and pad token, when it names them
        nlohmann::json tc = json_parse_file(dir + "/tokenizer_config.json");
        std::string where = dir + "/tokenizer_config.json";
        if (tc.is_object() && tc.contains("chat_template") && tc["chat_template"].is_string())
            chat_template = tc["chat_template"].get<std::string>();
        if (tc.is_object() && tc.contains("pad_token")) {
            const nlohmann::json& p = tc["pad_token"];
            std::string pad = p.is_string() ? p.get<std::string>() : p.is_object() ? json_str(p, "content", where + ": pad_token", "") : "";
            int id = pad.empty() ? -1 : tokenizer_token_id(tok.get(), pad);
            if (id >= 0) kv.put_u32("tokenizer.ggml.padding_token_id", (uint32_t)id);
        }
    }
    kv.put_str("tokenizer.chat_template", chat_template);

    // the tensor infos: matrices in the chosen type, norms F32; offsets aligned
    struct Out { const ParamView* pv; std::string name; uint32_t type; int heads; uint64_t offset; size_t bytes; };
    std::vector<Out> outs;
    std::string infos;
    uint64_t off = 0;
    for (const ParamView& pv : views) {
        Out o{&pv, gguf_tensor_name(pv.name), GGML_TYPE_F32, 0, 0, 0};
        if (pv.shape.size() == 2)
            o.type = dtype == StoreDtype::Q8_0 ? GGML_TYPE_Q8_0 : dtype == StoreDtype::BF16 ? GGML_TYPE_BF16 : GGML_TYPE_F32;
        if (pv.name.find("q_proj") != std::string::npos) o.heads = cfg.num_attention_heads;
        if (pv.name.find("k_proj") != std::string::npos) o.heads = cfg.num_key_value_heads;
        size_t n = 1;
        for (int64_t d : pv.shape) n *= (size_t)d;
        ggml_type_bytes(o.type, n, &o.bytes);
        o.offset = off;
        off = align_up(off + o.bytes, GGUF_DEFAULT_ALIGNMENT);
        gguf_put_string(infos, o.name);
        gguf_put_raw<uint32_t>(infos, (uint32_t)pv.shape.size());
        for (size_t d = pv.shape.size(); d-- > 0;) gguf_put_raw<uint64_t>(infos, (uint64_t)pv.shape[d]);   // ne[0] fastest
        gguf_put_raw<uint32_t>(infos, o.type);
        gguf_put_raw<uint64_t>(infos, o.offset);
        outs.push_back(o);
    }
    std::string head = "GGUF";
    gguf_put_raw<uint32_t>(head, GGUF_VERSION);
    gguf_put_raw<uint64_t>(head, outs.size());
    gguf_put_raw<uint64_t>(head, kv.count);
    head += kv.bytes;
    head += infos;
    head.resize(align_up(head.size(), GGUF_DEFAULT_ALIGNMENT), '\0');

    std::string tmp = out + ".tmp";
    FILE* f = fopen(tmp.c_str(), "wb");
    if (!f) die("cannot write %s: %s", tmp.c_str(), strerror(errno));
    errno = 0;
    bool ok = fwrite(head.data(), 1, head.size(), f) == head.size();
    uint64_t written = 0, total = off, next_report = total / 10;
    bool progress = total > ((uint64_t)256 << 20);   // a large model: a line every tenth of the data
    std::string data;
    for (size_t i = 0; i < outs.size() && ok; i++) {
        const Out& o = outs[i];
        gguf_tensor_data(st, *o.pv, o.type, o.heads, cfg.head_dim, &data);
        data.resize(align_up(data.size(), GGUF_DEFAULT_ALIGNMENT), '\0');
        ok = fwrite(data.data(), 1, data.size(), f) == data.size();
        written += data.size();
        if (progress && (written >= next_report || i + 1 == outs.size())) {
            fprintf(stderr, "convert: %zu/%zu tensors, %.2f of %.2f GiB\n", i + 1, outs.size(), written / 1073741824.0,
                    total / 1073741824.0);
            next_report = written + total / 10;
        }
    }
    ok = (fflush(f) == 0) && ok;
    ok = (fsync(fileno(f)) == 0) && ok;
    ok = (fclose(f) == 0) && ok;
    commit_tmp(tmp, out, ok);
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
static int g_cuda_local_rank = 0;   // cuda_use_local_rank
void cuda_use_local_rank(int local_rank) { g_cuda_local_rank = local_rank < 0 ? 0 : local_rank; }
int cuda_device_index() {
    int n = cuda_device_count();
    return n > 0 ? g_cuda_local_rank % n : 0;
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

// One line naming the backend a subcommand runs on, e.g. "cuda (NVIDIA H200, 139.8 GiB)" or "cpu (16 threads)",
// so that --device auto says what it picked.
std::string device_describe(Device dev) {
    char buf[256];
    if (dev == Device::CUDA) {
#ifdef DEEPSEEK_CUDA
        cudaDeviceProp p;
        int i = cuda_device_index();
        if (cudaGetDeviceProperties(&p, i) == cudaSuccess) {
            snprintf(buf, sizeof buf, ", %.1f GiB, sm_%d%d%s)", p.totalGlobalMem / 1073741824.0, p.major, p.minor,
                     i ? (", GPU " + std::to_string(i)).c_str() : "");
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

// The Backend a training loop runs on (struct Backend, deepseek.h): the CPU's Model, or the CUDA backend's copy of it
// (--device cuda: bf16 parameters and activations, fp32 master weights, gradients and AdamW moments on the GPU).
// The loop and the objectives call these for model_* and adamw_update; with be->cuda null each is exactly that CPU call.
// The host Model stays the run's copy for checkpoints: backend_to_host fetches the fp32 master weights and AdamW
// moments before each save, so a checkpoint has one format and resumes on either backend.

float backend_forward(Backend* be, const int* inputs, const int* targets, int B, int T) {
    if (!be->cuda) return model_forward(be->host, inputs, targets, B, T);
    float loss = cuda_model_forward(be->cuda, inputs, targets, B, T);
    be->losses.resize((size_t)B * T);
    cuda_model_get_losses(be->cuda, be->losses.data());
    return loss;
}
const float* backend_losses(const Backend* be) { return be->cuda ? be->losses.data() : be->host->acts.losses; }
void backend_backward(Backend* be, const float* dlosses) {
    if (be->cuda) cuda_model_backward(be->cuda, dlosses);
    else model_backward(be->host, dlosses);
}
void backend_zero_grad(Backend* be) {
    if (be->cuda) cuda_model_zero_grad(be->cuda);
    else model_zero_grad(be->host);
}
// What the one data-parallel path of train.cu (reduce_gradients, clip_gradients, optimizer_update) works on: the
// gradients and master weights where the backend keeps them, and AdamW's range — all parameters, or the rank's ZeRO-1
// shard. The collectives themselves (MPI on host memory, NCCL on device memory) are train.cu's.
float* backend_grads(Backend* be) { return be->cuda ? cuda_model_grads(be->cuda) : be->host->grads_memory.data(); }
float* backend_weights(Backend* be) { return be->cuda ? cuda_model_master(be->cuda) : be->host->params_memory.data(); }
size_t backend_opt_begin(const Backend* be) { return be->opt_begin; }
size_t backend_opt_end(const Backend* be) { return be->opt_end ? be->opt_end : be->host->num_parameters; }
double backend_grad_sum_squares(Backend* be) {
    size_t b = backend_opt_begin(be), e = backend_opt_end(be);
    if (be->cuda) return cuda_model_grad_sum_squares(be->cuda, b, e);
    return grad_sum_squares(be->host->grads_memory.data() + b, e - b);
}
void backend_clip(Backend* be, double coef, float* grad_scale) {
    *grad_scale = 1.0f;
    if (be->cuda) { *grad_scale = (float)coef; return; }   // 1.0f when no clipping is needed
    if (coef >= 1.0) return;
    float c = (float)coef, *g = be->host->grads_memory.data();
    size_t b = backend_opt_begin(be), e = backend_opt_end(be);
    #pragma omp parallel for schedule(static)
    for (size_t i = b; i < e; i++) g[i] *= c;
}
// adamw_update on either backend (the same constants), over AdamW's range; opt->t counts the updates on both
void backend_adamw(Backend* be, AdamW* opt, float lr, float grad_scale) {
    if (!be->cuda) { adamw_update_range(be->host, opt, lr, backend_opt_begin(be), backend_opt_end(be)); return; }
    opt->t++;
    cuda_model_adamw(be->cuda, lr, (float)ADAMW_BETA1, (float)ADAMW_BETA2, (float)ADAMW_EPS, (float)WEIGHT_DECAY, grad_scale,
                     (int)opt->t);
}
void backend_weights_changed(Backend* be) {
    if (be->cuda) cuda_model_refresh_params(be->cuda);
}
// before a checkpoint: the device's fp32 master weights and AdamW moments into the host Model and opt (CPU: nothing)
void backend_to_host(Backend* be, AdamW* opt) {
    if (!be->cuda) return;
    cuda_model_get_params(be->cuda, be->host);
    size_t n = backend_opt_end(be) - backend_opt_begin(be);
    opt->m.resize(n);
    opt->v.resize(n);
    cuda_model_get_adam_state(be->cuda, opt->m.data(), opt->v.data());
}
// The model onto the GPU for --device cuda (with AdamW moments when resuming), activations sized for B×T tokens;
// prints the device and the memory of each kind. Says which backend runs either way.
void backend_open(Backend* be, Device dev, const AdamW& opt, int B, int T, bool recompute, const char* who) {
    printf("%s: device %s\n", who, device_describe(dev).c_str());
    size_t b = backend_opt_begin(be), e = backend_opt_end(be);
    if (b > e || e > be->host->num_parameters) die("%s: AdamW's range [%zu, %zu) is not within the model's %zu parameters", who, b, e, be->host->num_parameters);
    if (dev != Device::CUDA) {
        if (recompute) printf("note: --recompute applies to --device cuda; the CPU backend keeps every activation\n");
        return;
    }
    be->cuda = cuda_model_create(*be->host, B, T, recompute, true);
    if (b != 0 || e != be->host->num_parameters) cuda_model_shard_optimizer(be->cuda, b, e);
    if (opt.m.size() == e - b && opt.m.size() > 0) cuda_model_set_adam_state(be->cuda, opt.m.data(), opt.v.data());
}
void backend_close(Backend* be) {
    cuda_model_free(be->cuda);
    be->cuda = nullptr;
}

// The CUDA backend (CUDA builds): kernels/cuda_*.cuh, each building on the ones before it.
#ifdef DEEPSEEK_CUDA
#include "kernels/cuda_common.cuh"     // bf16, error checks, reductions, host↔device copies; precision and determinism
#include "kernels/cuda_matmul.cuh"     // cuBLASLt: matmul_forward_cuda, matmul_backward_cuda
#include "kernels/cuda_layers.cuh"     // embedding, RMSNorm, RoPE, SwiGLU, cross-entropy
#include "kernels/cuda_attention.cuh"  // flash attention forward and backward, decode attention
#include "kernels/cuda_optim.cuh"      // AdamW, the global gradient norm
#include "kernels/cuda_model.cuh"      // the model on the GPU: cuda_model_*
#include "kernels/cuda_decode.cuh"     // batch-1 decoding with a KV cache: cuda_decode_*
#include "kernels/cuda_ops.cuh"        // cuda_op_*: single kernels on host arrays, for tests/test_cuda.cpp
#else  // ---- built without CUDA: the backend API exists and says so

[[noreturn]] static void no_cuda() { die("this binary was built without CUDA (run `make` with nvcc on PATH)"); }
CudaModel* cuda_model_create(const Model&, int, int, bool, bool) { no_cuda(); }
CudaModel* cuda_model_create_inference(const InferModel&, bool) { no_cuda(); }
const float* cuda_decode_prefill(CudaDecode*, const int*, int, int, bool) { no_cuda(); }
int cuda_decode_chunk(const CudaDecode*) { no_cuda(); }
size_t cuda_decode_memory_bytes(const CudaDecode*, size_t*) { no_cuda(); }
size_t cuda_memory_in_use() { no_cuda(); }
void cuda_model_free(CudaModel*) {}
float cuda_model_forward(CudaModel*, const int*, const int*, int, int) { no_cuda(); }
void cuda_model_backward(CudaModel*, const float*) { no_cuda(); }
void cuda_model_zero_grad(CudaModel*) { no_cuda(); }
float cuda_model_grad_norm(CudaModel*) { no_cuda(); }
double cuda_model_grad_sum_squares(CudaModel*, size_t, size_t) { no_cuda(); }
void cuda_model_shard_optimizer(CudaModel*, size_t, size_t) { no_cuda(); }
float* cuda_model_grads(CudaModel*) { no_cuda(); }
float* cuda_model_master(CudaModel*) { no_cuda(); }
void cuda_model_refresh_params(CudaModel*) { no_cuda(); }
void cuda_model_on_layer_grads(CudaModel*, std::function<void(int)>) { no_cuda(); }
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
void cuda_set_attention(const std::string&) { no_cuda(); }
const char* cuda_attention_path(int) { no_cuda(); }

#endif  // DEEPSEEK_CUDA

// ============================================================================
// subcommands: info, convert

static void print_config(const Config& c) {
    printf("vocab_size: %d\nhidden_size: %d\nnum_hidden_layers: %d\nnum_attention_heads: %d\nnum_key_value_heads: %d\n"
           "head_dim: %d\nintermediate_size: %d\nmax_position_embeddings: %d\nrms_norm_eps: %g\nrope_theta: %g\n",
           c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
           c.intermediate_size, c.max_position_embeddings, c.rms_norm_eps, c.rope_theta);
}

static const char* INFO_USAGE =
    "usage: deepseek info (--preset NAME | --model DIR) [--seq-len T] [--device auto|cpu|cuda]\n"
    "  prints the shapes, the exact parameter count, the paper's non-embedding FLOPs per token M\n"
    "  (72·L·C² + 12·L·C·l_seq) and the memory for weights, gradients and AdamW state.\n"
    "  --model DIR also checks the checkpoint: every safetensors header (all shards) against config.json,\n"
    "  and prints the weights' dtypes and size (the values are not read).\n"
    "  presets: tiny, small, deepseek-llm-7b, deepseek-llm-67b\n";
int cmd_info(int argc, char** argv) {
    Args a(argc, argv, 2, "info", INFO_USAGE, {"preset", "model", "seq-len", "device", "threads"}, {});
    Device dev = device_select(a.str("device", "auto"));
    Config cfg;
    if (a.has("preset") == a.has("model")) die("info: give exactly one of --preset NAME or --model DIR");
    SafeTensors st;
    if (a.has("model")) {   // a checkpoint check: the config, every shard's header, the tensors against the config
        require_dir(a.str("model"), "info: model directory");
        cfg = config_read_json(a.str("model") + "/config.json");
        st.open_dir(a.str("model"));
        model_check_tensors(st, cfg, false);
    } else if (!config_preset(a.str("preset"), &cfg)) {
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
    if (a.has("model")) {
        std::map<std::string, std::pair<size_t, size_t>> by_dtype;   // dtype → tensors, bytes
        std::set<std::string> files;
        size_t bytes = 0;
        for (const auto& t : st.tensors) {
            auto& d = by_dtype[dtype_name(t.second.dtype)];
            d.first++;
            d.second += t.second.nbytes;
            bytes += t.second.nbytes;
            files.insert(t.second.file);
        }
        printf("weights: %zu tensors in %zu safetensors file%s, %zu bytes (%.2f GiB)\n", st.tensors.size(), files.size(),
               files.size() == 1 ? "" : "s", bytes, bytes / (1024.0 * 1024.0 * 1024.0));
        for (const auto& d : by_dtype) printf("weights_dtype: %s, %zu tensors, %zu bytes\n", d.first.c_str(), d.second.first, d.second.second);
    }
    printf("device: %s", dev == Device::CUDA ? "cuda" : "cpu");
    if (dev == Device::CUDA) printf(" (%s)", cuda_device_name(cuda_device_index()).c_str());
    else printf(" (%d threads)", num_threads());
    printf("\n");
    return 0;
}

// convert: a model directory from a preset, a config.json (random init) or another model directory (re-save), or
// a model directory as one GGUF file for llama.cpp (--to gguf)
static const char* CONVERT_USAGE =
    "usage: deepseek convert (--preset NAME | --config config.json | --model DIR) --out DIR\n"
    "                        [--dtype f32|bf16|q8_0] [--seed S] [--init-std X]\n"
    "       deepseek convert --model DIR --to gguf --out FILE.gguf [--dtype f32|bf16|q8_0] [--tokenizer FILE]\n"
    "  writes a Hugging Face model directory (config.json, model.safetensors, generation_config.json);\n"
    "  --preset/--config initialise randomly (normal(0, init-std), the paper's 0.006 by default).\n"
    "  --to gguf writes one GGUF (v3) that llama.cpp runs as a \"llama\" model: the weights (norms fp32, the\n"
    "  matrices as --dtype), the hyperparameters, the vocabulary (DIR/tokenizer.json or --tokenizer FILE, with\n"
    "  DeepSeek LLM's pre-tokenizer) and the chat template (DIR/tokenizer_config.json's, else DeepSeek LLM's).\n";
static int cmd_convert(int argc, char** argv) {
    Args a(argc, argv, 2, "convert", CONVERT_USAGE,
           {"preset", "config", "model", "out", "dtype", "seed", "init-std", "threads", "to", "tokenizer"}, {});
    if (!a.has("out")) die("convert: --out DIR is required");
    std::string dt = a.str("dtype", "f32");
    if (dt != "f32" && dt != "bf16" && dt != "q8_0") die("convert: --dtype must be f32, bf16 or q8_0, got '%s'", dt.c_str());
    StoreDtype dtype = dt == "bf16" ? StoreDtype::BF16 : dt == "q8_0" ? StoreDtype::Q8_0 : StoreDtype::F32;
    if (a.has("to")) {
        if (a.str("to") != "gguf") die("convert: --to must be gguf (leave it out for a model directory), got '%s'", a.str("to").c_str());
        if (!a.has("model") || a.has("preset") || a.has("config"))
            die("convert: --to gguf converts a model directory: give --model DIR (save a preset with convert --preset first)");
        if (a.has("seed") || a.has("init-std")) die("convert: --seed and --init-std are for a random init, not --to gguf");
        std::string dir = a.str("model"), tok = a.str("tokenizer", dir + "/tokenizer.json");
        if (!a.has("tokenizer") && !path_exists(tok))
            die("convert: %s has no tokenizer.json; a GGUF carries the vocabulary, so pass --tokenizer FILE", dir.c_str());
        model_export_gguf(dir, tok, CHAT_TEMPLATE_JINJA, a.str("out"), dtype);
        printf("wrote %s (GGUF, %s)\n", a.str("out").c_str(), dt.c_str());
        return 0;
    }
    if (a.has("tokenizer")) die("convert: --tokenizer is for --to gguf (a model directory's tokenizer.json is copied by hand)");
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
    model_save_dir(m, a.str("out"), dtype);
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
           "  convert    write a model directory (random init or re-save), or a GGUF for llama.cpp\n"
           "  plan       the paper's scaling laws for a compute budget         (--compute C)\n"
           "  sweep      the paper's scaling-law experiments: runs, fits, report (--data DIR --out DIR)\n"
           "  tokenizer  train | encode | decode | import-gguf | info\n"
           "  data       prepare: text → token shards\n"
           "  train      pre-training       sft   supervised fine-tuning      dpo   preference optimisation\n"
           "  eval       loss, bits per byte, exact-match accuracy, repetition ratio\n"
           "  generate   complete a prompt   chat  talk with a chat model\n\n"
           "common flags: --device auto|cpu|cuda, --threads N, --seed S\n");
}

static int run_command(int argc, char** argv);
// Model weights and token shards are memory-mapped: if such a file is truncated while this process uses it (another
// program rewrites it in place), touching a page past its new end raises SIGBUS. That is bad input too, and ends in
// one error line and exit 1 instead of a crash. (Only async-signal-safe calls here: write and _exit.)
static void on_sigbus(int) {
    static const char msg[] = "error: a memory-mapped file (model weights or token shard) was truncated or changed on "
                              "disk while in use (SIGBUS)\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(1);
}

// No exception escapes main: every input is validated where it is read, and anything that still throws (a
// library's exception on input nobody foresaw) ends as one error line, not an abort.
int main(int argc, char** argv) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigbus;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, nullptr);
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
    static const struct { const char* name; int (*run)(int, char**); } commands[] = {
        {"info", cmd_info}, {"convert", cmd_convert}, {"plan", cmd_plan}, {"tokenizer", cmd_tokenizer}, {"data", cmd_data},
        {"train", cmd_train}, {"sft", cmd_sft}, {"dpo", cmd_dpo}, {"sweep", cmd_sweep}, {"eval", cmd_eval},
        {"generate", cmd_generate}, {"chat", cmd_chat}};
    for (const auto& c : commands)
        if (cmd == c.name) return c.run(argc, argv);
    die("unknown command '%s' (see deepseek --help)", cmd.c_str());
}
#endif
