// libFuzzer target: a token shard (shard_open): the 256 × int32 header (magic, version, vocabulary size, token
// count) and the uint32 tokens. Any input must open or fail with a DeepseekError, with no vocabulary cap and with a
// model's (64). What opens holds exactly the tokens the file has, all below its vocabulary, and the data loader
// reads it: windows of 4+1 tokens, 2 per batch, shuffled, for a few batches across an epoch boundary (when it has
// enough windows). The shard is memory-mapped, where ASan sees no overread; so a refusal that names a token the file
// does not hold ("token I has id …" with I at or past the file's end) is a finding too: the validation read past it.
#include "fuzz_util.h"
#include <cstdlib>   // strtoull

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::string path = fuzz::scratch() + "/in.bin";
    fuzz::write_bytes(path, data, size);
    for (int max_vocab : {0, 64}) {
        try {
            Shard s;
            shard_open(&s, path, max_vocab);
            if (size < 1024 || s.n != (size - 1024) / 4 || size % 4 != 0) {
                fuzz::fail("opened %zu tokens from a file of %zu bytes", s.n, size);
            }
            for (size_t i = 0; i < s.n; i++)
                if (s.tokens[i] >= (uint32_t)s.vocab_size) fuzz::fail("token %zu is out of the vocabulary", i);
            if (max_vocab > 0 && s.vocab_size > max_vocab) fuzz::fail("the vocabulary cap was ignored");
        } catch (const DeepseekError& e) {
            size_t at = e.msg.find(": token ");
            if (at != std::string::npos) {
                unsigned long long i = strtoull(e.msg.c_str() + at + 8, nullptr, 10);
                if (size < 1024 || i >= (size - 1024) / 4) {
                    fuzz::fail("shard_open read token %llu of a file that holds %zu: %s", i,
                               size < 1024 ? 0 : (size - 1024) / 4, e.msg.c_str());
                }
            }
        }
    }
    try {
        DataLoader d;
        loader_init(&d, path, 2, 4, 0, 1, 7, 0, true);
        int in[8], tg[8];
        for (int k = 0; k < 6; k++) {
            loader_next(&d, in, tg);
            for (int i = 0; i < 8; i++)
                if (in[i] < 0 || in[i] >= d.shard.vocab_size || tg[i] < 0 || tg[i] >= d.shard.vocab_size) {
                    fuzz::fail("the loader gave a token outside the vocabulary");
                }
        }
    } catch (const DeepseekError&) {
    }
    return 0;
}
