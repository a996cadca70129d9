// Data-parallel tests: ZeRO-1 shards, the MPI collectives across real ranks (this test binary relaunched under
// mpirun), the NCCL path on GPUs, and data-parallel training against a single process.
//
// Multi-rank tests run `mpirun -np N <this binary> -tc="<worker>"`: the worker test case runs on every rank and
// checks its own results; mpirun's exit status is non-zero if any rank failed. A worker also passes as a plain
// single-process test (a world of one). Everything that launches mpirun sits under `timeout`, so a hang fails the
// test instead of stalling the suite.
#include <doctest/doctest.h>  // TEST_CASE, CHECK, REQUIRE
#include <unistd.h>           // readlink
#include <climits>            // PATH_MAX
#include <cstdlib>            // getenv
#include <string>             // std::string
#include <vector>             // std::vector
#include "../deepseek.h"      // Dist, dist_*
#include "test_util.h"        // run_cmd, deepseek_bin, g_tests_skipped

// ---------------------------------------------------------------------------- helpers

static std::string self_exe() {
    char buf[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) return "";
    buf[n] = 0;
    return buf;
}
static bool have_mpirun() { return run_cmd("command -v mpirun").rc == 0; }

// mpirun as CI and containers need it: root allowed, more ranks than cores, shared memory + loopback only,
// no core binding (ranks share 2 cores), one OpenMP thread per rank. Bounded by `timeout`.
static std::string mpirun(int np, int timeout_s = 120) {
    return "OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout -k 5 " +
           std::to_string(timeout_s) + " mpirun --oversubscribe --bind-to none --mca btl self,vader,tcp -np " +
           std::to_string(np) + " ";
}

// A multi-rank test cannot run when mpirun is missing, or when the suite itself runs under mpirun.
static bool skip_multirank(const char* why_needed) {
    if (dist_launched()) { MESSAGE("skipped: already inside an MPI launch"); g_tests_skipped++; return true; }
    if (!have_mpirun()) { MESSAGE("skipped: mpirun not found (" << why_needed << ")"); g_tests_skipped++; return true; }
    return false;
}

// rank r's input to the collectives: small integers, so every summation order is exact
static float input_value(int r, size_t i) { return (float)((int)((i * 7 + (size_t)r * 13) % 11) - 5); }

// ---------------------------------------------------------------------------- shards

TEST_CASE("ZeRO-1 shards tile the parameter buffer contiguously, start aligned and differ by at most 16 per rank") {
    for (size_t n : {(size_t)1, (size_t)17, (size_t)1000, (size_t)123457, (size_t)5000000000ull}) {
        for (int world : {1, 2, 3, 7, 8, 64}) {
            Dist d;
            d.world = world;
            dist_shards(&d, n);
            REQUIRE(d.shard.size() == (size_t)world + 1);
            CHECK(d.shard[0] == 0);
            CHECK(d.shard[world] == n);
            size_t lo = n, hi = 0;
            for (int r = 0; r < world; r++) {
                CHECK(d.shard[r] <= d.shard[r + 1]);
                CHECK(d.shard[r] % 16 == 0);
                lo = std::min(lo, d.shard[r + 1] - d.shard[r]);
                hi = std::max(hi, d.shard[r + 1] - d.shard[r]);
            }
            CHECK(hi - lo <= 16 * (size_t)world);
        }
    }
}

TEST_CASE("a process started without mpirun is rank 0 of 1 and every collective leaves its data unchanged") {
    if (dist_launched()) { MESSAGE("skipped: inside an MPI launch"); g_tests_skipped++; return; }
    Dist d;
    dist_init(&d);
    CHECK(!d.mpi);
    CHECK(d.rank == 0);
    CHECK(d.world == 1);
    CHECK(d.local_rank == 0);
    dist_shards(&d, 100);
    std::vector<float> x(100);
    for (size_t i = 0; i < x.size(); i++) x[i] = input_value(0, i);
    std::vector<float> y = x;
    dist_allreduce_sum(d, y.data(), y.size());
    dist_reduce_scatter_sum(d, y.data());
    dist_allgather(d, y.data());
    CHECK(y == x);
    double ss = 0;
    for (float v : x) ss += (double)v * v;
    CHECK(dist_sum_squares(d, x.data(), x.size(), false) == ss);
    CHECK(dist_sum_squares(d, x.data(), x.size(), true) == ss);
    dist_finalize(&d);
}

// ---------------------------------------------------------------------------- MPI collectives across ranks

// The worker: each rank knows every rank's input, so it can check the collective's result on its own.
TEST_CASE("MPI collectives equal the serial sums on every rank (worker)") {
    Dist d;
    dist_init(&d);
    const size_t n = 1003;   // not a multiple of 16·world: the last shard is the odd one
    dist_shards(&d, n);
    std::vector<float> x(n), want(n);
    for (size_t i = 0; i < n; i++) {
        x[i] = input_value(d.rank, i);
        want[i] = 0;
        for (int r = 0; r < d.world; r++) want[i] += input_value(r, i);
    }
    std::vector<float> a = x;
    dist_allreduce_sum(d, a.data(), n);
    CHECK(a == want);
    // reduce-scatter: this rank's shard holds the sum; the sharded Σx² adds the shards' parts over ranks
    std::vector<float> s = x;
    dist_reduce_scatter_sum(d, s.data());
    size_t bad = 0;
    for (size_t i = d.shard_begin(); i < d.shard_end(); i++) bad += s[i] != want[i];
    CHECK(bad == 0);
    double ss = 0;
    for (float v : want) ss += (double)v * v;
    CHECK(dist_sum_squares(d, s.data(), n, true) == ss);
    CHECK(dist_sum_squares(d, want.data(), n, false) == ss);
    // all-gather: every shard comes from its owner
    dist_allgather(d, s.data());
    CHECK(s == want);
    double two[2] = {1.0 * d.rank, 1.0};
    dist_allreduce_sum(d, two, 2);
    CHECK(two[0] == d.world * (d.world - 1) / 2.0);
    CHECK(two[1] == d.world);
    int token = d.rank == 0 ? 4242 : 0;
    dist_broadcast(d, &token, sizeof token, 0);
    CHECK(token == 4242);
    CHECK(d.local_rank < d.local_world);
    MESSAGE("rank " << d.rank << " of " << d.world << " (local " << d.local_rank << " of " << d.local_world << ")");
    dist_finalize(&d);
}

TEST_CASE("MPI collectives are exact across 2 and 3 ranks launched by mpirun") {
    if (skip_multirank("MPI collectives")) return;
    for (int np : {2, 3}) {
        auto r = run_cmd(mpirun(np) + self_exe() + " -tc=\"MPI collectives equal the serial sums on every rank*\"");
        INFO("mpirun -np " << np << " output:\n" << r.out);
        CHECK(r.rc == 0);
        size_t passed = 0;
        for (size_t at = 0; (at = r.out.find("1 passed, 0 failed", at)) != std::string::npos; at++) passed++;
        CHECK(passed == (size_t)np);
    }
}

// ---------------------------------------------------------------------------- NCCL (GPUs)

// On one GPU this is a single-rank NCCL run; tests/gpu_check.sh also runs it under `mpirun -np <GPUs>`.
TEST_CASE("NCCL collectives on device memory equal the host sums on every GPU (worker)") {
    if (cuda_device_count() == 0) { MESSAGE("skipped: no CUDA device"); g_tests_skipped++; return; }
    Dist d;
    dist_init(&d);
    std::string report;
    size_t wrong = 0;
    for (size_t n : {(size_t)1003, (size_t)(1 << 22)}) {   // an odd size (grouped path) and an even one
        wrong += dist_nccl_selftest(&d, n, &report);
        MESSAGE(report);
    }
    CHECK(wrong == 0);
    dist_finalize(&d);
}

// ---------------------------------------------------------------------------- ZeRO-1 optimizer state files

static std::string fresh_dir(const std::string& name) {
    std::string d = "build/test_tmp/" + name;
    run_cmd("rm -rf " + d);
    make_dirs(d);
    return d;
}

TEST_CASE("ZeRO-1 optimizer state saved by 2 ranks loads into 1, 2 and 3 ranks exactly (re-sharding)") {
    const size_t n = 1000;
    std::vector<float> m(n), v(n);
    for (size_t i = 0; i < n; i++) { m[i] = 0.001f * i - 0.3f; v[i] = 1e-6f * (float)(i * i % 97); }
    std::string dir = fresh_dir("zero_state");
    for (int r = 0; r < 2; r++) {   // each rank writes its own slice: no communication needed
        Dist d;
        d.world = 2;
        d.rank = r;
        dist_shards(&d, n);
        zero_state_save(d, dir, {{"m", m.data() + d.shard_begin()}, {"v", v.data() + d.shard_begin()}}, n);
    }
    CHECK(zero_state_world(dir) == 2);
    for (int world : {1, 2, 3}) {
        std::vector<float> gm(n, NAN), gv(n, NAN);
        for (int r = 0; r < world; r++) {
            Dist d;
            d.world = world;
            d.rank = r;
            dist_shards(&d, n);
            zero_state_load(d, dir, {{"m", gm.data() + d.shard_begin()}, {"v", gv.data() + d.shard_begin()}}, n);
        }
        CHECK(gm == m);
        CHECK(gv == v);
    }
}

TEST_CASE("ZeRO-1 optimizer state that is missing a rank or belongs to another model is a clear error") {
    const size_t n = 100;
    std::vector<float> m(n, 1.0f);
    std::string dir = fresh_dir("zero_state_bad");
    Dist d;
    d.world = 2;
    d.rank = 0;
    dist_shards(&d, n);
    CHECK_THROWS_AS(zero_state_load(d, dir, {{"m", m.data()}}, n), DeepseekError);   // no state at all
    zero_state_save(d, dir, {{"m", m.data()}}, n);                                  // rank 1's file never written
    try {
        zero_state_load(d, dir, {{"m", m.data()}}, n);
        CHECK(false);
    } catch (const DeepseekError& e) {
        CHECK(e.msg.find("missing") != std::string::npos);
    }
    d.rank = 1;
    zero_state_save(d, dir, {{"m", m.data() + d.shard_begin()}}, n);
    Dist other;
    other.world = 1;
    dist_shards(&other, 2 * n);
    std::vector<float> big(2 * n);
    try {
        zero_state_load(other, dir, {{"m", big.data()}}, 2 * n);
        CHECK(false);
    } catch (const DeepseekError& e) {
        CHECK(e.msg.find("parameters") != std::string::npos);
    }
    CHECK_THROWS_AS(zero_state_load(d, dir, {{"not_there", m.data()}}, n), DeepseekError);
}
