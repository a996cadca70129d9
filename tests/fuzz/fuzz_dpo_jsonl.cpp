// libFuzzer target: DPO preference pairs, JSONL (dpo_read_jsonl), read strictly and with skip_bad. Any input must
// read or fail with a DeepseekError. Every pair read renders (dpo_render, with tests/fixtures/infer/tokenizer.json)
// into two sequences with one mask entry per token and only their final reply trained (at least its EOS).
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
            std::vector<DpoExample> ex = dpo_read_jsonl(path, skip_bad, &skipped);
            fuzz::check_skipped(skipped, skip_bad);
            for (const DpoExample& e : ex) {
                ChatSeq c, r;
                dpo_render(g_tok, e, &c, &r);
                for (const ChatSeq* s : {&c, &r}) fuzz::check_trained(e.line, s->ids, s->trained);
            }
        } catch (const DeepseekError&) {
        }
    }
    return 0;
}
