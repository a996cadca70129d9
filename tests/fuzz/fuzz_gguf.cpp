// libFuzzer target: a GGUF vocabulary (tokenizer_from_gguf, `deepseek tokenizer import-gguf`): the header, the
// key/values (strings, scalars, nested arrays; the tokenizer.ggml.* keys read, the rest skipped). Any input must
// import or fail with a DeepseekError; what imports must encode and decode a few texts and write tokenizer.json.
// Seeds: a small synthetic vocabulary (the 256 byte-level symbols, a few merges, BOS/EOS) and near-valid cuts of it.
#include "../../tokenizer.cpp"   // the static tokenizer_from_gguf
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::string path = fuzz::scratch() + "/in.gguf";
    fuzz::write_bytes(path, data, size);
    Tokenizer* t = nullptr;
    try {
        t = tokenizer_from_gguf(path);
    } catch (const DeepseekError&) {
        return 0;
    }
    fuzz::exercise_tokenizer(t, {"Hello world 123", "ü ø\r\n\t  x", "<｜end▁of▁sentence｜>\xff\xfe", ""});
    return 0;
}
