// deepseek.h — the declarations the source files share (one header, not a tree of them), one section per source
// file, in this order (each builds on the ones above it):
//
//   util.h        errors, file checks and bounded reads, typed JSON reads, atomic writes, command-line flags
//   deepseek.cu   the model as the paper draws it: config/presets, the parameter layout, the fp32 reference layers,
//                 the model's forward/backward and the tier dispatch, weights I/O, the backends, main(); it #includes
//                 util.h and kernels/: the fast paths, compiled as part of deepseek.cu, cpu_*.h (the CPU's GEMM,
//                 fused layers, blockwise attention, the fast model) and cuda_*.cuh (the CUDA backend)
//   tokenizer.cpp byte-level BPE: tokenizer.json I/O, pre-tokenizer, encode/decode, training, GGUF import/export
//   infer.cu      KV cache, sampling, chat template, generate/chat/eval
//   train.cu      data loader, AdamW, schedules, scaling-law planner, checkpoints, SFT/DPO objectives, MPI/NCCL
//   sweep.cpp     the scaling-law experiments: runs of `deepseek train` over budgets, fits, pictures, report
//
// Three tiers of every layer, one naming rule (X = matmul_forward, rmsnorm_backward, attention_forward, …):
//   X_ref    the oracle: the CPU fp32 reference, plain loops written to be read (defined only in deepseek.cu); every
//            other tier is tested against it. g_cpu_reference = true runs the model on it.
//   X_cpu    the fast CPU path, the model's default on a CPU: blocked, vectorised, fused (kernels/cpu_*.h), tested
//            against X_ref in tests/test_fastpath.cpp.
//   X_cuda   the device path: bf16 kernels and cuBLASLt (kernels/cuda_*.cuh, CUDA builds only); a __global__
//            kernel is X_kernel and X_cuda launches it. Tests reach the device through cuda_op_X (X_cuda on host
//            arrays; tests/test_cuda.cpp compares it with X_ref); the CUDA model and decoder are the object APIs
//            cuda_model_* and cuda_decode_*.
//   The model follows the rule: model_forward / model_backward dispatch to model_forward_ref / model_backward_ref
//   or model_forward_cpu / model_backward_cpu. Helpers that no tier owns keep plain names: silu, exp_poly (the
//   polynomial e^x of kernels/cpu_exp.h, which the _cpu kernels and infer.cu share), rope_table (the cos/sin table of the _cpu and _cuda RoPE),
//   and the static helpers inside a kernel file (gemm_pack_a, att_scores4, …), which are that file's own.
//
// Gradients: what a backward function does with its outputs.
//   Parameter gradients (dweight, the norms' weights, the embedding table) ACCUMULATE (+=) on every tier, so that
//   micro-batches add up until model_zero_grad / cuda_model_zero_grad.
//   Activation gradients: the _ref backwards accumulate (+=) into them as well (their callers zero them first),
//   except crossentropy_backward_ref, which writes dlogits. The _cpu and _cuda backwards WRITE (=) them, being
//   their only writer, except where an argument says otherwise: matmul_backward_cpu/_cuda and gemm_cpu take an
//   Accum (Overwrite, or Add where two paths meet: ln1's gradient from q, k and v, ln2's from gate and up);
//   rmsnorm_backward_cpu writes dinp = dskip + (the norm's part), dskip being the residual's gradient;
//   rmsnorm_backward_cuda adds into the fp32 residual gradient; attention_backward_cpu adds into dq, dk, dv (the
//   model zeroes them). RoPE's backward rotates its gradient in place on every tier.
//
// Shape legend used everywhere: B = batch, T = time (sequence), C = d_model (hidden_size),
// H = attention heads, KV = key/value heads, D = head_dim, F = intermediate_size, V = vocab, L = layers.
#pragma once
#include <cmath>     // NAN
#include <cstddef>   // size_t
#include <cstdint>   // int32_t, uint16_t, uint64_t
#include <cstdio>    // FILE (read_stream)
#include <cstring>   // memcpy (bf16_to_f32)
#include <string>    // std::string
#include <vector>    // std::vector
#include <map>       // std::map
#include <functional>   // std::function (read_jsonl_records)
#include <type_traits>  // std::remove_pointer_t (layer_weights)
#include <nlohmann/json.hpp>  // nlohmann::json: the typed JSON reads below

// ====================================================================================================================
// util.h (#included by deepseek.cu): errors, files, typed JSON reads, command-line flags, threads, time
// ====================================================================================================================

// ----------------------------------------------------------------------------
// errors: one clear line on stderr and a non-zero exit

[[noreturn]] void die(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// Tests set this so that die() throws DeepseekError instead of exiting.
extern bool g_die_throws;
struct DeepseekError { std::string msg; };

// Typed reads of JSON that comes from outside (config.json, trainer_state.json, data.json, JSONL lines, …). WHERE names
// the file (and line or object) for the message; each dies with one line naming the field and what was expected.
// A null field counts as absent. json_field returns null when absent and not required.
constexpr size_t JSON_FILE_MAX = (size_t)64 << 20;   // cap for JSON files parsed whole (config, state, data.json)
nlohmann::json json_parse_file(const std::string& path, size_t max_bytes = JSON_FILE_MAX);
const nlohmann::json* json_field(const nlohmann::json& obj, const char* key, const std::string& where, bool required);
long long json_int(const nlohmann::json& obj, const char* key, const std::string& where, long long dflt, long long lo,
                   long long hi, bool required = false);
double json_num(const nlohmann::json& obj, const char* key, const std::string& where, double dflt, double lo, double hi,
                bool required = false);
bool json_bool(const nlohmann::json& obj, const char* key, const std::string& where, bool dflt, bool required = false);
std::string json_str(const nlohmann::json& obj, const char* key, const std::string& where, const std::string& dflt,
                     bool required = false);
// A token id field (bos_token_id, eos_token_id, …): absent or null → {}; else an integer in [0, vocab_size), or with
// list a list of them (non-empty). Dies naming the field and the vocabulary's range.
std::vector<int> json_token_ids(const nlohmann::json& obj, const char* key, const std::string& where, int vocab_size,
                                bool list);

// files: checks, bounded reads, atomic writes
bool file_exists(const std::string& path);
bool dir_exists(const std::string& path);
bool path_exists(const std::string& path);   // anything at PATH (a file, directory, FIFO, …)
// opens PATH read-only if it is a regular file (size in *size), else dies naming what it is (a FIFO never blocks)
int open_regular_fd(const std::string& path, size_t* size);
// die unless PATH is a directory / a regular file: "WHAT PATH does not exist", "… is a file, not a directory", …
void require_dir(const std::string& path, const std::string& what);
void require_file(const std::string& path, const std::string& what);
// The whole of a regular file (a directory, FIFO, device or socket is refused, by name); dies if unreadable or
// larger than max_bytes.
std::string read_file(const std::string& path, size_t max_bytes = (size_t)1 << 32);
// A user's text (--input, --text): a regular file, or a pipe or character device (/dev/stdin, <(cmd), /dev/null),
// read to its end up to max_bytes.
std::string read_text_input(const std::string& path, size_t max_bytes = (size_t)1 << 32);
// appends f's bytes up to its end (or a read error: ferror) to *s; false as soon as *s holds more than max_bytes
bool read_stream(FILE* f, size_t max_bytes, std::string* s);
void write_file_atomic(const std::string& path, const std::string& content);  // PATH.tmp then rename
void make_dirs(const std::string& path);


// ----------------------------------------------------------------------------
// command-line flags: `--name value` pairs and `--switch`es, validated in one place

struct Args {
    std::string cmd;                              // e.g. "train", for messages
    std::vector<std::string> positional;          // non-flag arguments, in order
    std::map<std::string, std::string> values;    // --name value
    std::map<std::string, bool> switches;         // --name (no value)
    // Parses argv[first..argc). -h / --help among them prints `usage` to stdout and exits 0 (unless usage is null).
    // `value_flags` / `switch_flags` list the accepted names (without "--"); "-n" style short aliases may be given
    // as "n". Anything else is a clear error, and so is a positional argument beyond max_positional (-1: any).
    // A --threads N among the value flags sets OpenMP's thread count.
    Args(int argc, char** argv, int first, const std::string& cmd, const char* usage,
         const std::vector<std::string>& value_flags, const std::vector<std::string>& switch_flags,
         int max_positional = 0);
    bool has(const std::string& name) const;
    std::string str(const std::string& name, const std::string& dflt = "") const;
    long long integer(const std::string& name, long long dflt, long long lo, long long hi) const;
    double real(const std::string& name, double dflt, double lo, double hi) const;
    bool flag(const std::string& name) const;     // a switch
};
bool is_help(int argc, char** argv, int first);  // -h / --help among argv[first..]
int num_threads();                               // OpenMP threads in use (1 without OpenMP)
double now_seconds();                            // a monotonic clock (steady_clock), in seconds: for timings

// ====================================================================================================================
// deepseek.cu: the model — configuration, parameters, the layers in three tiers (with kernels/), weights I/O, backends
// ====================================================================================================================

// ----------------------------------------------------------------------------
// model configuration (Hugging Face config.json of LlamaForCausalLM)

struct Config {
    int vocab_size = 0;        // V, embedding rows
    int hidden_size = 0;       // C
    int num_hidden_layers = 0; // L
    int num_attention_heads = 0;   // H
    int num_key_value_heads = 0;   // KV (GQA when KV < H)
    int head_dim = 0;          // D = C / H
    int intermediate_size = 0; // F
    int max_position_embeddings = 0; // context
    double rms_norm_eps = 1e-6;     // double so config.json round-trips exactly (1e-06, not 9.99999997e-07)
    double rope_theta = 10000.0;
    int bos_token_id = 100000;
    int eos_token_id = 100001;
    std::string torch_dtype = "float32";
    std::string quantization;            // "" or "q8_0" (config.json's quantization_config.quant_method)
};
bool config_preset(const std::string& name, Config* cfg);    // false if unknown
std::vector<std::string> config_preset_names();
Config config_read_json(const std::string& path);             // dies with a clear message on bad input
void config_write_json(const Config& cfg, const std::string& path);
void config_validate(const Config& cfg, const std::string& where);
size_t config_num_parameters(const Config& cfg);
// the paper's model scale M: non-embedding FLOPs per token = 72·L·C² + 12·L·C·l_seq
double config_flops_per_token(const Config& cfg, int seq_len);

// ----------------------------------------------------------------------------
// parameters: one flat buffer, a flat struct of pointers into it (llm.c style).
// Per-layer tensors are stacked: q_proj is [L, H*D, C], i.e. L row-major [out, in] matrices.

constexpr int NUM_PARAM_TENSORS = 12;
struct ParameterTensors {
    float* embed_tokens;              // [V, C]
    float* input_layernorm;           // [L, C]
    float* q_proj;                    // [L, H*D, C]
    float* k_proj;                    // [L, KV*D, C]
    float* v_proj;                    // [L, KV*D, C]
    float* o_proj;                    // [L, C, H*D]
    float* post_attention_layernorm;  // [L, C]
    float* gate_proj;                 // [L, F, C]
    float* up_proj;                   // [L, F, C]
    float* down_proj;                 // [L, C, F]
    float* norm;                      // [C]
    float* lm_head;                   // [V, C]
};
// element counts of the 12 tensors, in struct order
void param_sizes(const Config& cfg, size_t sizes[NUM_PARAM_TENSORS]);
void param_point(ParameterTensors* p, float* memory, const size_t sizes[NUM_PARAM_TENSORS]);
// one entry per Hugging Face tensor (a per-layer stack is split into L entries)
struct ParamView {
    std::string name;              // e.g. "model.layers.3.mlp.up_proj.weight"
    size_t offset;                 // into the flat buffer, in elements
    std::vector<int64_t> shape;    // HF shape, e.g. {F, C}
    bool is_matrix;                // 2-D weights (weight decay applies); norms are 1-D
};
std::vector<ParamView> param_views(const Config& cfg);
// Layer l's slice of every per-layer stack, for any element type: the fp32 parameters, their gradients (the same
// layout) and the CUDA backend's bf16 copy (CudaParams, with the same fields) all take their layer through this view.
template <typename T> struct LayerWeights {
    T *input_layernorm, *q_proj, *k_proj, *v_proj, *o_proj, *post_attention_layernorm, *gate_proj, *up_proj, *down_proj;
};
template <typename Params> auto layer_weights(const Params& p, const Config& c, int l) {
    using T = std::remove_pointer_t<decltype(p.q_proj)>;
    size_t i = (size_t)l, C = c.hidden_size, F = c.intermediate_size;
    size_t QD = (size_t)c.num_attention_heads * c.head_dim, KVD = (size_t)c.num_key_value_heads * c.head_dim;
    return LayerWeights<T>{p.input_layernorm + i * C,          p.q_proj + i * QD * C,    p.k_proj + i * KVD * C,
                           p.v_proj + i * KVD * C,             p.o_proj + i * C * QD,    p.post_attention_layernorm + i * C,
                           p.gate_proj + i * F * C,            p.up_proj + i * F * C,    p.down_proj + i * C * F};
}

// activations for a forward/backward pass over B×T tokens (all fp32, CPU)
struct ActivationTensors {
    float* residual;   // [L+1, B, T, C]: the residual stream entering each layer, and the final one
    float* ln1;        // [L, B, T, C]  input_layernorm output
    float* ln1_rstd;   // [L, B, T]
    float* q;          // [L, B, T, H*D]   after RoPE
    float* k;          // [L, B, T, KV*D]  after RoPE
    float* v;          // [L, B, T, KV*D]
    float* att;        // [L, B, H, T, T]  softmax probabilities (reference path); fast path: [L, B, H, T] row log-sum-exp
    float* atty;       // [L, B, T, H*D]   attention output before o_proj
    float* resid_mid;  // [L, B, T, C]     residual after the attention block
    float* ln2;        // [L, B, T, C]
    float* ln2_rstd;   // [L, B, T]
    float* gate;       // [L, B, T, F]
    float* up;         // [L, B, T, F]
    float* act;        // [L, B, T, F]     silu(gate) * up
    float* lnf;        // [B, T, C]
    float* lnf_rstd;   // [B, T]
    float* logits;     // [B, T, V]
    float* losses;     // [B, T]     per-token negative log-likelihood (0 where masked)
};

struct Model {
    Config cfg;
    size_t param_sizes[NUM_PARAM_TENSORS];
    size_t num_parameters = 0;
    ParameterTensors params;
    std::vector<float> params_memory;
    ParameterTensors grads;
    std::vector<float> grads_memory;      // allocated on first backward
    ActivationTensors acts;
    std::vector<float> acts_memory;
    int B = 0, T = 0;                     // activation sizes currently allocated
    // last forward: inputs kept for backward
    std::vector<int> inputs, targets;
};

// Gives *v capacity for n floats without keeping its contents; a large buffer (≥ 8 MiB) is fresh memory advised
// for transparent huge pages before anything touches it (the training state's big arrays: fewer TLB misses).
void reserve_huge(std::vector<float>* v, size_t n);
void model_build(Model* m, const Config& cfg);              // allocates (zeroed) parameters
void model_init_random(Model* m, uint64_t seed, float std); // normal(0, std) matrices, ones for norms
// Forward over tokens [B,T]. targets [B,T] (may be null): target id, or -1 for a masked token.
// Returns the mean loss over unmasked tokens (0 if targets is null or all masked); logits in acts.logits.
float model_forward(Model* m, const int* inputs, const int* targets, int B, int T);
// Backward of L = Σ_t dlosses[t] · nll_t, accumulating (+=) into grads. Call model_zero_grad first.
// For the mean loss, dlosses[t] = 1/N for the N unmasked tokens (model_mean_loss_weights).
void model_backward(Model* m, const float* dlosses);
void model_mean_loss_weights(const int* targets, int n, std::vector<float>* dlosses);
void model_zero_grad(Model* m);

// ----------------------------------------------------------------------------
// layers, in the three tiers named in the header comment (X_ref, X_cpu; X_cuda in the CUDA section). Shapes: N rows.

extern bool g_cpu_reference;   // true: model_forward/model_backward run the _ref layers (the oracle); false: the _cpu ones
enum class Accum { Overwrite, Add };   // what a gradient (or GEMM) output gets: = or += (see "Gradients" above)

// the oracle: the CPU fp32 reference (deepseek.cu, section "layers: the CPU fp32 reference"), plain loops
// parallel over independent rows; the fast paths and the CUDA kernels are tested against these
void matmul_forward_ref(float* out, const float* inp, const float* weight, int N, int in, int out_dim);  // out[N,out] = inp[N,in] · weightᵀ
void matmul_backward_ref(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                         int N, int in, int out_dim);
void rmsnorm_forward_ref(float* out, float* rstd, const float* inp, const float* weight, int N, int C, float eps);
void rmsnorm_backward_ref(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                          const float* rstd, int N, int C);
void rope_forward_ref(float* x, const int* pos, int N, int heads, int D, float theta);   // in place, HF rotate-half
void rope_backward_ref(float* dx, const int* pos, int N, int heads, int D, float theta); // in place, the inverse rotation
void attention_forward_ref(float* y, float* att, const float* q, const float* k, const float* v, int B, int T, int H, int KV, int D);
void attention_backward_ref(float* dq, float* dk, float* dv, const float* dy, const float* att, const float* q,
                            const float* k, const float* v, int B, int T, int H, int KV, int D);
float silu(float x);
void swiglu_forward_ref(float* act, const float* gate, const float* up, size_t n);
void swiglu_backward_ref(float* dgate, float* dup, const float* dact, const float* gate, const float* up, size_t n);
void crossentropy_forward_ref(float* losses, const float* logits, const int* targets, int N, int V);
void crossentropy_backward_ref(float* dlogits, const float* logits, const int* targets, const float* dlosses, int N, int V);

// the fast CPU path (kernels/cpu_*.h): the functions the model runs on a CPU by default, each tested against its
// _ref twin (tests/test_fastpath.cpp). All are deterministic and independent of the thread count (each output
// element is summed by one thread, in an order fixed by the shapes).

const char* gemm_kernel_name(); // the microkernel chosen at build time, e.g. "avx512 14x32"
int gemm_block_columns();       // NC, the packed B block's columns, chosen at run time from the L2 size
// C[M,N] = (accum == Add ? C : 0) + op(A)·op(B); op(A)[m,k] = A[m*lda+k], or A[k*lda+m] if a_trans; B likewise
void gemm_cpu(int M, int N, int K, const float* A, int lda, bool a_trans, const float* B, int ldb, bool b_trans,
              float* C, int ldc, Accum accum);
// C[M,N] = (accum == Add ? C : 0) + A·Wᵀ, W [N,K] stored as bf16 (w_bf16) or q8_0 (w_q8, w_q8_scale; K % 32 == 0)
void gemm_cpu_lowp(int M, int N, int K, const float* A, int lda, const uint16_t* w_bf16, const int8_t* w_q8,
                   const uint16_t* w_q8_scale, float* C, int ldc, Accum accum);
void matmul_forward_cpu(float* out, const float* inp, const float* weight, int N, int in, int out_dim);
// dinp = or += dout · weight (dinp_accum), dweight += doutᵀ · inp; either may be null
void matmul_backward_cpu(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                         int N, int in, int out_dim, Accum dinp_accum);
void rmsnorm_forward_cpu(float* out, float* rstd, const float* inp, const float* weight, int N, int C, float eps);
void residual_rmsnorm_forward_cpu(float* res, float* out, float* rstd, const float* skip, const float* weight, int N, int C, float eps);
void rmsnorm_backward_cpu(float* dinp, const float* dskip, float* dweight, const float* dout, const float* inp,
                          const float* weight, const float* rstd, int N, int C);
void rope_table(float* cosv, float* sinv, int T, int D, float theta);   // [T, D/2]: shared by the _cpu and _cuda RoPE
void rope_apply_cpu(float* x, const float* cosv, const float* sinv, const int* pos, int N, int heads, int D, float sign);
void swiglu_forward_cpu(float* act, const float* gate, const float* up, size_t n);
void swiglu_backward_cpu(float* dgate, float* dup, const float* dact, const float* gate, const float* up, size_t n);
void crossentropy_forward_cpu(float* losses, const float* logits, const int* targets, int N, int V);
void crossentropy_backward_cpu(float* dlogits, const float* logits, const float* losses, const int* targets,
                               const float* dlosses, int N, int V);
void attention_forward_cpu(float* y, float* lse, const float* q, const float* k, const float* v,
                           int B, int T, int H, int KV, int D);
// queries at positions q0 … q0+Tq−1 over Tk = q0+Tq keys (prefill over a KV cache); lse may be nullptr
void attention_forward_offset_cpu(float* y, float* lse, const float* q, const float* k, const float* v,
                                  int B, int Tq, int Tk, int q0, int H, int KV, int D);
// the same over keys/values at strides in floats: key s of kv head kh in batch b at k + b·bs + s·ps + kh·hs
void attention_forward_strided_cpu(float* y, float* lse, const float* q, const float* k, const float* v,
                                   int B, int Tq, int Tk, int q0, int H, int KV, int D, size_t bs, size_t ps, size_t hs);
void attention_backward_cpu(float* dq, float* dk, float* dv, const float* dy, const float* y, const float* lse,
                            const float* q, const float* k, const float* v, int B, int T, int H, int KV, int D);
// (end of the layers)

// ----------------------------------------------------------------------------
// safetensors and model directories (Hugging Face layout)

enum class DType { F32, BF16, F16, I32, I64, U8, I8 };
const char* dtype_name(DType t);
size_t dtype_size(DType t);
// bf16 → fp32 is a 16-bit shift; inline so the compiler vectorises it inside the decode loops' dot products
inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
uint16_t f32_to_bf16(float f);   // round to nearest even
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);    // round to nearest even (as F16C's vcvtps2ph)
// q8_0 (GGUF's Q8_0): blocks of Q8_BLOCK weights as int8 q and one fp16 scale d; weight = q·d. n % Q8_BLOCK == 0.
const int Q8_BLOCK = 32;
void q8_0_quantize(const float* x, size_t n, int8_t* q, uint16_t* d);   // llama.cpp's reference rule
void q8_0_dequantize(const int8_t* q, const uint16_t* d, size_t n, float* out);

struct TensorInfo {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    const uint8_t* data = nullptr;   // into the memory map
    size_t nbytes = 0;
    std::string file;                // the safetensors file it is in, for messages
    size_t numel() const;
};
// A memory-mapped safetensors file (or all shards of a model directory). Validates the header fully.
struct SafeTensors {
    std::vector<std::pair<void*, size_t>> maps;   // mmap regions, unmapped in the destructor
    bool in_ram = false;   // files are read into (huge-page) anonymous memory instead of being memory-mapped
    std::map<std::string, TensorInfo> tensors;
    std::map<std::string, std::string> metadata;
    std::string source;          // the directory (or file) opened, for messages
    SafeTensors() = default;
    SafeTensors(const SafeTensors&) = delete;
    SafeTensors& operator=(const SafeTensors&) = delete;
    ~SafeTensors();
    void open_file(const std::string& path);      // adds one file's tensors
    // model.safetensors or the index's shards, memory-mapped. ram_if_fits: read them into huge-page memory (in_ram)
    // instead when they take less than half of the available memory (generate/chat --huge-pages).
    void open_dir(const std::string& dir, bool ram_if_fits = false);
    const TensorInfo& get(const std::string& name) const;  // dies if missing
    bool has(const std::string& name) const { return tensors.count(name) > 0; }
    // the scales of the q8_0 matrix NAME (I8): NAME_scale, F16 [rows, cols/Q8_BLOCK]; dies if missing or misshapen
    const TensorInfo& q8_scale(const std::string& name) const;
    // copies a tensor into fp32 (I8: dequantised with its scales), checking its shape
    void read_f32(const std::string& name, const std::vector<int64_t>& shape, float* out) const;
};
struct TensorOut {
    std::string name;
    DType dtype;                 // of the data given
    std::vector<int64_t> shape;
    const void* data;
};
// Writes tensors to PATH via PATH.tmp + rename. Tensors given as F32 may be stored as BF16 (store_bf16).
void safetensors_write(const std::string& path, const std::vector<TensorOut>& tensors, bool store_bf16 = false,
                       const std::map<std::string, std::string>& metadata = {});

// A model directory's tensors against its config.json: every tensor the model uses is there with its shape and a
// float dtype (F32, BF16, F16), and no other tensor is (rotary_emb.inv_freq buffers aside); with values, every
// one of them is also scanned for NaN or ±Inf. Dies naming the file and the tensor.
void model_check_tensors(const SafeTensors& st, const Config& cfg, bool values);
void model_load_dir(Model* m, const std::string& dir);      // config.json + safetensors → fp32 params
// config.json + model.safetensors (+ generation_config.json); Q8_0: matrices as int8 + fp16 scales, norms fp32
enum class StoreDtype { F32, BF16, Q8_0 };
void model_save_dir(const Model& m, const std::string& dir, StoreDtype dtype);
// a model from --preset NAME or --model DIR (exactly one), for subcommands
void model_from_args(Model* m, const Args& a, uint64_t seed);

// ----------------------------------------------------------------------------
// GGUF (llama.cpp's file format, version 3; little-endian):
//   "GGUF", u32 version, u64 tensor count, u64 key/value count, the key/values, the tensor infos, zero padding to
//   general.alignment (32 unless the key says otherwise), then the tensor data, each tensor at an aligned offset
//   from the data's start. A string is u64 length + bytes; a key/value is a string key, a u32 value type and the
//   value; an array is a u32 item type, a u64 count and the items. A tensor info is a string name, u32 n_dims,
//   u64 ne[n_dims] — ne[0] varies fastest, so a row-major [out, in] matrix is {in, out} —, u32 ggml type, u64 offset.
enum GgufValueType : uint32_t { GGUF_U8 = 0, GGUF_I8 = 1, GGUF_U16 = 2, GGUF_I16 = 3, GGUF_U32 = 4, GGUF_I32 = 5,
                                GGUF_F32 = 6, GGUF_BOOL = 7, GGUF_STRING = 8, GGUF_ARRAY = 9, GGUF_U64 = 10,
                                GGUF_I64 = 11, GGUF_F64 = 12 };
// ggml tensor types we write or read; Q8_0 is a block of Q8_BLOCK weights: fp16 scale d, then Q8_BLOCK int8
enum GgmlType : uint32_t { GGML_TYPE_F32 = 0, GGML_TYPE_F16 = 1, GGML_TYPE_Q8_0 = 8, GGML_TYPE_BF16 = 30 };
const uint32_t GGUF_VERSION = 3, GGUF_DEFAULT_ALIGNMENT = 32;
const size_t Q8_0_BLOCK_BYTES = 2 + Q8_BLOCK;
// general.file_type (llama.cpp's llama_ftype): what most tensors are
enum GgufFileType : uint32_t { GGUF_FTYPE_ALL_F32 = 0, GGUF_FTYPE_MOSTLY_Q8_0 = 7, GGUF_FTYPE_MOSTLY_BF16 = 32 };
size_t gguf_scalar_size(uint32_t value_type);                // bytes of a scalar value type; 0: string, array, unknown
bool ggml_type_bytes(uint32_t type, uint64_t n, size_t* bytes);   // false: a type we do not know, or n not in blocks

// A bounds-checked cursor over GGUF bytes (the vocabulary import and gguf_read): a short file dies naming WHERE.
struct GgufReader {
    const unsigned char* p; size_t n, pos = 0; std::string where;
    void need(size_t k) { if (k > n - pos) die("%s: truncated GGUF file", where.c_str()); }
    uint32_t u32() { need(4); uint32_t v; memcpy(&v, p + pos, 4); pos += 4; return v; }
    uint64_t u64() { need(8); uint64_t v; memcpy(&v, p + pos, 8); pos += 8; return v; }
    std::string str() { uint64_t l = u64(); need(l); std::string s((const char*)p + pos, l); pos += l; return s; }
    long long scalar_int(uint32_t type);          // an integer or bool value of TYPE; dies on any other type
    double scalar_float(uint32_t type);           // a float (or integer) value of TYPE
    void skip(uint32_t type, int depth = 0);      // past one value of TYPE
};

// Key/values of a GGUF being written, serialised as they are added.
struct GgufMeta {
    std::string bytes;
    uint64_t count = 0;
    void put_str(const std::string& key, const std::string& v);
    void put_u32(const std::string& key, uint32_t v);
    void put_f32(const std::string& key, float v);
    void put_bool(const std::string& key, bool v);
    void put_str_array(const std::string& key, const std::vector<std::string>& v);
    void put_i32_array(const std::string& key, const std::vector<int32_t>& v);
};

// A GGUF file read whole and validated (every tensor's type, size, alignment and extent): what tests read back.
struct GgufValue {
    uint32_t type = 0, elem_type = 0;   // elem_type: of an array
    long long i = 0;                    // integer and bool scalars
    double f = 0;                       // float scalars
    std::string s;                      // a string
    std::vector<std::string> strs;      // an array of strings
    std::vector<long long> ints;        // an array of integers or bools
    std::vector<double> floats;         // an array of floats
};
struct GgufTensor {
    std::string name;
    std::vector<uint64_t> ne;           // ne[0] fastest
    uint32_t type = 0;
    uint64_t offset = 0;                // from the start of the data
    const uint8_t* data = nullptr;      // into GgufFile::bytes
    size_t nbytes = 0;
};
struct GgufFile {
    std::string bytes;
    uint32_t version = 0, alignment = GGUF_DEFAULT_ALIGNMENT;
    size_t data_offset = 0;             // where the tensor data starts
    std::map<std::string, GgufValue> kv;
    std::vector<GgufTensor> tensors;
    const GgufValue* find(const std::string& key) const { auto it = kv.find(key); return it == kv.end() ? nullptr : &it->second; }
};
void gguf_read(const std::string& path, GgufFile* f);

// convert --to gguf: a model directory and a tokenizer.json → one GGUF that llama.cpp runs as its "llama"
// architecture (PATH.tmp, then rename). F32: every tensor fp32; BF16: matrices bf16 (a bf16 source copied bit for
// bit); Q8_0: matrices q8_0 (a q8_0 source's blocks copied, others quantised by q8_0_quantize); norms always F32.
// tokenizer.chat_template: DIR/tokenizer_config.json's chat_template if it has one, else default_chat_template.
void model_export_gguf(const std::string& dir, const std::string& tokenizer_path, const std::string& default_chat_template,
                       const std::string& out, StoreDtype dtype);

// ----------------------------------------------------------------------------
// backends

enum class Device { CPU, CUDA };
Device device_select(const std::string& flag);   // "auto" | "cpu" | "cuda"; dies with a clear line if cuda is unavailable
int cuda_device_count();                          // 0 when built without CUDA or no device
std::string cuda_device_name(int i);
std::string device_describe(Device dev);
// the GPU this process drives: local_rank % the devices on this machine (data-parallel ranks: one GPU per rank); 0
// until set. Every CUDA call of the backend, NCCL's included, runs on it.
void cuda_use_local_rank(int local_rank);
int cuda_device_index();   // "cuda (NVIDIA H200, 139.8 GiB, sm_90)" / "cpu (16 threads)"

// The model a training loop, an objective or an evaluation runs on: the host Model (the CPU backend) or, when cuda
// is set, the CUDA backend's copy of it; the host Model then keeps the run's checkpoint copy (backend_to_host fetches
// the fp32 master weights and AdamW moments before each save, so a checkpoint has one format for both). Each
// backend_X is model_X (or adamw_update_range, the clipping) on the CPU and cuda_model_X on the GPU.
struct CudaModel;
struct AdamW;
struct Backend {
    Model* host = nullptr;
    CudaModel* cuda = nullptr;
    std::vector<float> losses;     // CUDA: the last forward's per-token nll [B·T], copied from the device
    // AdamW's range of the flat parameters: all of them, or this rank's ZeRO-1 shard (opt.m and opt.v hold that
    // range only). Set before backend_open; opt_end 0 means "to the end".
    size_t opt_begin = 0, opt_end = 0;
    explicit Backend(Model* m, CudaModel* gpu = nullptr) : host(m), cuda(gpu) {}
};
// the paper's optimizer (AdamW, clipping), which backend_adamw and backend_clip apply on either backend
constexpr double ADAMW_BETA1 = 0.9;
constexpr double ADAMW_BETA2 = 0.95;
constexpr double ADAMW_EPS = 1e-8;           // not stated in the paper: PyTorch's default
constexpr double WEIGHT_DECAY = 0.1;
constexpr double CLIP_GRAD_NORM = 1.0;
float backend_forward(Backend* be, const int* inputs, const int* targets, int B, int T);   // model_forward on either
const float* backend_losses(const Backend* be);   // the last forward's per-token nll [B·T] (acts.losses on the CPU)
void backend_backward(Backend* be, const float* dlosses);
void backend_zero_grad(Backend* be);
// What data parallelism (train.cu's one data-parallel path) works on, where the backend keeps it: the flat fp32
// gradients and master weights [num_parameters], in host memory on the CPU and in device memory on the GPU.
float* backend_grads(Backend* be);
float* backend_weights(Backend* be);
size_t backend_opt_begin(const Backend* be);
size_t backend_opt_end(const Backend* be);
// Σ g² over AdamW's range, in double and in a fixed order (the same bits at every thread count)
double backend_grad_sum_squares(Backend* be);
// the clip coefficient (clip_coefficient) applied to the gradients of AdamW's range: the CPU scales them in place;
// the GPU sets *grad_scale, which its AdamW multiplies each gradient by as it reads it (the same values)
void backend_clip(Backend* be, double coef, float* grad_scale);
// AdamW over AdamW's range (weight decay on matrices only, PyTorch's arithmetic); opt->t counts the updates
void backend_adamw(Backend* be, AdamW* opt, float lr, float grad_scale);
// after the master weights were all-gathered (ZeRO-1): the GPU refreshes its bf16 parameters from them
void backend_weights_changed(Backend* be);
// before a checkpoint: the device's fp32 master weights and AdamW's range of moments into the host Model and opt
void backend_to_host(Backend* be, AdamW* opt);
// the model onto the GPU for Device::CUDA (with opt's AdamW moments, of AdamW's range, when resuming), sized for B×T
// tokens; recompute as cuda_model_create's. Prints the device either way.
void backend_open(Backend* be, Device dev, const AdamW& opt, int B, int T, bool recompute, const char* who);
void backend_close(Backend* be);

// ----------------------------------------------------------------------------
// the CUDA backend (kernels/cuda_*.cuh, compiled into deepseek.cu by nvcc; without CUDA these die with a clear line)
// bf16 parameters and activations, fp32 master weights, gradients and AdamW moments on one GPU.
// Same semantics as the CPU model: targets −1 are masked, dlosses weights each token's loss, gradients
// accumulate (+=) until cuda_model_zero_grad. One backward per forward (it consumes the logits in place).
struct CudaModel;
struct CudaDecode;
// Copies the host model's config and fp32 parameters; activations are sized for B×T tokens up front.
// recompute: keep RMSNorm/SwiGLU outputs for one layer only and recompute them in backward.
// verbose prints the device and the memory of each kind.
CudaModel* cuda_model_create(const Model& host, int B, int T, bool recompute, bool verbose = true);
// The inference-only model (generate, chat on --device cuda): the bf16 parameters and nothing else (2 bytes per
// parameter instead of 18, no activations), filled straight from the stored weights (memory-mapped fp32, bf16 or
// q8_0), one tensor at a time, with no fp32 copy of the model. Decoding only: the training calls die on it.
struct InferModel;
CudaModel* cuda_model_create_inference(const InferModel& im, bool verbose = true);
void cuda_model_free(CudaModel* m);
float cuda_model_forward(CudaModel* m, const int* inputs, const int* targets, int B, int T);  // mean loss, like model_forward
void cuda_model_backward(CudaModel* m, const float* dlosses);                                 // like model_backward
// Called by cuda_model_backward once layer l's gradient kernels are queued (layers L−1 … 0; none for the embedding,
// the final norm and lm_head), for overlapping the data-parallel all-reduce with the rest of the backward; an empty
// function (the default) for none.
void cuda_model_on_layer_grads(CudaModel* m, std::function<void(int layer)> fn);
void cuda_model_zero_grad(CudaModel* m);
float cuda_model_grad_norm(CudaModel* m);          // global L2 norm of the fp32 gradients
// Σ g² over [begin, end) of the flat fp32 gradients, in double: a fixed grid of partial sums added in order
double cuda_model_grad_sum_squares(CudaModel* m, size_t begin, size_t end);
// ZeRO-1: AdamW's moments for [begin, end) of the parameters only (reallocated, zeroed); cuda_model_adamw then updates
// that range, and cuda_model_get/set_adam_state move end − begin elements. By default the range is all parameters.
void cuda_model_shard_optimizer(CudaModel* m, size_t begin, size_t end);
float* cuda_model_grads(CudaModel* m);             // device pointers, [num_parameters]: the fp32 gradients
float* cuda_model_master(CudaModel* m);            // and the fp32 master weights
void cuda_model_refresh_params(CudaModel* m);      // the bf16 parameters rounded from the master weights
// AdamW (PyTorch's) on the fp32 master weights with gradients × grad_scale; weight decay on matrices only
// (param_views' is_matrix); refreshes the bf16 parameters. step counts from 1. Over the optimizer's range
// (cuda_model_shard_optimizer; all parameters by default).
void cuda_model_adamw(CudaModel* m, float lr, float beta1, float beta2, float eps, float weight_decay, float grad_scale, int step);
void cuda_model_get_params(CudaModel* m, Model* host);        // fp32 master weights → host
void cuda_model_set_params(CudaModel* m, const Model& host);  // host → master weights and bf16 parameters
void cuda_model_get_grads(CudaModel* m, float* host_grads);   // [num_parameters], fp32
void cuda_model_get_adam_state(CudaModel* m, float* host_m, float* host_v);        // for checkpoints
void cuda_model_set_adam_state(CudaModel* m, const float* host_m, const float* host_v);
void cuda_model_get_logits(CudaModel* m, float* host_logits);  // [B,T,V] of the last forward (before backward)
void cuda_model_get_losses(CudaModel* m, float* host_losses);  // [B,T] per-token nll of the last forward
size_t cuda_model_memory_bytes(const CudaModel* m);
// batch-1 generation with a KV cache of Tmax positions: feed tokens at positions 0, 1, 2, …; returns the
// next-token logits [V] (host memory owned by the decoder, valid until the next step), or null if !want_logits.
CudaDecode* cuda_decode_create(CudaModel* m, int Tmax);
void cuda_decode_free(CudaDecode* d);
const float* cuda_decode_step(CudaDecode* d, int token, int pos, bool want_logits = true);
// Prefill: n tokens at positions pos0 … pos0+n−1 at once through the training kernels (matmuls over n rows, RoPE with
// the position offset, K and V written into the cache), in chunks of up to cuda_decode_chunk(d) tokens; returns the
// last token's logits like cuda_decode_step (null if !want_logits). Positions before pos0 must be in the cache.
const float* cuda_decode_prefill(CudaDecode* d, const int* tokens, int n, int pos0, bool want_logits = true);
int cuda_decode_chunk(const CudaDecode* d);
// device memory the decoder holds: the KV cache and its activations (one token's and one prefill chunk's)
size_t cuda_decode_memory_bytes(const CudaDecode* d, size_t* kv_cache_bytes);
size_t cuda_memory_in_use();   // device memory in use on this process's GPU (cudaMemGetInfo: total − free)
void cuda_synchronize();   // waits for the device to finish its queued work (dies on a CUDA error): for timing
// Attention's kernels: "auto" (= "tensor": bf16 tensor cores for head_dim 32, 64 and 128, the CUDA-core kernels for
// other sizes) or "scalar" (the CUDA-core kernels for all); also the environment's DEEPSEEK_ATTENTION. For tests.
void cuda_set_attention(const std::string& impl);
const char* cuda_attention_path(int head_dim);   // which kernels attention takes for this head size
// Single kernels on host arrays (inputs rounded to bf16 where the kernel reads bf16), for tests/test_cuda.cpp,
// which compares them with their _ref twins (the layers section above). Defined only in the CUDA build.
void cuda_op_embedding(float* out, float* dwte, const int* tokens, const float* wte, const float* dres, int N, int V, int C);
void cuda_op_matmul(float* out, float* dinp, float* dweight, const float* inp, const float* weight, const float* dout,
                    int N, int in, int out_dim);
void cuda_op_rmsnorm(float* out, float* rstd, float* dinp, float* dweight, const float* inp, const float* weight,
                     const float* dout, int N, int C, float eps);
void cuda_op_rope(float* x, int N, int T, int heads, int D, float theta, float sign);
void cuda_op_attention(float* y, float* dq, float* dk, float* dv, const float* q, const float* k, const float* v,
                       const float* dy, int B, int T, int H, int KV, int D);
void cuda_op_decode_attention(float* y, const float* q, const float* kc, const float* vc, int pos, int H, int KV, int D);
void cuda_op_swiglu(float* act, float* dgate, float* dup, const float* gate, const float* up, const float* dact, size_t n);
void cuda_op_crossentropy(float* losses, float* dlogits, const float* logits, const int* targets, const float* dlosses, int N, int V);
void cuda_op_adamw(float* master, float* param, float* m, float* v, const float* grad, size_t n, float lr, float beta1,
                   float beta2, float eps, float weight_decay, float grad_scale, int step);
float cuda_op_grad_norm(const float* g, size_t n);

// subcommands
int cmd_info(int argc, char** argv);

// ====================================================================================================================
// tokenizer.cpp: byte-level BPE with Hugging Face tokenizer.json interop (and GGUF's vocabulary keys)
// ====================================================================================================================

struct Tokenizer;                                              // opaque
Tokenizer* tokenizer_load(const std::string& path);            // tokenizer.json; dies with a clear line on bad input
void tokenizer_free(Tokenizer* tok);
std::vector<int> tokenizer_encode(const Tokenizer* tok, const std::string& text, bool add_bos);
std::string tokenizer_decode(const Tokenizer* tok, const std::vector<int>& ids);   // dies on an unknown id
std::string tokenizer_token_bytes(const Tokenizer* tok, int id);  // the raw bytes one token stands for
int tokenizer_vocab_size(const Tokenizer* tok);                // highest id + 1, added tokens included
int tokenizer_token_id(const Tokenizer* tok, const std::string& content);  // -1 if not a token (e.g. special tokens)
int tokenizer_bos_id(const Tokenizer* tok);                    // -1 if none
int tokenizer_eos_id(const Tokenizer* tok);                    // -1 if none
// The vocabulary as llama.cpp's GGUF keys (tokenizer.ggml.*: model "gpt2", pre "deepseek-llm", tokens, token_type,
// merges, bos/eos, add_bos_token), padded with "[PAD<id>]" user-defined tokens to vocab_size (the embedding rows).
// Dies if the pre-tokenizer is not DeepSeek LLM's (llama.cpp would split text differently) or the tokenizer has more
// ids than vocab_size.
void tokenizer_gguf_metadata(const Tokenizer* tok, int vocab_size, GgufMeta* meta);
// trains byte-level BPE with DeepSeek's pre-tokenizer on the files; writes tokenizer.json (atomically)
void tokenizer_train_files(const std::vector<std::string>& files, int vocab_size, const std::string& out_path,
                           bool verbose);

int cmd_tokenizer(int argc, char** argv);

// ====================================================================================================================
// infer.cu: generation with a KV cache, sampling, the chat template, chat evaluation; generate, chat, eval
// ====================================================================================================================

// ----------------------------------------------------------------------------
// inference with a KV cache, sampling, generation, the chat template

// A weight matrix [out, in] as stored: fp32, bf16 kept bf16, or q8_0 (int8 + fp16 scale per 32) kept q8_0
// (memory-mapped; upcast inside the dot products). Exactly one pointer is set.
struct InferWeight {
    const float* f32 = nullptr;
    const uint16_t* bf16 = nullptr;
    const int8_t* q8 = nullptr;            // [out, in]
    const uint16_t* q8_scale = nullptr;    // [out, in/Q8_BLOCK], fp16
};
struct InferLayer {
    const float* input_layernorm;            // [C]
    const float* post_attention_layernorm;   // [C]
    InferWeight q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj;
};
// The model for generation: weights pointed into (a memory map or a Model's fp32 buffer), never copied,
// plus the KV cache [L, ctx, KV*D] for positions 0..pos-1 and scratch for a chunk of tokens.
struct InferModel {
    Config cfg;
    SafeTensors st;                    // the memory-mapped weights (empty when built from a Model)
    std::vector<float> owned;          // fp32 copies: norms, and any F16 / misaligned tensor
    InferWeight embed_tokens, lm_head; // [V, C]
    const float* norm = nullptr;       // [C]
    std::vector<InferLayer> layers;
    const char* weights_dtype = "fp32"; // of the matrices: "fp32", "bf16" or "q8_0" 
    int ctx = 0;                       // cache capacity in tokens (≤ max_position_embeddings)
    int pos = 0;                       // tokens in the cache
    std::vector<int> cached;           // the token ids in the cache, [pos]
    // [L, KV, ctx, D] each, head-major: one head's keys are a contiguous run of positions, which a decoded
    // token's attention reads as one stream (infer_kv_offset). calloc: pages are touched only as the cache
    // fills. fp32 by default, fp16 (IEEE half, as uint16_t) after infer_kv_cache_f16 — half the bytes each
    // decoded token reads per cached position
    bool kv_f16 = false;
    void* key_cache = nullptr;
    void* value_cache = nullptr;
    std::vector<float> scratch;        // activations for one chunk of tokens
    std::vector<float> logits;         // [V] for the last token (or [n, V] with all_logits)
    CudaDecode* cuda = nullptr;        // --device cuda: infer_forward runs on the GPU (infer_attach_cuda; its caller frees it)
    InferModel() = default;
    InferModel(const InferModel&) = delete;
    InferModel& operator=(const InferModel&) = delete;
    ~InferModel();
};
// Loads a Hugging Face model directory (config.json + safetensors, single or sharded); ctx ≤ 0: the model's context.
// huge_pages: read the weights into huge pages when they take under half of the available memory (else mapped)
void infer_load(InferModel* im, const std::string& dir, int ctx, bool huge_pages = false);
// Views a Model's fp32 parameters (the Model must outlive im).
void infer_from_model(InferModel* im, const Model& m, int ctx);
// The KV cache in fp16 (true) or fp32 (false, the default): keys and values are rounded to fp16 (to nearest even)
// as they are stored, and attention reads them back widened. Empties the cache. CPU only (the GPU keeps its own).
void infer_kv_cache_f16(InferModel* im, bool f16);
// Where the key (or value) of kv head `head` at position `pos` of `layer` begins in the cache, in elements
// (fp32 or fp16): its D elements follow, then those of position pos + 1.
inline size_t infer_kv_offset(const InferModel& im, int layer, int head, int pos) {
    return (((size_t)layer * im.cfg.num_key_value_heads + head) * im.ctx + pos) * im.cfg.head_dim;
}
// Appends tokens [n] at positions pos..pos+n-1 (prefill in chunks; decode is n = 1). Returns the logits of the
// last token [V], or with all_logits those of all n tokens [n, V]. Dies if the cache would overflow.
const float* infer_forward(InferModel* im, const int* tokens, int n, bool all_logits = false);
extern int g_prefill_chunk;   // the prompt is prefilled in chunks of this many tokens (256; tests make it small)
// Keeps the first `keep` cached tokens (a shared prompt prefix) and drops the rest.
void infer_rewind(InferModel* im, int keep);
// --device cuda: from now on infer_forward feeds the tokens through cuda_decode_step on `gpu` (the same weights,
// bf16 on the GPU) with a KV cache of im->ctx positions on the device. The caller frees im->cuda
// (cuda_decode_free), then gpu.
void infer_attach_cuda(InferModel* im, CudaModel* gpu);
// out [N, out_dim] = x [N, in] · Wᵀ as generation computes it: N < 8 on the stored rows (q8_0: x quantised to
// q8_0 per token, int8 dot products), N ≥ 8 through the GEMM (q8_0 and bf16 rows upcast). For tests.
void infer_linear(float* out, const float* x, int N, int in, const InferWeight& W, int out_dim);

// Sampling, in transformers' order: repetition penalty over the tokens seen, temperature, top-k, top-p, then a
// draw; temperature 0 is greedy (argmax after the repetition penalty).
struct SamplerParams {
    float temperature = 0.0f;
    int top_k = 0;                      // 0: off
    float top_p = 1.0f;                 // 1: off
    float repetition_penalty = 1.0f;    // 1: off
    uint64_t seed = 0;
};
struct Sampler {
    SamplerParams p;
    uint64_t rng = 0;
    std::vector<std::pair<float, int>> work;   // candidates, reused between calls
};
void sampler_init(Sampler* s, const SamplerParams& p);
// Picks the next token from logits [V] (modified in place by the penalty/temperature); `seen` = prompt + generated.
int sampler_sample(Sampler* s, float* logits, int V, const std::vector<int>& seen);

// Generation from token ids until EOS, max_new tokens, the context's end, or `on_token` returning false.
struct GenerateStats {
    int prompt_tokens = 0, prefill_tokens = 0, generated = 0;
    double prefill_s = 0, decode_s = 0, first_token_s = 0;
    std::string stop_reason;            // "eos", "length", "context", "stop"
};
std::vector<int> generate_tokens(InferModel* im, const std::vector<int>& prompt, int max_new, const SamplerParams& sp,
                                 const std::vector<int>& eos_ids, GenerateStats* stats = nullptr,
                                 bool (*on_token)(int id, void* ctx) = nullptr, void* on_token_ctx = nullptr);
// Greedy continuation (temperature 0, no penalty), stopping at `eos` (-1: never): for eval.
std::vector<int> generate_greedy(InferModel* im, const std::vector<int>& prompt, int max_new, int eos);

// Streaming text: bytes in, only whole UTF-8 characters out (invalid bytes become U+FFFD), holding back text
// that may be the start of a stop string. push() returns what may be printed now; finish() the rest.
struct TextStream {
    std::string stop;                   // "" = none
    std::string pending;                // bytes not yet printed
    bool stopped = false;               // the stop string was seen (nothing after it is printed)
};
std::string text_stream_push(TextStream* ts, const std::string& bytes);
std::string text_stream_finish(TextStream* ts);

// DeepSeek LLM's chat template (deepseek-llm-7b-chat's tokenizer_config.json):
//   {bos}[{system}\n\n]User: {u1}\n\nAssistant: {a1}{eos}User: {u2}\n\n…[Assistant:]
// the template itself as the Jinja string of that tokenizer_config.json (what a GGUF's tokenizer.chat_template carries)
extern const char* const CHAT_TEMPLATE_JINJA;
struct ChatMessage { std::string role, content; };   // role: "system" | "user" | "assistant"
std::string chat_render(const std::vector<ChatMessage>& msgs, bool add_generation_prompt, const std::string& bos,
                        const std::string& eos);
// Tokens of the rendered conversation (exactly tokenizer_encode of chat_render, BOS as text) and a mask that is 1
// on assistant tokens (the reply after "Assistant:", its EOS included): the SFT loss mask.
void chat_tokens(const Tokenizer* tok, const std::vector<ChatMessage>& msgs, bool add_generation_prompt,
                 std::vector<int>* ids, std::vector<uint8_t>* assistant_mask);

// chat evaluation
bool text_is_repetitive(const std::string& text);   // some sentence (between . ! ? newline) occurs twice

// multiple-choice tasks (eval --task): one JSONL line {"context", "choices", "label"}, tokenised as EleutherAI's
// lm-evaluation-harness does (its _encode_pair; the rules above mc_read_jsonl in infer.cu)
struct McItem {
    std::string context;
    std::vector<std::string> choices;
    int label = 0;
    int line = 0;                                   // in the file, for messages
    std::vector<int> context_ids;                   // what every continuation is conditioned on (never empty)
    std::vector<std::vector<int>> continuation_ids; // per choice: the scored tokens (never empty)
    std::vector<int> chars;                         // per choice: its length in Unicode characters (acc_norm's divisor)
};
// Reads and tokenises a task file. A bad line (not JSON, a missing or ill-typed field, fewer than 2 choices, an
// empty choice, a label out of range, a choice with no continuation tokens or more than context_len of them) is
// an error "FILE:LINE: why"; with skip_bad it is reported, skipped and counted in *skipped instead.
std::vector<McItem> mc_read_jsonl(const std::string& path, const Tokenizer* tok, int context_len, bool skip_bad,
                                  int* skipped);

// subcommands
int cmd_eval(int argc, char** argv);
int cmd_generate(int argc, char** argv);
int cmd_chat(int argc, char** argv);

// ====================================================================================================================
// train.cu: pre-training, SFT and DPO, data parallelism; plan, data, train, sft, dpo
// ====================================================================================================================

// ----------------------------------------------------------------------------
// token shards, data loader, AdamW, clipping, schedules, scaling laws, checkpoints

// token shard: a 256 × int32 header (magic 20240102, version 1, vocab size, token count lo/hi) then uint32 tokens
void shard_write(const std::string& path, const std::vector<uint32_t>& tokens, int vocab_size);
struct Shard {                        // a memory-mapped, fully validated shard
    const uint32_t* tokens = nullptr;
    size_t n = 0;                     // tokens
    int vocab_size = 0;               // from the header
    void* map = nullptr;
    size_t map_size = 0;
    Shard() = default;
    Shard(const Shard&) = delete;
    Shard& operator=(const Shard&) = delete;
    ~Shard();
};
// dies (one clear line) on a bad magic/version, a truncated file, a vocabulary above max_vocab (if > 0), a bad token
void shard_open(Shard* s, const std::string& path, int max_vocab);
double unigram_entropy_bits(const std::vector<uint32_t>& tokens, int vocab_size);   // bits per token
// blank-line documents; document i goes to val iff floor((i+1)·F) > floor(i·F)
void split_train_val(const std::string& text, double val_fraction, std::string* train, std::string* val);

// windows of T+1 tokens, shuffled per epoch from (seed, epoch), rank r of `world` reads permutation positions ≡ r
struct DataLoader {
    Shard shard;
    int B = 0, T = 0, rank = 0, world = 1;
    uint64_t seed = 0;
    bool shuffle = true;
    size_t num_windows = 0, per_rank = 0;
    uint64_t epoch = 0;               // cursor: the epoch and the windows this rank has read in it
    size_t index = 0;
    std::vector<uint32_t> perm;       // this epoch's window order
};
void loader_init(DataLoader* d, const std::string& path, int B, int T, int rank, int world, uint64_t seed, int max_vocab,
                 bool shuffle);
void loader_seek(DataLoader* d, uint64_t epoch, size_t index);
void loader_next(DataLoader* d, int* inputs, int* targets);   // [B, T] each

// AdamW with torch.optim.AdamW's arithmetic (β1 0.9, β2 0.95, ε 1e-8); t = update count starting at 1
void adamw_step(float* p, const float* g, float* m, float* v, size_t n, float lr, float weight_decay, long t);
struct AdamW { std::vector<float> m, v; long t = 0; };
void adamw_update(Model* model, AdamW* opt, float lr);        // weight decay 0.1 on matrices, none on norm weights
// adamw_update on [begin, end) of the flat parameters only (each tensor's overlap with it, with the tensor's weight
// decay): every element sees the arithmetic of the whole update. opt->m, opt->v: [end − begin] (zeroed when new).
void adamw_update_range(Model* model, AdamW* opt, float lr, size_t begin, size_t end);
double sum_squares(const float* x, size_t n);                 // Σ x², in double, in a fixed order
double grad_sum_squares(const float* g, size_t n);            // Σ g² in fixed 64K chunks: independent of the thread count
double grad_global_norm(const float* g, size_t n);            // sqrt(grad_sum_squares)
// torch's clip coefficient max_norm / (norm + 1e-6), at most 1 (a NaN norm gives 1: no scaling); every clip uses it
double clip_coefficient(double norm, double max_norm);
double clip_grad_norm(float* g, size_t n, double max_norm);   // torch.nn.utils.clip_grad_norm_; returns the norm

enum class LRSchedule { MULTISTEP, COSINE };
long default_warmup_steps(long total_steps);
double lr_at(LRSchedule sched, double peak, long step, long total, long warmup);   // step = 0-based update index

struct ScalingPlan { double compute, batch_tokens, learning_rate, flops_per_token, tokens; };
ScalingPlan scaling_plan(double compute);
Config plan_shape(double flops_per_token, int seq_len, int vocab_size);

// pre-training objective: forward + per-token loss weights (the mean loss: 1/N per token)
float pretrain_objective(Backend* be, const int* inputs, const int* targets, int B, int T, std::vector<float>* dlosses);
struct EvalResult { double loss = 0, bits_per_byte = 0; size_t tokens = 0; };
EvalResult evaluate(Backend* be, DataLoader* val, int max_windows, const std::vector<int>& token_bytes, double mean_bytes_per_token);
std::vector<int> sample_greedy(Model* m, std::vector<int> ids, int n_new, int limit);
// checkpoints: DIR = HF model directory + optimizer.safetensors (exp_avg.*, exp_avg_sq.*) + trainer_state.json
long checkpoint_read(const std::string& dir, Model* m, AdamW* opt);   // returns the step; dies on a bad checkpoint
std::string checkpoint_latest(const std::string& dir);   // newest complete checkpoint of a run dir ("" if none)

// ----------------------------------------------------------------------------
// alignment: chat/preference data, the SFT and DPO objectives

struct SftExample { std::vector<ChatMessage> messages; int line = 0; };
// prompt: the conversation up to and including the last user turn; chosen/rejected: the two assistant replies
struct DpoExample { std::vector<ChatMessage> prompt; std::string chosen, rejected; int line = 0; };
// JSONL readers. A bad line (malformed JSON, missing/ill-typed fields, roles out of order) is an error
// "FILE:LINE: why"; with skip_bad it is reported on stderr, skipped and counted in *skipped instead.
// read_jsonl_records is that rule for any record: take(object, line) returns "" or what is wrong with the line
// (a line that is not a JSON object never reaches it); blank lines are ignored. (eval's mc_read_jsonl uses it too.)
void read_jsonl_records(const std::string& path, bool skip_bad, int* skipped,
                        const std::function<std::string(const nlohmann::json&, int)>& take);
std::vector<SftExample> sft_read_jsonl(const std::string& path, bool skip_bad, int* skipped);
std::vector<DpoExample> dpo_read_jsonl(const std::string& path, bool skip_bad, int* skipped);
// DPO (sigmoid) over n pairs of sequence log-probabilities: L = mean_i −log σ(β[(πc−rc) − (πr−rr)]).
// Writes dL/dπc and dL/dπr (either may be null); returns L. Rewards are β·(π − ref).
struct DpoStats { double loss, reward_accuracy, reward_margin, reward_chosen, reward_rejected; };
double dpo_loss(const double* policy_chosen, const double* policy_rejected, const double* ref_chosen,
                const double* ref_rejected, int n, double beta, double* grad_chosen, double* grad_rejected,
                DpoStats* stats);
// One rendered sequence: token ids and which of them are trained (SFT: assistant replies; DPO: the reply).
struct ChatSeq { std::vector<int> ids; std::vector<uint8_t> trained; };
// the pair as two sequences: prompt + "Assistant:" + " chosen" EOS, and the same with " rejected"
void dpo_render(const Tokenizer* tok, const DpoExample& ex, ChatSeq* chosen, ChatSeq* rejected);
// Rows → inputs/targets [B, T] (T = the longest row − 1): targets[t] = ids[t+1] where trained[t+1], else −1.
// Padding: input `pad`, target −1. Returns T.
int chat_batch(const std::vector<const ChatSeq*>& rows, int pad, std::vector<int>* inputs, std::vector<int>* targets);
// log π(trained tokens | the rest) = −Σ nll_t over each sequence's trained tokens, `batch` sequences at a time
void sequence_logps(Backend* be, const std::vector<ChatSeq>& seqs, int batch, int pad, std::vector<double>* out);
// One step's gradients (accumulated into m->grads; zero them first). SFT: mean NLL over the rows' trained tokens,
// returned. DPO: rows = n chosen sequences then their n rejected ones; returns the DPO loss.
float sft_forward_backward(Backend* be, const std::vector<const ChatSeq*>& rows, int pad);
double dpo_forward_backward(Backend* be, const std::vector<const ChatSeq*>& rows, const double* ref_chosen,
                            const double* ref_rejected, double beta, int pad, DpoStats* stats);

// ----------------------------------------------------------------------------
// data parallelism: MPI ranks, gradient sums over ranks (MPI on CPU, NCCL on GPUs), ZeRO-1 shards.
// Without an MPI launch every function is a no-op on a single process (rank 0 of 1).

struct Dist {
    int rank = 0, world = 1;              // this process among all of them
    int local_rank = 0, local_world = 1;  // among the processes on this machine; local_rank picks the GPU
    bool mpi = false;                     // launched by mpirun / srun, MPI initialised
    void* nccl = nullptr;                 // ncclComm_t once dist_nccl_init ran (CUDA builds)
    // ZeRO-1: rank r owns elements [shard[r], shard[r+1]) of the flat parameter buffer (dist_shards)
    std::vector<size_t> shard;
    size_t shard_begin() const { return shard.empty() ? 0 : shard[rank]; }
    size_t shard_end() const { return shard.empty() ? 0 : shard[rank + 1]; }
};
bool dist_launched();                        // true under mpirun / srun (read from the environment)
void dist_init(Dist* d);                     // MPI_Init when launched; a lone process otherwise. Idempotent.
void dist_finalize(Dist* d);                 // MPI_Finalize (and NCCL teardown); call once, on success
void dist_shards(Dist* d, size_t n);         // world near-equal contiguous pieces of n elements
// MPI collectives on host memory, in place (sum over ranks)
void dist_allreduce_sum(const Dist& d, float* x, size_t n);
void dist_allreduce_sum(const Dist& d, double* x, size_t n);
void dist_reduce_scatter_sum(const Dist& d, float* x);   // x[n]: afterwards this rank's shard holds the sum
void dist_allgather(const Dist& d, float* x);            // x[n]: every rank's shard copied to all ranks
void dist_broadcast(const Dist& d, void* buf, size_t bytes, int root);
void dist_barrier(const Dist& d);
// Σ x² over a gradient: over the whole of x[n] (replicated gradients), or, when sharded, over this rank's
// shard summed over ranks, so the global norm is right under ZeRO-1. In double.
double dist_sum_squares(const Dist& d, const float* x, size_t n, bool sharded);
// NCCL on device memory (CUDA builds; dies elsewhere). stream: a cudaStream_t, nullptr = the default stream.
bool dist_nccl_available();                  // built with NCCL (CUDA builds, unless make NCCL=0)
void dist_nccl_init(Dist* d);                // device local_rank, unique id from rank 0 broadcast over MPI
void dist_nccl_allreduce_sum(const Dist& d, float* x, size_t n, void* stream);
void dist_nccl_reduce_scatter_sum(const Dist& d, float* x, void* stream);
void dist_nccl_allgather(const Dist& d, float* x, void* stream);
// one grouped all-reduce (ncclGroupStart … End) of several (offset, count) slices of x, each summed in place
void dist_nccl_allreduce_slices(const Dist& d, float* x, const std::vector<std::pair<size_t, size_t>>& slices, void* stream);
// tests/gpu_check.sh: NCCL collectives on device memory vs host sums, bit-exact; returns the wrong elements
size_t dist_nccl_selftest(Dist* d, size_t n, std::string* report);
// ZeRO-1 optimizer state, one file per rank: DIR/optimizer-rank<r>-of-<N>.safetensors holds this rank's slice of
// each named [n] tensor. Loading re-shards: any saved world size loads into any other.
void zero_state_save(const Dist& d, const std::string& dir, const std::vector<std::pair<std::string, const float*>>& tensors,
                     size_t n);
void zero_state_load(const Dist& d, const std::string& dir, const std::vector<std::pair<std::string, float*>>& tensors,
                     size_t n);   // tensors: this rank's shard buffers
int zero_state_world(const std::string& dir);  // the world size that saved DIR's optimizer state (0: none)

// subcommands
int cmd_plan(int argc, char** argv);
int cmd_data(int argc, char** argv);
int cmd_train(int argc, char** argv);
int cmd_sft(int argc, char** argv);
int cmd_dpo(int argc, char** argv);

// ====================================================================================================================
// sweep.cpp: the paper's scaling-law experiments (hparams, isoflop, check), their fits, pictures and report; sweep
// ====================================================================================================================

// one finished run: a line of SWEEP/results.jsonl
struct SweepResult {
    std::string study, id;          // study: "hparams" | "isoflop" | "check"
    double compute = 0, batch_tokens = 0, learning_rate = 0, flops_per_token = 0, tokens = 0, params = 0, val_bpb = 0;
    bool diverged = false;          // the run stopped on a non-finite loss: no val_bpb, left out of the fits
    int line = 0;                   // in the file, for messages
};
// Reads a results file; a line that is not an object with the fields above (params optional; val_bpb too when
// "diverged": true) is an error FILE:LINE.
std::vector<SweepResult> sweep_read_results(const std::string& path);
// y = coef·C^exp, least squares in log–log space; the 95% bootstrap intervals when sweep_fit made them (else NaN)
struct PowerLaw {
    double coef = NAN, exp = NAN, coef_lo = NAN, coef_hi = NAN, exp_lo = NAN, exp_hi = NAN;
    int points = 0;
};
PowerLaw power_law_fit(const std::vector<double>& C, const std::vector<double>& y);   // NaN with fewer than two C
// one budget's IsoFLOP profile: the minimum of bpb = coef[0] + coef[1]·ln D + coef[2]·ln² D (parabola; else the best run)
struct IsoflopMin {
    double compute = 0, d_opt = 0, m_opt = 0, n_opt = 0, bpb_min = 0, coef[3] = {0, 0, 0};
    double best_d = 0, best_m = 0, best_n = 0, best_bpb = 0;   // the best run of the profile
    bool parabola = false, inside = false;                      // inside: the minimum lies in the sampled range of D
};
struct SweepFits {
    PowerLaw batch, lr;                      // B_opt(C), η_opt(C) through the near-optimal hparams runs
    PowerLaw model, data, model_6n, loss;    // M_opt(C), D_opt(C), 6·N_opt(C) and the minima's bpb(C)
    std::vector<IsoflopMin> minima;          // one per isoflop budget, in increasing C
    std::vector<const SweepResult*> near_optimal;   // hparams runs within 0.25% of their budget's best
};
// The fits, with `bootstrap` resamples (the runs of each budget drawn with replacement) for the intervals.
SweepFits sweep_fit(const std::vector<SweepResult>& results, int bootstrap, uint64_t seed);
// the small model of the sweep's family whose M (at seq_len) is nearest M_target
Config sweep_shape(double M_target, int seq_len, int vocab_size);

// subcommands
int cmd_sweep(int argc, char** argv);
