// Bad input as a spec: every row builds one hostile input in a fresh directory, runs ./deepseek on it, and requires
// a clean error — an exit status in 1..127, exactly one line on stderr, "error: " and the row's expected words in it,
// no sanitizer report, and no hang (each run is killed after 120 s, which reads as status 137: a failure).
// Rows are grouped by what is read: model directories, tokenizers, data and training runs, command lines.
#include <doctest/doctest.h>  // TEST_CASE, CHECK, INFO
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
        INFO(group << ": " << row.what << "\n  deepseek " << args);
        Outcome o = run_row(args);
        INFO("exit " << o.rc << ", stderr:\n" << o.err);
        CHECK(o.rc >= 1);
        CHECK(o.rc <= 127);
        CHECK(!sanitizer_report(o.err));
        CHECK(count_lines(o.err) == 1);
        CHECK(o.err.rfind("error: ", 0) == 0);
        CHECK(o.err.find(row.expect) != std::string::npos);
    }
}

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
             std::string m = copy_of(GQA, d, "m");
             std::string s = read_file(m + "/model.safetensors");
             write_text(m + "/model.safetensors", s.substr(0, s.size() - 100));
             return "generate --model " + m + " --prompt-ids '1 2' --max-new-tokens 2 --ids --device cpu";   // (--ids: no tokenizer needed)
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
    std::vector<BadInput> rows = {
        {"data prepare from a file that does not exist",
         [](const std::string& d) { return "data prepare --input " + d + "/none.txt --vocab-size 300 --out " + d + "/p"; },
         "does not exist"},
        // (rows of the training group go here)
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
