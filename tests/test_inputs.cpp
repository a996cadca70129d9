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

// A safetensors file as its header (JSON) and its data bytes, for editing; written back with the header as given.
struct StParts { json header; std::string data; };
StParts st_read(const std::string& path) {
    std::string s = read_file(path);
    uint64_t hl = 0;
    memcpy(&hl, s.data(), 8);
    return {json::parse(s.substr(8, hl)), s.substr(8 + hl)};
}
void st_write_raw(const std::string& path, const std::string& header, const std::string& data) {
    uint64_t hl = header.size();
    std::string out(8, '\0');
    memcpy(&out[0], &hl, 8);
    write_text(path, out + header + data);
}
void st_write(const std::string& path, const StParts& p) { st_write_raw(path, p.header.dump(), p.data); }
// the header's entry for NAME edited in place
void st_edit(const std::string& path, const std::function<void(json&)>& edit) {
    StParts p = st_read(path);
    edit(p.header);
    st_write(path, p);
}
// element i of tensor NAME (F32 or BF16) set to the bit pattern BITS (the low 16 bits for BF16)
void st_poke(const std::string& path, const std::string& name, size_t i, uint32_t bits) {
    StParts p = st_read(path);
    const json& t = p.header.at(name);
    size_t size = t.at("dtype") == "F32" ? 4 : 2, b = t.at("data_offsets")[0].get<size_t>() + i * size;
    memcpy(&p.data[b], &bits, size);   // little-endian: the low bytes
    st_write(path, p);
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
    micro_model(b + "/model");
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
const std::string TASK_LINE = "{\"context\": \"The quick brown \", \"choices\": [\"fox\", \"dog\"], \"label\": 0}\n";
// eval --task on the fixture model with DIR/d.jsonl holding `lines`
std::string task_args(const std::string& dir, const std::string& lines) {
    write_text(dir + "/d.jsonl", lines);
    return "eval --device cpu --model tests/fixtures/infer/gen_gqa --task " + dir + "/d.jsonl --threads 1";
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

// the commands that load a model directory M each way: generate (infer_load; --ids needs no tokenizer), generate
// from text (with M's tokenizer.json), convert (model_load_dir), info (config and headers only)
std::string gen_ids(const std::string& m) { return "generate --model " + m + " --prompt-ids '1 2' -n 2 --ids --device cpu"; }
std::string gen_text(const std::string& m) { return "generate --model " + m + " --prompt hi -n 2 --device cpu"; }
std::string convert(const std::string& m) { return "convert --model " + m + " --out " + m + "_out"; }
std::string info(const std::string& m) { return "info --model " + m; }
// a copy of the GQA model with config.json edited
std::string gqa_config(const std::string& d, const std::function<void(json&)>& edit) {
    std::string m = copy_of(GQA, d, "m");
    edit_json(m + "/config.json", edit);
    return m;
}
// a copy of GEN with generation_config.json edited
std::string gen_config(const std::string& d, const std::function<void(json&)>& edit) {
    std::string m = copy_of(GEN, d, "m");
    edit_json(m + "/generation_config.json", edit);
    return m;
}
// a copy of SHARDED with its index edited
std::string shard_index(const std::string& d, const std::function<void(json&)>& edit) {
    std::string m = copy_of(SHARDED, d, "m");
    edit_json(m + "/model.safetensors.index.json", edit);
    return m;
}
// a copy of the GQA model with model.safetensors' header edited
std::string gqa_header(const std::string& d, const std::function<void(json&)>& edit) {
    std::string m = copy_of(GQA, d, "m");
    st_edit(m + "/model.safetensors", edit);
    return m;
}
// a q8_0 model (convert --preset tiny --dtype q8_0: int8 matrices, F16 NAME_scale beside each) at DIR/m, with
// model.safetensors' header edited
std::string q8_header(const std::string& d, const std::function<void(json&)>& edit) {
    std::string m = d + "/m";
    run_cmd(deepseek_bin() + " convert --preset tiny --dtype q8_0 --out " + m);
    st_edit(m + "/model.safetensors", edit);
    return m;
}
// a TemplateProcessing post-processor "BOS $A" whose BOS has these ids and (unless null) these token strings
void bos_template(json& j, const json& ids, const json& tokens) {
    json st = {{"id", "B"}, {"ids", ids}};
    if (!tokens.is_null()) st["tokens"] = tokens;
    j["post_processor"] = {{"type", "TemplateProcessing"},
                           {"single", {{{"SpecialToken", {{"id", "B"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                           {"special_tokens", {{"B", st}}}};
}
// a copy of GEN's tokenizer.json edited, and the command that loads it
std::string tok_edit(const std::string& d, const std::function<void(json&)>& edit) {
    std::string t = copy_of(GEN + "/tokenizer.json", d, "tokenizer.json");
    edit_json(t, edit);
    return "tokenizer encode --tokenizer " + t + " </dev/null";
}

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
             return "generate --model " + m + " --prompt-ids '1 2' --max-new-tokens 2 --ids --device cpu";   // (--ids: no tokenizer needed)
         },
         "model.safetensors"},
        // ---- the directory and config.json as things on disk
        {"--model names a file, not a directory",
         [](const std::string& d) { write_text(d + "/m", "x"); return gen_ids(d + "/m"); },
         "is a file, not a directory"},
        {"config.json is a FIFO (must not block)",
         [](const std::string& d) {
             std::string m = copy_of(GQA, d, "m");
             run_cmd("rm " + m + "/config.json && mkfifo " + m + "/config.json");
             return gen_ids(m);
         },
         "FIFO"},
        {"config.json is a directory",
         [](const std::string& d) {
             std::string m = copy_of(GQA, d, "m");
             run_cmd("rm " + m + "/config.json && mkdir " + m + "/config.json");
             return info(m);
         },
         "is a directory"},
        {"config.json is a symlink to /dev/zero",
         [](const std::string& d) {
             std::string m = copy_of(GQA, d, "m");
             run_cmd("rm " + m + "/config.json && ln -s /dev/zero " + m + "/config.json");
             return convert(m);
         },
         "device"},
        // ---- config.json fields of the wrong type or outside their range
        {"config.json model_type a number", [](const std::string& d) { return gen_ids(gqa_config(d, [](json& j) { j["model_type"] = 7; })); },
         "field 'model_type' must be a string"},
        {"config.json tie_word_embeddings a string",
         [](const std::string& d) { return info(gqa_config(d, [](json& j) { j["tie_word_embeddings"] = "no"; })); },
         "field 'tie_word_embeddings' must be true or false"},
        {"config.json attention_bias a number",
         [](const std::string& d) { return convert(gqa_config(d, [](json& j) { j["attention_bias"] = 0; })); },
         "field 'attention_bias' must be true or false"},
        {"config.json architectures a string, not a list",
         [](const std::string& d) { return info(gqa_config(d, [](json& j) { j["architectures"] = "LlamaForCausalLM"; })); },
         "'architectures' must be a list of strings"},
        {"config.json architectures holding a number",
         [](const std::string& d) { return info(gqa_config(d, [](json& j) { j["architectures"] = {7}; })); },
         "'architectures' must be a list of strings"},
        {"config.json rope_parameters a string",
         [](const std::string& d) { return gen_ids(gqa_config(d, [](json& j) { j["rope_parameters"] = "default"; })); },
         "field 'rope_parameters' must be an object"},
        {"config.json rope_parameters.rope_theta a string",
         [](const std::string& d) { return gen_ids(gqa_config(d, [](json& j) { j["rope_parameters"]["rope_theta"] = "big"; })); },
         "rope_parameters: field 'rope_theta' must be a number"},
        {"config.json rope_parameters.rope_type a number",
         [](const std::string& d) { return info(gqa_config(d, [](json& j) { j["rope_parameters"]["rope_type"] = 1; })); },
         "field 'rope_type' must be a string"},
        {"config.json rope_scaling linear",
         [](const std::string& d) {
             return info(gqa_config(d, [](json& j) { j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}}; }));
         },
         "rope_scaling"},
        {"config.json rope_scaling a number", [](const std::string& d) { return info(gqa_config(d, [](json& j) { j["rope_scaling"] = 2; })); },
         "field 'rope_scaling' must be an object or null"},
        {"config.json hidden_act a number", [](const std::string& d) { return info(gqa_config(d, [](json& j) { j["hidden_act"] = 5; })); },
         "field 'hidden_act' must be a string"},
        {"config.json rms_norm_eps a string", [](const std::string& d) { return info(gqa_config(d, [](json& j) { j["rms_norm_eps"] = "tiny"; })); },
         "field 'rms_norm_eps' must be a number"},
        {"config.json torch_dtype a number", [](const std::string& d) { return info(gqa_config(d, [](json& j) { j["dtype"] = 16; })); },
         "field 'dtype' must be a string"},
        {"config.json vocab_size 1e12", [](const std::string& d) { return info(gqa_config(d, [](json& j) { j["vocab_size"] = 1e12; })); },
         "field 'vocab_size' must be an integer in [1, 4000000]"},
        {"config.json bos_token_id = vocab_size (outside the vocabulary)",
         [](const std::string& d) { return gen_ids(gqa_config(d, [](json& j) { j["bos_token_id"] = 257; })); },
         "field 'bos_token_id' is 257, not a token id of the vocabulary [0, 257)"},
        {"config.json eos_token_id -1", [](const std::string& d) { return info(gqa_config(d, [](json& j) { j["eos_token_id"] = -1; })); },
         "field 'eos_token_id' is -1, not a token id"},
        {"config.json eos_token_id list with an id outside the vocabulary",
         [](const std::string& d) { return convert(gqa_config(d, [](json& j) { j["eos_token_id"] = {2, 300}; })); },
         "field 'eos_token_id' is 300, not a token id"},
        {"config.json eos_token_id list holding a string",
         [](const std::string& d) { return info(gqa_config(d, [](json& j) { j["eos_token_id"] = {2, "</s>"}; })); },
         "field 'eos_token_id' must be an integer"},
        // ---- generation_config.json: the values the flags that override them would refuse
        {"generation_config.json temperature -1",
         [](const std::string& d) { return gen_text(gen_config(d, [](json& j) { j["temperature"] = -1; })); },
         "field 'temperature' must be a number in [0, 100]"},
        {"generation_config.json temperature a string",
         [](const std::string& d) { return gen_text(gen_config(d, [](json& j) { j["temperature"] = "hot"; })); },
         "field 'temperature' must be a number"},
        {"generation_config.json top_p 0", [](const std::string& d) { return gen_text(gen_config(d, [](json& j) { j["top_p"] = 0; })); },
         "field 'top_p' must be a number in (0, 1]"},
        {"generation_config.json top_p 1.5", [](const std::string& d) { return gen_text(gen_config(d, [](json& j) { j["top_p"] = 1.5; })); },
         "field 'top_p' must be a number in (0, 1]"},
        {"generation_config.json top_k -3", [](const std::string& d) { return gen_text(gen_config(d, [](json& j) { j["top_k"] = -3; })); },
         "field 'top_k' must be an integer in [0,"},
        {"generation_config.json top_k 2.5", [](const std::string& d) { return gen_text(gen_config(d, [](json& j) { j["top_k"] = 2.5; })); },
         "field 'top_k' must be an integer"},
        {"generation_config.json do_sample a string",
         [](const std::string& d) { return gen_text(gen_config(d, [](json& j) { j["do_sample"] = "yes"; })); },
         "field 'do_sample' must be true or false"},
        {"generation_config.json repetition_penalty 0",
         [](const std::string& d) { return gen_text(gen_config(d, [](json& j) { j["repetition_penalty"] = 0; })); },
         "field 'repetition_penalty' must be a number in [0.001, 1000]"},
        {"generation_config.json max_new_tokens 0",
         [](const std::string& d) { return gen_text(gen_config(d, [](json& j) { j["max_new_tokens"] = 0; })); },
         "field 'max_new_tokens' must be an integer in [1,"},
        {"generation_config.json eos_token_id outside the vocabulary",
         [](const std::string& d) { return gen_text(gen_config(d, [](json& j) { j["eos_token_id"] = 5000; })); },
         "field 'eos_token_id' is 5000, not a token id of the vocabulary [0, 384)"},
        {"generation_config.json eos_token_id list holding a string",
         [](const std::string& d) { return gen_text(gen_config(d, [](json& j) { j["eos_token_id"] = {1, "a"}; })); },
         "field 'eos_token_id' must be an integer"},
        {"generation_config.json bos_token_id -1",
         [](const std::string& d) { return gen_text(gen_config(d, [](json& j) { j["bos_token_id"] = -1; })); },
         "field 'bos_token_id' is -1"},
        {"generation_config.json is a directory",
         [](const std::string& d) {
             std::string m = copy_of(GEN, d, "m");
             run_cmd("rm " + m + "/generation_config.json && mkdir " + m + "/generation_config.json");
             return gen_text(m);
         },
         "is a directory"},
        {"generation_config.json is not JSON",
         [](const std::string& d) {
             std::string m = copy_of(GEN, d, "m");
             write_text(m + "/generation_config.json", "{\"temperature\": ");
             return gen_text(m);
         },
         "malformed JSON"},
        {"tokenizer.json is a directory",
         [](const std::string& d) {
             std::string m = copy_of(GEN, d, "m");
             run_cmd("rm " + m + "/tokenizer.json && mkdir " + m + "/tokenizer.json");
             return gen_text(m);
         },
         "is a directory"},
        // ---- safetensors headers: lengths, shapes, offsets, names (checked arithmetic, safetensors' own rules)
        {"header length past the end of the file",
         [](const std::string& d) {
             std::string m = copy_of(GQA, d, "m");
             std::string s = read_file(m + "/model.safetensors");
             uint64_t hl = 1ull << 40;
             memcpy(&s[0], &hl, 8);
             write_text(m + "/model.safetensors", s);
             return gen_ids(m);
         },
         "header says 1099511627776 bytes"},
        {"header length 2^64 - 1 (8 + length wraps)",
         [](const std::string& d) {
             std::string m = copy_of(GQA, d, "m");
             std::string s = read_file(m + "/model.safetensors");
             uint64_t hl = ~0ull;
             memcpy(&s[0], &hl, 8);
             write_text(m + "/model.safetensors", s);
             return info(m);
         },
         "truncated safetensors file"},
        {"a shape whose element count overflows 64 bits",
         [](const std::string& d) {
             return gen_ids(gqa_header(d, [](json& h) { h["model.norm.weight"]["shape"] = {1ull << 32, 1ull << 32, 48}; }));
         },
         "overflows"},
        {"a shape whose byte count overflows 64 bits",
         [](const std::string& d) {
             return info(gqa_header(d, [](json& h) { h["model.norm.weight"]["shape"] = {1ull << 62, 2}; }));
         },
         "overflows"},
        {"a negative dimension",
         [](const std::string& d) { return gen_ids(gqa_header(d, [](json& h) { h["model.norm.weight"]["shape"] = {-48}; })); },
         "must be a list of non-negative integers"},
        {"dtype a number", [](const std::string& d) { return gen_ids(gqa_header(d, [](json& h) { h["model.norm.weight"]["dtype"] = 7; })); },
         "field 'dtype' must be a string"},
        {"a header entry that is not an object",
         [](const std::string& d) { return convert(gqa_header(d, [](json& h) { h["model.norm.weight"] = 5; })); },
         "malformed header entry"},
        {"data_offsets with one number",
         [](const std::string& d) { return gen_ids(gqa_header(d, [](json& h) { h["model.norm.weight"]["data_offsets"] = {263808}; })); },
         "data_offsets must be [begin, end]"},
        {"data_offsets negative",
         [](const std::string& d) { return gen_ids(gqa_header(d, [](json& h) { h["model.norm.weight"]["data_offsets"] = {-192, 0}; })); },
         "data_offsets must be [begin, end]"},
        {"data_offsets end before begin",
         [](const std::string& d) { return info(gqa_header(d, [](json& h) { h["model.norm.weight"]["data_offsets"] = {264000, 263808}; })); },
         "lie outside"},
        {"two tensors' byte ranges overlap",
         [](const std::string& d) {
             return gen_ids(gqa_header(d, [](json& h) {
                 h["model.layers.1.input_layernorm.weight"]["data_offsets"] = h["model.layers.0.input_layernorm.weight"]["data_offsets"];
             }));
         },
         "overlap"},
        {"a gap between two tensors",
         [](const std::string& d) {
             std::string m = copy_of(GQA, d, "m");
             StParts p = st_read(m + "/model.safetensors");
             size_t at = p.header["model.norm.weight"]["data_offsets"][0];
             p.data.insert(at, 8, '\0');
             for (auto& t : p.header.items())
                 if (t.key() != "__metadata__" && t.value()["data_offsets"][0].get<size_t>() >= at)
                     for (auto& o : t.value()["data_offsets"]) o = o.get<size_t>() + 8;
             st_write(m + "/model.safetensors", p);
             return convert(m);
         },
         "a gap of 8 bytes before tensor 'model.norm.weight'"},
        {"bytes after the last tensor",
         [](const std::string& d) {
             std::string m = copy_of(GQA, d, "m");
             StParts p = st_read(m + "/model.safetensors");
             p.data += std::string(16, '\0');
             st_write(m + "/model.safetensors", p);
             return gen_ids(m);
         },
         "16 bytes after the last tensor"},
        {"a tensor named twice in one header",
         [](const std::string& d) {
             std::string m = copy_of(GQA, d, "m");
             StParts p = st_read(m + "/model.safetensors");
             std::string h = p.header.dump();
             h.insert(1, "\"model.norm.weight\":" + p.header["model.norm.weight"].dump() + ",");
             st_write_raw(m + "/model.safetensors", h, p.data);
             return gen_ids(m);
         },
         "tensor 'model.norm.weight' appears twice"},
        {"__metadata__ holding a number",
         [](const std::string& d) { return gen_ids(gqa_header(d, [](json& h) { h["__metadata__"]["format"] = 5; })); },
         "__metadata__ field 'format' must be a string"},
        {"a tensor the model does not use (generate)",
         [](const std::string& d) {
             std::string m = copy_of(GQA, d, "m");
             StParts p = st_read(m + "/model.safetensors");
             size_t end = p.data.size();
             p.header["foo.weight"] = {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {end, end + 16}}};
             p.data += std::string(16, '\0');
             st_write(m + "/model.safetensors", p);
             return gen_ids(m);
         },
         "tensor 'foo.weight' is not part of the model"},
        {"a layer more than config.json says (convert)",
         [](const std::string& d) { return convert(gqa_config(d, [](json& j) { j["num_hidden_layers"] = 1; })); },
         "tensor 'model.layers.1."},
        {"model.safetensors is a FIFO (must not block)",
         [](const std::string& d) {
             std::string m = copy_of(GQA, d, "m");
             run_cmd("rm " + m + "/model.safetensors && mkfifo " + m + "/model.safetensors");
             return gen_ids(m);
         },
         "FIFO"},
        // ---- the shard index
        {"index weight_map a list",
         [](const std::string& d) { return gen_ids(shard_index(d, [](json& j) { j["weight_map"] = {"model-00001-of-00003.safetensors"}; })); },
         "field 'weight_map' must be an object"},
        {"index without weight_map", [](const std::string& d) { return info(shard_index(d, [](json& j) { j.erase("weight_map"); })); },
         "missing field 'weight_map'"},
        {"index weight_map value a number",
         [](const std::string& d) { return gen_ids(shard_index(d, [](json& j) { j["weight_map"]["lm_head.weight"] = 3; })); },
         "weight_map['lm_head.weight'] must be a shard file name"},
        {"index shard name with ..",
         [](const std::string& d) {
             return gen_ids(shard_index(d, [](json& j) { j["weight_map"]["lm_head.weight"] = "../m/model-00003-of-00003.safetensors"; }));
         },
         "must be a plain file name"},
        {"index lists a shard that does not exist",
         [](const std::string& d) {
             std::string m = copy_of(SHARDED, d, "m");
             run_cmd("rm " + m + "/model-00002-of-00003.safetensors");
             return gen_ids(m);
         },
         "model-00002-of-00003.safetensors does not exist"},
        {"index puts a tensor in the wrong shard",
         [](const std::string& d) {
             return convert(shard_index(d, [](json& j) { j["weight_map"]["lm_head.weight"] = "model-00001-of-00003.safetensors"; }));
         },
         "but the index says"},
        {"index leaves out a tensor its shard holds",
         [](const std::string& d) { return gen_ids(shard_index(d, [](json& j) { j["weight_map"].erase("model.layers.0.mlp.up_proj.weight"); })); },
         "is not listed in the index"},
        {"index is not JSON",
         [](const std::string& d) {
             std::string m = copy_of(SHARDED, d, "m");
             write_text(m + "/model.safetensors.index.json", "{\"weight_map\": {");
             return gen_ids(m);
         },
         "malformed JSON"},
        // ---- info --model checks the checkpoint's headers
        {"info --model on truncated weights",
         [](const std::string& d) {
             std::string m = copy_of(GQA, d, "m");
             std::string s = read_file(m + "/model.safetensors");
             write_text(m + "/model.safetensors", s.substr(0, s.size() / 2));
             return info(m);
         },
         "truncated"},
        {"info --model on a shard cut short",
         [](const std::string& d) {
             std::string m = copy_of(SHARDED, d, "m");
             std::string s = read_file(m + "/model-00003-of-00003.safetensors");
             write_text(m + "/model-00003-of-00003.safetensors", s.substr(0, s.size() - 2));
             return info(m);
         },
         "model-00003-of-00003.safetensors: tensor"},
        {"info --model whose config.json does not match the weights' shapes",
         [](const std::string& d) { return info(gqa_config(d, [](json& j) { j["intermediate_size"] = 99; })); },
         "has shape [100, 48], expected [99, 48]"},
        // ---- q8_0 models (convert --dtype q8_0)
        {"convert --dtype q8_0 of a model whose rows are not whole blocks of 32",
         [](const std::string& d) { return "convert --model " + GQA + " --dtype q8_0 --out " + d + "/q8"; },
         "not a multiple of 32 (the block size)"},
        {"a q8_0 matrix whose scales are missing (renamed)",
         [](const std::string& d) {
             return gen_ids(q8_header(d, [](json& h) {
                 h["unused_scale"] = h["lm_head.weight_scale"];
                 h.erase("lm_head.weight_scale");
             }));
         },
         "'lm_head.weight_scale' is missing"},
        {"a q8_0 matrix whose scales are BF16, not F16",
         [](const std::string& d) { return info(q8_header(d, [](json& h) { h["lm_head.weight_scale"]["dtype"] = "BF16"; })); },
         "'lm_head.weight_scale' is BF16 [4096, 4]; expected F16 [4096, 4]"},
        {"an I8 norm (only matrices are q8_0)",
         [](const std::string& d) {
             std::string m = d + "/m";
             run_cmd(deepseek_bin() + " convert --preset tiny --dtype q8_0 --out " + m);
             StParts p = st_read(m + "/model.safetensors");   // the F32 [128] norm as I8 [512]: the same 512 bytes
             p.header["model.norm.weight"]["dtype"] = "I8";
             p.header["model.norm.weight"]["shape"] = {512};
             st_write(m + "/model.safetensors", p);
             return gen_ids(m);
         },
         "tensor 'model.norm.weight' has shape [512], expected [128]"},
        {"a NaN in a q8_0 scale",
         [](const std::string& d) {
             std::string m = q8_header(d, [](json&) {});
             st_poke(m + "/model.safetensors", "model.layers.1.self_attn.o_proj.weight_scale", 5, 0x7e00u);
             return gen_ids(m);
         },
         "tensor 'model.layers.1.self_attn.o_proj.weight_scale' holds NaN at element 5"},
        {"quantization_config of another method",
         [](const std::string& d) {
             std::string m = q8_header(d, [](json&) {});
             edit_json(m + "/config.json", [](json& j) { j["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}}; });
             return gen_ids(m);
         },
         "is not supported (only q8_0"},
        {"q8_0 with another group size",
         [](const std::string& d) {
             std::string m = q8_header(d, [](json&) {});
             edit_json(m + "/config.json", [](json& j) { j["quantization_config"]["group_size"] = 64; });
             return info(m);
         },
         "q8_0 group_size must be 32"},
        // ---- non-finite weights (each dtype, each load path) and non-finite logits
        {"a NaN in an F32 weight (generate: the memory map)",
         [](const std::string& d) {
             std::string m = copy_of(GQA, d, "m");
             st_poke(m + "/model.safetensors", "model.layers.0.mlp.up_proj.weight", 7, 0x7fc00000u);
             return gen_ids(m);
         },
         "tensor 'model.layers.0.mlp.up_proj.weight' holds NaN at element 7"},
        {"a +Inf in an F32 weight (convert: the fp32 copy)",
         [](const std::string& d) {
             std::string m = copy_of(GQA, d, "m");
             st_poke(m + "/model.safetensors", "model.norm.weight", 3, 0x7f800000u);
             return convert(m);
         },
         "tensor 'model.norm.weight' holds +Inf at element 3"},
        {"a NaN in a BF16 weight of a shard (generate)",
         [](const std::string& d) {
             std::string m = copy_of(SHARDED, d, "m");
             st_poke(m + "/model-00001-of-00003.safetensors", "model.embed_tokens.weight", 100, 0x7fc1);
             return gen_ids(m);
         },
         "holds NaN at element 100"},
        {"a -Inf in a BF16 weight of a shard (eval: the fp32 copy)",
         [](const std::string& d) {
             std::string m = copy_of(SHARDED, d, "m");
             std::string file = m + "/model-00003-of-00003.safetensors";
             StParts p = st_read(file);
             std::string name;
             for (auto& t : p.header.items()) if (t.key() != "__metadata__") name = t.key();
             st_poke(file, name, 0, 0xff80);
             write_text(d + "/t.txt", "In the beginning was the word.");
             return "eval --model " + m + " --text " + d + "/t.txt --device cpu";
         },
         "holds -Inf at element 0"},
        {"finite weights whose logits overflow",
         [](const std::string& d) {
             std::string m = copy_of(GQA, d, "m");
             StParts p = st_read(m + "/model.safetensors");
             size_t b = p.header["lm_head.weight"]["data_offsets"][0], e = p.header["lm_head.weight"]["data_offsets"][1];
             float big = 3e38f;
             for (size_t i = b; i < e; i += 4) memcpy(&p.data[i], &big, 4);
             st_write(m + "/model.safetensors", p);
             return gen_ids(m) + " --quiet";   // (the model line, printed once the input is valid, is not wanted here)
         },
         "logits at position 1 are not finite"},
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
        {"an empty vocabulary (text would encode to nothing)",
         [](const std::string& d) { return tok_edit(d, [](json& j) { j["model"]["vocab"] = json::object(); j["model"]["merges"] = json::array(); }); },
         "the vocabulary is empty"},
        {"the vocabulary a list", [](const std::string& d) { return tok_edit(d, [](json& j) { j["model"]["vocab"] = {"a", "b"}; }); },
         "vocab: expected an object"},
        {"a vocabulary id 2.5", [](const std::string& d) { return tok_edit(d, [](json& j) { j["model"]["vocab"]["!"] = 2.5; }); },
         "expected an integer"},
        {"merges an object", [](const std::string& d) { return tok_edit(d, [](json& j) { j["model"]["merges"] = {{"a", "b"}}; }); },
         "merges: expected a list"},
        {"a merge of two numbers", [](const std::string& d) { return tok_edit(d, [](json& j) { j["model"]["merges"][0] = {1, 2}; }); },
         "merges[0]: expected a string"},
        {"unk_token a number", [](const std::string& d) { return tok_edit(d, [](json& j) { j["model"]["unk_token"] = 3; }); },
         "unk_token: expected a string"},
        {"an added token id -5", [](const std::string& d) { return tok_edit(d, [](json& j) { j["added_tokens"][1]["id"] = -5; }); },
         "added_tokens[1].id: -5 out of range"},
        {"an added token id a string", [](const std::string& d) { return tok_edit(d, [](json& j) { j["added_tokens"][0]["id"] = "0"; }); },
         "added_tokens[0].id: expected an integer"},
        {"an added token whose id disagrees with the vocabulary",
         [](const std::string& d) { return tok_edit(d, [](json& j) { j["added_tokens"][0]["content"] = "!"; }); },
         "has id 0 but the vocab says 2"},
        {"a new added token reusing another's id",
         [](const std::string& d) {
             return tok_edit(d, [](json& j) { j["added_tokens"].push_back({{"id", 0}, {"content", "<new>"}, {"special", true}}); });
         },
         "reuses id 0"},
        {"an added token with empty content",
         [](const std::string& d) { return tok_edit(d, [](json& j) { j["added_tokens"].push_back({{"id", 380}, {"content", ""}}); }); },
         "has empty content"},
        {"added_tokens an object", [](const std::string& d) { return tok_edit(d, [](json& j) { j["added_tokens"] = {{"id", 0}}; }); },
         "added_tokens: expected a list"},
        {"an added token's special flag a string",
         [](const std::string& d) { return tok_edit(d, [](json& j) { j["added_tokens"][0]["special"] = "yes"; }); },
         "\"special\" must be true or false"},
        {"a template special token id -1",
         [](const std::string& d) { return tok_edit(d, [](json& j) { bos_template(j, {-1}, nullptr); }); },
         "special token id -1 out of range"},
        {"a template special token whose string is another token's",
         [](const std::string& d) { return tok_edit(d, [](json& j) { bos_template(j, {0}, {"<wrong>"}); }); },
         "but the template says \"<wrong>\""},
        {"a template special token id that no token has",
         [](const std::string& d) { return tok_edit(d, [](json& j) { bos_template(j, {5000}, nullptr); }); },
         "post_processor: unknown id 5000"},
        {"a template special token with no ids",
         [](const std::string& d) { return tok_edit(d, [](json& j) { bos_template(j, json::array(), nullptr); }); },
         "ids: the list is empty"},
        {"a template special token's tokens a string",
         [](const std::string& d) { return tok_edit(d, [](json& j) { bos_template(j, {0}, "<s>"); }); },
         "tokens: expected a list of 1 strings"},
        {"tokenizer.json is a FIFO (must not block)",
         [](const std::string& d) {
             run_cmd("mkfifo " + d + "/tokenizer.json");
             return "tokenizer info --tokenizer " + d + "/tokenizer.json";
         },
         "FIFO"},
        {"tokenizer.json is a directory",
         [](const std::string& d) {
             make_dirs(d + "/tokenizer.json");
             return "tokenizer encode --tokenizer " + d + "/tokenizer.json </dev/null";
         },
         "is a directory"},
        {"tokenizer.json a list", [](const std::string& d) { write_text(d + "/t.json", "[1, 2]"); return "tokenizer info --tokenizer " + d + "/t.json"; },
         "not a JSON object"},
        {"a tokenizer with more tokens than the model has embedding rows",
         [](const std::string& d) {
             std::string m = copy_of(GEN, d, "m");
             edit_json(m + "/tokenizer.json", [](json& j) { j["added_tokens"].push_back({{"id", 5000}, {"content", "<big>"}}); });
             return gen_text(m);
         },
         "tokenizer.json has 5001 tokens but the model only 384 embedding rows"},
        {"tokenizer encode --input a directory",
         [](const std::string& d) { return "tokenizer encode --tokenizer " + GEN + "/tokenizer.json --input " + d; },
         "is a directory"},
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
        {"data.json: train.file a path out of the data directory",
         [](const std::string& d) {
             std::string data = copy_of(train_base() + "/data", d, "data");
             run_cmd("cp " + data + "/train.bin " + d + "/outside.bin");   // a real shard: only the name is wrong
             edit_json(data + "/data.json", [](json& j) { j["train"]["file"] = "../outside.bin"; });
             return train_args(data, d + "/o");
         },
         "data.json: train: field 'file' must be a file name in the data directory, got \"../outside.bin\""},
        {"data.json: the tokenizer an absolute path",
         [](const std::string& d) {
             std::string data = copy_of(train_base() + "/data", d, "data");
             edit_json(data + "/data.json", [](json& j) { j["tokenizer"] = "/etc/passwd"; });
             return train_args(data, d + "/o");
         },
         "field 'tokenizer' must be a file name in the data directory, got \"/etc/passwd\""},
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
        {"task line: not JSON",
         [](const std::string& d) { return task_args(d, TASK_LINE + "The quick brown fox\n"); },
         "d.jsonl:2: invalid JSON"},
        {"task line: a list, not an object",
         [](const std::string& d) { return task_args(d, TASK_LINE + "[\"The\", \"fox\"]\n"); },
         "d.jsonl:2: expected a JSON object"},
        {"task line: no context",
         [](const std::string& d) { return task_args(d, TASK_LINE + "{\"choices\": [\"a\", \"b\"], \"label\": 0}\n"); },
         "d.jsonl:2: no \"context\" field"},
        {"task line: context a number",
         [](const std::string& d) { return task_args(d, TASK_LINE + "{\"context\": 5, \"choices\": [\"a\", \"b\"], \"label\": 0}\n"); },
         "d.jsonl:2: \"context\" must be a string, got 5"},
        {"task line: choices a string",
         [](const std::string& d) { return task_args(d, TASK_LINE + "{\"context\": \"x\", \"choices\": \"a\", \"label\": 0}\n"); },
         "d.jsonl:2: \"choices\" must be a list of strings"},
        {"task line: choices empty",
         [](const std::string& d) { return task_args(d, TASK_LINE + "{\"context\": \"x\", \"choices\": [], \"label\": 0}\n"); },
         "d.jsonl:2: \"choices\" holds 0 choices (at least 2)"},
        {"task line: one choice",
         [](const std::string& d) { return task_args(d, TASK_LINE + "{\"context\": \"x\", \"choices\": [\"a\"], \"label\": 0}\n"); },
         "d.jsonl:2: \"choices\" holds 1 choice (at least 2)"},
        {"task line: a choice null",
         [](const std::string& d) { return task_args(d, TASK_LINE + "{\"context\": \"x\", \"choices\": [\"a\", null], \"label\": 0}\n"); },
         "d.jsonl:2: choices[1] must be a string, got null"},
        {"task line: an empty choice",
         [](const std::string& d) { return task_args(d, TASK_LINE + "{\"context\": \"x\", \"choices\": [\"\", \"b\"], \"label\": 1}\n"); },
         "d.jsonl:2: choices[0] is empty"},
        {"task line: no label",
         [](const std::string& d) { return task_args(d, TASK_LINE + "{\"context\": \"x\", \"choices\": [\"a\", \"b\"]}\n"); },
         "d.jsonl:2: no \"label\" field"},
        {"task line: label past the choices",
         [](const std::string& d) { return task_args(d, TASK_LINE + "{\"context\": \"x\", \"choices\": [\"a\", \"b\"], \"label\": 2}\n"); },
         "d.jsonl:2: \"label\" 2 is not the index of a choice (0 to 1)"},
        {"task line: a negative label",
         [](const std::string& d) { return task_args(d, TASK_LINE + "{\"context\": \"x\", \"choices\": [\"a\", \"b\"], \"label\": -1}\n"); },
         "d.jsonl:2: \"label\" -1 is not the index of a choice"},
        {"task line: label 2^64 - 1",
         [](const std::string& d) { return task_args(d, TASK_LINE + "{\"context\": \"x\", \"choices\": [\"a\", \"b\"], \"label\": 18446744073709551615}\n"); },
         "d.jsonl:2: \"label\" 18446744073709551615 is not the index"},
        {"task line: label a float",
         [](const std::string& d) { return task_args(d, TASK_LINE + "{\"context\": \"x\", \"choices\": [\"a\", \"b\"], \"label\": 1.0}\n"); },
         "d.jsonl:2: \"label\" must be an integer, got 1.0"},
        {"task line: label a string (HellaSwag's raw form)",
         [](const std::string& d) { return task_args(d, TASK_LINE + "{\"context\": \"x\", \"choices\": [\"a\", \"b\"], \"label\": \"1\"}\n"); },
         "d.jsonl:2: \"label\" must be an integer, got \"1\""},
        {"task line: a byte that is not UTF-8 in the context",
         [](const std::string& d) { return task_args(d, TASK_LINE + "{\"context\": \"caf\xe9 \", \"choices\": [\"a\", \"b\"], \"label\": 0}\n"); },
         "invalid string: ill-formed UTF-8 byte"},
        {"task line: a lone surrogate escape in a choice",
         [](const std::string& d) { return task_args(d, TASK_LINE + "{\"context\": \"x\", \"choices\": [\"\\ud800\", \"b\"], \"label\": 0}\n"); },
         "invalid string: surrogate U+D800..U+DBFF must be followed by U+DC00..U+DFFF"},
        {"task line: a choice that merges into the context's last token (no continuation tokens)",
         [](const std::string& d) { return task_args(d, TASK_LINE + "{\"context\": \"The qu\", \"choices\": [\"ick brown fox\", \"iet\"], \"label\": 0}\n"); },
         "d.jsonl:2: choices[0] adds no tokens to the context"},
        {"task line: a choice longer than the model's context (digits are one token each)",
         [](const std::string& d) {
             return task_args(d, TASK_LINE + "{\"context\": \"x \", \"choices\": [\"" + std::string(200, '7') + "\", \"b\"], \"label\": 1}\n");
         },
         "d.jsonl:2: choices[0] is 201 tokens, more than the model's context of 160"},
        {"task file: empty",
         [](const std::string& d) { return task_args(d, "\n\n"); },
         "d.jsonl: no items"},
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
        {"generate --prompt-ids with an id outside the vocabulary",
         [](const std::string&) { return "generate --model " + GEN + " --prompt-ids '1 99999' -n 2 --ids --device cpu"; },
         "outside the model's vocabulary"},
        {"an unknown flag",
         [](const std::string&) { return std::string("info --preset tiny --no-such-flag"); },
         "unknown flag"},
        {"a value flag given twice", [](const std::string&) { return std::string("info --preset tiny --seq-len 3 --seq-len 4"); },
         "--seq-len is given twice"},
        {"a value flag given twice, once as --name=value",
         [](const std::string&) { return "info --model=" + GQA + " --model " + GQA; },
         "--model is given twice"},
        {"a switch given twice", [](const std::string&) { return "generate --model " + GEN + " --prompt hi --ids --ids"; },
         "--ids is given twice"},
        {"a tokenizer switch given twice",
         [](const std::string&) { return "tokenizer encode --tokenizer " + GEN + "/tokenizer.json --bos --bos </dev/null"; },
         "--bos is given twice"},
        {"-n and --max-new-tokens both", [](const std::string&) { return "generate --model " + GEN + " --prompt hi -n 3 --max-new-tokens 4"; },
         "-n and --max-new-tokens are the same flag"},
        {"generate -n 0", [](const std::string&) { return "generate --model " + GEN + " --prompt hi -n 0"; },
         "--n must be an integer in [1,"},
        {"generate --max-new-tokens 0", [](const std::string&) { return "generate --model " + GEN + " --prompt hi --max-new-tokens 0"; },
         "--max-new-tokens must be an integer in [1,"},
        {"generate --context 0", [](const std::string&) { return "generate --model " + GEN + " --prompt hi --context 0"; },
         "--context must be an integer in [1,"},
        {"generate --top-p 0", [](const std::string&) { return "generate --model " + GEN + " --prompt hi --top-p 0"; },
         "--top-p must be a number in (0, 1]"},
        {"chat -n 0", [](const std::string&) { return "chat --model " + GEN + " --prompt hi -n 0"; },
         "--n must be an integer in [1,"},
        {"eval --limit 0",
         [](const std::string& d) {
             write_text(d + "/t.txt", "In the beginning.");
             return "eval --model " + GEN + " --text " + d + "/t.txt --limit 0";
         },
         "--limit must be an integer in [1,"},
        {"eval --max-new-tokens 0",
         [](const std::string& d) {
             write_text(d + "/t.txt", "In the beginning.");
             return "eval --model " + GEN + " --text " + d + "/t.txt --max-new-tokens 0";
         },
         "--max-new-tokens must be an integer in [1,"},
        {"tokenizer bench --repeat 0",
         [](const std::string& d) {
             write_text(d + "/t.txt", "In the beginning.");
             return "tokenizer bench --tokenizer " + GEN + "/tokenizer.json --input " + d + "/t.txt --repeat 0";
         },
         "--repeat must be an integer in [1,"},
        {"tokenizer train --vocab-size 0",
         [](const std::string& d) {
             write_text(d + "/t.txt", "In the beginning.");
             return "tokenizer train --input " + d + "/t.txt --vocab-size 0 --out " + d + "/tok.json --quiet";
         },
         "--vocab-size must be an integer in [258,"},
        {"info --seq-len 0", [](const std::string&) { return std::string("info --preset tiny --seq-len 0"); },
         "--seq-len must be an integer in [1,"},
        {"--threads 0", [](const std::string&) { return std::string("info --preset tiny --threads 0"); },
         "--threads must be an integer in [1,"},
        {"an integer flag 1e300 (no undefined cast)", [](const std::string&) { return std::string("info --preset tiny --seq-len 1e300"); },
         "--seq-len must be an integer"},
        {"an integer flag nan", [](const std::string&) { return std::string("info --preset tiny --seq-len nan"); },
         "--seq-len must be an integer"},
        {"convert --out a file",
         [](const std::string& d) {
             write_text(d + "/out", "x");
             return "convert --preset tiny --out " + d + "/out";
         },
         "is a file, not a directory"},
        {"chat: a message that cannot be answered makes the exit status 1",
         [](const std::string& d) {
             write_text(d + "/in.txt", "the quick brown fox jumps over the lazy dog, again and again and again\n");
             return "chat --model " + GEN + " --quiet --context 8 < " + d + "/in.txt";
         },
         "the message is too long"},
    };
    check_rows("cli", rows);
}
