// libFuzzer target: a checkpoint's trainer_state.json. Made once: a micro model (V 64, C 32, 2 layers), a synthetic
// data directory and a real 2-step run of `deepseek train`, whose step-1 checkpoint (config.json, model.safetensors,
// optimizer.safetensors) gets the input as its trainer_state.json. Each input goes through both readers:
// checkpoint_read (step, weights, AdamW state) and `deepseek train --resume CKPT --steps 2` with --data and --out
// fixed, which reads the saved settings, the data cursor and the counters and trains up to step 2 (stdout: run with
// -close_fd_mask=1). Any input must resume or fail with a DeepseekError.
#include "fuzz_util.h"

static std::string g_data, g_ckpt, g_out;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const std::string& s = fuzz::scratch();
    g_data = s + "/data";
    g_ckpt = s + "/ckpt";
    g_out = s + "/out";
    setenv("PATH", "/nonexistent", 1);   // no gnuplot: the loss curve is skipped (a shell per run is enough)
    fuzz::setup("micro run", [&] {
        fuzz::micro_model(s + "/model", 64);
        fuzz::synthetic_data(g_data, 64, 400, 200);
        fuzz::cli(cmd_train, {"train", "--model", s + "/model", "--data", g_data, "--out", s + "/run", "--steps", "2",
                              "--seq-len", "8", "--batch-tokens", "16", "--eval-every", "1", "--eval-windows", "2",
                              "--save-every", "1", "--device", "cpu"});
        if (rename((s + "/run/step_000001").c_str(), g_ckpt.c_str()) != 0) die("no step-1 checkpoint in %s/run", s.c_str());
        fuzz::keep_seed(g_ckpt + "/trainer_state.json");
    });
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::write_bytes(g_ckpt + "/trainer_state.json", data, size);
    try {
        Model m;
        AdamW opt;
        checkpoint_read(g_ckpt, &m, &opt);
    } catch (const DeepseekError&) {
    }
    try {
        fuzz::cli(cmd_train, {"train", "--resume", g_ckpt, "--data", g_data, "--out", g_out, "--steps", "2", "--device", "cpu"});
    } catch (const DeepseekError&) {
    }
    return 0;
}
