// libFuzzer target: generation_config.json. Its reader (read_generation_config in infer.cu) is static, so the input
// goes in through the smallest public entry point that reads it: `deepseek generate` on a micro model directory (made
// once: V 64, C 32, 2 layers) whose generation_config.json is the input, from token ids (no tokenizer), 4 new tokens,
// a fixed seed, ids printed (stdout: run with -close_fd_mask=1). The file's sampling defaults (do_sample,
// temperature, top_k, top_p, repetition_penalty) and EOS ids drive the sampler. Any input must generate or fail with
// a DeepseekError.
#include "fuzz_util.h"

static std::string g_model;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    g_model = fuzz::scratch() + "/model";
    fuzz::setup("micro model", [] { fuzz::micro_model(g_model, 64); });
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::write_bytes(g_model + "/generation_config.json", data, size);
    try {
        fuzz::cli(cmd_generate, {"generate", "--model", g_model, "--prompt-ids", "0 5 9", "-n", "4", "--seed", "1", "--ids",
                                 "--quiet", "--device", "cpu"});
    } catch (const DeepseekError&) {
    }
    return 0;
}
