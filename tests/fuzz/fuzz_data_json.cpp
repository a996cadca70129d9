// libFuzzer target: a data directory's data.json, read by `deepseek train` (inline in cmd_train: the vocabulary
// size, the split files, the tokenizer, the special tokens, the unigram figures). Made once: a data directory from
// a real `deepseek data prepare` (tests/fixtures/infer/tokenizer.json, 368 tokens), a few more files a data.json
// might name (a shard over a larger vocabulary, a shard too short for a batch, a larger tokenizer, a smaller one
// trained here (300 tokens, fewer than the data's), a subdirectory)
// and a micro model (V 384). Each input is the data.json of a 1-step run with an evaluation and a 4-token sample
// (stdout: run with -close_fd_mask=1). Any input must train or fail with a DeepseekError.
#include "fuzz_util.h"

static std::string g_data, g_model, g_out;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const std::string& s = fuzz::scratch();
    g_data = s + "/data";
    g_model = s + "/model";
    g_out = s + "/out";
    setenv("PATH", "/nonexistent", 1);   // no gnuplot: the loss curve is skipped
    fuzz::setup("data prepare", [&] {
        std::string text;
        for (int i = 0; i < 40; i++)
            text += "User: What is " + std::to_string(i) + " + 7?\n\nAssistant: The answer is " + std::to_string(i + 7) + ".\n\n";
        fuzz::write_text(s + "/text.txt", text);
        fuzz::cli(cmd_data, {"data", "prepare", "--input", s + "/text.txt", "--tokenizer",
                             fuzz::repo_path("tests/fixtures/infer/tokenizer.json"), "--out", g_data, "--val-fraction", "0.2"});
        fuzz::keep_seed(g_data + "/data.json");
        shard_write(g_data + "/big_vocab.bin", fuzz::markov_tokens(400, 1000, 3), 1000);
        shard_write(g_data + "/short.bin", fuzz::markov_tokens(5, 64, 4), 64);
        write_file_atomic(g_data + "/other_tokenizer.json", read_file(fuzz::repo_path("tests/fixtures/tokenizer/variant_digits_grouped.json")));
        tokenizer_train_files({s + "/text.txt"}, 300, g_data + "/small_tokenizer.json", false);
        make_dirs(g_data + "/sub");
        fuzz::micro_model(g_model, 384);
    });
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::write_bytes(g_data + "/data.json", data, size);
    try {
        fuzz::cli(cmd_train, {"train", "--model", g_model, "--data", g_data, "--out", g_out, "--steps", "1", "--seq-len", "8",
                              "--batch-tokens", "16", "--eval-every", "1", "--eval-windows", "1", "--sample-tokens", "4",
                              "--save-every", "0", "--device", "cpu"});
    } catch (const DeepseekError&) {
    }
    return 0;
}
