// libFuzzer target: the tokenizer.json loader. Any input must load or fail with a DeepseekError (one clear
// line), never crash; what loads must encode and decode a few texts. Seeds: tests/fixtures/tokenizer/variant_*.json.
#include "../../tokenizer.cpp"   // the loader's static functions: tokenizer_parse reads from memory
#include "fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::scratch();   // g_die_throws and the terminate handler
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string text((const char*)data, size);
    Tokenizer* t = nullptr;
    try {
        t = tokenizer_parse(text, "fuzz");
    } catch (const DeepseekError&) {
        return 0;
    }
    fuzz::exercise_tokenizer(t, {"Hello world 123", "ü ø\r\n\t  x", "<eos>[MASK]\xff\xfe", ""});
    return 0;
}
