// bench_cpu — the CPU speed benchmark (make bench-cpu), every figure measured in this one run:
//   1. the machine's fp32 FMA peak: independent FMA chains in registers, per thread, all threads at once
//   2. our GEMM (gemm_cpu) on the benchmark model's products, in GFLOP/s, as a fraction of that peak and
//      against OpenBLAS sgemm on the same shapes and layouts (OpenBLAS is linked into this binary only)
//   3. training tokens/s: model_forward + model_backward + AdamW (train.cu's adamw_update) on the benchmark
//      model, against PyTorch (transformers' LlamaForCausalLM, same shape, fp32, torch.optim.AdamW) run by
//      tests/bench/bench_cpu_torch.py with the same thread count.
// The machine may be shared, so each measurement is repeated in rounds that alternate ours and the peer's, and
// is taken two ways: wall clock (what a user sees; on a loaded machine every run is slowed by time slices lost to
// other processes) and CPU time (flops / (process CPU seconds / threads): the speed while our threads actually
// run, which a loaded machine disturbs far less). For CPU time to mean that, idle threads must sleep rather than
// spin: this program sets OMP_WAIT_POLICY=passive (ours and PyTorch's OpenMP) and OPENBLAS_THREAD_TIMEOUT=4
// (OpenBLAS's workers) unless they are set. We print the best and the worst round. Ratios are ours / peer.
#include "../../deepseek.h"   // gemm_cpu, gemm_kernel_name, Model, model_*, adamw_update, Args
#include <algorithm>          // std::max, std::min, std::sort
#include <chrono>             // steady_clock
#include <cstdio>             // printf, popen
#include <cstdlib>            // atof, getenv, setenv
#include <cstring>            // strcmp
#include <ctime>              // clock_gettime(CLOCK_PROCESS_CPUTIME_ID)
#include <string>             // std::string
#include <vector>             // std::vector
#include <omp.h>              // omp_set_num_threads, omp_get_wtime
#include <cblas.h>            // cblas_sgemm (OpenBLAS)
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>        // the FMA peak loop
#endif
#include <unistd.h>           // execv
extern "C" void openblas_set_num_threads(int);
extern "C" char* openblas_get_corename(void);

static double now() { return omp_get_wtime(); }
static double cpu_now() {  // CPU seconds of all this process's threads
    timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
// one measurement: the rate by wall clock and by CPU time (per thread, times the thread count)
struct Rate { double wall = 0, cpu = 0; };
struct Stat {  // best and worst over rounds, both ways
    Rate best, lo{1e30, 1e30};
    void add(Rate r) {
        best.wall = std::max(best.wall, r.wall); best.cpu = std::max(best.cpu, r.cpu);
        lo.wall = std::min(lo.wall, r.wall); lo.cpu = std::min(lo.cpu, r.cpu);
    }
};

// ---------------------------------------------------------------------------- 1. FMA peak

// 24 independent accumulator chains (latency 4 × 2 FMA ports needs ≥ 8) of a·x + y, `iters` times, per thread
static Rate fma_peak_gflops(int threads, long iters) {
    double t0 = 0, t1 = 0, c0 = cpu_now();
    float sink = 0;
    #pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
#if defined(__AVX512F__)
        __m512 acc[24], a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
        for (int r = 0; r < 24; r++) acc[r] = _mm512_set1_ps((float)r);
        #pragma omp barrier
        #pragma omp master
        t0 = now();
        for (long i = 0; i < iters; i++) {
            #pragma GCC unroll 24
            for (int r = 0; r < 24; r++) acc[r] = _mm512_fmadd_ps(acc[r], a, b);
        }
        float tmp[16];
        for (int r = 0; r < 24; r++) { _mm512_storeu_ps(tmp, acc[r]); for (float x : tmp) sink += x; }
#elif defined(__AVX2__) && defined(__FMA__)
        __m256 acc[12], a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
        for (int r = 0; r < 12; r++) acc[r] = _mm256_set1_ps((float)r);
        #pragma omp barrier
        #pragma omp master
        t0 = now();
        for (long i = 0; i < iters * 2; i++) {
            #pragma GCC unroll 12
            for (int r = 0; r < 12; r++) acc[r] = _mm256_fmadd_ps(acc[r], a, b);
        }
        float tmp[8];
        for (int r = 0; r < 12; r++) { _mm256_storeu_ps(tmp, acc[r]); for (float x : tmp) sink += x; }
#else
        float acc[24][4];
        for (int r = 0; r < 24; r++) for (int l = 0; l < 4; l++) acc[r][l] = (float)(r + l);
        #pragma omp barrier
        #pragma omp master
        t0 = now();
        for (long i = 0; i < iters; i++)
            for (int r = 0; r < 24; r++)
                for (int l = 0; l < 4; l++) acc[r][l] = acc[r][l] * 0.999999f + 1e-7f;
        for (int r = 0; r < 24; r++) for (int l = 0; l < 4; l++) sink += acc[r][l];
#endif
        #pragma omp barrier
        #pragma omp master
        t1 = now();
    }
    if (sink == 12345.0f) printf(" ");  // keep the loop alive
#if defined(__AVX512F__)
    double flops = 2.0 * 24 * 16 * (double)iters * threads;
#elif defined(__AVX2__) && defined(__FMA__)
    double flops = 2.0 * 12 * 8 * 2 * (double)iters * threads;
#else
    double flops = 2.0 * 24 * 4 * (double)iters * threads;
#endif
    double c1 = cpu_now();
    return {flops / (t1 - t0) / 1e9, flops * threads / (c1 - c0) / 1e9};
}

// ---------------------------------------------------------------------------- 2. GEMM

struct Shape { const char* what; int M, N, K; bool ta, tb; int uses; };  // uses: times per training step (per layer × L)

static Rate time_gemm(const Shape& s, bool blas, float* A, float* B, float* C, int reps, int threads) {
    int lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N;
    double best = 1e30, best_cpu = 1e30, start = now();
    for (int r = 0; r < reps || (r < 10 * reps && now() - start < 0.3); r++) {  // ≥ reps, up to 0.3 s
        double t = now(), c = cpu_now();
        if (blas)
            cblas_sgemm(CblasRowMajor, s.ta ? CblasTrans : CblasNoTrans, s.tb ? CblasTrans : CblasNoTrans, s.M, s.N, s.K,
                        1.0f, A, lda, B, ldb, 0.0f, C, s.N);
        else
            gemm_cpu(s.M, s.N, s.K, A, lda, s.ta, B, ldb, s.tb, C, s.N, Accum::Overwrite);
        best = std::min(best, now() - t);
        best_cpu = std::min(best_cpu, cpu_now() - c);
    }
    double fl = 2.0 * s.M * s.N * s.K;
    return {fl / best / 1e9, fl * threads / best_cpu / 1e9};
}

// ---------------------------------------------------------------------------- 3. training

static Rate train_tokens_per_s(Model* m, AdamW* opt, int B, int T, int steps, int threads) {
    std::vector<int> in((size_t)B * T), tg((size_t)B * T);
    uint64_t s = 7;
    for (size_t i = 0; i < in.size(); i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        in[i] = (int)((s >> 33) % m->cfg.vocab_size);
    }
    for (size_t i = 0; i < in.size(); i++) tg[i] = in[(i + 1) % in.size()];
    std::vector<float> w;
    model_mean_loss_weights(tg.data(), B * T, &w);
    double best = 1e30, best_cpu = 1e30;
    for (int i = 0; i < steps; i++) {
        double t = now(), c = cpu_now();
        model_forward(m, in.data(), tg.data(), B, T);
        model_zero_grad(m);
        model_backward(m, w.data());
        adamw_update(m, opt, 1e-4f);
        best = std::min(best, now() - t);
        best_cpu = std::min(best_cpu, cpu_now() - c);
    }
    return {(double)B * T / best, (double)B * T * threads / best_cpu};
}

static Rate torch_tokens_per_s(const Config& c, int B, int T, int threads, int steps) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             ".venv/bin/python tests/bench/bench_cpu_torch.py --vocab %d --hidden %d --layers %d --heads %d --kv-heads %d "
             "--ffn %d --batch %d --seq %d --threads %d --steps %d 2>&1",
             c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
             c.intermediate_size, B, T, threads, steps);
    Rate tps;
    // PyTorch runs in its own default environment: the passive wait policy set below for OpenBLAS would slow it
    // (and forcing OMP_WAIT_POLICY=active halves it here: its threads spin against each other on two cores)
    std::string saved = getenv("OMP_WAIT_POLICY") ? getenv("OMP_WAIT_POLICY") : "";
    if (getenv("DEEPSEEK_BENCH_SET_POLICY")) unsetenv("OMP_WAIT_POLICY");
    FILE* f = popen(cmd, "r");
    if (!saved.empty()) setenv("OMP_WAIT_POLICY", saved.c_str(), 1);
    if (!f) return tps;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        std::string l = line;
        if (l.rfind("tokens_per_s: ", 0) == 0) tps.wall = atof(l.c_str() + 14);
        else if (l.rfind("tokens_per_cpu_s: ", 0) == 0) tps.cpu = atof(l.c_str() + 18) * threads;
        else if (l.find("Error") != std::string::npos || l.find("error") != std::string::npos) fprintf(stderr, "torch: %s", line);
    }
    pclose(f);
    return tps;
}

// ours and PyTorch on one model, alternating rounds (each round: the best of `steps` steps)
static void compare_training(const Config& c, int B, int T, int P, int steps, int rounds, bool torch, Stat* ours, Stat* pt) {
    Model m;
    model_build(&m, c);
    model_init_random(&m, 1, 0.02f);
    AdamW opt;
    train_tokens_per_s(&m, &opt, B, T, 1, P);  // warm-up: allocations
    for (int r = 0; r < rounds; r++) {
        ours->add(train_tokens_per_s(&m, &opt, B, T, steps, P));
        if (torch) pt->add(torch_tokens_per_s(c, B, T, P, steps));
        fprintf(stderr, "  training C=%d L=%d, round %d/%d: ours %.0f tok/s, torch %.0f tok/s\n", c.hidden_size,
                c.num_hidden_layers, r + 1, rounds, ours->best.wall, pt->best.wall);
    }
}

static const char* USAGE =
    "usage: bench_cpu [--threads N] [--rounds R] [--batch B] [--seq-len T] [--steps S] [--no-torch] [--no-train]\n"
    "                 [--no-gemm] [--sweep] [--hidden C] [--layers L] [--heads H] [--kv-heads KV] [--ffn F] [--vocab V]\n"
    "  FMA peak, our GEMM vs OpenBLAS on the benchmark model's shapes, training tokens/s vs PyTorch.\n"
    "  The model: d_model 512, 4 layers, 8 / 2 heads, SwiGLU 1408, vocabulary 8192 unless the flags say otherwise.\n"
    "  --sweep: also training vs PyTorch on the four corners of d_model 256–512 × 4–8 layers.\n";
int main(int argc, char** argv) {
    Args a(argc, argv, 1, "bench_cpu", USAGE, {"threads", "rounds", "batch", "seq-len", "steps", "hidden", "layers", "heads",
           "kv-heads", "ffn", "vocab"}, {"no-torch", "no-train", "no-gemm", "sweep"});
    // OpenBLAS 0.3.21 (Debian 12) does not know this CPU model and falls back to its SSE3 "Prescott" kernels,
    // a fifth of its speed here. A fair comparison gives it its best kernel for the instruction set: the
    // choice is read when the library loads, so set it and restart once.
    // The passive wait policy keeps our OpenMP threads from spinning against OpenBLAS's own pthreads in the GEMM
    // comparison. The training comparison (--no-gemm) runs both trainers in their default environments instead.
    bool gemm_part = !a.flag("no-gemm");
    if (!getenv("OPENBLAS_CORETYPE") || (gemm_part && !getenv("OMP_WAIT_POLICY")) || !getenv("OPENBLAS_THREAD_TIMEOUT")) {
        const char* core = __builtin_cpu_supports("avx512bf16") ? "Cooperlake" : __builtin_cpu_supports("avx512f") ? "SkylakeX"
                         : __builtin_cpu_supports("avx2") ? "Haswell" : nullptr;
        if (core) setenv("OPENBLAS_CORETYPE", core, 0);
        if (gemm_part && !getenv("OMP_WAIT_POLICY")) {
            setenv("OMP_WAIT_POLICY", "passive", 0);
            setenv("DEEPSEEK_BENCH_SET_POLICY", "1", 1);   // ours, not the user's: PyTorch does not inherit it
        }
        setenv("OPENBLAS_THREAD_TIMEOUT", "4", 0);
        execv("/proc/self/exe", argv);
    }
    int P = (int)a.integer("threads", 2, 1, 256), rounds = (int)a.integer("rounds", 3, 1, 100);
    int B = (int)a.integer("batch", 4, 1, 1024), T = (int)a.integer("seq-len", 256, 1, 65536);
    int steps = (int)a.integer("steps", 3, 1, 1000);
    omp_set_num_threads(P);
    openblas_set_num_threads(P);
    // the benchmark model: d_model 512, 4 layers, 8 query / 2 KV heads (GQA), SwiGLU 1408, vocabulary 8192
    Config c;
    c.vocab_size = (int)a.integer("vocab", 8192, 2, 1 << 20);
    c.hidden_size = (int)a.integer("hidden", 512, 1, 65536);
    c.num_hidden_layers = (int)a.integer("layers", 4, 1, 1024);
    c.num_attention_heads = (int)a.integer("heads", 8, 1, 1024);
    c.num_key_value_heads = (int)a.integer("kv-heads", 2, 1, 1024);
    c.intermediate_size = (int)a.integer("ffn", 1408, 1, 1 << 20);
    if (c.hidden_size % c.num_attention_heads || c.num_attention_heads % c.num_key_value_heads)
        die("bench_cpu: --hidden must be a multiple of --heads, and --heads of --kv-heads");
    c.head_dim = c.hidden_size / c.num_attention_heads;
    c.max_position_embeddings = std::max(T, 512);
    int BT = B * T, C = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, KVD = c.num_key_value_heads * c.head_dim;
    int L = c.num_hidden_layers;
    printf("bench_cpu: OpenBLAS kernels: %s\n", openblas_get_corename());
    printf("bench_cpu: %d threads, GEMM kernel %s; model C=%d L=%d H=%d KV=%d F=%d V=%d, batch %d × T %d = %d tokens\n",
           P, gemm_kernel_name(), C, L, c.num_attention_heads, c.num_key_value_heads, F, V, B, T, BT);

    // 1 + 2: the peak and the GEMMs, in alternating rounds
    std::vector<Shape> shapes = {
        {"q/o_proj fwd   Y=X·Wᵀ", BT, C, C, false, true, 2 * L},   {"k/v_proj fwd   Y=X·Wᵀ", BT, KVD, C, false, true, 2 * L},
        {"gate/up fwd    Y=X·Wᵀ", BT, F, C, false, true, 2 * L},   {"down fwd       Y=X·Wᵀ", BT, C, F, false, true, L},
        {"lm_head fwd    Y=X·Wᵀ", BT, V, C, false, true, 1},       {"gate/up dX     dX=dY·W", BT, C, F, false, false, 2 * L},
        {"gate/up dW     dW=dYᵀ·X", F, C, BT, true, false, 2 * L}, {"down dX        dX=dY·W", BT, F, C, false, false, L},
        {"down dW        dW=dYᵀ·X", C, F, BT, true, false, L},     {"lm_head dX     dX=dY·W", BT, C, V, false, false, 1},
        {"lm_head dW     dW=dYᵀ·X", V, C, BT, true, false, 1},
    };
    if (a.flag("no-gemm")) shapes.clear();
    size_t maxA = 0, maxB = 0, maxC = 0;
    for (auto& s : shapes) {
        maxA = std::max(maxA, (size_t)s.M * s.K);
        maxB = std::max(maxB, (size_t)s.K * s.N);
        maxC = std::max(maxC, (size_t)s.M * s.N);
    }
    std::vector<float> A(maxA), Bm(maxB), Cm(maxC);
    for (size_t i = 0; i < A.size(); i++) A[i] = (float)((i * 7919) % 1000) * 1e-3f - 0.5f;
    for (size_t i = 0; i < Bm.size(); i++) Bm[i] = (float)((i * 104729) % 1000) * 1e-3f - 0.5f;
    Stat peak;
    std::vector<Stat> ours(shapes.size()), blas(shapes.size());
    for (int r = 0; r < rounds && !shapes.empty(); r++) {
        for (int i = 0; i < 20; i++) peak.add(fma_peak_gflops(P, 500000));  // 20 short runs: ~5 ms each
        for (size_t i = 0; i < shapes.size(); i++) {
            ours[i].add(time_gemm(shapes[i], false, A.data(), Bm.data(), Cm.data(), 3, P));
            blas[i].add(time_gemm(shapes[i], true, A.data(), Bm.data(), Cm.data(), 3, P));
        }
        fprintf(stderr, "  round %d/%d: peak %.0f GFLOP/s\n", r + 1, rounds, peak.best.wall);
    }
    if (!shapes.empty())
        printf("\nfp32 FMA peak, %d threads: %.1f GFLOP/s wall clock, %.1f by CPU time (best of %d runs; worst %.1f, %.1f)\n", P,
               peak.best.wall, peak.best.cpu, 20 * rounds, peak.lo.wall, peak.lo.cpu);
    for (int pass = 0; pass < 2 && !shapes.empty(); pass++) {
        bool cpu = pass == 1;
        double pk = cpu ? peak.best.cpu : peak.best.wall;
        printf("\nGEMM, GFLOP/s by %s (best of %d rounds; worst in parentheses); %% of the %s peak %.1f\n",
               cpu ? "CPU time" : "wall clock", rounds, cpu ? "CPU-time" : "wall-clock", pk);
        printf("%-26s %6s %6s %6s  %14s %7s  %14s %9s\n", "", "M", "N", "K", "ours", "% peak", "OpenBLAS", "ours/BLAS");
        double flops_step = 0, t_ours = 0, t_blas = 0;
        for (size_t i = 0; i < shapes.size(); i++) {
            const Shape& s = shapes[i];
            double o = cpu ? ours[i].best.cpu : ours[i].best.wall, ol = cpu ? ours[i].lo.cpu : ours[i].lo.wall;
            double b = cpu ? blas[i].best.cpu : blas[i].best.wall, bl = cpu ? blas[i].lo.cpu : blas[i].lo.wall;
            printf("%-26s %6d %6d %6d  %6.1f (%5.1f) %6.1f%%  %6.1f (%5.1f) %8.2fx\n", s.what, s.M, s.N, s.K, o, ol,
                   100.0 * o / pk, b, bl, o / b);
            double fl = 2.0 * s.M * s.N * s.K * s.uses;
            flops_step += fl;
            t_ours += fl / (o * 1e9);
            t_blas += fl / (b * 1e9);
        }
        double mix_ours = flops_step / t_ours / 1e9, mix_blas = flops_step / t_blas / 1e9;
        printf("%-26s %20s  %6.1f         %6.1f%%  %6.1f         %8.2fx\n", "training-step mix", "", mix_ours,
               100.0 * mix_ours / pk, mix_blas, mix_ours / mix_blas);
    }

    // 3: training tokens/s, ours and PyTorch's, alternating
    int train_rounds = std::min(rounds, 2);
    if (!a.flag("no-train")) {
        Stat tr, pt;
        compare_training(c, B, T, P, steps, train_rounds, !a.flag("no-torch"), &tr, &pt);
        printf("\ntraining (forward + backward + AdamW, fp32, %d threads, %d tokens/step, best step of %d, %d rounds)\n",
               P, BT, steps, train_rounds);
        printf("  tokens/s      %10s %10s   %10s %10s\n", "wall", "(worst)", "CPU time", "(worst)");
        printf("  ours          %10.1f %10.1f   %10.1f %10.1f\n", tr.best.wall, tr.lo.wall, tr.best.cpu, tr.lo.cpu);
        if (pt.best.wall > 0) {
            printf("  PyTorch       %10.1f %10.1f   %10.1f %10.1f\n", pt.best.wall, pt.lo.wall, pt.best.cpu, pt.lo.cpu);
            printf("  ours/PyTorch  %9.2fx %21s %9.2fx\n", tr.best.wall / pt.best.wall, "", tr.best.cpu / pt.best.cpu);
        } else if (!a.flag("no-torch")) {
            printf("  PyTorch: not measured (.venv/bin/python with torch and transformers is needed: make fixtures)\n");
        }
        // The ceiling: the step's matrix products at the measured FMA peak, as if nothing else took any time. Per
        // token, 6 FLOPs per weight (forward, dX, dW); per layer and head, attention's QKᵀ and PV over the causal
        // triangle forward (2 FLOPs per multiply-add) and four such products backward.
        if (peak.best.wall == 0)
            for (int i = 0; i < 20; i++) peak.add(fma_peak_gflops(P, 500000));
        double weights = (double)L * (2.0 * C * c.num_attention_heads * c.head_dim + 2.0 * C * KVD + 3.0 * C * F) + (double)C * V;
        double tri = (double)T * (T + 1) / 2;
        double flops = 6.0 * BT * weights + 12.0 * B * c.num_attention_heads * tri * c.head_dim * L;
        double ceiling = BT / (flops / (peak.best.wall * 1e9));
        printf("  ceiling       %10.1f   the step's %.1f GFLOP of matrix products at the FMA peak (%.1f GFLOP/s)\n",
               ceiling, flops / 1e9, peak.best.wall);
        printf("  ours at %.1f%% of the ceiling", 100.0 * tr.best.wall / ceiling);
        if (pt.best.wall > 0)
            printf(", PyTorch at %.1f%%; 1.5x PyTorch is %.1f%%", 100.0 * pt.best.wall / ceiling, 150.0 * pt.best.wall / ceiling);
        printf("\n");
    }

    // 4: the whole range of benchmark models (d_model 256–512, 4–8 layers; head_dim 64, GQA 4:1,
    // SwiGLU 2.75·d as the default model's 1408), same batch, T, vocabulary and thread count
    if (a.flag("sweep")) {
        struct Corner { int C, L; };
        const Corner corners[] = {{256, 4}, {256, 8}, {512, 4}, {512, 8}};
        printf("\ntraining across the range (fp32, %d threads, %d tokens/step, best step of %d, %d rounds)\n", P, BT, steps,
               train_rounds);
        printf("  %-28s %10s %10s %9s %9s\n", "model", "ours", "PyTorch", "wall", "CPU time");
        for (const Corner& k : corners) {
            Config cs = c;
            cs.hidden_size = k.C;
            cs.num_hidden_layers = k.L;
            cs.head_dim = 64;
            cs.num_attention_heads = k.C / 64;
            cs.num_key_value_heads = std::max(1, cs.num_attention_heads / 4);
            cs.intermediate_size = k.C * 11 / 4;
            Stat o, t;
            compare_training(cs, B, T, P, steps, train_rounds, !a.flag("no-torch"), &o, &t);
            char name[64];
            snprintf(name, sizeof name, "d%d L%d H%d/%d F%d", k.C, k.L, cs.num_attention_heads, cs.num_key_value_heads,
                     cs.intermediate_size);
            if (t.best.wall > 0)
                printf("  %-28s %10.1f %10.1f %8.2fx %8.2fx\n", name, o.best.wall, t.best.wall, o.best.wall / t.best.wall,
                       o.best.cpu / t.best.cpu);
            else
                printf("  %-28s %10.1f %10s\n", name, o.best.wall, "-");
        }
        printf("  (a corner that is the model above is measured again: the two differ by the run-to-run spread)\n");
    }
    return 0;
}
