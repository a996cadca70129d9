// bench_mem.cpp — the memory read bandwidth that batch-1 decoding is bound by, for `make bench-infer`.
//
// Decoding one token reads every weight matrix once, so tokens/s ≤ bandwidth / bytes per token. This measures
// that bandwidth: T threads (OpenMP, static split) each read their part of one large array (far larger than the
// last-level cache) with vector loads, summing it so the loads cannot be dropped, two ways: one sequential stream
// per thread, and four streams per thread read side by side (the part's quarters, 64 bytes of each per step, each
// prefetched 512 bytes on), as decode's linears read (infer.cu, Lanes). A core keeps more lines in flight with
// four streams: on a 2-core AMD Zen 3, ~19 GB/s from one stream per core, ~27 from four. The bound is the better
// of the two. Best of R passes; prints "read_bandwidth_GBps: X" (10^9 bytes per second) for bench_infer.py, then
// both figures.
//
//   bench_mem [--threads T (2)] [--mib N (1024)] [--repeat R (5)]
#include <omp.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <vector>

typedef float v8 __attribute__((vector_size(32)));   // eight floats: one AVX register

int main(int argc, char** argv) {
    int threads = 2, repeat = 5;
    size_t mib = 1024;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--mib")) mib = (size_t)atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--repeat")) repeat = atoi(argv[i + 1]);
        else { fprintf(stderr, "bench_mem: unknown flag %s\n", argv[i]); return 2; }
    }
    if (threads < 1 || repeat < 1 || mib < 64) { fprintf(stderr, "bench_mem: bad arguments\n"); return 2; }
    omp_set_num_threads(threads);
    size_t n = mib * (1u << 20) / sizeof(float);
    std::vector<float> a(n);
    #pragma omp parallel for schedule(static)   // first touch by the thread that reads it later
    for (size_t i = 0; i < n; i++) a[i] = (float)(i & 1023) * 1e-3f;
    double best = 0, best4 = 0, sink = 0;
    for (int r = 0; r < repeat; r++) {
        auto t0 = std::chrono::steady_clock::now();
        double total = 0;
        #pragma omp parallel for schedule(static) reduction(+ : total)
        for (size_t b = 0; b < n; b += 4096) {   // 16 KiB chunks, 32 independent sums (four 256-bit vectors)
            float s[32] = {};
            size_t e = b + 4096 < n ? b + 4096 : n;
            for (size_t i = b; i + 32 <= e; i += 32)
                for (int k = 0; k < 32; k++) s[k] += a[i + k];
            for (int k = 0; k < 32; k++) total += s[k];
        }
        double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        sink += total;
        best = std::max(best, (double)n * sizeof(float) / dt / 1e9);
    }
    for (int r = 0; r < repeat; r++) {   // four streams per thread
        auto t0 = std::chrono::steady_clock::now();
        double total = 0;
        #pragma omp parallel reduction(+ : total)
        {
            int t = omp_get_thread_num(), T = omp_get_num_threads();
            size_t lo = n * t / T, hi = n * (t + 1) / T, len = (hi - lo) / 4 / 16 * 16;   // quarters of whole 64-byte steps
            const float* q[4] = {&a[lo], &a[lo + len], &a[lo + 2 * len], &a[lo + 3 * len]};
            v8 s0 = {}, s1 = {};   // in registers (GCC vector types; a float[] here went through the stack)
            for (size_t i = 0; i < len; i += 16)
                for (int j = 0; j < 4; j++) {
                    __builtin_prefetch(q[j] + i + 128);   // 512 bytes on
                    v8 u, v;
                    memcpy(&u, q[j] + i, sizeof u);
                    memcpy(&v, q[j] + i + 8, sizeof v);
                    s0 += u;
                    s1 += v;
                }
            for (int k = 0; k < 8; k++) total += s0[k] + s1[k];
            for (size_t i = lo + 4 * len; i < hi; i++) total += a[i];   // the part's tail beyond the four quarters
        }
        double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        sink += total;
        best4 = std::max(best4, (double)n * sizeof(float) / dt / 1e9);
    }
    printf("read_bandwidth_GBps: %.2f\n", std::max(best, best4));
    printf("one stream per thread: %.2f GB/s, four streams per thread: %.2f GB/s\n", best, best4);
    printf("threads: %d, array: %zu MiB, best of %d (checksum %g)\n", threads, mib, repeat, sink);
    return 0;
}
