// Bad input as a spec: every row builds one hostile input in a fresh directory, runs ./deepseek on it, and requires
// a clean error — an exit status in 1..127, exactly one line on stderr, "error: " and the row's expected words in it,
// no sanitizer report, and no hang (each run is killed after 120 s, which reads as status 137: a failure).
// Rows are grouped by what is read: model directories, tokenizers, data and training runs, command lines.
#include <doctest/doctest.h>  // TEST_CASE, CHECK, INFO
#include <fcntl.h>            // open: the lock a row holds
#include <sys/file.h>         // flock
#include <unistd.h>           // getpid, gethostname, close
#include <cstring>            // memcpy
#include <functional>         // std::function
#include <string>             // std::string
#include <vector>             // std::vector
#include <nlohmann/json.hpp>  // nlohmann::json: fixtures edited into bad ones
#include "../deepseek.h"      // read_file, write_file_atomic, make_dirs
#include "test_util.h"        // run_cmd, deepseek_bin

using json = nlohmann::json;

namespace {

// One row: what the input is, how to build it inside `dir`, and the words its error must contain.
// build() returns the command line after the binary's name (it may redirect stdin); "" skips the row (says why).
struct BadInput {
    const char* what;
    std::function<std::string(const std::string& dir)> build;
    const char* expect;
};

std::string fresh_dir(const std::string& name) {
    std::string d = "build/test_tmp/inputs/" + name;
    run_cmd("rm -rf '" + d + "'");
    make_dirs(d);
    return d;
}
// copies a fixture directory (or file) to dir/name and returns its path
std::string copy_of(const std::string& fixture, const std::string& dir, const std::string& name) {
    std::string to = dir + "/" + name;
    run_cmd("cp -r '" + fixture + "' '" + to + "'");
    return to;
}
void write_text(const std::string& path, const std::string& text) { write_file_atomic(path, text); }
// reads a JSON file, lets edit() change it, writes it back
void edit_json(const std::string& path, const std::function<void(json&)>& edit) {
    json j = json::parse(read_file(path));
    edit(j);
    write_text(path, j.dump(1));
}

struct Outcome { int rc; std::string err; };
Outcome run_row(const std::string& args) {
    // stdout is dropped, stderr kept; SIGKILL after 120 s so that a hang fails instead of blocking the suite
    CmdResult r = run_cmd("( timeout -s KILL 120 " + deepseek_bin() + " " + args + " 2>&1 >/dev/null )");
    return {r.rc, r.out};
}
bool sanitizer_report(const std::string& err) {
    return err.find("AddressSanitizer") != std::string::npos || err.find("LeakSanitizer") != std::string::npos ||
           err.find("runtime error:") != std::string::npos || err.find("UndefinedBehaviorSanitizer") != std::string::npos;
}

void check_rows(const char* group, const std::vector<BadInput>& rows) {
    int i = 0;
    for (const BadInput& row : rows) {
        std::string dir = fresh_dir(std::string(group) + "_" + std::to_string(i++));
        std::string args = row.build(dir);
        // (INFO keeps references to its operands: strings, not const char*, which it would print as addresses)
        std::string where = std::string(group) + ": " + row.what + "\n  deepseek " + args;
        INFO(where);
        Outcome o = run_row(args);
        std::string got = "exit " + std::to_string(o.rc) + ", stderr:\n" + o.err;
        INFO(got);
        CHECK(o.rc >= 1);
        CHECK(o.rc <= 127);
        CHECK(!sanitizer_report(o.err));
        CHECK(count_lines(o.err) == 1);
        CHECK(o.err.rfind("error: ", 0) == 0);
        CHECK(o.err.find(row.expect) != std::string::npos);
    }
}

// ---- the training group's material: a tiny data directory (V 64), a micro model, one short run with checkpoints

// a learnable stream over V tokens: next = (5·prev + 3 + noise) mod V
std::vector<uint32_t> markov_tokens(size_t n, int V, uint64_t seed) {
    std::vector<uint32_t> t(n);
    uint64_t s = seed;
    t[0] = 1;
    for (size_t i = 1; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = (uint32_t)((5 * t[i - 1] + 3 + (s >> 33) % 3) % V);
    }
    return t;
}
// DIR/base: data/ (as data prepare lays it out, without a tokenizer), model/ (V 64, 2 layers), run/ (2 steps:
// step_000001/ and final/), made once per test process
const std::string& train_base() {
    static std::string base;
    if (!base.empty()) return base;
    std::string b = "build/test_tmp/inputs/train_base";
    run_cmd("rm -rf '" + b + "'");
    make_dirs(b + "/data");
    shard_write(b + "/data/train.bin", markov_tokens(3000, 64, 1), 64);
    shard_write(b + "/data/val.bin", markov_tokens(300, 64, 2), 64);
    json dj = {{"vocab_size", 64}, {"train", {{"file", "train.bin"}, {"bytes_per_token", 4.0}}},
               {"val", {{"file", "val.bin"}, {"bytes_per_token", 4.0}}}};
    write_text(b + "/data/data.json", dj.dump(1));
    Config c;
    c.vocab_size = 64; c.hidden_size = 32; c.num_hidden_layers = 2; c.num_attention_heads = 4; c.num_key_value_heads = 2;
    c.head_dim = 8; c.intermediate_size = 64; c.max_position_embeddings = 64; c.bos_token_id = 0; c.eos_token_id = 1;
    Model m;
    model_build(&m, c);
    model_init_random(&m, 11, 0.02f);
    model_save_dir(m, b + "/model", false);
    CmdResult r = run_cmd(deepseek_bin() + " train --device cpu --model " + b + "/model --data " + b + "/data --out " + b +
                          "/run --seq-len 16 --batch-tokens 128 --micro-batch 4 --eval-windows 8 --threads 1 --steps 2 "
                          "--save-every 1 --eval-every 0");
    REQUIRE_MESSAGE(r.rc == 0, r.out);
    base = b;
    return base;
}
// a new pre-training run on DATA into OUT (after the binary's name)
std::string train_args(const std::string& data, const std::string& out) {
    return "train --device cpu --model " + train_base() + "/model --data " + data + " --out " + out +
           " --seq-len 16 --batch-tokens 128 --micro-batch 4 --eval-windows 8 --threads 1 --steps 2 --eval-every 0";
}
// the same with only the flags that have no default, for rows that add one of the others
std::string train_args_min(const std::string& out) {
    return "train --device cpu --model " + train_base() + "/model --data " + train_base() + "/data --out " + out +
           " --seq-len 16 --threads 1";
}
// a copy of the base run in DIR/run whose checkpoint CKPT has its trainer_state.json changed by edit(); resumed
// into DIR/o
std::string resume_edited(const std::string& dir, const std::function<void(json&)>& edit,
                          const std::string& ckpt = "step_000001") {
    copy_of(train_base() + "/run", dir, "run");
    edit_json(dir + "/run/" + ckpt + "/trainer_state.json", edit);
    return "train --device cpu --resume " + dir + "/run/" + ckpt + " --out " + dir + "/o --threads 1";
}
// a copy of the base data in DIR/data whose train.bin header int `at` is set to `value`
std::string data_with_header(const std::string& dir, int at, int32_t value) {
    std::string data = copy_of(train_base() + "/data", dir, "data");
    std::string b = read_file(data + "/train.bin");
    memcpy(&b[4 * at], &value, 4);
    write_text(data + "/train.bin", b);
    return data;
}
const std::string SFT_LINE =
    "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\n";
const std::string DPO_LINE = "{\"prompt\": \"hi\", \"chosen\": \"hello\", \"rejected\": \"go away\"}\n";
// `stage` (sft or dpo) on the fixture model with DIR/d.jsonl holding `lines`
std::string align_args(const std::string& stage, const std::string& dir, const std::string& lines) {
    write_text(dir + "/d.jsonl", lines);
    return stage + " --device cpu --model tests/fixtures/infer/gen_gqa --data " + dir + "/d.jsonl --out " + dir +
           "/o --threads 1";
}
// holds OUT/.lock as a running training does (flock, "pid host"), for as long as it lives
struct LockHolder {
    int fd = -1;
    void hold(const std::string& out) {
        make_dirs(out);
        fd = open((out + "/.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        REQUIRE(fd >= 0);
        REQUIRE(flock(fd, LOCK_EX | LOCK_NB) == 0);
        std::string text = std::to_string((long)getpid()) + " " + host() + "\n";
        REQUIRE(write(fd, text.data(), text.size()) == (ssize_t)text.size());
    }
    static std::string host() {
        char h[256] = {0};
        gethostname(h, sizeof h - 1);
        return h;
    }
    ~LockHolder() { if (fd >= 0) close(fd); }
};

const std::string GQA = "tests/fixtures/model_gqa";          // config.json, generation_config.json, model.safetensors
const std::string GEN = "tests/fixtures/infer/gen_gqa";      // the same with tokenizer.json, for generate/chat
const std::string SHARDED = "tests/fixtures/infer/gen_bf16"; // bf16 in 3 shards + model.safetensors.index.json

}  // namespace

// ---------------------------------------------------------------------------- model directories
// config.json, generation_config.json, safetensors files and the shard index, read by info, convert, generate, chat,
// eval, train --model.

TEST_CASE("bad input, model directories: each is one clear error line") {
    std::vector<BadInput> rows = {
        {"model.safetensors cut short inside the data",
         [](const std::string& d) {
             std::string m = copy_of(GEN, d, "m");
             std::string s = read_file(m + "/model.safetensors");
             write_text(m + "/model.safetensors", s.substr(0, s.size() - 100));
             return "generate --model " + m + " --prompt-ids '1 2' --max-new-tokens 2 --device cpu";
         },
         "model.safetensors"},
        // (rows of the model-directory group go here)
    };
    check_rows("model", rows);
}

// ---------------------------------------------------------------------------- tokenizers
// tokenizer.json (and the GGUF vocabulary), read by tokenizer, data prepare, generate, chat, eval, sft, dpo.

TEST_CASE("bad input, tokenizers: each is one clear error line") {
    std::vector<BadInput> rows = {
        {"tokenizer.json that is not JSON",
         [](const std::string& d) {
             write_text(d + "/tokenizer.json", "{\"model\": ");
             return "tokenizer encode --tokenizer " + d + "/tokenizer.json </dev/null";
         },
         "tokenizer.json"},
        // (rows of the tokenizer group go here)
    };
    check_rows("tokenizer", rows);
}

// ---------------------------------------------------------------------------- data and training runs
// data.json, token shards, trainer_state.json, optimizer state, SFT/DPO JSONL, --out and --resume directories.

TEST_CASE("bad input, data and training runs: each is one clear error line") {
    LockHolder holder;   // the "--out in use" row's lock, released when this test case ends
    static const std::string in_use = "is in use by another training (pid " + std::to_string((long)getpid()) + " on " +
                                      LockHolder::host() + ")";
    std::vector<BadInput> rows = {
        {"data prepare from a file that does not exist",
         [](const std::string& d) { return "data prepare --input " + d + "/none.txt --vocab-size 300 --out " + d + "/p"; },
         "does not exist"},
        {"data prepare from a directory",
         [](const std::string& d) { return "data prepare --input " + d + " --vocab-size 300 --out " + d + "/p"; },
         "is a directory, not a file"},
        {"data prepare with --val-fraction beyond 0.5",
         [](const std::string& d) {
             write_text(d + "/in.txt", "some text\n");
             return "data prepare --input " + d + "/in.txt --vocab-size 300 --out " + d + "/p --val-fraction 0.9";
         },
         "--val-fraction must be a number in"},
        // data.json
        {"data.json: vocab_size a string",
         [](const std::string& d) {
             std::string data = copy_of(train_base() + "/data", d, "data");
             edit_json(data + "/data.json", [](json& j) { j["vocab_size"] = "64"; });
             return train_args(data, d + "/o");
         },
         "data.json: field 'vocab_size' must be an integer, got \"64\""},
        {"data.json: the train split a string, not an object",
         [](const std::string& d) {
             std::string data = copy_of(train_base() + "/data", d, "data");
             edit_json(data + "/data.json", [](json& j) { j["train"] = "train.bin"; });
             return train_args(data, d + "/o");
         },
         "field 'train' must be an object"},
        {"data.json: train.file a number",
         [](const std::string& d) {
             std::string data = copy_of(train_base() + "/data", d, "data");
             edit_json(data + "/data.json", [](json& j) { j["train"]["file"] = 7; });
             return train_args(data, d + "/o");
         },
         "data.json: train: field 'file' must be a string"},
        {"data.json: val.bytes_per_token negative",
         [](const std::string& d) {
             std::string data = copy_of(train_base() + "/data", d, "data");
             edit_json(data + "/data.json", [](json& j) { j["val"]["bytes_per_token"] = -4; });
             return train_args(data, d + "/o");
         },
         "field 'bytes_per_token' must be a number in"},
        {"data.json a directory",
         [](const std::string& d) {
             std::string data = copy_of(train_base() + "/data", d, "data");
             run_cmd("rm " + data + "/data.json && mkdir " + data + "/data.json");
             return train_args(data, d + "/o");
         },
         "data.json is a directory, not a regular file"},
        // token shard headers
        {"shard header: a negative vocabulary size",
         [](const std::string& d) { return train_args(data_with_header(d, 2, -5), d + "/o"); },
         "invalid vocabulary size -5"},
        {"shard header: more tokens than the file holds",
         [](const std::string& d) { return train_args(data_with_header(d, 3, 1 << 30), d + "/o"); },
         "truncated or corrupt token shard"},
        {"shard header: a token count whose byte size wraps 64 bits (n = 2^62 + the true count)",
         [](const std::string& d) {
             std::string data = copy_of(train_base() + "/data", d, "data");
             std::string b = read_file(data + "/train.bin");
             int32_t hi = 0x40000000;   // header ints 3, 4: the count's low and high 32 bits
             memcpy(&b[4 * 4], &hi, 4);
             write_text(data + "/train.bin", b);
             return train_args(data, d + "/o");
         },
         "truncated or corrupt token shard"},
        {"shard header: a vocabulary other than data.json's",
         [](const std::string& d) {
             std::string data = copy_of(train_base() + "/data", d, "data");
             edit_json(data + "/data.json", [](json& j) { j["vocab_size"] = 60; });
             return train_args(data, d + "/o");
         },
         "the shard's vocabulary (64) is not data.json's vocab_size (60)"},
        {"train.bin a FIFO (it would block the open)",
         [](const std::string& d) {
             std::string data = copy_of(train_base() + "/data", d, "data");
             run_cmd("rm " + data + "/train.bin && mkfifo " + data + "/train.bin");
             return train_args(data, d + "/o");
         },
         "train.bin is a pipe (FIFO), not a regular file"},
        // trainer_state.json of a pre-training checkpoint
        {"trainer_state.json: step a string",
         [](const std::string& d) { return resume_edited(d, [](json& j) { j["step"] = "1"; }); },
         "trainer_state.json: field 'step' must be an integer, got \"1\""},
        {"trainer_state.json: a negative step",
         [](const std::string& d) { return resume_edited(d, [](json& j) { j["step"] = -3; }); },
         "field 'step' must be an integer in [0, "},
        {"trainer_state.json: step past the run's steps",
         [](const std::string& d) { return resume_edited(d, [](json& j) { j["settings"]["steps"] = 1; }, "final"); },
         "step 2 is past the run's settings.steps 1"},
        {"trainer_state.json: a zero micro-batch",
         [](const std::string& d) { return resume_edited(d, [](json& j) { j["settings"]["micro_batch"] = 0; }); },
         "settings: field 'micro_batch' must be an integer in [1, "},
        {"trainer_state.json: a zero world size",
         [](const std::string& d) { return resume_edited(d, [](json& j) { j["settings"]["world_size"] = 0; }); },
         "field 'world_size' must be an integer in [1, "},
        {"trainer_state.json: a negative learning rate",
         [](const std::string& d) { return resume_edited(d, [](json& j) { j["settings"]["lr"] = -0.01; }); },
         "settings: field 'lr' must be a number in"},
        {"trainer_state.json: a NaN learning rate (as Python's json writes it)",
         [](const std::string& d) {
             std::string args = resume_edited(d, [](json& j) { j["settings"]["lr"] = 12345.5; });
             std::string p = d + "/run/step_000001/trainer_state.json", t = read_file(p);
             write_text(p, t.replace(t.find("12345.5"), 7, "NaN"));
             return args;
         },
         "trainer_state.json: malformed JSON"},
        {"trainer_state.json: an unknown lr_schedule",
         [](const std::string& d) { return resume_edited(d, [](json& j) { j["settings"]["lr_schedule"] = "linear"; }); },
         "field 'lr_schedule' must be \"multistep\" or \"cosine\""},
        {"trainer_state.json: batch_tokens that is not the batch's product",
         [](const std::string& d) { return resume_edited(d, [](json& j) { j["settings"]["batch_tokens"] = 100; }); },
         "batch_tokens 100 is not accum × micro_batch × world_size × seq_len"},
        {"trainer_state.json: seq_len beyond the model's context",
         [](const std::string& d) {
             return resume_edited(d, [](json& j) { j["settings"]["seq_len"] = 128; j["settings"]["batch_tokens"] = 1024;
                                                   j["tokens_seen"] = 1024; });
         },
         "settings.seq_len 128 is beyond the model's context"},
        {"trainer_state.json: the data cursor past the data",
         [](const std::string& d) { return resume_edited(d, [](json& j) { j["data_cursor"]["index"] = 100000; }); },
         "data_cursor.index 100000 is past the data"},
        {"trainer_state.json: the data cursor where the steps cannot have left it",
         [](const std::string& d) { return resume_edited(d, [](json& j) { j["data_cursor"]["index"] = 3; }); },
         "do not belong together"},
        {"trainer_state.json: no data cursor",
         [](const std::string& d) { return resume_edited(d, [](json& j) { j.erase("data_cursor"); }); },
         "missing field 'data_cursor'"},
        {"trainer_state.json: negative tokens_seen",
         [](const std::string& d) { return resume_edited(d, [](json& j) { j["tokens_seen"] = -1; }); },
         "field 'tokens_seen' must be a number in"},
        {"trainer_state.json: an RNG state of another seed",
         [](const std::string& d) { return resume_edited(d, [](json& j) { j["rng"]["seed"] = 7; }); },
         "does not match settings.seed"},
        {"trainer_state.json: settings a list",
         [](const std::string& d) { return resume_edited(d, [](json& j) { j["settings"] = json::array(); }); },
         "field 'settings' must be an object"},
        {"trainer_state.json a FIFO",
         [](const std::string& d) {
             std::string args = resume_edited(d, [](json&) {});
             run_cmd("cd " + d + "/run/step_000001 && rm trainer_state.json && mkfifo trainer_state.json");
             return args;
         },
         "trainer_state.json is a pipe (FIFO), not a regular file"},
        {"trainer_state.json a directory",
         [](const std::string& d) {
             std::string args = resume_edited(d, [](json&) {});
             run_cmd("cd " + d + "/run/step_000001 && rm trainer_state.json && mkdir trainer_state.json");
             return args;
         },
         "trainer_state.json is a directory, not a regular file"},
        {"metrics.jsonl with a damaged record, on --resume",
         [](const std::string& d) {
             copy_of(train_base() + "/run", d, "run");
             write_text(d + "/run/metrics.jsonl", "{\"step\": 1, \"loss\": 4.1}\n{\"step\": \"two\"}\n");
             return "train --device cpu --resume " + d + "/run/step_000001 --threads 1";
         },
         "metrics.jsonl:2: field 'step' must be an integer"},
        // the run directory
        {"--out in use by another training (the lock held)",
         [&holder](const std::string& d) {
             holder.hold(d + "/o");
             return train_args(train_base() + "/data", d + "/o");
         },
         in_use.c_str()},
        {"--out holding another run",
         [](const std::string& d) {
             copy_of(train_base() + "/run", d, "o");
             return train_args(train_base() + "/data", d + "/o");
         },
         "holds another run (final, metrics.jsonl, step_000001); continue it with --resume"},
        {"--resume into an --out holding another run",
         [](const std::string& d) {
             copy_of(train_base() + "/run", d, "o");
             return "train --device cpu --resume " + train_base() + "/run/step_000001 --out " + d + "/o --threads 1";
         },
         "holds another run"},
        {"--out a file",
         [](const std::string& d) {
             write_text(d + "/o", "not a directory\n");
             return train_args(train_base() + "/data", d + "/o");
         },
         "is a file, not a directory"},
        {"--resume of a file",
         [](const std::string& d) {
             write_text(d + "/ckpt", "{}\n");
             return "train --device cpu --resume " + d + "/ckpt";
         },
         "is a file, not a directory"},
        {"--overwrite with --resume",
         [](const std::string& d) { return "train --device cpu --resume " + train_base() + "/run --overwrite"; },
         "--overwrite starts a new run"},
        {"--lr on --resume (the run keeps its settings)",
         [](const std::string& d) { return "train --device cpu --resume " + train_base() + "/run --lr 1e-4"; },
         "--lr cannot change on --resume"},
        {"metrics.jsonl on a full disk (/dev/full)",
         [](const std::string& d) {
             make_dirs(d + "/o");
             run_cmd("ln -s /dev/full " + d + "/o/metrics.jsonl");
             return train_args(train_base() + "/data", d + "/o");
         },
         "metrics.jsonl: No space left on device"},
        {"metrics.jsonl a FIFO (appending would block)",
         [](const std::string& d) {
             make_dirs(d + "/o");
             run_cmd("mkfifo " + d + "/o/metrics.jsonl");
             return train_args(train_base() + "/data", d + "/o");
         },
         "metrics.jsonl is a pipe (FIFO), not a regular file"},
        // zero values that mean nothing
        {"train --micro-batch 0",
         [](const std::string& d) { return train_args_min(d + "/o") + " --micro-batch 0"; },
         "--micro-batch must be an integer in [1, "},
        {"train --batch-tokens 0",
         [](const std::string& d) { return train_args_min(d + "/o") + " --batch-tokens 0"; },
         "--batch-tokens must be an integer in [1, "},
        {"train --keep 0",
         [](const std::string& d) { return train_args_min(d + "/o") + " --keep 0"; },
         "--keep must be an integer in [1, "},
        {"train --eval-windows 0",
         [](const std::string& d) { return train_args_min(d + "/o") + " --eval-windows 0"; },
         "--eval-windows must be an integer in [1, "},
        {"sft --batch 0",
         [](const std::string& d) { return align_args("sft", d, SFT_LINE) + " --batch 0"; },
         "--batch must be an integer in [1, "},
        {"sft --lr 0 (nothing would be learned)",
         [](const std::string& d) { return align_args("sft", d, SFT_LINE) + " --lr 0"; },
         "--lr must be a number in"},
        {"dpo --epochs 0",
         [](const std::string& d) { return align_args("dpo", d, DPO_LINE) + " --epochs 0"; },
         "--epochs must be an integer in [1, "},
        // SFT and DPO lines, and their checkpoints
        {"SFT line: content a number",
         [](const std::string& d) {
             return align_args("sft", d, SFT_LINE + "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}\n");
         },
         "d.jsonl:2: messages[0] has no string \"content\""},
        {"SFT line: messages a string",
         [](const std::string& d) { return align_args("sft", d, "{\"messages\": \"hi\"}\n"); },
         "d.jsonl:1: \"messages\" must be a list"},
        {"SFT line: role null",
         [](const std::string& d) {
             return align_args("sft", d, "{\"messages\": [{\"role\": null, \"content\": \"x\"}]}\n");
         },
         "messages[0] has no string \"role\""},
        {"DPO line: chosen a list",
         [](const std::string& d) {
             return align_args("dpo", d, DPO_LINE + "{\"prompt\": \"p\", \"chosen\": [\"a\"], \"rejected\": \"b\"}\n");
         },
         "d.jsonl:2: \"chosen\" must be a string"},
        {"DPO line: prompt a number",
         [](const std::string& d) {
             return align_args("dpo", d, "{\"prompt\": 3, \"chosen\": \"a\", \"rejected\": \"b\"}\n");
         },
         "\"prompt\" must be a string"},
        {"sft checkpoint: a saved flag that is not a string",
         [](const std::string& d) {
             make_dirs(d + "/ck");
             write_text(d + "/ck/trainer_state.json", "{\"stage\": \"sft\", \"step\": 1, \"settings\": {\"lr\": 0.5}}\n");
             return "sft --device cpu --resume " + d + "/ck";
         },
         "trainer_state.json: settings: field 'lr' must be a string"},
        {"sft checkpoint: stage a number",
         [](const std::string& d) {
             make_dirs(d + "/ck");
             write_text(d + "/ck/trainer_state.json", "{\"stage\": 1, \"step\": 1, \"settings\": {}}\n");
             return "sft --device cpu --resume " + d + "/ck";
         },
         "field 'stage' must be a string"},
        {"sft --out holding another run",
         [](const std::string& d) {
             std::string args = align_args("sft", d, SFT_LINE);
             copy_of(train_base() + "/run", d, "o");
             return args;
         },
         "holds another run"},
    };
    check_rows("train", rows);
}

// ---------------------------------------------------------------------------- command lines
// flags: unknown, repeated, out of range, of the wrong kind.

TEST_CASE("bad input, command lines: each is one clear error line") {
    std::vector<BadInput> rows = {
        {"an unknown flag",
         [](const std::string&) { return std::string("info --preset tiny --no-such-flag"); },
         "unknown flag"},
        // (rows of the command-line group go here)
    };
    check_rows("cli", rows);
}
