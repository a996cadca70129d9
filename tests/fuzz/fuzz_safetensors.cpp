// libFuzzer target: a safetensors file (SafeTensors::open_file): the 8-byte header length, the JSON header, the
// data. Any input must open or fail with a DeepseekError. What opens must describe only bytes inside the file's data
// section (checked here, since an overread of a memory map within its last page is invisible to ASan), each tensor's
// byte count must match its shape and dtype, a second open of the same file must refuse the
// duplicate names, and every float tensor must read (read_f32) with its own shape.
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::string path = fuzz::scratch() + "/in.safetensors";
    fuzz::write_bytes(path, data, size);
    try {
        SafeTensors st;
        st.open_file(path);
        const uint8_t* base = (const uint8_t*)st.maps.at(0).first;
        size_t file_size = st.maps[0].second;
        uint64_t hlen = 0;
        for (int i = 0; i < 8; i++) hlen |= (uint64_t)base[i] << (8 * i);
        for (auto& kv : st.tensors) {
            const TensorInfo& t = kv.second;
            if (t.data < base + 8 + hlen || t.data + t.nbytes > base + file_size || t.nbytes != t.numel() * dtype_size(t.dtype)) {
                fuzz::fail("tensor '%s' (%zu bytes at offset %td) lies outside the data or disagrees with its shape",
                           kv.first.c_str(), t.nbytes, t.data - base);
            }
            if (t.dtype == DType::F32 || t.dtype == DType::BF16 || t.dtype == DType::F16) {
                std::vector<float> out(std::max<size_t>(1, t.numel()));   // never data() == nullptr (memcpy)
                st.read_f32(kv.first, t.shape, out.data());
            }
        }
        size_t n = st.tensors.size();
        bool again = true;
        try { st.open_file(path); } catch (const DeepseekError&) { again = false; }
        if (n > 0 && again) fuzz::fail("the same %zu tensors opened twice without an error", n);
    } catch (const DeepseekError&) {
    }
    return 0;
}
