// libFuzzer target: encode → decode. Any byte string must encode without crashing and decode back to
// itself with a tokenizer whose alphabet has all 256 bytes; with DeepSeek's released vocabulary (which lacks
// the 13 bytes C0 C1 F5–FF that never occur in UTF-8) the same holds for strings without those bytes.
// FUZZ_TOKENIZERS: a colon-separated list of tokenizer.json files, the first with a full byte alphabet; a .gguf
// vocabulary in the list (data/vocab/deepseek-llm.gguf) is imported first (`deepseek tokenizer import-gguf`).
#include "fuzz_util.h"

static std::vector<Tokenizer*>& g_toks = *new std::vector<Tokenizer*>();   // never destroyed: live until exit

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::scratch();   // g_die_throws and the terminate handler
    const char* env = getenv("FUZZ_TOKENIZERS");
    std::string list = env ? env : "tests/fixtures/tokenizer/variant_merges_as_strings.json";
    size_t pos = 0;
    while (pos <= list.size()) {
        size_t k = list.find(':', pos);
        if (k == std::string::npos) k = list.size();
        const std::string name = list.substr(pos, k - pos);
        std::string path = name;
        if (!path.empty()) fuzz::setup(name.c_str(), [&] {
            if (path.size() > 5 && path.compare(path.size() - 5, 5, ".gguf") == 0) {
                std::string json = fuzz::scratch() + "/tokenizer" + std::to_string(g_toks.size()) + ".json";
                fuzz::cli(cmd_tokenizer, {"tokenizer", "import-gguf", path, "--out", json});
                path = json;
            }
            g_toks.push_back(tokenizer_load(path));
        });
        pos = k + 1;
    }
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string s((const char*)data, size);
    for (size_t k = 0; k < g_toks.size(); k++) {
        std::string x = s;
        if (k > 0) {   // vocabularies without the 13 non-UTF-8 bytes
            x.clear();
            for (char c : s) { unsigned char u = (unsigned char)c; if (u != 0xC0 && u != 0xC1 && u < 0xF5) x += c; }
        }
        std::vector<int> ids = tokenizer_encode(g_toks[k], x, false);
        if (tokenizer_decode(g_toks[k], ids) != x) {
            fuzz::fail("decode(encode(x)) != x with tokenizer %zu", k);
        }
    }
    return 0;
}
