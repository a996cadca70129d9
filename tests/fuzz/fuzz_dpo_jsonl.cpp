// libFuzzer target: DPO preference pairs, JSONL (dpo_read_jsonl), read strictly and with skip_bad. Any input must
// read or fail with a DeepseekError. Every pair read renders (dpo_render, with tests/fixtures/infer/tokenizer.json)
// into two sequences with one mask entry per token and only their final reply trained (at least its EOS).
#include "fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    fuzz::scratch();
    fuzz::chat_tokenizer();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::read_both_ways(data, size, [](const std::string& path, bool skip_bad) {
        int skipped = -1;
        std::vector<DpoExample> ex = dpo_read_jsonl(path, skip_bad, &skipped);
        fuzz::check_skipped(skipped, skip_bad);
        for (const DpoExample& e : ex) {
            ChatSeq c, r;
            dpo_render(fuzz::chat_tokenizer(), e, &c, &r);
            for (const ChatSeq* s : {&c, &r}) fuzz::check_trained(e.line, s->ids, s->trained);
        }
    });
    return 0;
}
