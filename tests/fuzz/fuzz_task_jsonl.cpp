// libFuzzer target: multiple-choice task items, JSONL (mc_read_jsonl, eval --task), read strictly and with skip_bad.
// Any input must read or fail with a DeepseekError. Every item read, tokenised with tests/fixtures/infer/tokenizer.json
// and a context of 32 tokens, has at least 2 choices, a label among them, a positive character count per choice,
// context tokens, and 1 to 32 continuation tokens per choice, every id inside the vocabulary.
#include "fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::scratch();
    fuzz::chat_tokenizer();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const int context_len = 32;
    fuzz::read_both_ways(data, size, [&](const std::string& path, bool skip_bad) {
        int skipped = -1;
        std::vector<McItem> items = mc_read_jsonl(path, fuzz::chat_tokenizer(), context_len, skip_bad, &skipped);
        fuzz::check_skipped(skipped, skip_bad);
        int V = tokenizer_vocab_size(fuzz::chat_tokenizer());
        auto in_vocab = [&](const std::vector<int>& ids) {
            for (int id : ids) if (id < 0 || id >= V) return false;
            return true;
        };
        for (const McItem& it : items) {
            size_t n = it.choices.size();
            if (n < 2 || it.label < 0 || it.label >= (int)n) fuzz::fail("line %d: %zu choices, label %d", it.line, n, it.label);
            if (it.chars.size() != n || it.continuation_ids.size() != n) fuzz::fail("line %d: per-choice sizes", it.line);
            if (it.context_ids.empty() || !in_vocab(it.context_ids)) fuzz::fail("line %d: context tokens", it.line);
            for (size_t k = 0; k < n; k++) {
                const std::vector<int>& c = it.continuation_ids[k];
                if (it.chars[k] <= 0 || (int)it.chars[k] > (int)it.choices[k].size())
                    fuzz::fail("line %d: choice %zu has %d characters in %zu bytes", it.line, k, it.chars[k], it.choices[k].size());
                if (c.empty() || (int)c.size() > context_len || !in_vocab(c))
                    fuzz::fail("line %d: choice %zu has %zu continuation tokens", it.line, k, c.size());
            }
        }
    });
    return 0;
}
