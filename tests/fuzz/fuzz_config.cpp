// libFuzzer target: config.json (config_read_json). Any input must load or fail with a DeepseekError. A config that
// loads is valid (config_validate), its parameter count and FLOPs per token compute, and it round-trips:
// config_write_json then config_read_json give the same Config back.
#include "fuzz_util.h"

static bool same(const Config& a, const Config& b) {
    return a.vocab_size == b.vocab_size && a.hidden_size == b.hidden_size && a.num_hidden_layers == b.num_hidden_layers &&
           a.num_attention_heads == b.num_attention_heads && a.num_key_value_heads == b.num_key_value_heads &&
           a.head_dim == b.head_dim && a.intermediate_size == b.intermediate_size &&
           a.max_position_embeddings == b.max_position_embeddings && a.rms_norm_eps == b.rms_norm_eps &&
           a.rope_theta == b.rope_theta && a.bos_token_id == b.bos_token_id && a.eos_token_id == b.eos_token_id &&
           a.torch_dtype == b.torch_dtype;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::string path = fuzz::scratch() + "/config.json", again = fuzz::scratch() + "/config_again.json";
    fuzz::write_bytes(path, data, size);
    Config c;
    try {
        c = config_read_json(path);
    } catch (const DeepseekError&) {
        return 0;
    }
    config_validate(c, "fuzz");   // throws (a finding: the reader let it through) if it is not valid
    config_num_parameters(c);
    config_flops_per_token(c, c.max_position_embeddings);
    config_write_json(c, again);
    Config back = config_read_json(again);
    if (!same(c, back)) fuzz::fail("config.json does not round-trip");
    return 0;
}
