// kernels/cpu_exp.h — e^x in fp32 without libm, for the fast CPU path's softmaxes and SwiGLU.
// defines: exp_madd, exp_poly
// Inline, because the `omp simd` loops that call it must see its body to vectorise it; #included by the kernels
// (through deepseek.cu), by infer.cu's decode loops and by tests/test_fastpath.cpp.
#pragma once
#include <cstdint>   // uint32_t
#include <cstring>   // memcpy

// e^x in fp32 without libm, so `omp simd` loops vectorise it: e^x = 2^n · e^r, n = round(x·log2 e),
// r = x − n·ln 2 (ln 2 split in two so r is exact to fp32), e^r ≈ 1 + r + r²·P(r) with P the degree-5
// minimax polynomial Cephes' expf uses on |r| ≤ ln2/2: within 1 ulp of the correctly rounded e^x
// (tests/test_fastpath.cpp checks it against libm).
// Inputs are clamped to [−87.3, 88.3]: e^−87.3 ≈ 1e-38, not 0, so callers that need an exact 0 (masked
// positions) must not call it for them. Defined for every input: ±Inf clamp like any large value, NaN gives NaN
// (the clamp lets it through; 2^n is taken from t's bits as an unsigned int, never a float-to-int conversion or
// a shift of a negative int, which were undefined for NaN).
// a·b + c with one rounding where the CPU has FMA: then exp_poly gives the same bits in every build (-O1 or -O3,
// contracted or not) and equals kernels/cpu_attention.h's 16-lane exp16, so attention's forward and backward agree exactly
inline float exp_madd(float a, float b, float c) {
#if defined(__FMA__)
    return __builtin_fmaf(a, b, c);
#else
    return a * b + c;
#endif
}
inline float exp_poly(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
    // n = round(x·log2 e) by the 1.5·2^23 trick (adding it pushes the fraction out of the mantissa; exact for
    // |t| < 2^22): floorf would stop GCC from vectorising the loop unless -fno-trapping-math is given
    float t = exp_madd(x, 1.44269504088896341f, 12582912.0f);
    float n = t - 12582912.0f;
    float r = exp_madd(-n, 0.693145751953125f, x);
    r = exp_madd(-n, 1.428606765330187e-6f, r);
    float p = 1.9875691500e-4f;
    p = exp_madd(p, r, 1.3981999507e-3f);
    p = exp_madd(p, r, 8.3334519073e-3f);
    p = exp_madd(p, r, 4.1665795894e-2f);
    p = exp_madd(p, r, 1.6666665459e-1f);
    p = exp_madd(p, r, 5.0000001201e-1f);
    p = exp_madd(p, r * r, r) + 1.0f;
    // 2^n: t = 1.5·2^23 + n exactly (|n| ≤ 127, one ulp of t is 1), so t's bits are 0x4B400000 + n in two's
    // complement and (n + 127) << 23 is 2^n's, in unsigned arithmetic (for NaN any bits: p is NaN, so is p·scale)
    uint32_t tb;
    memcpy(&tb, &t, 4);
    uint32_t bits = (tb - 0x4B400000u + 127u) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}
