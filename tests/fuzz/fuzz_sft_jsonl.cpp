// libFuzzer target: SFT conversations, JSONL (sft_read_jsonl), read strictly and with skip_bad. Any input must read
// or fail with a DeepseekError. Every conversation read renders with the chat template (chat_tokens, with
// tests/fixtures/infer/tokenizer.json): one mask entry per token, the reply tokens trained (at least the final EOS),
// and the batch of them all (chat_batch) is well formed.
#include "fuzz_util.h"

static Tokenizer* g_tok;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::scratch();
    fuzz::setup("tokenizer", [] { g_tok = tokenizer_load(fuzz::repo_path("tests/fixtures/infer/tokenizer.json")); });
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::string path = fuzz::scratch() + "/in.jsonl";
    fuzz::write_bytes(path, data, size);
    for (bool skip_bad : {false, true}) {
        try {
            int skipped = -1;
            std::vector<SftExample> ex = sft_read_jsonl(path, skip_bad, &skipped);
            fuzz::check_skipped(skipped, skip_bad);
            std::vector<ChatSeq> seqs(ex.size());
            std::vector<const ChatSeq*> rows;
            for (size_t i = 0; i < ex.size(); i++) {
                chat_tokens(g_tok, ex[i].messages, false, &seqs[i].ids, &seqs[i].trained);
                fuzz::check_trained(ex[i].line, seqs[i].ids, seqs[i].trained);
                rows.push_back(&seqs[i]);
            }
            std::vector<int> in, tg;
            int T = chat_batch(rows, 0, &in, &tg);
            if (in.size() != rows.size() * (size_t)T || tg.size() != in.size()) fuzz::fail("chat_batch sizes");
        } catch (const DeepseekError&) {
        }
    }
    return 0;
}
