// libFuzzer target: SFT conversations, JSONL (sft_read_jsonl), read strictly and with skip_bad. Any input must read
// or fail with a DeepseekError. Every conversation read renders with the chat template (chat_tokens, with
// tests/fixtures/infer/tokenizer.json): one mask entry per token, the reply tokens trained (at least the final EOS),
// and the batch of them all (chat_batch) is well formed.
#include "fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::scratch();
    fuzz::chat_tokenizer();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::read_both_ways(data, size, [](const std::string& path, bool skip_bad) {
        int skipped = -1;
        std::vector<SftExample> ex = sft_read_jsonl(path, skip_bad, &skipped);
        fuzz::check_skipped(skipped, skip_bad);
        std::vector<ChatSeq> seqs(ex.size());
        std::vector<const ChatSeq*> rows;
        for (size_t i = 0; i < ex.size(); i++) {
            chat_tokens(fuzz::chat_tokenizer(), ex[i].messages, false, &seqs[i].ids, &seqs[i].trained);
            fuzz::check_trained(ex[i].line, seqs[i].ids, seqs[i].trained);
            rows.push_back(&seqs[i]);
        }
        std::vector<int> in, tg;
        int T = chat_batch(rows, 0, &in, &tg);
        if (in.size() != rows.size() * (size_t)T || tg.size() != in.size()) fuzz::fail("chat_batch sizes");
    });
    return 0;
}
