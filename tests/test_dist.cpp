// Data-parallel tests: ZeRO-1 shards, the MPI collectives across real ranks (this test binary relaunched under
// mpirun), the NCCL path on GPUs, and data-parallel training against a single process.
//
// Multi-rank tests run `mpirun -np N <this binary> -tc="<worker>"`: the worker test case runs on every rank and
// checks its own results; mpirun's exit status is non-zero if any rank failed. A worker also passes as a plain
// single-process test (a world of one). Everything that launches mpirun sits under `timeout`, so a hang fails the
// test instead of stalling the suite.
#include <doctest/doctest.h>  // TEST_CASE, CHECK, REQUIRE
#include <unistd.h>           // readlink
#include <algorithm>          // std::sort
#include <climits>            // PATH_MAX
#include <cmath>              // fabs, INFINITY
#include <cstdlib>            // getenv
#include <nlohmann/json.hpp>  // nlohmann::json (metrics.jsonl)
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
static size_t count_substr(const std::string& s, const std::string& what) {
    size_t n = 0;
    for (size_t at = 0; (at = s.find(what, at)) != std::string::npos; at++) n++;
    return n;
}

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
        CHECK(count_substr(r.out, "1 passed, 0 failed") == (size_t)np);
    }
}

// ---------------------------------------------------------------------------- NCCL (GPUs)

// Named CUDA* so tests/gpu_check.sh runs it (one rank); under `mpirun -np <GPUs>` it checks NCCL across all GPUs.
TEST_CASE("CUDA NCCL collectives on device memory equal the host sums on every GPU (worker)") {
    if (cuda_device_count() == 0) { MESSAGE("skipped: no CUDA device"); g_tests_skipped++; return; }
    if (!dist_nccl_available()) { MESSAGE("skipped: built without NCCL (make NCCL=0)"); g_tests_skipped++; return; }
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

TEST_CASE("ZeRO-1 optimizer state saved by 2 ranks loads into 1, 2 and 3 ranks exactly (re-sharding)") {
    const size_t n = 1000;
    std::vector<float> m(n), v(n);
    for (size_t i = 0; i < n; i++) { m[i] = 0.001f * i - 0.3f; v[i] = 1e-6f * (float)(i * i % 97); }
    std::string dir = tmp_dir("zero_state");
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
    std::string dir = tmp_dir("zero_state_bad");
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

// ---------------------------------------------------------------------------- ZeRO-1 arithmetic, in one process

// A small random model with random gradients, for the optimizer tests.
static void random_model(Model* m, uint64_t seed) {
    Config c;
    c.vocab_size = 67; c.hidden_size = 24; c.num_hidden_layers = 2; c.num_attention_heads = 4; c.num_key_value_heads = 2;
    c.head_dim = 6; c.intermediate_size = 40; c.max_position_embeddings = 32;
    model_build(m, c);
    model_init_random(m, seed, 0.1f);
    model_zero_grad(m);
    uint64_t s = seed * 7 + 1;
    for (float& g : m->grads_memory) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        g = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5) * 0.2f;
    }
}

TEST_CASE("ZeRO-1 AdamW over 3 shards equals AdamW over the whole buffer, bit for bit, for 3 steps") {
    Model whole, sharded;
    random_model(&whole, 5);
    random_model(&sharded, 5);
    AdamW opt_whole;
    std::vector<AdamW> opt_shard(3);
    std::vector<Dist> ranks(3);
    for (int r = 0; r < 3; r++) { ranks[r].world = 3; ranks[r].rank = r; dist_shards(&ranks[r], whole.num_parameters); }
    for (int step = 0; step < 3; step++) {
        adamw_update(&whole, &opt_whole, 1e-2f);
        // each "rank" updates its shard of the same weights through the training loop's call (backend_adamw over
        // the Backend's ZeRO-1 range; the all-gather is the identity here: one buffer)
        for (int r = 0; r < 3; r++) {
            Backend be(&sharded);
            be.opt_begin = ranks[r].shard_begin();
            be.opt_end = ranks[r].shard_end();
            backend_adamw(&be, &opt_shard[r], 1e-2f, 1.0f);
        }
    }
    CHECK(sharded.params_memory == whole.params_memory);
    for (int r = 0; r < 3; r++) {
        size_t b = ranks[r].shard_begin(), e = ranks[r].shard_end();
        CHECK(opt_shard[r].m == std::vector<float>(opt_whole.m.begin() + b, opt_whole.m.begin() + e));
        CHECK(opt_shard[r].v == std::vector<float>(opt_whole.v.begin() + b, opt_whole.v.begin() + e));
        CHECK(opt_shard[r].t == opt_whole.t);
    }
}

TEST_CASE("clipping shards with the norm summed over shards equals clip_grad_norm of the whole gradient") {
    // the training loop's clipping (clip_gradients: backend_grad_sum_squares on each rank's ZeRO-1 range, the sums
    // added over ranks, backend_clip with the coefficient of their root), three "ranks" in one process
    Model m;
    random_model(&m, 9);
    std::vector<float> whole = m.grads_memory;
    double want = clip_grad_norm(whole.data(), whole.size(), 1.0);
    REQUIRE(want > 1.0);   // the clipping branch is taken
    std::vector<Dist> ranks(3);
    std::vector<Backend> be(3, Backend(&m));
    double s = 0;
    for (int r = 0; r < 3; r++) {
        ranks[r].world = 3; ranks[r].rank = r;
        dist_shards(&ranks[r], m.num_parameters);
        be[r].opt_begin = ranks[r].shard_begin();
        be[r].opt_end = ranks[r].shard_end();
        s += backend_grad_sum_squares(&be[r]);
    }
    double got = sqrt(s);
    CHECK(fabs(got - want) <= 1e-12 * want);
    for (int r = 0; r < 3; r++) {
        float grad_scale = 0.0f;
        backend_clip(&be[r], clip_coefficient(got, 1.0), &grad_scale);
        CHECK(grad_scale == 1.0f);   // the CPU scales the gradients in place
    }
    CHECK(max_rel_err(m.grads_memory.data(), whole.data(), whole.size(), 1e-30) <= 1e-7);
}

// ---------------------------------------------------------------------------- data-parallel training (CLI)
// A 2-layer model (tests/fixtures/model_gqa, V 257) on a noisy arithmetic token stream, 20 steps of 64 tokens.

static std::string dp_data() {
    std::string d = "build/test_tmp/dist_data";
    if (file_exists(d + "/data.json")) return d;
    make_dirs(d);
    uint64_t s = 11;
    auto stream = [&s](size_t n) {
        std::vector<uint32_t> t(n);
        uint32_t x = 0;
        for (size_t i = 0; i < n; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            x = (x * 5 + 3 + ((s >> 33) % 3 == 0 ? (uint32_t)((s >> 40) % 7) : 0)) % 257;
            t[i] = x;
        }
        return t;
    };
    shard_write(d + "/train.bin", stream(8192), 257);
    shard_write(d + "/val.bin", stream(1024), 257);
    write_file_atomic(d + "/data.json", "{\"vocab_size\": 257, \"train\": {\"file\": \"train.bin\"}, \"val\": {\"file\": \"val.bin\"}}\n");
    return d;
}
static std::string dp_flags(const std::string& out) {
    return " train --model tests/fixtures/model_gqa --data " + dp_data() + " --out " + out +
           " --steps 20 --batch-tokens 64 --seq-len 16 --lr 1e-2 --eval-every 0 --sample-tokens 0 --threads 1";
}
// the per-step training losses of a run
static std::vector<double> dp_losses(const std::string& out) {
    std::vector<double> l;
    std::string text = read_file(out + "/metrics.jsonl");
    size_t pos = 0;
    while (pos < text.size()) {
        size_t e = text.find('\n', pos);
        if (e == std::string::npos) break;
        nlohmann::json j = nlohmann::json::parse(text.substr(pos, e - pos));
        if (j.contains("loss")) l.push_back(j["loss"].get<double>());
        pos = e + 1;
    }
    return l;
}
static double losses_rel_err(const std::vector<double>& a, const std::vector<double>& b) {
    if (a.size() != b.size() || a.empty()) return INFINITY;
    double w = 0;
    for (size_t i = 0; i < a.size(); i++) w = std::max(w, fabs(a[i] - b[i]) / fabs(b[i]));
    return w;
}
static std::vector<float> dp_weights(const std::string& model_dir) {
    Model m;
    model_load_dir(&m, model_dir);
    return m.params_memory;
}
static CmdResult dp_run(int np, const std::string& args) {
    std::string cmd = np == 0 ? "OMP_NUM_THREADS=1 timeout -k 5 120 " + deepseek_bin() + args
                              : mpirun(np) + deepseek_bin() + args;
    CmdResult r = run_cmd(cmd);
    if (r.rc != 0) MESSAGE("command failed (" << r.rc << "): " << cmd << "\n" << r.out);
    return r;
}

TEST_CASE("each step's global batch holds the same windows for one rank of batch B and for two ranks of B/2") {
    std::string path = dp_data() + "/train.bin";
    DataLoader one, r0, r1;
    loader_init(&one, path, 4, 16, 0, 1, 1337, 257, true);
    loader_init(&r0, path, 2, 16, 0, 2, 1337, 257, true);
    loader_init(&r1, path, 2, 16, 1, 2, 1337, 257, true);
    std::vector<int> in1(64), tg1(64), in0(32), tg0(32), inb(32), tgb(32);
    for (int step = 0; step < 20; step++) {
        loader_next(&one, in1.data(), tg1.data());
        loader_next(&r0, in0.data(), tg0.data());
        loader_next(&r1, inb.data(), tgb.data());
        std::vector<std::vector<int>> a, b;   // the step's rows, as sets
        for (int i = 0; i < 4; i++) a.push_back(std::vector<int>(in1.begin() + 16 * i, in1.begin() + 16 * i + 16));
        for (int i = 0; i < 2; i++) b.push_back(std::vector<int>(in0.begin() + 16 * i, in0.begin() + 16 * i + 16));
        for (int i = 0; i < 2; i++) b.push_back(std::vector<int>(inb.begin() + 16 * i, inb.begin() + 16 * i + 16));
        std::sort(a.begin(), a.end());
        std::sort(b.begin(), b.end());
        CHECK(a == b);
    }
}

TEST_CASE("mpirun -np 2 with half the micro-batch reproduces one process: losses within 1e-5 for 20 steps") {
    if (skip_multirank("data-parallel training")) return;
    run_cmd("rm -rf build/test_tmp/dp_one build/test_tmp/dp_two");   // an --out holding an earlier run is refused
    auto one = dp_run(0, dp_flags("build/test_tmp/dp_one") + " --micro-batch 4 --save-every 0");
    auto two = dp_run(2, dp_flags("build/test_tmp/dp_two") + " --micro-batch 2 --save-every 0");
    REQUIRE(one.rc == 0);
    REQUIRE(two.rc == 0);
    auto a = dp_losses("build/test_tmp/dp_one"), b = dp_losses("build/test_tmp/dp_two");
    CHECK(a.size() == 20);
    // fp32 sums over 4 rows vs 2+2 rows differ in the last bits; AdamW carries that through 20 steps
    double e = losses_rel_err(b, a);
    MESSAGE("losses 1 rank × 4 vs 2 ranks × 2: max rel err " << e << " (first " << a[0] << ", last " << a.back() << ")");
    CHECK(e <= 1e-5);
    auto wa = dp_weights("build/test_tmp/dp_one/final"), wb = dp_weights("build/test_tmp/dp_two/final");
    REQUIRE(wa.size() == wb.size());
    MESSAGE("final weights: max rel err " << max_rel_err(wb.data(), wa.data(), wa.size(), 1e-2));
    // rank 0 speaks for the run: one log, not one per rank
    CHECK(count_substr(two.out, "step 20/20 |") == 1);
    CHECK(two.out.find("data parallel: 2 rank(s)") != std::string::npos);
}

TEST_CASE("ZeRO-1 on and off give the same losses and weights within 1e-6 after 20 steps on 2 ranks") {
    if (skip_multirank("ZeRO-1 training")) return;
    run_cmd("rm -rf build/test_tmp/dp_zero0 build/test_tmp/dp_zero1");
    auto off = dp_run(2, dp_flags("build/test_tmp/dp_zero0") + " --micro-batch 2 --save-every 0");
    auto on = dp_run(2, dp_flags("build/test_tmp/dp_zero1") + " --micro-batch 2 --save-every 0 --zero 1");
    REQUIRE(off.rc == 0);
    REQUIRE(on.rc == 0);
    auto a = dp_losses("build/test_tmp/dp_zero0"), b = dp_losses("build/test_tmp/dp_zero1");
    CHECK(a.size() == 20);
    double e = losses_rel_err(b, a);
    auto wa = dp_weights("build/test_tmp/dp_zero0/final"), wb = dp_weights("build/test_tmp/dp_zero1/final");
    REQUIRE(wa.size() == wb.size());
    double ew = max_rel_err(wb.data(), wa.data(), wa.size(), 1e-2);
    MESSAGE("ZeRO-1 vs replicated: losses max rel err " << e << ", weights " << ew);
    CHECK(e <= 1e-6);
    CHECK(ew <= 1e-6);
    // optimizer state: one file per rank with ZeRO-1, the single replicated file without
    CHECK(file_exists("build/test_tmp/dp_zero1/final/optimizer-rank00000-of-00002.safetensors"));
    CHECK(file_exists("build/test_tmp/dp_zero1/final/optimizer-rank00001-of-00002.safetensors"));
    CHECK(!file_exists("build/test_tmp/dp_zero1/final/optimizer.safetensors"));
    CHECK(file_exists("build/test_tmp/dp_zero0/final/optimizer.safetensors"));
}

TEST_CASE("a 2-rank checkpoint resumes on 2 ranks bit-exactly, with ZeRO-1 and without") {
    if (skip_multirank("checkpoint and resume")) return;
    for (int zero : {1, 0}) {
        std::string a = "build/test_tmp/dp_ckpt" + std::to_string(zero), b = a + "_resumed";
        run_cmd("rm -rf " + a + " " + b);
        auto full = dp_run(2, dp_flags(a) + " --micro-batch 2 --save-every 10 --zero " + std::to_string(zero));
        REQUIRE(full.rc == 0);
        auto res = dp_run(2, " train --resume " + a + "/step_000010 --out " + b + " --threads 1");
        REQUIRE(res.rc == 0);
        auto la = dp_losses(a), lb = dp_losses(b);
        REQUIRE(la.size() == 20);
        REQUIRE(lb.size() == 10);
        CHECK(std::vector<double>(la.begin() + 10, la.end()) == lb);
        CHECK(read_file(a + "/final/model.safetensors") == read_file(b + "/final/model.safetensors"));
        if (zero)
            for (const char* f : {"/final/optimizer-rank00000-of-00002.safetensors", "/final/optimizer-rank00001-of-00002.safetensors"})
                CHECK(read_file(a + f) == read_file(b + f));
        else
            CHECK(read_file(a + "/final/optimizer.safetensors") == read_file(b + "/final/optimizer.safetensors"));
    }
}

TEST_CASE("a 2-rank ZeRO-1 checkpoint resumes on 1 rank by re-sharding; an impossible split is a clear error") {
    if (skip_multirank("re-sharding on resume")) return;
    std::string a = "build/test_tmp/dp_reshard", b = a + "_one";
    run_cmd("rm -rf " + a + " " + b + " " + a + "_three");
    REQUIRE(dp_run(2, dp_flags(a) + " --micro-batch 2 --save-every 10 --zero 1").rc == 0);
    auto one = dp_run(0, " train --resume " + a + "/step_000010 --out " + b + " --threads 1");
    REQUIRE(one.rc == 0);
    CHECK(one.out.find("re-sharding the run from 2 to 1 rank(s)") != std::string::npos);
    auto la = dp_losses(a), lb = dp_losses(b);
    REQUIRE(la.size() == 20);
    double e = losses_rel_err(lb, std::vector<double>(la.begin() + 10, la.end()));
    MESSAGE("steps 11-20 resumed on 1 rank vs 2 ranks: losses max rel err " << e);
    CHECK(e <= 1e-5);
    // 4 sequences per step cannot be dealt out to 3 ranks
    auto three = run_cmd(mpirun(3) + deepseek_bin() + " train --resume " + a + "/step_000010 --out " + a + "_three --threads 1");
    CHECK(three.rc != 0);
    CHECK(three.out.find("error: train: ") != std::string::npos);
    CHECK(three.out.find("cannot be split over 3 rank(s)") != std::string::npos);
}

// The same data-parallel path on GPUs: NCCL sums device gradients where MPI summed host ones. Tolerances: one rank
// against two is the bf16 CLI tolerance of tests/test_cuda.cpp (5% a step: bf16 parameters and activations on weights
// that drift apart through AdamW); ZeRO-1 on and off differ only in the order the norm's Σg² is added (double), which
// can move the clip coefficient by its last float bit and round a few bf16 weights the other way: 1e-4.
TEST_CASE("CUDA data-parallel training over NCCL: 2 GPUs follow 1, overlapped all-reduce, ZeRO-1 on and off agree, 2 GPUs' checkpoint resumes on 1") {
    int ngpu = dist_nccl_available() ? cuda_device_count() : 0;
    if (ngpu < 2) {
        g_tests_skipped++;
        printf("skipped: data-parallel GPU training needs NCCL and 2 CUDA devices (%d usable here)\n", ngpu);
        MESSAGE("skipped: needs 2 CUDA devices (" << ngpu << " here)");
        return;
    }
    if (skip_multirank("NCCL training")) return;
    std::string one = "build/test_tmp/nccl_one", two = "build/test_tmp/nccl_two", twoz = "build/test_tmp/nccl_two_zero",
                res = "build/test_tmp/nccl_resumed";
    run_cmd("rm -rf " + one + " " + two + " " + twoz + " " + res);
    auto a = dp_run(0, dp_flags(one) + " --micro-batch 4 --save-every 0 --device cuda");
    auto b = dp_run(2, dp_flags(two) + " --micro-batch 2 --save-every 0 --device cuda");
    auto c = dp_run(2, dp_flags(twoz) + " --micro-batch 2 --save-every 10 --zero 1 --device cuda");
    REQUIRE(a.rc == 0);
    REQUIRE(b.rc == 0);
    REQUIRE(c.rc == 0);
    CHECK(b.out.find("gradients summed over NCCL") != std::string::npos);
    // the all-reduce overlapped with the backward (the default) sums what one all-reduce after it sums: 2 ranks add
    // a + b either way, so the losses are identical
    std::string after = "build/test_tmp/nccl_two_after";
    run_cmd("rm -rf " + after);
    auto n = run_cmd(mpirun(2) + "-x DEEPSEEK_GRAD_OVERLAP=0 " + deepseek_bin() + dp_flags(after) + " --micro-batch 2 --save-every 0 --device cuda");
    REQUIRE_MESSAGE(n.rc == 0, n.out);
    CHECK(dp_losses(after) == dp_losses(two));
    auto la = dp_losses(one), lb = dp_losses(two), lc = dp_losses(twoz);
    REQUIRE(la.size() == 20);
    double e_ranks = losses_rel_err(lb, la), e_zero = losses_rel_err(lc, lb);
    MESSAGE("1 GPU × 4 vs 2 GPUs × 2: losses max rel err " << e_ranks << "; ZeRO-1 on vs off: " << e_zero);
    CHECK(e_ranks < 5e-2);
    CHECK(e_zero < 1e-4);
    CHECK(la.back() < la.front());
    CHECK(file_exists(twoz + "/final/optimizer-rank00001-of-00002.safetensors"));
    auto r = dp_run(0, " train --resume " + twoz + "/step_000010 --out " + res + " --threads 1 --device cuda");
    REQUIRE(r.rc == 0);
    auto lr_ = dp_losses(res);
    REQUIRE(lr_.size() == 10);
    double e_res = losses_rel_err(lr_, std::vector<double>(lc.begin() + 10, lc.end()));
    MESSAGE("steps 11-20 on 1 GPU after the 2-GPU ZeRO-1 checkpoint vs on 2 GPUs: max rel err " << e_res);
    CHECK(e_res < 5e-2);
}

TEST_CASE("SIGTERM to one rank stops every rank after the same step, with one complete checkpoint") {
    if (skip_multirank("stopping by signal")) return;
    std::string out = "build/test_tmp/dp_signal";
    run_cmd("rm -rf " + out);
    // a long run in the background ($! is `timeout`, its child mpirun, whose children are the ranks); once rank 0
    // has logged a step every rank has its handlers: signal one rank, not mpirun
    std::string flags = dp_flags(out);
    flags.replace(flags.find("--steps 20"), 10, "--steps 100000");   // (a flag given twice is an error: replaced)
    std::string cmd = mpirun(2) + deepseek_bin() + flags + " --micro-batch 2 --save-every 0 --zero 1 & MP=$!; "
                      "for i in $(seq 600); do [ -s " + out + "/metrics.jsonl ] && break; sleep 0.1; done; "
                      "kill -TERM $(pgrep -P $(pgrep -P $MP -x mpirun) | tail -n 1); wait $MP";   // a rank: mpirun's child
    auto r = run_cmd(cmd);
    INFO(r.out);
    CHECK(r.rc == 0);
    CHECK(r.out.find("stopped by signal") != std::string::npos);
    CHECK(r.out.find("error") == std::string::npos);
    size_t at = r.out.find("resume with: deepseek train --resume ");
    REQUIRE(at != std::string::npos);
    std::string ckpt = r.out.substr(at + 37, r.out.find('\n', at) - at - 37);
    CHECK(file_exists(ckpt + "/trainer_state.json"));
    CHECK(file_exists(ckpt + "/optimizer-rank00000-of-00002.safetensors"));
    CHECK(file_exists(ckpt + "/optimizer-rank00001-of-00002.safetensors"));
}
