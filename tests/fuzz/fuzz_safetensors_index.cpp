// libFuzzer target: a sharded model directory's model.safetensors.index.json (SafeTensors::open_dir). The directory
// holds, made once, two real shards (model-00001-of-00002.safetensors: a F32 [2,3], b BF16 [4];
// model-00002-of-00002.safetensors: c F16 [2], d F32 [1]), a truncated one (broken.safetensors), a subdirectory
// (sub) and a model.safetensors that the index must take precedence over; the input is the index. Any input must
// open (both memory-mapped and read into memory) or fail with a DeepseekError; what opens must hold every tensor the
// weight_map lists, and each one must read (read_f32) with its own shape.
#include "fuzz_util.h"

static std::string g_dir;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    g_dir = fuzz::scratch() + "/model";
    fuzz::setup("shards", [] {
        make_dirs(g_dir + "/sub");
        float a[6] = {1, 2, 3, 4, 5, 6}, d[1] = {7};
        uint16_t b[4] = {0x3f80, 0x4000, 0x4040, 0x4080}, c[2] = {0x3c00, 0x4000};
        safetensors_write(g_dir + "/model-00001-of-00002.safetensors",
                          {{"a", DType::F32, {2, 3}, a}, {"b", DType::BF16, {4}, b}}, false, {{"format", "pt"}});
        safetensors_write(g_dir + "/model-00002-of-00002.safetensors", {{"c", DType::F16, {2}, c}, {"d", DType::F32, {1}, d}});
        safetensors_write(g_dir + "/model.safetensors", {{"single", DType::F32, {1}, d}});
        std::string whole = read_file(g_dir + "/model-00001-of-00002.safetensors");
        fuzz::write_text(g_dir + "/broken.safetensors", whole.substr(0, whole.size() / 2));
    });
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz::write_bytes(g_dir + "/model.safetensors.index.json", data, size);
    for (bool ram : {false, true}) {
        try {
            SafeTensors st;
            st.open_dir(g_dir, ram);
            nlohmann::json j = nlohmann::json::parse(std::string((const char*)data, size));   // it parsed in open_dir
            for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it)
                if (!st.has(it.key())) fuzz::fail("'%s' is listed but missing", it.key().c_str());
            for (auto& kv : st.tensors) {
                std::vector<float> out(std::max<size_t>(1, kv.second.numel()));   // never data() == nullptr
                st.read_f32(kv.first, kv.second.shape, out.data());
            }
        } catch (const DeepseekError&) {
        }
    }
    return 0;
}
