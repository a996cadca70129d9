// bench_gpu — the CUDA backend's speed (tests/gpu_check.sh; `make build/bench/bench_gpu`, a CUDA build):
// training tokens/s and MFU, and batch-1 decode tokens/s beside its memory-bandwidth bound.
//   model FLOPs per token (PaLM's convention, as nanoGPT and llm.c report MFU):
//     6·N_matmul + 12·L·H·D·T,  N_matmul = parameters in matmuls (all but the embedding table; lm_head counts)
//   MFU = tokens/s × FLOPs per token / peak (989 TFLOP/s: H100/H200 SXM dense bf16)
//   decode bound: tokens/s ≤ HBM bandwidth / bytes read per token (bf16 matmul weights + the KV cache so far)
// It drives the backend through deepseek.h only (cuda_model_*, cuda_decode_*, cuda_synchronize).
#include "../../deepseek.h"   // Config, Model, param_views, cuda_model_*, cuda_decode_*, Args, die
#include <cstdint>            // uint64_t
#include <cstdio>             // printf
#include <string>             // std::string
#include <vector>             // std::vector

// splitmix64 (as deepseek.cu's model_init_random uses): the random tokens and the parameters' hash below
static uint64_t splitmix64(uint64_t* s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static bool bench_shape(const std::string& name, Config* c) {
    if (config_preset(name, c)) return true;
    Config s;
    s.max_position_embeddings = 4096;
    s.vocab_size = 32000;
    if (name == "124m") { s.hidden_size = 768; s.num_hidden_layers = 12; s.num_attention_heads = 12; s.num_key_value_heads = 12; s.intermediate_size = 2048; }
    else if (name == "350m") { s.hidden_size = 1024; s.num_hidden_layers = 24; s.num_attention_heads = 16; s.num_key_value_heads = 16; s.intermediate_size = 2816; }
    else if (name == "1b") { s.hidden_size = 2048; s.num_hidden_layers = 22; s.num_attention_heads = 32; s.num_key_value_heads = 4; s.intermediate_size = 5632; }
    else return false;
    s.head_dim = s.hidden_size / s.num_attention_heads;
    *c = s;
    return true;
}

static const char* USAGE =
    "usage: bench_gpu [--shape 124m|350m|1b|tiny|small] [--batch B] [--seq T] [--steps N] [--warmup W]\n"
    "                 [--recompute] [--decode N] [--peak-tflops 989] [--hbm-tbs 4.8]\n"
    "  trains the shape on random tokens for N steps (forward, backward, grad norm, AdamW) and prints\n"
    "  tokens/s and MFU = tokens/s × (6·N_matmul + 12·L·H·D·T) / peak; with --decode N (or --steps 0),\n"
    "  also times N batch-1 decode steps and prints tokens/s beside the HBM bound.\n";
int main(int argc, char** argv) {
    Args a(argc, argv, 1, "bench_gpu", USAGE, {"shape", "batch", "seq", "steps", "warmup", "decode", "peak-tflops", "hbm-tbs", "seed"},
           {"recompute"});
    Config c;
    std::string shape = a.str("shape", "124m");
    if (!bench_shape(shape, &c)) die("bench_gpu: unknown shape '%s' (124m, 350m, 1b, tiny, small)", shape.c_str());
    int B = (int)a.integer("batch", 8, 1, 4096), T = (int)a.integer("seq", 1024, 1, c.max_position_embeddings);
    int steps = (int)a.integer("steps", 20, 0, 1000000), warmup = (int)a.integer("warmup", 3, 0, 1000);
    int ndecode = (int)a.integer("decode", 0, 0, c.max_position_embeddings - 1);
    double peak = a.real("peak-tflops", 989.0, 1.0, 1e6) * 1e12, hbm = a.real("hbm-tbs", 4.8, 0.01, 1000.0) * 1e12;
    if (cuda_device_count() == 0) die("bench_gpu: no CUDA device");
    Model host;
    model_build(&host, c);
    // uniform(−a, a) with a = 0.02·√3 (std 0.02) from a hash of the index: parallel, so a 1B model starts in seconds
    uint64_t seed = (uint64_t)a.integer("seed", 1337, 0, 1ll << 62);
    for (const ParamView& pv : param_views(c)) {
        size_t n = 1;
        for (int64_t d : pv.shape) n *= (size_t)d;
        float* w = host.params_memory.data() + pv.offset;
        #pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) {
            uint64_t h = seed + pv.offset + i;
            w[i] = pv.is_matrix ? 0.0346f * (2.0f * (splitmix64(&h) >> 40) / 16777216.0f - 1.0f) : 1.0f;
        }
    }
    size_t P = host.num_parameters, Pm = P - (size_t)c.vocab_size * c.hidden_size;
    double L = c.num_hidden_layers, QD = (double)c.num_attention_heads * c.head_dim;
    printf("bench_gpu: shape %s: %zu parameters (%zu in matmuls), L=%d C=%d H=%d KV=%d D=%d F=%d V=%d, device %s\n", shape.c_str(), P,
           Pm, c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size,
           c.vocab_size, cuda_device_name(0).c_str());
    uint64_t s = 42;
    auto rnd = [&](int n) { return (int)(splitmix64(&s) % (uint64_t)n); };
    if (steps > 0) {
        CudaModel* m = cuda_model_create(host, B, T, a.flag("recompute"), true);
        int N = B * T;
        std::vector<int> in(N), tg(N);
        std::vector<float> w(N, 1.0f / N);
        double flops_tok = 6.0 * Pm + 12.0 * L * QD * T;
        double t0 = 0;
        float loss = 0;
        for (int it = 0; it < warmup + steps; it++) {
            if (it == warmup) { cuda_synchronize(); t0 = now_seconds(); }
            for (int i = 0; i < N; i++) { in[i] = rnd(c.vocab_size); tg[i] = rnd(c.vocab_size); }
            loss = cuda_model_forward(m, in.data(), tg.data(), B, T);
            cuda_model_zero_grad(m);
            cuda_model_backward(m, w.data());
            float norm = cuda_model_grad_norm(m);
            cuda_model_adamw(m, 3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, norm > 1.0f ? 1.0f / norm : 1.0f, it + 1);
        }
        cuda_synchronize();
        double dt = now_seconds() - t0, tps = (double)steps * N / dt;
        printf("train: shape %s B=%d T=%d%s steps %d: %.0f tok/s, %.1f ms/step, loss %.3f, model FLOPs/token %.4g "
               "(6·%zu + 12·L·H·D·T), %.1f TFLOP/s achieved = MFU %.1f%% of %.0f TFLOP/s\n", shape.c_str(), B, T,
               a.flag("recompute") ? " recompute" : "", steps, tps, 1e3 * dt / steps, loss, flops_tok, Pm, tps * flops_tok / 1e12,
               100.0 * tps * flops_tok / peak, peak / 1e12);
        cuda_model_free(m);
    }
    if (ndecode > 0) {
        // the inference-only model generation uses: bf16 weights and the KV cache, nothing of training
        size_t before = cuda_memory_in_use();
        int ctx = std::max(ndecode + 1, std::min(c.max_position_embeddings, 4096));
        InferModel im;
        infer_from_model(&im, host, ctx);
        CudaModel* m = cuda_model_create_inference(im, false);
        CudaDecode* d = cuda_decode_create(m, ctx);
        size_t kv = 0, dec = cuda_decode_memory_bytes(d, &kv);
        double GiB = 1073741824.0;
        printf("decode: shape %s inference memory: weights bf16 %.2f GiB + KV cache %.2f GiB (%d positions) + activations "
               "%.2f GiB = %.2f GiB; device memory in use grew by %.2f GiB\n", shape.c_str(), cuda_model_memory_bytes(m) / GiB,
               kv / GiB, ctx, (dec - kv) / GiB, (cuda_model_memory_bytes(m) + dec) / GiB, (cuda_memory_in_use() - before) / GiB);
        // batched prefill of a prompt (the first chunk: the flash kernel; a second: decode attention over the cache)
        int np = std::min(ctx - 1, 2 * cuda_decode_chunk(d));
        std::vector<int> prompt(np);
        for (int i = 0; i < np; i++) prompt[i] = (int)((i * 7919u + 13u) % (unsigned)c.vocab_size);
        cuda_decode_prefill(d, prompt.data(), np, 0, true);   // warm-up
        cuda_synchronize();
        double tp = now_seconds();
        cuda_decode_prefill(d, prompt.data(), np, 0, true);
        cuda_synchronize();
        tp = now_seconds() - tp;
        printf("prefill: shape %s batch 1, %d tokens in chunks of %d: %.0f tok/s (%.1f ms)\n", shape.c_str(), np,
               cuda_decode_chunk(d), np / tp, 1e3 * tp);
        int tok = 1;
        for (int pos = 0; pos < 8 && pos < ndecode; pos++) cuda_decode_step(d, tok, pos, true);   // warm-up (plans, clocks)
        cuda_synchronize();
        double t0 = now_seconds();
        for (int pos = 0; pos < ndecode; pos++) {
            const float* z = cuda_decode_step(d, tok, pos, true);
            int best = 0;
            for (int i = 1; i < c.vocab_size; i++) if (z[i] > z[best]) best = i;
            tok = best;
        }
        double dt = now_seconds() - t0, tps = ndecode / dt;
        double kv_bytes = 2.0 * L * c.num_key_value_heads * c.head_dim * 2 * (ndecode / 2.0);   // the average cache read
        double bytes = 2.0 * Pm + 2.0 * c.hidden_size + kv_bytes;
        printf("decode: shape %s batch 1, %d tokens: %.0f tok/s (%.3f ms/token); bound %.0f tok/s = %.2f TB/s / %.1f MB per token "
               "(bf16 weights + KV cache): %.0f%% of the bound\n", shape.c_str(), ndecode, tps, 1e3 / tps, hbm / bytes, hbm / 1e12,
               bytes / 1e6, 100.0 * tps / (hbm / bytes));
        cuda_decode_free(d);
        cuda_model_free(m);
    }
    return 0;
}
