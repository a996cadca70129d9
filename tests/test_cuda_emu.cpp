// The CUDA attention kernels, run on the CPU: kernels/cuda_attention.cuh compiled by g++ against tests/cuda_emu.h (an
// emulation of threads, barriers, shuffles and WMMA) and launched as its host code launches them, then compared with
// their CPU twins (attention_forward_ref, attention_backward_ref): every element within the error bound that bf16's
// roundings allow (attention_bf16_bounds, tests/test_util.h), as tests/test_cuda.cpp checks them on the GPU. Both sets
// of kernels: the CUDA-core ones and the tensor-core ones. This runs everywhere, CI included, so the kernels' indexing,
// masking, barriers and reductions are checked before any GPU is lent; tests/test_cuda.cpp runs the same comparison on
// the GPU itself.
#include <doctest/doctest.h>  // TEST_CASE, CHECK, MESSAGE
#include <condition_variable> // std::condition_variable (EmuBarrier: __syncthreads, __syncwarp)
#include <cmath>              // expf, logf, sqrtf, fmaxf, INFINITY
#include <cstdint>            // uint16_t
#include <cstdlib>            // getenv
#include <cstring>            // memcpy
#include <functional>         // std::function (a launch's kernel)
#include <memory>             // std::unique_ptr
#include <mutex>              // std::mutex
#include <string>             // std::string
#include <thread>             // std::thread: one per CUDA thread
#include <type_traits>        // std::is_same
#include <vector>             // std::vector
#include "../deepseek.h"      // attention_forward_ref, attention_backward_ref, f32_to_bf16, die
#include "test_util.h"        // max_rel_err

#define DEEPSEEK_CUDA_EMU 1
#define __global__
#define __device__
#define __host__
#define __shared__
#define __launch_bounds__(n)
#define __align__(n)
namespace cuda_emu {
#include "cuda_emu.h"
#include "../kernels/cuda_attention.cuh"

// the launches of attention_forward_cuda and attention_backward_cuda (kernels/cuda_attention.cuh), on host arrays
static void forward(bf16* y, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int H, int KV, int D, bool tc) {
    float scale = 1.0f / sqrtf((float)D);
    if (tc) {
        dim3 grid(ceil_div(T, TC_ROWS), B * H);
        if (D == 32) emu_launch(grid, TC_THREADS, [&] { attention_forward_tc_kernel<32>(y, lse, q, k, v, T, H, KV, scale); });
        if (D == 64) emu_launch(grid, TC_THREADS, [&] { attention_forward_tc_kernel<64>(y, lse, q, k, v, T, H, KV, scale); });
        if (D == 128) emu_launch(grid, TC_THREADS, [&] { attention_forward_tc_kernel<128>(y, lse, q, k, v, T, H, KV, scale); });
        return;
    }
    emu_launch(dim3(ceil_div(T, ATT_WARPS), B * H), 32 * ATT_WARPS, [&] { attention_forward_kernel(y, lse, q, k, v, T, H, KV, D, scale); });
}
static void backward(bf16* dq, bf16* dk, bf16* dv, float* dsum, const bf16* dy, const bf16* y, const float* lse, const bf16* q,
                     const bf16* k, const bf16* v, int B, int T, int H, int KV, int D, bool tc) {
    float scale = 1.0f / sqrtf((float)D);
    emu_launch(ceil_div((long long)B * T * H, 8), 256, [&] { attention_dsum_kernel(dsum, dy, y, B, T, H, D); });
    if (tc) {
        dim3 gq(ceil_div(T, TC_ROWS), B * H), gkv(ceil_div(T, TC_ROWS), B * KV);
        if (D == 32) {
            emu_launch(gq, TC_THREADS, [&] { attention_backward_dq_tc_kernel<32>(dq, dy, lse, dsum, q, k, v, T, H, KV, scale); });
            emu_launch(gkv, TC_THREADS, [&] { attention_backward_dkv_tc_kernel<32>(dk, dv, dy, lse, dsum, q, k, v, T, H, KV, scale); });
        }
        if (D == 64) {
            emu_launch(gq, TC_THREADS, [&] { attention_backward_dq_tc_kernel<64>(dq, dy, lse, dsum, q, k, v, T, H, KV, scale); });
            emu_launch(gkv, TC_THREADS, [&] { attention_backward_dkv_tc_kernel<64>(dk, dv, dy, lse, dsum, q, k, v, T, H, KV, scale); });
        }
        if (D == 128) {
            emu_launch(gq, TC_THREADS, [&] { attention_backward_dq_tc_kernel<128>(dq, dy, lse, dsum, q, k, v, T, H, KV, scale); });
            emu_launch(gkv, TC_THREADS, [&] { attention_backward_dkv_tc_kernel<128>(dk, dv, dy, lse, dsum, q, k, v, T, H, KV, scale); });
        }
        return;
    }
    emu_launch(dim3(ceil_div(T, ATT_WARPS), B * H), 32 * ATT_WARPS,
               [&] { attention_backward_dq_kernel(dq, dy, lse, dsum, q, k, v, T, H, KV, D, scale); });
    emu_launch(dim3(ceil_div(T, ATT_WARPS), B * KV), 32 * ATT_WARPS,
               [&] { attention_backward_dkv_kernel(dk, dv, dy, lse, dsum, q, k, v, T, H, KV, D, scale); });
}
}  // namespace cuda_emu
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __launch_bounds__
#undef __align__

static std::vector<float> emu_rand_bf16(uint64_t* s, size_t n) {   // values exact in bf16, so both sides read the same
    std::vector<float> v(n);
    for (float& x : v) {
        *s = *s * 6364136223846793005ull + 1442695040888963407ull;
        x = bf16_to_f32(f32_to_bf16(1.5f * (2.0f * (float)(*s >> 40) / 16777216.0f - 1.0f)));
    }
    return v;
}
static std::vector<cuda_emu::bf16> emu_to_bf16(const std::vector<float>& v) {
    std::vector<cuda_emu::bf16> b(v.size());
    for (size_t i = 0; i < v.size(); i++) b[i] = cuda_emu::f2bf(v[i]);
    return b;
}
static std::vector<float> emu_to_f32(const std::vector<cuda_emu::bf16>& b) {
    std::vector<float> v(b.size());
    for (size_t i = 0; i < b.size(); i++) v[i] = cuda_emu::bf2f(b[i]);
    return v;
}
static double emu_rel_l2(const std::vector<float>& got, const std::vector<float>& want) {
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); i++) {
        double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    return num == num ? sqrt(num / den) : INFINITY;
}

// Shapes: D 64 with two query heads on one kv head over two tiles of 64 (the last partial), D 32 (one head per kv
// head) in one partial tile, D 128 (the released models'), and D 40 (no tensor-core kernels: the CUDA-core ones).
TEST_CASE("emulated CUDA: the attention kernels (CUDA cores and tensor cores), run on the CPU, match the CPU twin") {
    struct Shape { int B, T, H, KV, D; };
    for (Shape sh : {Shape{1, 80, 2, 1, 64}, Shape{1, 33, 2, 2, 32}, Shape{1, 20, 1, 1, 128}, Shape{1, 21, 2, 1, 40}}) {
        int B = sh.B, T = sh.T, H = sh.H, KV = sh.KV, D = sh.D;
        size_t nq = (size_t)B * T * H * D, nk = (size_t)B * T * KV * D;
        uint64_t seed = 7 + (uint64_t)D;
        std::vector<float> q = emu_rand_bf16(&seed, nq), k = emu_rand_bf16(&seed, nk), v = emu_rand_bf16(&seed, nk),
                           dy = emu_rand_bf16(&seed, nq);
        std::vector<float> wy(nq), att((size_t)B * H * T * T), wdq(nq, 0.0f), wdk(nk, 0.0f), wdv(nk, 0.0f);
        attention_forward_ref(wy.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, KV, D);
        attention_backward_ref(wdq.data(), wdk.data(), wdv.data(), dy.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, KV, D);
        AttentionBounds bd = attention_bf16_bounds(q.data(), k.data(), v.data(), dy.data(), att.data(), wy.data(), wdq.data(),
                                                   wdk.data(), wdv.data(), B, T, H, KV, D);
        for (bool tc : {false, true}) {
            bool has_tc = cuda_emu::attention_tc_fits(D);
            if (tc && !has_tc) continue;
            auto qb = emu_to_bf16(q), kb = emu_to_bf16(k), vb = emu_to_bf16(v), gb = emu_to_bf16(dy);
            std::vector<cuda_emu::bf16> yb(nq), dqb(nq), dkb(nk), dvb(nk);
            std::vector<float> lse((size_t)B * H * T), dsum((size_t)B * H * T);
            cuda_emu::forward(yb.data(), lse.data(), qb.data(), kb.data(), vb.data(), B, T, H, KV, D, tc);
            cuda_emu::backward(dqb.data(), dkb.data(), dvb.data(), dsum.data(), gb.data(), yb.data(), lse.data(), qb.data(), kb.data(),
                               vb.data(), B, T, H, KV, D, tc);
            std::vector<float> y = emu_to_f32(yb), dq = emu_to_f32(dqb), dk = emu_to_f32(dkb), dv = emu_to_f32(dvb);
            double l_y = emu_rel_l2(y, wy), l_dq = emu_rel_l2(dq, wdq), l_dk = emu_rel_l2(dk, wdk), l_dv = emu_rel_l2(dv, wdv);
            double b_y = max_bound_ratio(y.data(), wy.data(), bd.y), b_dq = max_bound_ratio(dq.data(), wdq.data(), bd.dq),
                   b_dk = max_bound_ratio(dk.data(), wdk.data(), bd.dk), b_dv = max_bound_ratio(dv.data(), wdv.data(), bd.dv);
            MESSAGE(std::string(tc ? "tensor cores" : "CUDA cores") << " B=" << B << " T=" << T << " H=" << H << " KV=" << KV
                    << " D=" << D << ": rel L2 y " << l_y << " dq " << l_dq << " dk " << l_dk << " dv " << l_dv
                    << "; worst error / its bf16 bound: y " << b_y << " dq " << b_dq << " dk " << b_dk << " dv " << b_dv);
            CHECK(l_y < 1e-2);
            CHECK(l_dq < 1e-2);
            CHECK(l_dk < 1e-2);
            CHECK(l_dv < 1e-2);
            CHECK(b_y <= 1.0);   // every element within its bound (attention_bf16_bounds, tests/test_util.h)
            CHECK(b_dq <= 1.0);
            CHECK(b_dk <= 1.0);
            CHECK(b_dv <= 1.0);
        }
    }
}
