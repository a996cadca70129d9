// cuda_emu.h — the CUDA constructs our attention kernels use, emulated on the CPU, so that tests/test_cuda_emu.cpp can
// run the kernels' own source (kernels/cuda_attention.cuh, compiled by g++ with DEEPSEEK_CUDA_EMU) against their CPU
// twins on a machine without a GPU. Included inside `namespace cuda_emu` (after the standard headers it needs), so
// nothing here meets the real CUDA build's symbols.
//   threads   one std::thread per CUDA thread of a block; the blocks of a grid run one after another, so shared
//             memory is one static array (smem_tc, smem)
//   barriers  __syncthreads and __syncwarp are barriers (EmuBarrier); a thread that returns leaves them,
//             as an exited thread stops counting on the GPU
//   shuffles  each lane writes its value to the warp's slots, a warp barrier, reads its source lane's, a barrier
//   WMMA      a fragment holds the whole 16×16 tile in every lane (values as fp32: bf16 inputs are exact in it);
//             load, store and mma are warp-collective (barriers around them), a store written by lane 0.
// What it cannot check: timing, occupancy, register spills, bank conflicts, the hardware's fragment layout (WMMA's
// API hides it from the kernels too), and alignment faults. What it does check: every index, mask, barrier and
// reduction of the kernels' arithmetic.

struct dim3 { unsigned x = 1, y = 1, z = 1; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
struct bf16 { uint16_t u; };
inline float bf2f(bf16 x) { return bf16_to_f32(x.u); }   // deepseek.h's conversions (round to nearest even)
inline bf16 f2bf(float f) { return {f32_to_bf16(f)}; }
inline int ceil_div(long long a, long long b) { return (int)((a + b - 1) / b); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
alignas(128) inline unsigned char smem_tc[1 << 18];   // extern __shared__ arrays of the kernels
alignas(128) inline float smem[1 << 16];
alignas(128) inline float scores[1 << 16];

// a reusable barrier for n threads (C++17 has no std::barrier); a thread that leaves lowers the count for good
class EmuBarrier {
    std::mutex m;
    std::condition_variable cv;
    int expected, count;
    unsigned long generation = 0;
    void arrived(std::unique_lock<std::mutex>& lock, bool wait) {
        unsigned long g = generation;
        if (--count == 0) {
            generation++;
            count = expected;
            cv.notify_all();
        } else if (wait) {
            cv.wait(lock, [&] { return generation != g; });
        }
    }
public:
    explicit EmuBarrier(int n) : expected(n), count(n) {}
    void arrive_and_wait() { std::unique_lock<std::mutex> lock(m); arrived(lock, true); }
    void arrive_and_drop() { std::unique_lock<std::mutex> lock(m); expected--; arrived(lock, false); }
};
struct EmuWarp { std::unique_ptr<EmuBarrier> bar; float slot[32]; };
inline std::unique_ptr<EmuBarrier> g_emu_block;
inline std::vector<EmuWarp> g_emu_warps;
inline thread_local int t_lane, t_warp;
inline void __syncthreads() { g_emu_block->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { g_emu_warps[t_warp].bar->arrive_and_wait(); }
inline float emu_exchange(float v, int src) {
    EmuWarp& w = g_emu_warps[t_warp];
    w.slot[t_lane] = v;
    w.bar->arrive_and_wait();
    float r = w.slot[src & 31];
    w.bar->arrive_and_wait();
    return r;
}
inline float __shfl_xor_sync(unsigned, float v, int o) { return emu_exchange(v, t_lane ^ o); }
inline float __shfl_sync(unsigned, float v, int src) { return emu_exchange(v, src); }
inline float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
inline float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

// (the decode kernel's block reductions compile but are not run here: its static __shared__ array would be per thread)
inline float block_sum(float x, float* shared32) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    x = warp_sum(x);
    __syncthreads();
    if (lane == 0) shared32[warp] = x;
    __syncthreads();
    float r = 0.0f;
    for (int i = 0; i < nw; i++) r += shared32[i];
    return r;
}
inline float block_max(float x, float* shared32) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    x = warp_max(x);
    __syncthreads();
    if (lane == 0) shared32[warp] = x;
    __syncthreads();
    float r = -INFINITY;
    for (int i = 0; i < nw; i++) r = fmaxf(r, shared32[i]);
    return r;
}

// kernel<<<grid, block>>>(args) is emu_launch(grid, block, [&] { kernel(args); })
inline void emu_launch(dim3 grid, dim3 block, const std::function<void()>& kernel) {
    gridDim = grid;
    blockDim = block;
    int n = (int)(block.x * block.y * block.z), warps = (n + 31) / 32;
    for (unsigned by = 0; by < grid.y; by++)
        for (unsigned bx = 0; bx < grid.x; bx++) {
            g_emu_block = std::make_unique<EmuBarrier>(n);
            g_emu_warps = std::vector<EmuWarp>(warps);
            for (int w = 0; w < warps; w++) g_emu_warps[w].bar = std::make_unique<EmuBarrier>(std::min(32, n - 32 * w));
            std::vector<std::thread> threads;
            for (int i = 0; i < n; i++)
                threads.emplace_back([&, i, bx, by] {
                    threadIdx = dim3((unsigned)i);
                    blockIdx = dim3(bx, by);
                    t_lane = i % 32;
                    t_warp = i / 32;
                    kernel();
                    g_emu_warps[t_warp].bar->arrive_and_drop();
                    g_emu_block->arrive_and_drop();
                });
            for (std::thread& t : threads) t.join();
        }
}

namespace nvcuda { namespace wmma {
struct matrix_a {}; struct matrix_b {}; struct accumulator {}; struct row_major {}; struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class L = void> struct fragment { float x[256]; };
inline float value(float v) { return v; }
inline float value(bf16 v) { return bf2f(v); }
template <class Use, class T, class L> void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, const T* p, unsigned ld) {
    __syncwarp();
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) f.x[r * 16 + c] = value(std::is_same<L, col_major>::value ? p[c * ld + r] : p[r * ld + c]);
    __syncwarp();
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ld, layout_t l) {
    __syncwarp();
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) f.x[r * 16 + c] = l == mem_row_major ? p[r * ld + c] : p[c * ld + r];
    __syncwarp();
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ld, layout_t l) {
    __syncwarp();
    if (t_lane == 0)
        for (int r = 0; r < 16; r++)
            for (int c = 0; c < 16; c++) (l == mem_row_major ? p[r * ld + c] : p[c * ld + r]) = f.x[r * 16 + c];
    __syncwarp();
}
template <class F> void fill_fragment(F& f, float v) { for (float& x : f.x) x = v; }
template <class A, class B>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const A& a, const B& b, const fragment<accumulator, 16, 16, 16, float>& c) {
    float out[256];
    for (int r = 0; r < 16; r++)
        for (int n = 0; n < 16; n++) {
            float s = c.x[r * 16 + n];
            for (int k = 0; k < 16; k++) s += a.x[r * 16 + k] * b.x[k * 16 + n];
            out[r * 16 + n] = s;
        }
    memcpy(d.x, out, sizeof out);
}
}}  // namespace nvcuda::wmma
