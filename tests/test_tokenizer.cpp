// Tokenizer tests: Hugging Face tokenizers parity (released ids, our multilingual text, the King James Bible,
// every tokenizer.json feature), lossless round trips, BpeTrainer-identical training, errors, the CLI.
#include <doctest/doctest.h>   // TEST_CASE, CHECK, REQUIRE, MESSAGE
#include <nlohmann/json.hpp>   // nlohmann::json: fixtures and written tokenizer.json files
#include <cstdio>              // fopen
#include <cstdlib>             // getenv
#include <fstream>             // std::ifstream
#include <random>              // std::mt19937
#include <sstream>             // std::stringstream
#include <sys/stat.h>          // mkdir
#include "test_util.h"         // run_cmd, deepseek_bin, g_tests_skipped
#include "../deepseek.h"       // tokenizer_*

using nlohmann::json;

namespace {

const std::string GGUF = "data/vocab/deepseek-llm.gguf";
const std::string FIX = "tests/fixtures/tokenizer/";
const std::string TMP = "build/test_tokenizer/";

std::string slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}
void spit(const std::string& path, const std::string& s) {
    std::ofstream f(path, std::ios::binary);
    f << s;
}
std::vector<int> parse_ids(const std::string& s) {
    std::vector<int> v;
    std::stringstream ss(s);
    int x;
    while (ss >> x) v.push_back(x);
    return v;
}
void mkdirs() { mkdir("build", 0755); mkdir(TMP.c_str(), 0755); }

// The released tokenizer, imported from GGUF once per run by the CLI under test (never committed: ~8 MB).
const std::string& deepseek_json() {
    static std::string path;
    if (path.empty()) {
        mkdirs();
        path = TMP + "deepseek-llm.json";
        CmdResult r = run_cmd(deepseek_bin() + " tokenizer import-gguf " + GGUF + " --out " + path);
        REQUIRE_MESSAGE(r.rc == 0, r.out);
    }
    return path;
}
struct TokHolder {
    Tokenizer* t = nullptr;
    explicit TokHolder(const std::string& path) : t(tokenizer_load(path)) {}
    ~TokHolder() { tokenizer_free(t); }
};
Tokenizer* deepseek() {
    static TokHolder h(deepseek_json());
    return h.t;
}
// a small tokenizer we trained (all 256 bytes in its alphabet)
Tokenizer* trained() {
    static std::unique_ptr<TokHolder> h;
    if (!h) {
        mkdirs();
        tokenizer_train_files({"data/multilingual_test.txt"}, 600, TMP + "trained600.json", false);
        h.reset(new TokHolder(TMP + "trained600.json"));
    }
    return h->t;
}

// index of the first difference, or -1
long first_diff(const std::vector<int>& a, const std::vector<int>& b) {
    for (size_t i = 0; i < a.size() && i < b.size(); i++) if (a[i] != b[i]) return (long)i;
    return a.size() == b.size() ? -1 : (long)std::min(a.size(), b.size());
}
std::string around(const std::vector<int>& v, long i) {
    std::string s;
    for (long k = std::max(0L, i - 3); k < std::min((long)v.size(), i + 5); k++) s += std::to_string(v[k]) + " ";
    return s;
}
uint64_t fnv1a64(const unsigned char* p, size_t n, uint64_t h = 0xcbf29ce484222325ULL) {
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ULL; }
    return h;
}
std::string hex64(uint64_t h) { char b[17]; snprintf(b, sizeof b, "%016llx", (unsigned long long)h); return b; }

// The llama.cpp test file: texts each followed by "\n__ggml_vocab_test__\n".
std::vector<std::string> vocab_test_texts() {
    std::string inp = slurp("data/vocab/deepseek-llm.inp");
    const std::string sep = "\n__ggml_vocab_test__\n";
    std::vector<std::string> texts;
    size_t pos = 0, k;
    while ((k = inp.find(sep, pos)) != std::string::npos) { texts.push_back(inp.substr(pos, k - pos)); pos = k + sep.size(); }
    return texts;
}

}  // namespace

REGISTER_EXCEPTION_TRANSLATOR(const DeepseekError& e) { return doctest::String(("DeepseekError: " + e.msg).c_str()); }

TEST_CASE("tokenizer: import-gguf writes DeepSeek's pre-tokenizer patterns verbatim, 100015 tokens, added ids 100000-100014") {
    json ours = json::parse(slurp(deepseek_json()));
    json ref = json::parse(slurp("data/vocab/deepseek-llm-pretokenizer.json"));
    const json& steps = ours["pre_tokenizer"]["pretokenizers"];
    REQUIRE(steps.size() == 7);
    for (size_t i = 0; i < 5; i++) {
        CHECK(steps[i]["type"] == "Split");
        CHECK(steps[i]["behavior"] == "Isolated");
        CHECK(steps[i]["pattern"]["Regex"] == ref["split_patterns"][i]);
    }
    CHECK(steps[5]["type"] == "Digits");
    CHECK(steps[5]["individual_digits"] == true);
    CHECK(steps[6]["type"] == "ByteLevel");
    CHECK(steps[6]["use_regex"] == false);
    CHECK(ours["model"]["vocab"].size() == 100000);
    CHECK(ours["model"]["merges"].size() == 99757);
    REQUIRE(ours["added_tokens"].size() == 15);
    for (int i = 0; i < 15; i++) CHECK(ours["added_tokens"][i]["id"] == 100000 + i);
    Tokenizer* t = deepseek();
    CHECK(tokenizer_vocab_size(t) == 100015);
    CHECK(tokenizer_bos_id(t) == 100000);
    CHECK(tokenizer_eos_id(t) == 100001);
    CHECK(tokenizer_token_id(t, "<｜end▁of▁sentence｜>") == 100001);
    CHECK(tokenizer_token_id(t, "Ġ") == 207);
    CHECK(tokenizer_token_id(t, "no such token at all") == -1);
    CHECK(tokenizer_token_bytes(t, 207) == " ");
    CHECK(tokenizer_token_bytes(t, 185) == "\n");
}

TEST_CASE("tokenizer: every text of deepseek-llm.inp encodes to the released ids of deepseek-llm.out") {
    std::vector<std::string> texts = vocab_test_texts();
    std::stringstream out(slurp("data/vocab/deepseek-llm.out"));
    std::string line;
    int n = 0, ok = 0;
    for (const std::string& text : texts) {
        REQUIRE(std::getline(out, line));
        std::vector<int> want = parse_ids(line), got = tokenizer_encode(deepseek(), text, false);
        n++;
        if (got == want) ok++;
        else FAIL_CHECK("text " << n << " [" << text << "]: first difference at " << first_diff(got, want) << ": ours " << around(got, first_diff(got, want))
                                << "| HF " << around(want, first_diff(got, want)));
    }
    MESSAGE(ok << "/" << n << " texts match");
    CHECK(n == 46);   // the file holds 46 texts
    CHECK(tokenizer_encode(deepseek(), "Hello world", false) == std::vector<int>{17464, 1843});
    CHECK(tokenizer_encode(deepseek(), "Hello world", true) == std::vector<int>{100000, 17464, 1843});
}

TEST_CASE("tokenizer: the multilingual test text encodes exactly as Hugging Face tokenizers does") {
    std::string text = slurp("data/multilingual_test.txt");
    REQUIRE(text.size() >= 50000);
    std::vector<int> want = parse_ids(slurp(FIX + "multilingual_ids.txt"));
    std::vector<int> got = tokenizer_encode(deepseek(), text, false);
    long d = first_diff(got, want);
    MESSAGE(got.size() << " ids, HF " << want.size() << std::string(d < 0 ? ": identical" : ""));
    CHECK_MESSAGE(d == -1, "first difference at id " << d << ": ours " << around(got, d) << "| HF " << around(want, d));
    CHECK(tokenizer_decode(deepseek(), got) == text);
}

TEST_CASE("tokenizer: the King James Bible encodes exactly as Hugging Face tokenizers does (count and FNV-1a of the ids)") {
    json fx = json::parse(slurp(FIX + "bible_kjv.json"));
    if (getenv("DEEPSEEK_ASAN")) {
        MESSAGE("skipped under the sanitizer build (4.3 MB at -O1 + ASan); make test runs it");
        g_tests_skipped++;
        return;
    }
    std::string cmd;
    for (const auto& w : fx["command"]) cmd += (cmd.empty() ? "" : " ") + ("'" + w.get<std::string>() + "'");
    CmdResult r = run_cmd("command -v bible >/dev/null && " + cmd + " 2>/dev/null");
    if (r.rc != 0 || r.out.empty()) {
        MESSAGE("skipped: `bible` (Debian bible-kjv) is not installed");
        g_tests_skipped++;
        return;
    }
    const std::string& text = r.out;
    REQUIRE_MESSAGE(hex64(fnv1a64((const unsigned char*)text.data(), text.size())) == fx["text_fnv1a64"].get<std::string>(),
                    "the regenerated Bible text differs from the one the fixture was made from");
    std::vector<int> ids = tokenizer_encode(deepseek(), text, false);
    uint64_t h = 0xcbf29ce484222325ULL;
    for (int id : ids) { uint32_t u = (uint32_t)id; unsigned char b[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16), (unsigned char)(u >> 24)}; h = fnv1a64(b, 4, h); }
    MESSAGE(text.size() << " bytes -> " << ids.size() << " ids (HF " << fx["ids"] << ")");
    CHECK(ids.size() == fx["ids"].get<size_t>());
    CHECK(hex64(h) == fx["ids_fnv1a64"].get<std::string>());
    CHECK(tokenizer_decode(deepseek(), ids) == text);
}

TEST_CASE("tokenizer: every supported tokenizer.json feature encodes as Hugging Face tokenizers does") {
    json fx = json::parse(slurp(FIX + "variants_ids.json"));
    std::string sample = fx["sample"];
    for (auto it = fx["ids"].begin(); it != fx["ids"].end(); ++it) {
        TokHolder h(FIX + "variant_" + it.key() + ".json");
        std::vector<int> want = it.value().get<std::vector<int>>(), got = tokenizer_encode(h.t, sample, false);
        long d = first_diff(got, want);
        CHECK_MESSAGE(d == -1, it.key() << ": first difference at " << d << ": ours " << around(got, d) << "| HF " << around(want, d));
    }
}

TEST_CASE("tokenizer: decode(encode(x)) == x for the test texts and for random byte strings, valid UTF-8 or not") {
    for (const std::string& text : vocab_test_texts()) CHECK(tokenizer_decode(deepseek(), tokenizer_encode(deepseek(), text, false)) == text);
    std::mt19937 rng(1234);
    std::string multi = slurp("data/multilingual_test.txt");
    int failures_trained = 0, failures_deepseek = 0;
    for (int trial = 0; trial < 300; trial++) {
        std::string s;
        int len = (int)(rng() % 200);
        for (int i = 0; i < len; i++) {
            switch (rng() % 4) {
                case 0: s += (char)(rng() % 256); break;                                  // any byte
                case 1: s += (char)(0x80 + rng() % 64); break;                            // stray continuation bytes
                case 2: { size_t at = rng() % (multi.size() - 8); s += multi.substr(at, 1 + rng() % 8); break; }  // cut UTF-8
                default: s += " \t\r\n0aZ"[rng() % 8]; break;
            }
        }
        if (tokenizer_decode(trained(), tokenizer_encode(trained(), s, false)) != s) failures_trained++;
        // DeepSeek's vocabulary lacks the 13 bytes that never occur in UTF-8 (C0 C1 F5-FF): without them it is lossless too
        std::string t;
        for (char c : s) { unsigned char u = (unsigned char)c; if (u != 0xC0 && u != 0xC1 && u < 0xF5) t += c; }
        if (tokenizer_decode(deepseek(), tokenizer_encode(deepseek(), t, false)) != t) failures_deepseek++;
    }
    CHECK(failures_trained == 0);
    CHECK(failures_deepseek == 0);
    // Defined behaviour for those 13 bytes with DeepSeek's vocabulary: the only token holding byte FC is the added
    // token 100014, whose content "ü" also matches in raw text; it decodes to "ü" so that text round-trips.
    CHECK(tokenizer_encode(deepseek(), std::string("\xFC"), false) == std::vector<int>{100014});
    CHECK(tokenizer_encode(deepseek(), "Führer", false) == std::vector<int>{37, 100014, 71, 6245});
    CHECK(tokenizer_decode(deepseek(), {37, 100014, 71, 6245}) == "Führer");
}

TEST_CASE("tokenizer: training gives Hugging Face BpeTrainer's merges, in order, on the same corpus and vocabulary size") {
    json fx = json::parse(slurp(FIX + "train_merges.json"));
    mkdirs();
    for (const json& run : fx["runs"]) {
        int vs = run["vocab_size"];
        std::string out = TMP + "train" + std::to_string(vs) + ".json";
        tokenizer_train_files({fx["corpus"].get<std::string>()}, vs, out, false);
        json ours = json::parse(slurp(out));
        const json& m = ours["model"]["merges"];
        const json& want = run["merges"];
        size_t same = 0;
        while (same < m.size() && same < want.size() && m[same] == want[same]) same++;
        CHECK_MESSAGE(same == want.size(), "vocab " << vs << ": first different merge at " << same
                                                      << (same < m.size() ? ": ours " + m[same].dump() : "")
                                                      << (same < want.size() ? ", HF " + want[same].dump() : ""));
        CHECK(m.size() == want.size());
        Tokenizer* t = tokenizer_load(out);
        CHECK(tokenizer_vocab_size(t) == vs);
        CHECK(tokenizer_bos_id(t) == vs - 2);
        CHECK(tokenizer_eos_id(t) == vs - 1);
        tokenizer_free(t);
    }
}

TEST_CASE("tokenizer: a tokenizer.json we write loads back and encodes identically") {
    Tokenizer* t = trained();
    std::string text = slurp("data/multilingual_test.txt").substr(0, 5000);
    std::vector<int> a = tokenizer_encode(t, text, true);
    Tokenizer* again = tokenizer_load(TMP + "trained600.json");
    CHECK(tokenizer_encode(again, text, true) == a);
    CHECK(a[0] == tokenizer_bos_id(t));
    tokenizer_free(again);
}

TEST_CASE("tokenizer: empty, huge and pathological inputs have defined results") {
    CHECK(tokenizer_encode(deepseek(), "", false).empty());
    CHECK(tokenizer_encode(deepseek(), "", true) == std::vector<int>{100000});
    CHECK(tokenizer_decode(deepseek(), {}).empty());
    std::string big(1 << 20, 'a');   // one 1 MB pre-token: BPE on a long word
    std::vector<int> ids = tokenizer_encode(deepseek(), big, false);
    CHECK(!ids.empty());
    CHECK(tokenizer_decode(deepseek(), ids) == big);
    std::string spaces(100000, ' ');
    CHECK(tokenizer_decode(deepseek(), tokenizer_encode(deepseek(), spaces, false)) == spaces);
    std::string nul("a\0b\0\0c", 6);
    CHECK(tokenizer_decode(deepseek(), tokenizer_encode(deepseek(), nul, false)) == nul);
    CHECK_THROWS_AS(tokenizer_decode(deepseek(), {5, 100015}), DeepseekError);
    CHECK_THROWS_AS(tokenizer_decode(deepseek(), {-1}), DeepseekError);
    CHECK_THROWS_AS(tokenizer_token_bytes(deepseek(), 1 << 30), DeepseekError);
}

TEST_CASE("tokenizer: malformed or unsupported tokenizer.json is one clear error naming the problem") {
    mkdirs();
    std::string good = slurp(FIX + "variant_merges_as_strings.json");
    json base = json::parse(good);
    struct Bad { std::string name, text, expect; };
    auto with = [&](const std::string& ptr, const json& v) { json j = base; j[json::json_pointer(ptr)] = v; return j.dump(); };
    std::vector<Bad> bad = {
        {"not json", "{\"model\": ", "not valid JSON"},
        {"array", "[1,2]", "object"},
        {"no model", "{}", "model"},
        {"normalizer", with("/normalizer", {{"type", "NFC"}}), "NFC"},
        {"model type", with("/model/type", "WordPiece"), "WordPiece"},
        {"pre-tokenizer", with("/pre_tokenizer", {{"type", "Whitespace"}}), "Whitespace"},
        {"decoder", with("/decoder", {{"type", "WordPiece"}}), "WordPiece"},
        {"post-processor", with("/post_processor", {{"type", "BertProcessing"}}), "BertProcessing"},
        {"bad regex", with("/pre_tokenizer/pretokenizers/0/pattern/Regex", "([a-"), "regex"},
        {"bad behavior", with("/pre_tokenizer/pretokenizers/0/behavior", "Sideways"), "Sideways"},
        {"merge of unknown", with("/model/merges/0", "nosuch token"), "merge"},
        {"merge shape", with("/model/merges/0", 7), "merges[0]"},
        {"vocab id type", with("/model/vocab/a", "seven"), "integer"},
        {"negative id", with("/model/vocab/a", -4), "range"},
        {"added token id", with("/added_tokens/0/id", "x"), "integer"},
        {"byte_fallback", with("/model/byte_fallback", true), "byte_fallback"},
        {"no pre-tokenizer", with("/pre_tokenizer", nullptr), "pre_tokenizer"},
    };
    for (const Bad& b : bad) {
        std::string path = TMP + "bad.json";
        spit(path, b.text);
        std::string msg;
        try {
            Tokenizer* t = tokenizer_load(path);
            tokenizer_free(t);
            msg = "(loaded)";
        } catch (const DeepseekError& e) {
            msg = e.msg;
        }
        CHECK_MESSAGE(msg.find(b.expect) != std::string::npos, b.name << ": got \"" << msg << "\"");
    }
    CHECK_THROWS_AS(tokenizer_load(TMP + "does-not-exist.json"), DeepseekError);
}

TEST_CASE("tokenizer CLI: encode, decode, info, train and import-gguf keep the interface other tools use") {
    mkdirs();
    trained();   // a small tokenizer for most commands: loading the 8 MB DeepSeek file costs a second each time
    std::string bin = deepseek_bin(), tj = deepseek_json(), small = TMP + "trained600.json";
    CmdResult r = run_cmd("printf 'Hello world' | " + bin + " tokenizer encode --tokenizer " + tj + " --bos");
    CHECK(r.rc == 0);
    CHECK(r.out == "100000 17464 1843\n");
    spit(TMP + "ids.txt", "37 100014 71 6245\n");
    r = run_cmd(bin + " tokenizer decode --tokenizer " + tj + " --input " + TMP + "ids.txt");
    CHECK(r.rc == 0);
    CHECK(r.out == "Führer");
    r = run_cmd(bin + " tokenizer encode --tokenizer " + small + " --input /dev/null");
    CHECK(r.rc == 0);
    CHECK(r.out == "\n");
    r = run_cmd("printf 'Hello world' | " + bin + " tokenizer encode --tokenizer " + small);
    std::vector<int> want = tokenizer_encode(trained(), "Hello world", false);
    CHECK(parse_ids(r.out) == want);
    r = run_cmd("echo '17 999999' | " + bin + " tokenizer decode --tokenizer " + small);
    CHECK(r.rc != 0);
    CHECK(r.out.find("unknown token id 999999") != std::string::npos);
    r = run_cmd("echo '17 abc' | " + bin + " tokenizer decode --tokenizer " + small);
    CHECK(r.rc != 0);
    CHECK(r.out.find("not a token id") != std::string::npos);
    r = run_cmd(bin + " tokenizer info --tokenizer " + small);
    CHECK(r.rc == 0);
    CHECK(r.out.find("vocabulary size: 600") != std::string::npos);
    CHECK(r.out.find("598 <｜begin▁of▁sentence｜> (special)") != std::string::npos);
    CHECK(r.out.find("Digits(individual_digits=true)") != std::string::npos);
    // a file round trip through the CLI: encode then decode gives back the bytes
    r = run_cmd(bin + " tokenizer encode --tokenizer " + small + " --input data/multilingual_test.txt > " + TMP + "m.ids && " + bin +
                " tokenizer decode --tokenizer " + small + " --input " + TMP + "m.ids | cmp - data/multilingual_test.txt");
    CHECK_MESSAGE(r.rc == 0, r.out);
    r = run_cmd(bin + " tokenizer train --input data/multilingual_test.txt --vocab-size 300 --out " + TMP + "cli300.json --quiet");
    CHECK_MESSAGE(r.rc == 0, r.out);
    r = run_cmd(bin + " tokenizer nosuch");
    CHECK(r.rc != 0);
    r = run_cmd(bin + " tokenizer import-gguf " + FIX + "bible_kjv.json --out " + TMP + "x.json");
    CHECK(r.rc != 0);
    CHECK(r.out.find("GGUF") != std::string::npos);
    r = run_cmd(bin + " tokenizer --help");
    CHECK(r.rc == 0);
}

// The GGUF export (convert --to gguf) of the released vocabulary, against the released GGUF that llama.cpp's own
// converter wrote: the same tokens, token types, merges and special ids, and the tokenizer read back from it
// encodes our multilingual text as the tokenizer.json it came from. (A one-layer model with DeepSeek's 102400
// embedding rows carries it; q8_0 keeps the file small.)
TEST_CASE("tokenizer gguf: the released vocabulary exported by convert --to gguf is the released GGUF's, and encodes alike") {
    std::string dir = TMP + "gguf_model", out = TMP + "gguf_model.gguf";
    run_cmd("rm -rf " + dir);
    json cfg = json::parse(slurp("tests/fixtures/infer/gen_gqa/config.json"));
    cfg["vocab_size"] = 102400;
    cfg["num_hidden_layers"] = 1;
    cfg["intermediate_size"] = 192;
    cfg["bos_token_id"] = 100000;
    cfg["eos_token_id"] = 100001;
    mkdirs();
    spit(TMP + "gguf_config.json", cfg.dump());
    CmdResult r = run_cmd(deepseek_bin() + " convert --config " + TMP + "gguf_config.json --out " + dir);
    REQUIRE_MESSAGE(r.rc == 0, r.out);
    r = run_cmd(deepseek_bin() + " convert --model " + dir + " --to gguf --dtype q8_0 --tokenizer " + deepseek_json() + " --out " + out);
    REQUIRE_MESSAGE(r.rc == 0, r.out);
    GgufFile ours, released;
    gguf_read(out, &ours);
    gguf_read(GGUF, &released);
    for (const char* key : {"tokenizer.ggml.model", "tokenizer.ggml.pre"}) {
        REQUIRE(ours.find(key));
        CHECK_MESSAGE(ours.find(key)->s == released.find(key)->s, key);
    }
    const GgufValue *tok = ours.find("tokenizer.ggml.tokens"), *typ = ours.find("tokenizer.ggml.token_type"),
                    *mer = ours.find("tokenizer.ggml.merges");
    REQUIRE(tok);
    REQUIRE(typ);
    REQUIRE(mer);
    CHECK(tok->strs.size() == 102400);
    CHECK(tok->strs == released.find("tokenizer.ggml.tokens")->strs);
    CHECK(typ->elem_type == GGUF_I32);
    CHECK(typ->ints == released.find("tokenizer.ggml.token_type")->ints);
    CHECK(mer->strs.size() == 99757);
    CHECK(mer->strs == released.find("tokenizer.ggml.merges")->strs);
    for (const char* key : {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token",
                            "tokenizer.ggml.add_eos_token"}) {
        REQUIRE_MESSAGE(ours.find(key), key);
        CHECK_MESSAGE(ours.find(key)->i == released.find(key)->i, key);
    }
    CHECK(ours.find("tokenizer.ggml.bos_token_id")->i == 100000);
    CHECK(ours.find("tokenizer.ggml.add_bos_token")->i == 1);
    // read back through the GGUF import: the same ids on the multilingual text (BOS too) as the source tokenizer.json
    r = run_cmd(deepseek_bin() + " tokenizer import-gguf " + out + " --out " + TMP + "gguf_back.json");
    REQUIRE_MESSAGE(r.rc == 0, r.out);
    TokHolder back(TMP + "gguf_back.json");
    std::string text = slurp("data/multilingual_test.txt");
    std::vector<int> want = tokenizer_encode(deepseek(), text, true), got = tokenizer_encode(back.t, text, true);
    CHECK(want.size() > 10000);
    CHECK(first_diff(got, want) == -1);
    CHECK(tokenizer_vocab_size(back.t) == 100015);
}
