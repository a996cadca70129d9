// libFuzzer target: encode → decode. Any byte string must encode without crashing and decode back to
// itself with a tokenizer whose alphabet has all 256 bytes; with DeepSeek's released vocabulary (which lacks
// the 13 bytes C0 C1 F5–FF that never occur in UTF-8) the same holds for strings without those bytes.
// FUZZ_TOKENIZERS: a colon-separated list of tokenizer.json files, the first with a full byte alphabet.
#include "../../deepseek.h"
#include <cstdio>    // fprintf
#include <cstdlib>   // getenv, abort
#include <string>    // std::string
#include <vector>    // std::vector

static std::vector<Tokenizer*>& g_toks = *new std::vector<Tokenizer*>();   // never destroyed: live until exit

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const char* env = getenv("FUZZ_TOKENIZERS");
    std::string list = env ? env : "tests/fixtures/tokenizer/variant_merges_as_strings.json";
    size_t pos = 0;
    while (pos <= list.size()) {
        size_t k = list.find(':', pos);
        if (k == std::string::npos) k = list.size();
        std::string path = list.substr(pos, k - pos);
        if (!path.empty()) {
            try { g_toks.push_back(tokenizer_load(path)); }
            catch (const DeepseekError& e) { fprintf(stderr, "fuzz: %s\n", e.msg.c_str()); abort(); }
        }
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
            fprintf(stderr, "fuzz: decode(encode(x)) != x with tokenizer %zu\n", k);
            abort();
        }
    }
    return 0;
}
