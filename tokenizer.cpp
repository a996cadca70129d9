// tokenizer.cpp — byte-level BPE, the DeepSeek LLM tokenizer, interoperable with Hugging Face tokenizers.
//
// What it is: tokenizer.json read and write (the parts byte-level BPE tokenizers use), encoding that gives
// the ids Hugging Face tokenizers gives (added tokens split out of the raw text, the Split/Digits/ByteLevel
// pre-tokenizer run by Oniguruma — the regex engine tokenizers itself uses —, BPE by merge rank with a
// cache of pre-token results), lossless decoding to bytes, BpeTrainer-compatible training, and the import
// of the released vocabulary from GGUF. What it is not: a general tokenizers clone — no normalizers, no
// WordPiece/Unigram, no offsets; an unsupported component is a clear error naming it.
//
// Text is bytes. Valid UTF-8 stretches go through the Hugging Face pipeline; a run of bytes that is not
// valid UTF-8 (which Hugging Face cannot even take) becomes one pre-token of its own, so any byte string
// encodes and decodes back to itself as long as the vocabulary has all 256 byte symbols (ours always do).
#include "deepseek.h"
#include <oniguruma.h>          // onig_new, onig_search, OnigRegion: the Split patterns
#include <nlohmann/json.hpp>    // nlohmann::json, ordered_json: tokenizer.json
#include <algorithm>            // std::sort, std::min
#include <atomic>               // std::atomic (tokenizer serial numbers, for the per-thread caches)
#include <chrono>               // steady_clock (bench)
#include <cstdio>               // fprintf, fread, fwrite
#include <cerrno>               // errno
#include <cstring>              // memcpy, strcmp, strerror
#include <sys/stat.h>           // stat (--input: a file or a stream)
#include <memory>               // std::unique_ptr
#include <mutex>                // std::call_once
#include <queue>                // std::priority_queue
#include <unordered_map>        // std::unordered_map
#include <unordered_set>        // std::unordered_set
#ifdef _OPENMP
#include <omp.h>                // omp_get_thread_num (parallel pre-tokenization in training)
#else
static int omp_get_max_threads() { return 1; }
static int omp_get_thread_num() { return 0; }
#endif

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

// ----------------------------------------------------------------------------
// DeepSeek LLM's pre-tokenizer (the paper, section 2.1 Tokenizer): five Split patterns, each Isolated, then
// Digits(individual) and ByteLevel(use_regex=false). The strings are data/vocab/deepseek-llm-pretokenizer.json
// spelled with \u escapes, never retyped (several code points are not NFC and an editor would change them);
// a test compares them with that file.

static const char* const DEEPSEEK_SPLIT_PATTERNS[] = {
    u8"[\r\n]",
    u8"\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
    u8"\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    u8"\\s+$",
    u8"[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
};
static const char* const DEEPSEEK_BOS = u8"<\uff5cbegin\u2581of\u2581sentence\uff5c>";
static const char* const DEEPSEEK_EOS = u8"<\uff5cend\u2581of\u2581sentence\uff5c>";
// GPT-2's pattern, what ByteLevel(use_regex=true) splits with
static const char* const GPT2_PATTERN =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// ----------------------------------------------------------------------------
// UTF-8 and the byte-level alphabet
//
// GPT-2's byte→unicode map: the 188 printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves,
// the other 68 map in byte order to U+0100, U+0101, … so every byte is one visible character.

static void utf8_append(std::string& s, uint32_t cp) {
    if (cp < 0x80) s += (char)cp;
    else if (cp < 0x800) { s += (char)(0xC0 | cp >> 6); s += (char)(0x80 | (cp & 63)); }
    else if (cp < 0x10000) { s += (char)(0xE0 | cp >> 12); s += (char)(0x80 | (cp >> 6 & 63)); s += (char)(0x80 | (cp & 63)); }
    else { s += (char)(0xF0 | cp >> 18); s += (char)(0x80 | (cp >> 12 & 63)); s += (char)(0x80 | (cp >> 6 & 63)); s += (char)(0x80 | (cp & 63)); }
}
// Length of the valid UTF-8 sequence at s[i..n), or 0 if the bytes there are not one (overlongs,
// surrogates and code points above U+10FFFF are invalid, as in Rust's str).
static int utf8_valid_len(const unsigned char* s, size_t i, size_t n, uint32_t* cp_out = nullptr) {
    unsigned c = s[i];
    if (c < 0x80) { if (cp_out) *cp_out = c; return 1; }
    int len; uint32_t cp, min;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; min = 0x10000; }
    else return 0;
    if (i + len > n) return 0;
    for (int k = 1; k < len; k++) {
        unsigned d = s[i + k];
        if ((d & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (d & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    if (cp_out) *cp_out = cp;
    return len;
}
static bool utf8_valid(const std::string& s) {
    const unsigned char* p = (const unsigned char*)s.data();
    for (size_t i = 0; i < s.size();) { int l = utf8_valid_len(p, i, s.size()); if (!l) return false; i += l; }
    return true;
}

struct ByteLevelAlphabet {
    uint32_t byte_to_cp[256];
    std::string byte_to_str[256];      // UTF-8 of the character standing for each byte
    std::unordered_map<uint32_t, uint8_t> cp_to_byte;
    ByteLevelAlphabet() {
        int n = 0;
        for (int b = 0; b < 256; b++) {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            byte_to_cp[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
            utf8_append(byte_to_str[b], byte_to_cp[b]);
            cp_to_byte[byte_to_cp[b]] = (uint8_t)b;
        }
    }
};
static const ByteLevelAlphabet& bytelevel() { static ByteLevelAlphabet a; return a; }

// raw bytes → the byte-level string (as tokenizer.json spells tokens)
static std::string bytes_to_bytelevel(const std::string& raw) {
    const ByteLevelAlphabet& a = bytelevel();
    std::string s;
    s.reserve(raw.size() * 2);
    for (unsigned char c : raw) s += a.byte_to_str[c];
    return s;
}
// byte-level string → raw bytes; false if a character is not in the alphabet (or not UTF-8)
static bool bytelevel_to_bytes(const std::string& s, std::string* raw) {
    const ByteLevelAlphabet& a = bytelevel();
    raw->clear();
    const unsigned char* p = (const unsigned char*)s.data();
    for (size_t i = 0; i < s.size();) {
        uint32_t cp;
        int l = utf8_valid_len(p, i, s.size(), &cp);
        if (!l) return false;
        auto it = a.cp_to_byte.find(cp);
        if (it == a.cp_to_byte.end()) return false;
        *raw += (char)it->second;
        i += l;
    }
    return true;
}

// ----------------------------------------------------------------------------
// hashing: a flat open-addressing map from a merge pair (id,id) to (rank, new id), and a string hash
// for the pre-token cache. These two lookups are the whole cost of BPE, so they avoid std::unordered_map.

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return x;
}
static inline uint64_t hash_bytes(const char* p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0x100000001B3ULL);
    while (n >= 8) { uint64_t w; memcpy(&w, p, 8); h = (h ^ mix64(w)) * 0x100000001B3ULL; p += 8; n -= 8; }
    uint64_t w = 0;
    memcpy(&w, p, n);
    return mix64(h ^ w ^ (n << 56));
}

struct PairMap {
    static constexpr uint64_t EMPTY = ~0ULL;
    std::vector<uint64_t> keys;     // (left << 32) | right
    std::vector<uint64_t> vals;     // (rank << 32) | new_id
    uint64_t mask = 0;
    size_t count = 0;
    void reserve(size_t n) {
        size_t cap = 16;
        while (cap < n * 2) cap <<= 1;
        keys.assign(cap, EMPTY); vals.assign(cap, 0); mask = cap - 1; count = 0;
    }
    static uint64_t key(uint32_t a, uint32_t b) { return (uint64_t)a << 32 | b; }
    // inserts or overwrites
    void put(uint32_t a, uint32_t b, uint32_t rank, uint32_t new_id) {
        uint64_t k = key(a, b);
        for (uint64_t i = mix64(k) & mask;; i = (i + 1) & mask) {
            if (keys[i] == EMPTY) { keys[i] = k; vals[i] = (uint64_t)rank << 32 | new_id; count++; return; }
            if (keys[i] == k) { vals[i] = (uint64_t)rank << 32 | new_id; return; }
        }
    }
    bool get(uint32_t a, uint32_t b, uint32_t* rank, uint32_t* new_id) const {
        if (keys.empty()) return false;
        uint64_t k = key(a, b);
        for (uint64_t i = mix64(k) & mask;; i = (i + 1) & mask) {
            if (keys[i] == k) { *rank = (uint32_t)(vals[i] >> 32); *new_id = (uint32_t)vals[i]; return true; }
            if (keys[i] == EMPTY) return false;
        }
    }
};

// ----------------------------------------------------------------------------
// Oniguruma: the Split patterns are compiled as tokenizers compiles them (onig crate: UTF-8 encoding,
// ONIG_OPTION_NONE, the default Oniguruma syntax), and matches are iterated the way its find_iter does.

static void onig_init_once() {
    static std::once_flag once;
    std::call_once(once, [] {
        OnigEncoding encs[1] = {ONIG_ENCODING_UTF8};
        onig_initialize(encs, 1);
    });
}
static OnigRegex regex_compile(const std::string& pattern, const std::string& where) {
    onig_init_once();
    if (!utf8_valid(pattern)) die("%s: the regex pattern is not valid UTF-8", where.c_str());
    OnigRegex re = nullptr;
    OnigErrorInfo einfo;
    const OnigUChar* p = (const OnigUChar*)pattern.data();
    int r = onig_new(&re, p, p + pattern.size(), ONIG_OPTION_NONE, ONIG_ENCODING_UTF8, ONIG_SYNTAX_DEFAULT, &einfo);
    if (r != ONIG_NORMAL) {
        OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
        onig_error_code_to_str(msg, r, &einfo);
        die("%s: bad regex pattern: %s", where.c_str(), (const char*)msg);
    }
    return re;
}
// One region per thread: onig_search is reentrant for a shared regex_t.
static OnigRegion* thread_region() {
    struct Holder { OnigRegion* r = onig_region_new(); ~Holder() { onig_region_free(r, 1); } };
    thread_local Holder h;
    return h.r;
}
// Matches of `re` in s[0..n) as spans covering the whole piece: (start, end, is_match), in order.
struct Span { size_t start, end; bool match; };
static void regex_spans(OnigRegex re, const char* s, size_t n, std::vector<Span>& out) {
    out.clear();
    OnigRegion* region = thread_region();
    const OnigUChar* str = (const OnigUChar*)s;
    size_t prev = 0, last_end = 0, last_match_end = 0;
    bool have_last = false;
    while (last_end <= n) {
        onig_region_clear(region);
        int r = onig_search(re, str, str + n, str + last_end, str + n, region, ONIG_OPTION_NONE);
        if (r < 0) break;   // ONIG_MISMATCH, or an error such as a retry limit: no more matches
        size_t ms = (size_t)region->beg[0], me = (size_t)region->end[0];
        if (ms == me && have_last && last_match_end == me) {   // no empty match right after the last one
            int l = last_end < n ? utf8_valid_len((const unsigned char*)s, last_end, n) : 1;
            last_end += l ? l : 1;
            continue;
        }
        last_end = me; last_match_end = me; have_last = true;
        if (prev != ms) out.push_back({prev, ms, false});
        out.push_back({ms, me, true});
        prev = me;
    }
    if (prev != n) out.push_back({prev, n, false});
}
// Rust's char::is_numeric: general categories Nd, Nl, No (what Digits splits on)
static bool is_numeric_cp(uint32_t cp) {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    static OnigCtype ctype_n = [] {
        onig_init_once();
        const OnigUChar name[] = "N";
        return (OnigCtype)ONIGENC_PROPERTY_NAME_TO_CTYPE(ONIG_ENCODING_UTF8, (OnigUChar*)name, (OnigUChar*)name + 1);
    }();
    return ONIGENC_IS_CODE_CTYPE(ONIG_ENCODING_UTF8, cp, ctype_n);
}
static bool is_whitespace_cp(uint32_t cp) {   // Rust's char::is_whitespace (White_Space property)
    return (cp >= 9 && cp <= 13) || cp == 32 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}
static bool is_word_cp(uint32_t cp) {   // \w: alphanumeric or connector punctuation
    if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
    onig_init_once();
    return ONIGENC_IS_CODE_CTYPE(ONIG_ENCODING_UTF8, cp, ONIGENC_CTYPE_WORD);
}

// ----------------------------------------------------------------------------
// the tokenizer

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
static const char* behavior_name(Behavior b) {
    switch (b) {
        case Behavior::Removed: return "Removed";
        case Behavior::Isolated: return "Isolated";
        case Behavior::MergedWithPrevious: return "MergedWithPrevious";
        case Behavior::MergedWithNext: return "MergedWithNext";
        case Behavior::Contiguous: return "Contiguous";
    }
    return "?";
}

// One pre-tokenizer step. ByteLevel, if present, is the last one (after it pieces are byte-level strings,
// which this implementation never materialises: BPE starts from the piece's raw bytes).
struct PreStep {
    enum Kind { SPLIT, DIGITS, BYTELEVEL } kind = SPLIT;
    std::string pattern;             // Split: as in tokenizer.json
    bool pattern_is_regex = true;    // Split: {"Regex": …} or {"String": …}
    Behavior behavior = Behavior::Isolated;
    bool invert = false;
    OnigRegex re = nullptr;          // Split: compiled pattern; ByteLevel with use_regex: GPT-2's
    bool individual_digits = false;  // Digits
    bool add_prefix_space = false, trim_offsets = true, use_regex = false;  // ByteLevel
};

struct AddedToken {
    int id = -1;
    std::string content;
    bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

// A byte trie of added-token contents, matched leftmost-longest like the aho-corasick automaton in tokenizers.
struct Trie {
    std::vector<int> terminal;                       // node → index into Tokenizer::added, or -1
    std::unordered_map<uint64_t, int> edges;         // (node << 8 | byte) → child
    bool first[256] = {};                            // bytes that can start a match
    Trie() { terminal.push_back(-1); }
    void insert(const std::string& s, int token_index) {
        if (s.empty()) return;
        int node = 0;
        first[(unsigned char)s[0]] = true;
        for (unsigned char c : s) {
            uint64_t k = (uint64_t)node << 8 | c;
            auto it = edges.find(k);
            if (it == edges.end()) { edges[k] = (int)terminal.size(); node = (int)terminal.size(); terminal.push_back(-1); }
            else node = it->second;
        }
        if (terminal[node] < 0) terminal[node] = token_index;
    }
    bool empty() const { return terminal.size() == 1; }
    // longest match starting at s[i]: its length, or 0; *index the added-token index
    size_t longest(const char* s, size_t i, size_t n, int* index) const {
        if (!first[(unsigned char)s[i]]) return 0;
        int node = 0; size_t best = 0;
        for (size_t j = i; j < n; j++) {
            auto it = edges.find((uint64_t)node << 8 | (unsigned char)s[j]);
            if (it == edges.end()) break;
            node = it->second;
            if (terminal[node] >= 0) { best = j + 1 - i; *index = terminal[node]; }
        }
        return best;
    }
};

static std::atomic<uint64_t> g_tokenizer_serial{1};

struct Tokenizer {
    uint64_t serial = 0;                 // identifies this tokenizer to the per-thread caches
    // the BPE model
    std::vector<std::string> id_str;     // id → its string in tokenizer.json ("" for a hole)
    std::vector<std::string> id_bytes;   // id → the raw bytes it decodes to
    std::vector<uint8_t> id_used;        // id → 1 if a token has it
    std::unordered_map<std::string, int> vocab;        // model vocab: tokenizer.json string → id
    std::unordered_map<std::string, int> vocab_by_bytes;  // model vocab: raw bytes → id (ignore_merges)
    std::vector<std::pair<int, int>> merges;           // by rank
    PairMap merge_map;                   // (left, right) → (rank, merged id)
    int byte_id[256];                    // the id of each byte's symbol, -1 if none
    int unk_id = -1;
    bool fuse_unk = false, ignore_merges = false;
    // added tokens, matched in raw text before anything else
    std::vector<AddedToken> added;
    std::unordered_map<std::string, int> added_by_content;
    Trie trie_raw, trie_normalized;      // normalized=false ones first, then normalized=true ones
    // the pipeline
    std::vector<PreStep> pre;
    std::vector<int> post_prefix, post_suffix;   // the post-processor's single template around $A
    struct PostToken { int id; std::string token, where; };
    std::vector<PostToken> post_tokens;          // (while loading) the template's ids with the strings it gives them
    bool has_template = false;
    int bos = -1, eos = -1;
    int vocab_size = 0;
    int id_limit = 1 << 24;              // ids are dense in practice; a wild id is an error, not a huge allocation
    Tokenizer() { for (int& b : byte_id) b = -1; serial = g_tokenizer_serial++; }
    ~Tokenizer() { for (PreStep& s : pre) if (s.re) onig_free(s.re); }
    Tokenizer(const Tokenizer&) = delete;
    Tokenizer& operator=(const Tokenizer&) = delete;
};

// ----------------------------------------------------------------------------
// building a tokenizer from its parts (used by the loader, the GGUF import and the trainer)

static void tok_set_id(Tokenizer* t, int id, const std::string& str, const std::string& bytes) {
    if ((size_t)id >= t->id_str.size()) {
        t->id_str.resize(id + 1); t->id_bytes.resize(id + 1); t->id_used.resize(id + 1, 0);
    }
    t->id_str[id] = str; t->id_bytes[id] = bytes; t->id_used[id] = 1;
}

// Model vocab entry. Its bytes are the byte-level decoding of the string; a string with characters outside
// the byte alphabet decodes to its own UTF-8, as the ByteLevel decoder does.
static void tok_add_vocab(Tokenizer* t, const std::string& str, int id, const std::string& where) {
    if (id < 0 || id >= t->id_limit) die("%s: token id %d out of range [0, %d)", where.c_str(), id, t->id_limit);
    if (!t->vocab.emplace(str, id).second) die("%s: token appears twice in the vocab", where.c_str());
    if (id < (int)t->id_used.size() && t->id_used[id]) die("%s: id %d given to two tokens", where.c_str(), id);
    std::string raw;
    if (!bytelevel_to_bytes(str, &raw)) raw = str;
    tok_set_id(t, id, str, raw);
    t->vocab_by_bytes.emplace(raw, id);
}

static void tok_add_merge(Tokenizer* t, const std::string& a, const std::string& b, const std::string& where) {
    auto ia = t->vocab.find(a), ib = t->vocab.find(b), ic = t->vocab.find(a + b);
    if (ia == t->vocab.end() || ib == t->vocab.end())
        die("%s: merge \"%s %s\" has a part that is not in the vocab", where.c_str(), a.c_str(), b.c_str());
    if (ic == t->vocab.end())
        die("%s: merge \"%s %s\" makes a token that is not in the vocab", where.c_str(), a.c_str(), b.c_str());
    t->merges.push_back({ia->second, ib->second});
    // a repeated pair takes its last rank, as tokenizers' BPE builder does (it collects into a map)
    t->merge_map.put(ia->second, ib->second, (uint32_t)t->merges.size() - 1, ic->second);
}

static void tok_add_added(Tokenizer* t, AddedToken a, const std::string& where) {
    if (a.id < 0 || a.id >= t->id_limit) die("%s: added token id %d out of range [0, %d)", where.c_str(), a.id, t->id_limit);
    if (a.content.empty()) die("%s: added token %d has empty content", where.c_str(), a.id);
    if (t->added_by_content.count(a.content)) die("%s: added token \"%s\" appears twice", where.c_str(), a.content.c_str());
    auto v = t->vocab.find(a.content);
    if (v != t->vocab.end() && v->second != a.id)
        die("%s: added token \"%s\" has id %d but the vocab says %d", where.c_str(), a.content.c_str(), a.id, v->second);
    if (v == t->vocab.end()) {
        if (a.id < (int)t->id_used.size() && t->id_used[a.id])
            die("%s: added token \"%s\" reuses id %d", where.c_str(), a.content.c_str(), a.id);
        // An added token decodes to its content, so that text containing it round-trips (DeepSeek's
        // ids 100002–100014 are letters such as "ü" that match in raw text).
        tok_set_id(t, a.id, a.content, a.content);
    }
    int index = (int)t->added.size();
    t->added_by_content[a.content] = a.id;
    (a.normalized ? t->trie_normalized : t->trie_raw).insert(a.content, index);
    t->added.push_back(a);
}

// After vocab, merges and added tokens are in: the byte symbols, the size, BOS/EOS.
static void tok_finish(Tokenizer* t) {
    const ByteLevelAlphabet& a = bytelevel();
    for (int b = 0; b < 256; b++) {
        auto it = t->vocab.find(a.byte_to_str[b]);
        if (it != t->vocab.end()) t->byte_id[b] = it->second;
        else {
            // a byte the model lacks: HF drops it (or gives unk); we use an added token with that symbol
            // as content if there is one (DeepSeek's 13 bytes that never occur in UTF-8), else unk, else drop
            auto ad = t->added_by_content.find(a.byte_to_str[b]);
            t->byte_id[b] = ad != t->added_by_content.end() ? ad->second : t->unk_id;
        }
    }
    t->vocab_size = (int)t->id_str.size();
    if (t->bos < 0 && !t->post_prefix.empty()) t->bos = t->post_prefix[0];
    static const char* bos_names[] = {DEEPSEEK_BOS, "<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"};
    static const char* eos_names[] = {DEEPSEEK_EOS, "</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"};
    for (const char* s : bos_names) if (t->bos < 0 && t->added_by_content.count(s)) t->bos = t->added_by_content[s];
    for (const char* s : eos_names) if (t->eos < 0 && t->added_by_content.count(s)) t->eos = t->added_by_content[s];
}

static void deepseek_pretokenizer(Tokenizer* t) {
    for (const char* p : DEEPSEEK_SPLIT_PATTERNS) {
        PreStep s;
        s.kind = PreStep::SPLIT; s.pattern = p; s.behavior = Behavior::Isolated;
        s.re = regex_compile(s.pattern, "DeepSeek pre-tokenizer");
        t->pre.push_back(s);
    }
    PreStep d; d.kind = PreStep::DIGITS; d.individual_digits = true; t->pre.push_back(d);
    PreStep b; b.kind = PreStep::BYTELEVEL; b.add_prefix_space = false; b.trim_offsets = true; b.use_regex = false;
    t->pre.push_back(b);
}

// ----------------------------------------------------------------------------
// tokenizer.json: reading

// small checked accessors: any shape error is one clear line naming the field
static const json& jget(const json& o, const char* key, const std::string& where) {
    if (!o.is_object()) die("%s: expected an object", where.c_str());
    auto it = o.find(key);
    if (it == o.end()) die("%s: missing \"%s\"", where.c_str(), key);
    return *it;
}
static std::string jstr(const json& v, const std::string& where) {
    if (!v.is_string()) die("%s: expected a string", where.c_str());
    return v.get<std::string>();
}
static bool jbool(const json& o, const char* key, bool dflt, const std::string& where) {
    if (!o.is_object()) die("%s: expected an object", where.c_str());
    auto it = o.find(key);
    if (it == o.end() || it->is_null()) return dflt;
    if (!it->is_boolean()) die("%s: \"%s\" must be true or false", where.c_str(), key);
    return it->get<bool>();
}
static long long jint(const json& v, const std::string& where) {
    if (!v.is_number_integer()) die("%s: expected an integer", where.c_str());
    long long x = v.is_number_unsigned() ? (long long)std::min<uint64_t>(v.get<uint64_t>(), (1ULL << 62)) : v.get<long long>();
    return x;
}
static std::string jtype(const json& o, const std::string& where) {
    return jstr(jget(o, "type", where), where + ".type");
}

static void load_pre_step(Tokenizer* t, const json& p, const std::string& where) {
    std::string type = jtype(p, where);
    PreStep s;
    if (type == "Sequence") {
        const json& list = jget(p, "pretokenizers", where);
        if (!list.is_array()) die("%s.pretokenizers: expected a list", where.c_str());
        for (size_t i = 0; i < list.size(); i++) load_pre_step(t, list[i], where + ".pretokenizers[" + std::to_string(i) + "]");
        return;
    }
    if (!t->pre.empty() && t->pre.back().kind == PreStep::BYTELEVEL)
        die("%s: a %s after ByteLevel is not supported (ByteLevel must come last)", where.c_str(), type.c_str());
    if (type == "Split") {
        s.kind = PreStep::SPLIT;
        const json& pat = jget(p, "pattern", where);
        if (pat.is_object() && pat.contains("Regex")) { s.pattern = jstr(pat["Regex"], where + ".pattern.Regex"); s.pattern_is_regex = true; }
        else if (pat.is_object() && pat.contains("String")) { s.pattern = jstr(pat["String"], where + ".pattern.String"); s.pattern_is_regex = false; }
        else die("%s.pattern: expected {\"Regex\": …} or {\"String\": …}", where.c_str());
        std::string b = jstr(jget(p, "behavior", where), where + ".behavior");
        if (b == "Removed") s.behavior = Behavior::Removed;
        else if (b == "Isolated") s.behavior = Behavior::Isolated;
        else if (b == "MergedWithPrevious") s.behavior = Behavior::MergedWithPrevious;
        else if (b == "MergedWithNext") s.behavior = Behavior::MergedWithNext;
        else if (b == "Contiguous") s.behavior = Behavior::Contiguous;
        else die("%s.behavior: unknown split behavior \"%s\"", where.c_str(), b.c_str());
        s.invert = jbool(p, "invert", false, where);
        std::string rx = s.pattern;
        if (!s.pattern_is_regex) {   // a literal: escape every ASCII punctuation character, as regex::escape does
            rx.clear();
            for (char c : s.pattern) {
                if (strchr("\\.+*?()|[]{}^$#&-~", c) && c) rx += '\\';
                rx += c;
            }
        }
        s.re = regex_compile(rx, where + ".pattern");
    } else if (type == "Digits") {
        s.kind = PreStep::DIGITS;
        s.individual_digits = jbool(p, "individual_digits", false, where);
    } else if (type == "ByteLevel") {
        s.kind = PreStep::BYTELEVEL;
        s.add_prefix_space = jbool(p, "add_prefix_space", true, where);
        s.trim_offsets = jbool(p, "trim_offsets", true, where);
        s.use_regex = jbool(p, "use_regex", true, where);
        if (s.add_prefix_space) die("%s: ByteLevel add_prefix_space=true is not supported", where.c_str());
        if (s.use_regex) s.re = regex_compile(GPT2_PATTERN, where + " (GPT-2 pattern)");
    } else {
        die("%s: unsupported pre_tokenizer \"%s\" (supported: Sequence, Split, Digits, ByteLevel)", where.c_str(), type.c_str());
    }
    t->pre.push_back(s);
}

static void load_post_processor(Tokenizer* t, const json& p, const std::string& where) {
    if (p.is_null()) return;
    std::string type = jtype(p, where);
    if (type == "ByteLevel") return;     // only moves offsets
    if (type == "Sequence") {
        const json& list = jget(p, "processors", where);
        if (!list.is_array()) die("%s.processors: expected a list", where.c_str());
        for (size_t i = 0; i < list.size(); i++) load_post_processor(t, list[i], where + ".processors[" + std::to_string(i) + "]");
        return;
    }
    if (type != "TemplateProcessing")
        die("%s: unsupported post_processor \"%s\" (supported: TemplateProcessing, ByteLevel, Sequence)", where.c_str(), type.c_str());
    if (t->has_template) die("%s: more than one TemplateProcessing", where.c_str());
    t->has_template = true;
    const json& single = jget(p, "single", where);
    const json& specials = jget(p, "special_tokens", where);
    if (!single.is_array()) die("%s.single: expected a list", where.c_str());
    if (!specials.is_object()) die("%s.special_tokens: expected an object", where.c_str());
    bool seen_a = false;
    for (size_t i = 0; i < single.size(); i++) {
        std::string w = where + ".single[" + std::to_string(i) + "]";
        const json& item = single[i];
        if (item.is_object() && item.contains("Sequence")) {
            std::string id = jstr(jget(item["Sequence"], "id", w), w + ".Sequence.id");
            if (id != "A" || seen_a) die("%s: the single template must hold $A once", w.c_str());
            seen_a = true;
        } else if (item.is_object() && item.contains("SpecialToken")) {
            std::string name = jstr(jget(item["SpecialToken"], "id", w), w + ".SpecialToken.id");
            std::string sw = where + ".special_tokens." + name;
            const json& st = jget(specials, name.c_str(), where + ".special_tokens");
            const json& ids = jget(st, "ids", sw);
            if (!ids.is_array()) die("%s.ids: expected a list", sw.c_str());
            if (ids.empty()) die("%s.ids: the list is empty", sw.c_str());
            // tokens (the strings of the ids), when given, must match them one for one (checked at the end,
            // once the vocabulary and the added tokens are in)
            if (st.contains("tokens") && !st["tokens"].is_null()) {
                const json& toks = st["tokens"];
                if (!toks.is_array() || toks.size() != ids.size())
                    die("%s.tokens: expected a list of %zu strings, one per id", sw.c_str(), ids.size());
                for (size_t k = 0; k < toks.size(); k++) jstr(toks[k], sw + ".tokens[" + std::to_string(k) + "]");
            }
            for (size_t k = 0; k < ids.size(); k++) {
                long long id = jint(ids[k], sw + ".ids");
                if (id < 0 || id >= (1 << 30)) die("%s: special token id %lld out of range", sw.c_str(), id);
                (seen_a ? t->post_suffix : t->post_prefix).push_back((int)id);
                if (st.contains("tokens") && !st["tokens"].is_null())
                    t->post_tokens.push_back({(int)id, st["tokens"][k].get<std::string>(), sw});
            }
        } else {
            die("%s: expected {\"Sequence\": …} or {\"SpecialToken\": …}", w.c_str());
        }
    }
    if (!seen_a) die("%s.single: the template has no $A", where.c_str());
}

static Tokenizer* tokenizer_from_json(const json& j, const std::string& where) {
    std::unique_ptr<Tokenizer> t(new Tokenizer());
    if (!j.is_object()) die("%s: not a JSON object", where.c_str());
    if (j.contains("truncation") && !j["truncation"].is_null()) die("%s: truncation is not supported", where.c_str());
    // normalizer: none (an empty Sequence is none too)
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
        const json& n = j["normalizer"];
        std::string type = jtype(n, where + ".normalizer");
        if (!(type == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array() && n["normalizers"].empty()))
            die("%s: unsupported normalizer \"%s\" (only null)", where.c_str(), type.c_str());
    }
    // model
    const json& m = jget(j, "model", where);
    std::string mtype = m.is_object() && m.contains("type") ? jtype(m, where + ".model") : std::string("BPE");
    if (mtype != "BPE") die("%s: unsupported model \"%s\" (only BPE)", where.c_str(), mtype.c_str());
    std::string mw = where + ".model";
    if (m.contains("dropout") && !m["dropout"].is_null()) die("%s: BPE dropout is not supported", where.c_str());
    if (m.contains("continuing_subword_prefix") && !m["continuing_subword_prefix"].is_null() && m["continuing_subword_prefix"] != "")
        die("%s: BPE continuing_subword_prefix is not supported", where.c_str());
    if (m.contains("end_of_word_suffix") && !m["end_of_word_suffix"].is_null() && m["end_of_word_suffix"] != "")
        die("%s: BPE end_of_word_suffix is not supported", where.c_str());
    if (jbool(m, "byte_fallback", false, mw)) die("%s: BPE byte_fallback is not supported", where.c_str());
    t->fuse_unk = jbool(m, "fuse_unk", false, mw);
    t->ignore_merges = jbool(m, "ignore_merges", false, mw);
    const json& vocab = jget(m, "vocab", mw);
    if (!vocab.is_object()) die("%s.vocab: expected an object", mw.c_str());
    // no model tokens: every text outside the added tokens would encode to nothing, silently
    if (vocab.empty()) die("%s.vocab: the vocabulary is empty (a BPE model needs at least its byte tokens)", mw.c_str());
    size_t n_added = j.contains("added_tokens") && j["added_tokens"].is_array() ? j["added_tokens"].size() : 0;
    t->id_limit = (int)std::min<size_t>(1 << 24, 2 * (vocab.size() + n_added) + 65536);
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
        long long id = jint(it.value(), mw + ".vocab[\"" + it.key() + "\"]");
        if (id < 0 || id >= (1 << 30)) die("%s.vocab: id %lld out of range", mw.c_str(), id);
        tok_add_vocab(t.get(), it.key(), (int)id, mw + ".vocab");
    }
    const json& merges = jget(m, "merges", mw);
    if (!merges.is_array()) die("%s.merges: expected a list", mw.c_str());
    t->merge_map.reserve(merges.size() + 1);
    t->merges.reserve(merges.size());
    for (size_t i = 0; i < merges.size(); i++) {
        const json& e = merges[i];
        std::string w = mw + ".merges[" + std::to_string(i) + "]";
        if (e.is_string()) {   // "a b"
            std::string s = e.get<std::string>();
            size_t sp = s.find(' ');
            if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) die("%s: expected \"a b\"", w.c_str());
            tok_add_merge(t.get(), s.substr(0, sp), s.substr(sp + 1), w);
        } else if (e.is_array() && e.size() == 2) {   // ["a", "b"]
            tok_add_merge(t.get(), jstr(e[0], w), jstr(e[1], w), w);
        } else {
            die("%s: expected \"a b\" or [\"a\", \"b\"]", w.c_str());
        }
    }
    if (m.contains("unk_token") && !m["unk_token"].is_null()) {
        std::string unk = jstr(m["unk_token"], mw + ".unk_token");
        auto it = t->vocab.find(unk);
        if (it == t->vocab.end()) die("%s.unk_token \"%s\" is not in the vocab", mw.c_str(), unk.c_str());
        t->unk_id = it->second;
    }
    // added tokens
    if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
        const json& list = j["added_tokens"];
        if (!list.is_array()) die("%s.added_tokens: expected a list", where.c_str());
        for (size_t i = 0; i < list.size(); i++) {
            std::string w = where + ".added_tokens[" + std::to_string(i) + "]";
            const json& e = list[i];
            AddedToken a;
            long long id = jint(jget(e, "id", w), w + ".id");
            if (id < 0 || id >= (1 << 30)) die("%s.id: %lld out of range", w.c_str(), id);
            a.id = (int)id;
            a.content = jstr(jget(e, "content", w), w + ".content");
            a.single_word = jbool(e, "single_word", false, w);
            a.lstrip = jbool(e, "lstrip", false, w);
            a.rstrip = jbool(e, "rstrip", false, w);
            a.special = jbool(e, "special", false, w);
            a.normalized = jbool(e, "normalized", !a.special, w);
            tok_add_added(t.get(), a, w);
        }
    }
    // pre-tokenizer, post-processor, decoder
    if (!j.contains("pre_tokenizer") || j["pre_tokenizer"].is_null())
        die("%s: pre_tokenizer is null; only byte-level BPE (a ByteLevel pre-tokenizer) is supported", where.c_str());
    load_pre_step(t.get(), j["pre_tokenizer"], where + ".pre_tokenizer");
    if (t->pre.empty() || t->pre.back().kind != PreStep::BYTELEVEL)
        die("%s.pre_tokenizer: no ByteLevel step; only byte-level BPE is supported", where.c_str());
    if (j.contains("post_processor")) load_post_processor(t.get(), j["post_processor"], where + ".post_processor");
    if (!j.contains("decoder") || j["decoder"].is_null()) die("%s: decoder is null; expected ByteLevel", where.c_str());
    std::string dtype = jtype(j["decoder"], where + ".decoder");
    if (dtype != "ByteLevel") die("%s: unsupported decoder \"%s\" (only ByteLevel)", where.c_str(), dtype.c_str());
    for (int id : t->post_prefix) if (id >= (int)t->id_used.size() || !t->id_used[id]) die("%s.post_processor: unknown id %d", where.c_str(), id);
    for (int id : t->post_suffix) if (id >= (int)t->id_used.size() || !t->id_used[id]) die("%s.post_processor: unknown id %d", where.c_str(), id);
    for (const auto& pt : t->post_tokens)
        if (t->id_str[pt.id] != pt.token)
            die("%s: special token id %d is \"%s\" in the vocabulary, but the template says \"%s\"", pt.where.c_str(), pt.id,
                t->id_str[pt.id].c_str(), pt.token.c_str());
    t->post_tokens.clear();
    tok_finish(t.get());
    return t.release();
}

// tokenizer.json text → a tokenizer (dies on anything malformed, naming the place)
static Tokenizer* tokenizer_parse(const std::string& text, const std::string& where) {
    json j;
    try {
        j = json::parse(text);
    } catch (const json::exception& e) {
        die("%s: not valid JSON: %s", where.c_str(), e.what());
    }
    try {
        return tokenizer_from_json(j, where);
    } catch (const json::exception& e) {
        die("%s: %s", where.c_str(), e.what());
    }
}

Tokenizer* tokenizer_load(const std::string& path) {
    return tokenizer_parse(read_file(path), path);
}
void tokenizer_free(Tokenizer* tok) { delete tok; }

// ----------------------------------------------------------------------------
// tokenizer.json: writing (the layout tokenizers 0.2x writes, vocab in id order, merges as pairs)

static ordered_json pre_step_json(const PreStep& s) {
    ordered_json o;
    if (s.kind == PreStep::SPLIT) {
        o["type"] = "Split";
        o["pattern"] = ordered_json::object({{s.pattern_is_regex ? "Regex" : "String", s.pattern}});
        o["behavior"] = behavior_name(s.behavior);
        o["invert"] = s.invert;
    } else if (s.kind == PreStep::DIGITS) {
        o["type"] = "Digits";
        o["individual_digits"] = s.individual_digits;
    } else {
        o["type"] = "ByteLevel";
        o["add_prefix_space"] = s.add_prefix_space;
        o["trim_offsets"] = s.trim_offsets;
        o["use_regex"] = s.use_regex;
    }
    return o;
}

static std::string tokenizer_to_json(const Tokenizer* t) {
    ordered_json j;
    j["version"] = "1.0";
    j["truncation"] = nullptr;
    j["padding"] = nullptr;
    ordered_json added = ordered_json::array();
    for (const AddedToken& a : t->added)
        added.push_back({{"id", a.id}, {"content", a.content}, {"single_word", a.single_word}, {"lstrip", a.lstrip},
                         {"rstrip", a.rstrip}, {"normalized", a.normalized}, {"special", a.special}});
    j["added_tokens"] = added;
    j["normalizer"] = nullptr;
    if (t->pre.size() == 1) j["pre_tokenizer"] = pre_step_json(t->pre[0]);
    else {
        ordered_json seq = ordered_json::array();
        for (const PreStep& s : t->pre) seq.push_back(pre_step_json(s));
        j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", seq}};
    }
    if (t->has_template) {
        auto special_item = [&](int id, int type_id) {
            return ordered_json{{"SpecialToken", {{"id", t->id_str[id]}, {"type_id", type_id}}}};
        };
        ordered_json single = ordered_json::array(), pair = ordered_json::array(), specials = ordered_json::object();
        for (int id : t->post_prefix) single.push_back(special_item(id, 0));
        single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
        for (int id : t->post_suffix) single.push_back(special_item(id, 0));
        for (int id : t->post_prefix) pair.push_back(special_item(id, 0));
        pair.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
        for (int id : t->post_suffix) pair.push_back(special_item(id, 0));
        for (int id : t->post_prefix) pair.push_back(special_item(id, 1));
        pair.push_back({{"Sequence", {{"id", "B"}, {"type_id", 1}}}});
        for (int id : t->post_suffix) pair.push_back(special_item(id, 1));
        for (int id : t->post_prefix) specials[t->id_str[id]] = {{"id", t->id_str[id]}, {"ids", {id}}, {"tokens", {t->id_str[id]}}};
        for (int id : t->post_suffix) specials[t->id_str[id]] = {{"id", t->id_str[id]}, {"ids", {id}}, {"tokens", {t->id_str[id]}}};
        j["post_processor"] = {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", specials}};
    } else {
        j["post_processor"] = nullptr;
    }
    j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
    // the model by hand: ordered_json inserts keys by linear search, far too slow for 100k entries
    auto q = [](const std::string& str) { return json(str).dump(); };
    std::string out;
    try {
        std::string head = j.dump(2);   // "{ … \"decoder\": {…}\n}"
        head.resize(head.size() - 2);   // drop the closing "\n}"
        out = head + ",\n  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": " +
              (t->unk_id >= 0 ? q(t->id_str[t->unk_id]) : std::string("null")) +
              ",\n    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n    \"fuse_unk\": " +
              (t->fuse_unk ? "true" : "false") + ",\n    \"byte_fallback\": false,\n    \"ignore_merges\": " +
              (t->ignore_merges ? "true" : "false") + ",\n    \"vocab\": {";
        std::vector<std::pair<int, const std::string*>> by_id;
        for (auto& kv : t->vocab) by_id.push_back({kv.second, &kv.first});
        std::sort(by_id.begin(), by_id.end());
        for (size_t i = 0; i < by_id.size(); i++)
            out += (i ? ",\n      " : "\n      ") + q(*by_id[i].second) + ": " + std::to_string(by_id[i].first);
        out += by_id.empty() ? "},\n    \"merges\": [" : "\n    },\n    \"merges\": [";
        for (size_t i = 0; i < t->merges.size(); i++)
            out += (i ? ",\n      [" : "\n      [") + q(t->id_str[t->merges[i].first]) + ", " + q(t->id_str[t->merges[i].second]) + "]";
        out += t->merges.empty() ? "]\n  }\n}\n" : "\n    ]\n  }\n}\n";
    } catch (const json::exception& e) {
        die("tokenizer.json: cannot write: %s", e.what());
    }
    return out;
}

// ----------------------------------------------------------------------------
// pre-tokenization: text → pieces (byte ranges of the text; there is no normalizer, so every piece is a slice)

struct Piece { size_t start, end; };

// Applies `spans` of one piece with the split behavior (tokenizers' NormalizedString::split), appending the
// resulting non-empty pieces (offset by base) to out.
static void apply_behavior(std::vector<Span>& spans, Behavior b, bool invert, size_t base, std::vector<Piece>& out) {
    if (invert) for (Span& s : spans) s.match = !s.match;
    if (b == Behavior::Isolated || b == Behavior::Removed) {
        for (const Span& s : spans)
            if (s.end > s.start && !(b == Behavior::Removed && s.match)) out.push_back({base + s.start, base + s.end});
        return;
    }
    thread_local std::vector<Span> acc;
    acc.clear();
    bool prev_match = false;
    if (b == Behavior::MergedWithPrevious) {          // a match joins the piece before it
        for (const Span& s : spans) {
            if (s.match && !prev_match && !acc.empty()) acc.back().end = s.end;
            else acc.push_back({s.start, s.end, false});
            prev_match = s.match;
        }
    } else if (b == Behavior::MergedWithNext) {       // a match joins the piece after it
        for (size_t k = spans.size(); k-- > 0;) {
            const Span& s = spans[k];
            if (s.match && !prev_match && !acc.empty()) acc.back().start = s.start;
            else acc.push_back({s.start, s.end, false});
            prev_match = s.match;
        }
        std::reverse(acc.begin(), acc.end());
    } else {                                          // Contiguous: runs of matches, runs of non-matches
        for (const Span& s : spans) {
            if (s.match == prev_match && !acc.empty()) acc.back().end = s.end;
            else acc.push_back({s.start, s.end, false});
            prev_match = s.match;
        }
    }
    for (const Span& s : acc) if (s.end > s.start) out.push_back({base + s.start, base + s.end});
}

// Whether a step splits at all (ByteLevel without its regex only maps bytes, which BPE does).
static bool step_splits(const PreStep& st) { return st.kind != PreStep::BYTELEVEL || st.use_regex; }

// One pre-tokenizer step on one piece s[0, n): its sub-pieces, offset by base, appended to out.
static void split_piece(const PreStep& st, const char* s, size_t n, size_t base, std::vector<Piece>& out) {
    thread_local std::vector<Span> spans;
    spans.clear();
    if (st.kind == PreStep::DIGITS) {
        // each numeric character is a match (tokenizers' char-predicate pattern)
        size_t last = 0;
        const unsigned char* u = (const unsigned char*)s;
        for (size_t i = 0; i < n;) {
            uint32_t cp = u[i];
            int l = 1;
            if (cp >= 0x80) { l = utf8_valid_len(u, i, n, &cp); if (!l) { l = 1; cp = 0xFFFD; } }
            if (is_numeric_cp(cp)) {
                if (last < i) spans.push_back({last, i, false});
                spans.push_back({i, i + l, true});
                last = i + l;
            }
            i += l;
        }
        if (last < n) spans.push_back({last, n, false});
        apply_behavior(spans, st.individual_digits ? Behavior::Isolated : Behavior::Contiguous, false, base, out);
    } else {
        regex_spans(st.re, s, n, spans);
        apply_behavior(spans, st.kind == PreStep::SPLIT ? st.behavior : Behavior::Isolated,
                       st.kind == PreStep::SPLIT && st.invert, base, out);
    }
}

// Runs all pre-tokenizer steps over text[start, end) (valid UTF-8), appending the pieces (training uses this;
// encoding goes piece by piece through encode_from, with its cache).
static void pre_tokenize(const Tokenizer* t, const std::string& text, size_t start, size_t end, std::vector<Piece>& out) {
    thread_local std::vector<Piece> cur, next;
    cur.clear();
    if (end > start) cur.push_back({start, end});
    for (const PreStep& st : t->pre) {
        if (!step_splits(st)) continue;
        next.clear();
        for (const Piece& p : cur) split_piece(st, text.data() + p.start, p.end - p.start, p.start, next);
        std::swap(cur, next);
    }
    out.insert(out.end(), cur.begin(), cur.end());
}

// ----------------------------------------------------------------------------
// BPE on one pre-token: start from its bytes' symbols, repeatedly merge the adjacent pair of lowest rank
// (leftmost on ties), as tokenizers' Word::merge_all does. Short words: a linear scan; long ones: a heap.

static void bpe_word(const Tokenizer* t, const unsigned char* bytes, size_t n, std::vector<int>& out) {
    if (t->ignore_merges) {
        auto it = t->vocab_by_bytes.find(std::string((const char*)bytes, n));
        if (it != t->vocab_by_bytes.end()) { out.push_back(it->second); return; }
    }
    thread_local std::vector<int> sym;
    sym.clear();
    for (size_t i = 0; i < n; i++) {
        int id = t->byte_id[bytes[i]];
        if (id < 0) continue;                                  // no symbol and no unk: dropped, as tokenizers does
        if (id == t->unk_id && t->fuse_unk && !sym.empty() && sym.back() == id) continue;
        sym.push_back(id);
    }
    size_t m = sym.size();
    const uint32_t NONE = ~0u;
    if (m >= 2 && m <= 256) {
        thread_local std::vector<uint32_t> rank, nid;
        rank.resize(m); nid.resize(m);
        for (size_t i = 0; i + 1 < m; i++) if (!t->merge_map.get(sym[i], sym[i + 1], &rank[i], &nid[i])) rank[i] = NONE;
        rank[m - 1] = NONE;
        while (m > 1) {
            size_t best = 0;
            for (size_t i = 1; i + 1 < m; i++) if (rank[i] < rank[best]) best = i;
            if (rank[best] == NONE) break;
            sym[best] = (int)nid[best];
            for (size_t i = best + 1; i + 1 < m; i++) { sym[i] = sym[i + 1]; rank[i] = rank[i + 1]; nid[i] = nid[i + 1]; }
            m--;
            rank[m - 1] = NONE;
            if (best + 1 < m && !t->merge_map.get(sym[best], sym[best + 1], &rank[best], &nid[best])) rank[best] = NONE;
            if (best + 1 >= m) rank[best] = NONE;
            if (best > 0 && !t->merge_map.get(sym[best - 1], sym[best], &rank[best - 1], &nid[best - 1])) rank[best - 1] = NONE;
        }
        out.insert(out.end(), sym.begin(), sym.begin() + m);
        return;
    }
    if (m < 2) { out.insert(out.end(), sym.begin(), sym.end()); return; }
    // heap over (rank, position) with a doubly linked list of symbols; stale entries are skipped
    std::vector<int> prev(m), next(m);
    std::vector<uint8_t> alive(m, 1);
    for (size_t i = 0; i < m; i++) { prev[i] = (int)i - 1; next[i] = i + 1 < m ? (int)i + 1 : -1; }
    typedef std::pair<uint64_t, uint32_t> Entry;   // ((rank << 32) | pos, new id) — min-heap
    std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
    auto push = [&](int i) {
        uint32_t r, id;
        if (i >= 0 && next[i] >= 0 && t->merge_map.get(sym[i], sym[next[i]], &r, &id)) heap.push({(uint64_t)r << 32 | (uint32_t)i, id});
    };
    for (size_t i = 0; i + 1 < m; i++) push((int)i);
    while (!heap.empty()) {
        Entry e = heap.top(); heap.pop();
        int i = (int)(uint32_t)e.first;
        if (!alive[i] || next[i] < 0) continue;
        uint32_t r, id;
        if (!t->merge_map.get(sym[i], sym[next[i]], &r, &id) || id != e.second || r != (uint32_t)(e.first >> 32)) continue;
        int j = next[i];
        sym[i] = (int)id;
        alive[j] = 0;
        next[i] = next[j];
        if (next[j] >= 0) prev[next[j]] = i;
        push(prev[i]);
        push(i);
    }
    for (int i = 0; i >= 0; i = next[i]) out.push_back(sym[i]);
}

// The per-thread cache: (pre-tokenizer step, piece) → ids. What the remaining steps and BPE make of a piece
// depends only on its bytes (each regex sees the piece alone), so a piece seen before at the same step is
// answered at once — most words skip the later regexes as well as BPE. A flat open-addressing table over
// an arena of keys and ids, per thread and tokenizer (tokenizer_encode keeps a few); bounded in size.
struct PieceCache {
    uint64_t serial = 0;
    std::vector<uint64_t> hashes;      // 0 = empty slot
    std::vector<uint32_t> key_off, key_len, ids_off, ids_len;
    std::string keys;                  // each key: the step as one byte, then the piece
    std::vector<int> ids;
    size_t used = 0;
    static constexpr size_t MAX_ENTRIES = 1 << 20;
    static constexpr size_t MAX_KEY = 256;
    void reset(uint64_t s) {
        serial = s; used = 0;
        size_t cap = 1 << 16;
        hashes.assign(cap, 0); key_off.assign(cap, 0); key_len.assign(cap, 0); ids_off.assign(cap, 0); ids_len.assign(cap, 0);
        keys.clear(); ids.clear();
        keys.shrink_to_fit(); ids.shrink_to_fit();
    }
    void grow() {
        std::vector<uint64_t> h2(hashes.size() * 2, 0);
        std::vector<uint32_t> ko(h2.size()), kl(h2.size()), io(h2.size()), il(h2.size());
        uint64_t mask = h2.size() - 1;
        for (size_t i = 0; i < hashes.size(); i++) {
            if (!hashes[i]) continue;
            size_t j = hashes[i] & mask;
            while (h2[j]) j = (j + 1) & mask;
            h2[j] = hashes[i]; ko[j] = key_off[i]; kl[j] = key_len[i]; io[j] = ids_off[i]; il[j] = ids_len[i];
        }
        hashes.swap(h2); key_off.swap(ko); key_len.swap(kl); ids_off.swap(io); ids_len.swap(il);
    }
    static uint64_t hash(size_t step, const char* p, size_t n) { return (hash_bytes(p, n) ^ mix64(step + 1)) | 1; }
    bool lookup(uint64_t h, size_t step, const char* p, size_t n, std::vector<int>& out) const {
        uint64_t mask = hashes.size() - 1;
        for (size_t i = h & mask; hashes[i]; i = (i + 1) & mask) {
            if (hashes[i] == h && key_len[i] == n + 1 && (unsigned char)keys[key_off[i]] == step &&
                memcmp(keys.data() + key_off[i] + 1, p, n) == 0) {
                const int* x = ids.data() + ids_off[i];
                out.insert(out.end(), x, x + ids_len[i]);
                return true;
            }
        }
        return false;
    }
    void insert(uint64_t h, size_t step, const char* p, size_t n, const int* x, size_t m) {
        if (used >= MAX_ENTRIES || keys.size() > (64u << 20) || ids.size() + m > (64u << 20)) reset(serial);   // full: start over (cheap, rare)
        else if ((used + 1) * 2 > hashes.size()) grow();
        uint64_t mask = hashes.size() - 1;
        size_t i = h & mask;
        while (hashes[i]) i = (i + 1) & mask;
        hashes[i] = h;
        key_off[i] = (uint32_t)keys.size(); key_len[i] = (uint32_t)(n + 1);
        ids_off[i] = (uint32_t)ids.size(); ids_len[i] = (uint32_t)m;
        keys += (char)step;
        keys.append(p, n);
        ids.insert(ids.end(), x, x + m);
        used++;
    }
};

// A piece at pre-tokenizer step `step` → ids: the remaining steps, then BPE, through the cache.
static void encode_from(const Tokenizer* t, PieceCache& c, const char* p, size_t n, size_t step, std::vector<int>& out) {
    size_t nsteps = t->pre.size();
    while (step < nsteps && !step_splits(t->pre[step])) step++;
    bool cacheable = step > 0 && n <= PieceCache::MAX_KEY && nsteps < 255;
    uint64_t h = 0;
    if (cacheable) {
        h = PieceCache::hash(step, p, n);
        if (c.lookup(h, step, p, n, out)) return;
    }
    size_t before = out.size();
    if (step == nsteps) {
        bpe_word(t, (const unsigned char*)p, n, out);
    } else {
        thread_local std::vector<std::vector<Piece>> subs;   // one buffer per step: the recursion goes deeper only
        if (subs.size() < nsteps) subs.resize(nsteps);
        std::vector<Piece>& sub = subs[step];
        sub.clear();
        split_piece(t->pre[step], p, n, 0, sub);
        for (size_t k = 0; k < sub.size(); k++) {
            Piece q = sub[k];   // (sub is not touched by the deeper calls)
            encode_from(t, c, p + q.start, q.end - q.start, step + 1, out);
        }
    }
    if (cacheable) c.insert(h, step, p, n, out.data() + before, out.size() - before);
}

// text[start, end) with no added tokens in it: valid UTF-8 stretches through the pre-tokenizer, runs of
// invalid bytes as their own pre-tokens.
static void encode_plain(const Tokenizer* t, PieceCache& c, const std::string& text, size_t start, size_t end, std::vector<int>& out) {
    const unsigned char* u = (const unsigned char*)text.data();
    size_t i = start;
    while (i < end) {
        size_t j = i;
        while (j < end) {   // the valid stretch
            if (u[j] < 0x80) { j++; continue; }
            int l = utf8_valid_len(u, j, end);
            if (!l) break;
            j += l;
        }
        if (j > i) encode_from(t, c, text.data() + i, j - i, 0, out);
        size_t k = j;
        while (k < end && u[k] >= 0x80 && !utf8_valid_len(u, k, end)) k++;   // the invalid run
        if (k > j) encode_from(t, c, text.data() + j, k - j, t->pre.size(), out);
        i = k;
    }
}

static bool char_before(const std::string& s, size_t lo, size_t pos, uint32_t* cp, size_t* at) {
    if (pos <= lo) return false;
    size_t k = pos - 1;
    while (k > lo && ((unsigned char)s[k] & 0xC0) == 0x80 && pos - k < 4) k--;
    int l = utf8_valid_len((const unsigned char*)s.data(), k, pos, cp);
    if (l != (int)(pos - k)) return false;
    *at = k;
    return true;
}

// Splits text[start, end) on the trie's added tokens (leftmost-longest, with single_word/lstrip/rstrip as
// tokenizers applies them); non-matching stretches go to `rest`.
template <class F>
static void split_added(const Tokenizer* t, const Trie& trie, const std::string& text, size_t start, size_t end,
                        std::vector<int>& out, F rest) {
    if (trie.empty()) { rest(start, end); return; }
    size_t emitted = start, i = start;
    const unsigned char* u = (const unsigned char*)text.data();
    while (i < end) {
        int index = -1;
        size_t len = trie.longest(text.data(), i, end, &index);
        if (!len) { i++; continue; }
        const AddedToken& a = t->added[index];
        size_t ms = i, me = i + len;
        if (a.single_word) {
            uint32_t cp; size_t at;
            bool word_before = char_before(text, start, ms, &cp, &at) && is_word_cp(cp);
            bool word_after = false;
            if (me < end) { int l = utf8_valid_len(u, me, end, &cp); word_after = l && is_word_cp(cp); }
            if (word_before || word_after) { i = me; continue; }   // the automaton moves past a rejected match
        }
        if (a.lstrip) {
            uint32_t cp; size_t at;
            while (ms > emitted && char_before(text, emitted, ms, &cp, &at) && is_whitespace_cp(cp)) ms = at;
        }
        if (a.rstrip) {
            uint32_t cp;
            while (me < end) { int l = utf8_valid_len(u, me, end, &cp); if (!l || !is_whitespace_cp(cp)) break; me += l; }
        }
        if (ms > emitted) rest(emitted, ms);
        out.push_back(a.id);
        emitted = i = me;
    }
    if (end > emitted) rest(emitted, end);
}

std::vector<int> tokenizer_encode(const Tokenizer* tok, const std::string& text, bool add_bos) {
    if (text.size() > 0x7FFFFFFFu) die("tokenizer: input of %zu bytes is too large to encode at once (limit 2 GiB)", text.size());
    // a few caches per thread, one per tokenizer in use (least recently used one replaced)
    thread_local PieceCache caches[4];
    thread_local uint64_t last_use[4], clock = 0;
    int slot = 0;
    for (int k = 0; k < 4; k++) {
        if (caches[k].serial == tok->serial) { slot = k; break; }
        if (last_use[k] < last_use[slot]) slot = k;
    }
    PieceCache& cache = caches[slot];
    if (cache.serial != tok->serial) cache.reset(tok->serial);
    last_use[slot] = ++clock;
    std::vector<int> out;
    out.reserve(text.size() / 3 + 16);
    if (add_bos) {
        if (tok->has_template) out.insert(out.end(), tok->post_prefix.begin(), tok->post_prefix.end());
        else if (tok->bos >= 0) out.push_back(tok->bos);
        else die("tokenizer: --bos asked for, but the tokenizer has no BOS token");
    }
    // added tokens first: those matched on the raw text, then those matched on the normalized text (the same
    // here: there is no normalizer), then the model
    split_added(tok, tok->trie_raw, text, 0, text.size(), out, [&](size_t a, size_t b) {
        split_added(tok, tok->trie_normalized, text, a, b, out, [&](size_t c, size_t d) {
            encode_plain(tok, cache, text, c, d, out);
        });
    });
    if (add_bos && tok->has_template) out.insert(out.end(), tok->post_suffix.begin(), tok->post_suffix.end());
    return out;
}

std::string tokenizer_decode(const Tokenizer* tok, const std::vector<int>& ids) {
    std::string s;
    for (int id : ids) {
        if (id < 0 || id >= (int)tok->id_used.size() || !tok->id_used[id]) die("tokenizer: unknown token id %d", id);
        s += tok->id_bytes[id];
    }
    return s;
}
std::string tokenizer_token_bytes(const Tokenizer* tok, int id) {
    if (id < 0 || id >= (int)tok->id_used.size() || !tok->id_used[id]) die("tokenizer: unknown token id %d", id);
    return tok->id_bytes[id];
}
int tokenizer_vocab_size(const Tokenizer* tok) { return tok->vocab_size; }
int tokenizer_token_id(const Tokenizer* tok, const std::string& content) {
    auto a = tok->added_by_content.find(content);
    if (a != tok->added_by_content.end()) return a->second;
    auto v = tok->vocab.find(content);
    return v != tok->vocab.end() ? v->second : -1;
}
int tokenizer_bos_id(const Tokenizer* tok) { return tok->bos; }
int tokenizer_eos_id(const Tokenizer* tok) { return tok->eos; }

// ----------------------------------------------------------------------------
// GGUF import: the vocabulary of a llama.cpp GGUF file (tokens, merges, token types) → tokenizer.json, and the
// export of ours as GGUF keys (convert --to gguf). The file layout and the cursor (GgufReader) are in deepseek.h.
// GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
enum GgufTokenType { GGUF_TOKEN_NORMAL = 1, GGUF_TOKEN_UNKNOWN = 2, GGUF_TOKEN_CONTROL = 3, GGUF_TOKEN_USER_DEFINED = 4,
                     GGUF_TOKEN_UNUSED = 5 };

static Tokenizer* tokenizer_from_gguf(const std::string& path) {
    std::string data = read_file(path);
    GgufReader r{(const unsigned char*)data.data(), data.size(), 0, path};
    r.need(4);
    if (memcmp(data.data(), "GGUF", 4) != 0) die("%s: not a GGUF file (bad magic)", path.c_str());
    r.pos = 4;
    uint32_t version = r.u32();
    if (version < 2 || version > 3) die("%s: GGUF version %u is not supported (2 or 3)", path.c_str(), version);
    r.u64();   // tensor count: the vocabulary is all we read
    uint64_t nkv = r.u64();
    std::vector<std::string> tokens, merges;
    std::vector<long long> types;
    std::string model, pre;
    long long bos = -1, eos = -1;
    bool add_bos = false;
    for (uint64_t k = 0; k < nkv; k++) {
        std::string key = r.str();
        uint32_t type = r.u32();
        if ((key == "tokenizer.ggml.tokens" || key == "tokenizer.ggml.merges" || key == "tokenizer.ggml.token_type") && type == GGUF_ARRAY) {
            uint32_t et = r.u32();
            uint64_t cnt = r.u64();
            if (cnt > (1u << 24)) die("%s: %s has %llu entries", path.c_str(), key.c_str(), (unsigned long long)cnt);
            for (uint64_t i = 0; i < cnt; i++) {
                if (key == "tokenizer.ggml.token_type") types.push_back(r.scalar_int(et));
                else if (et != GGUF_STRING) die("%s: %s must hold strings", path.c_str(), key.c_str());
                else (key == "tokenizer.ggml.tokens" ? tokens : merges).push_back(r.str());
            }
        } else if ((key == "tokenizer.ggml.model" || key == "tokenizer.ggml.pre") && type == GGUF_STRING) {
            (key == "tokenizer.ggml.model" ? model : pre) = r.str();
        } else if (key == "tokenizer.ggml.bos_token_id" && type != GGUF_STRING && type != GGUF_ARRAY) { bos = r.scalar_int(type);
        } else if (key == "tokenizer.ggml.eos_token_id" && type != GGUF_STRING && type != GGUF_ARRAY) { eos = r.scalar_int(type);
        } else if (key == "tokenizer.ggml.add_bos_token" && type == GGUF_BOOL) { add_bos = r.scalar_int(type) != 0;
        } else {
            r.skip(type);
        }
    }
    if (model != "gpt2") die("%s: tokenizer.ggml.model is \"%s\"; only byte-level BPE (\"gpt2\") can be imported", path.c_str(), model.c_str());
    if (pre != "deepseek-llm")
        die("%s: tokenizer.ggml.pre is \"%s\"; only the DeepSeek LLM pre-tokenizer (\"deepseek-llm\") is known here", path.c_str(), pre.c_str());
    if (tokens.empty()) die("%s: no tokenizer.ggml.tokens", path.c_str());
    if (types.size() != tokens.size()) die("%s: %zu token types for %zu tokens", path.c_str(), types.size(), tokens.size());
    std::unique_ptr<Tokenizer> t(new Tokenizer());
    // llama.cpp pads the vocabulary to the embedding size with "[PAD<id>]" user-defined tokens: not tokens.
    size_t count = tokens.size();
    while (count > 0 && types[count - 1] == GGUF_TOKEN_USER_DEFINED && tokens[count - 1] == "[PAD" + std::to_string(count - 1) + "]") count--;
    for (size_t i = 0; i < count; i++) if (types[i] == GGUF_TOKEN_NORMAL) tok_add_vocab(t.get(), tokens[i], (int)i, path + ": tokens");
    t->merge_map.reserve(merges.size() + 1);
    for (size_t i = 0; i < merges.size(); i++) {
        const std::string& s = merges[i];
        size_t sp = s.find(' ');
        if (sp == std::string::npos) die("%s: merge %zu has no space", path.c_str(), i);
        tok_add_merge(t.get(), s.substr(0, sp), s.substr(sp + 1), path + ": merges");
    }
    for (size_t i = 0; i < count; i++) {
        if (types[i] == GGUF_TOKEN_NORMAL || types[i] == GGUF_TOKEN_UNUSED) continue;
        AddedToken a;
        a.id = (int)i; a.content = tokens[i];
        a.special = types[i] == GGUF_TOKEN_CONTROL || types[i] == GGUF_TOKEN_UNKNOWN;
        a.normalized = !a.special;
        tok_add_added(t.get(), a, path + ": tokens");
    }
    deepseek_pretokenizer(t.get());
    if (add_bos && bos >= 0) {
        if (bos >= (long long)t->id_used.size() || !t->id_used[bos]) die("%s: bos_token_id %lld is not a token", path.c_str(), bos);
        t->has_template = true;
        t->post_prefix = {(int)bos};
    }
    t->bos = bos >= 0 && bos < (long long)t->id_used.size() && t->id_used[bos] ? (int)bos : -1;
    t->eos = eos >= 0 && eos < (long long)t->id_used.size() && t->id_used[eos] ? (int)eos : -1;
    tok_finish(t.get());
    return t.release();
}

// DeepSeek LLM's pre-tokenizer exactly (deepseek_pretokenizer's steps): what llama.cpp's "deepseek-llm" means
static bool tokenizer_pre_is_deepseek(const Tokenizer* t) {
    const size_t nsplit = sizeof(DEEPSEEK_SPLIT_PATTERNS) / sizeof(DEEPSEEK_SPLIT_PATTERNS[0]);
    if (t->pre.size() != nsplit + 2) return false;
    for (size_t i = 0; i < nsplit; i++) {
        const PreStep& s = t->pre[i];
        if (s.kind != PreStep::SPLIT || s.pattern != DEEPSEEK_SPLIT_PATTERNS[i] || !s.pattern_is_regex ||
            s.behavior != Behavior::Isolated || s.invert) return false;
    }
    const PreStep& d = t->pre[nsplit];
    const PreStep& b = t->pre[nsplit + 1];
    return d.kind == PreStep::DIGITS && d.individual_digits && b.kind == PreStep::BYTELEVEL && !b.use_regex && !b.add_prefix_space;
}

// The export: every id below vocab_size gets a string and a type. Model-vocabulary tokens are normal (their
// byte-level strings, as in tokenizer.json); added tokens are control when special (BOS, EOS), user-defined
// otherwise (llama.cpp matches both in raw text, as tokenizers does); ids no token has — the embedding rows past the
// tokenizer's vocabulary — are "[PAD<id>]" user-defined tokens, as llama.cpp's own converter pads, and the import
// above drops them again. Merges are "left right" by rank.
void tokenizer_gguf_metadata(const Tokenizer* t, int vocab_size, GgufMeta* kv) {
    if (!tokenizer_pre_is_deepseek(t))
        die("convert: the tokenizer's pre-tokenizer is not DeepSeek LLM's (Split patterns, Digits, ByteLevel); llama.cpp "
            "would split text differently (its \"deepseek-llm\" pre-tokenizer), so it is not exported");
    if (t->vocab_size > vocab_size)
        die("convert: the tokenizer has %d ids but the model only %d embedding rows (vocab_size)", t->vocab_size, vocab_size);
    std::vector<const AddedToken*> added(vocab_size, nullptr);
    for (const AddedToken& a : t->added) added[a.id] = &a;
    std::vector<std::string> tokens(vocab_size);
    std::vector<int32_t> types(vocab_size);
    for (int id = 0; id < vocab_size; id++) {
        bool used = id < (int)t->id_used.size() && t->id_used[id];
        if (!used) { tokens[id] = "[PAD" + std::to_string(id) + "]"; types[id] = GGUF_TOKEN_USER_DEFINED; continue; }
        tokens[id] = t->id_str[id];
        types[id] = !added[id] ? GGUF_TOKEN_NORMAL : added[id]->special ? GGUF_TOKEN_CONTROL : GGUF_TOKEN_USER_DEFINED;
    }
    std::vector<std::string> merges;
    merges.reserve(t->merges.size());
    for (const auto& m : t->merges) merges.push_back(t->id_str[m.first] + " " + t->id_str[m.second]);
    kv->put_str("tokenizer.ggml.model", "gpt2");
    kv->put_str("tokenizer.ggml.pre", "deepseek-llm");
    kv->put_str_array("tokenizer.ggml.tokens", tokens);
    kv->put_i32_array("tokenizer.ggml.token_type", types);
    kv->put_str_array("tokenizer.ggml.merges", merges);
    if (t->bos >= 0) kv->put_u32("tokenizer.ggml.bos_token_id", (uint32_t)t->bos);
    if (t->eos >= 0) kv->put_u32("tokenizer.ggml.eos_token_id", (uint32_t)t->eos);
    // the post-processor's template: BOS before the text (DeepSeek's), EOS after it (none of ours)
    kv->put_bool("tokenizer.ggml.add_bos_token", t->has_template && t->post_prefix.size() == 1 && t->post_prefix[0] == t->bos);
    kv->put_bool("tokenizer.ggml.add_eos_token", t->has_template && t->post_suffix.size() == 1 && t->post_suffix[0] == t->eos);
}

// ----------------------------------------------------------------------------
// training: byte-level BPE as tokenizers' BpeTrainer does it, so the merges come out in the same order.
//   1. pre-tokenize the corpus with DeepSeek's pre-tokenizer and count each distinct pre-token once;
//   2. the alphabet: all 256 byte symbols, in code-point order of their characters (their ids);
//   3. count adjacent pairs over the words (weighted by word count), remembering which words hold each pair;
//   4. pop the pair of highest count (ties: the smaller (left id, right id)) from a heap whose entries carry the
//      words to update; a stale count is refreshed and pushed back. Merge it in those words and apply the
//      ±count changes of the neighbouring pairs — no recount.
// The special tokens (BOS, EOS) come after the learned tokens, as in DeepSeek's vocabulary.

struct TrainMerge {
    int64_t count; uint64_t pair; uint32_t pos;   // pos: index into the pool of word-index lists
    bool operator<(const TrainMerge& o) const {    // max-heap: larger count first, then smaller pair first
        if (count != o.count) return count < o.count;
        return pair > o.pair;
    }
};

struct PairChange { uint64_t pair; int32_t change; uint32_t word; };

// Merges (a, b) → c in one word, left to right, recording the pair changes (Word::merge in tokenizers).
static void word_merge(std::vector<uint32_t>& w, uint32_t a, uint32_t b, uint32_t c, uint32_t word, std::vector<PairChange>& ch) {
    size_t i = 0;
    while (i < w.size()) {
        if (w[i] == a && i + 1 < w.size() && w[i + 1] == b) {
            if (i > 0) {
                ch.push_back({PairMap::key(w[i - 1], a), -1, word});
                ch.push_back({PairMap::key(w[i - 1], c), +1, word});
            }
            w[i] = c;
            w.erase(w.begin() + i + 1);
            if (i + 1 < w.size()) {
                ch.push_back({PairMap::key(b, w[i + 1]), -1, word});
                ch.push_back({PairMap::key(c, w[i + 1]), +1, word});
            }
        }
        i++;
    }
}

static Tokenizer* tokenizer_train_text(const std::vector<std::string>& texts, int vocab_size, bool verbose) {
    const ByteLevelAlphabet& A = bytelevel();
    std::unique_ptr<Tokenizer> proto(new Tokenizer());
    deepseek_pretokenizer(proto.get());
    auto t0 = std::chrono::steady_clock::now();
    auto secs = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    // 1. pre-token counts, in parallel over newline-aligned chunks (newlines are pre-tokens of their own,
    //    so a chunk boundary after one changes nothing)
    struct Chunk { int text; size_t start, end; };
    std::vector<Chunk> chunks;
    for (size_t ti = 0; ti < texts.size(); ti++) {
        const std::string& s = texts[ti];
        size_t pos = 0;
        while (pos < s.size()) {
            size_t end = std::min(s.size(), pos + (1 << 20));
            while (end < s.size() && s[end - 1] != '\n') end++;
            chunks.push_back({(int)ti, pos, end});
            pos = end;
        }
    }
    int nthreads = omp_get_max_threads();
    std::vector<std::unordered_map<std::string, uint64_t>> local(nthreads);
    #pragma omp parallel for schedule(dynamic, 1)
    for (size_t c = 0; c < chunks.size(); c++) {
        auto& counts = local[omp_get_thread_num()];
        const std::string& s = texts[chunks[c].text];
        std::vector<Piece> pieces;
        const unsigned char* u = (const unsigned char*)s.data();
        size_t i = chunks[c].start, end = chunks[c].end;
        while (i < end) {   // as encode_plain: valid stretches pre-tokenized, invalid runs whole
            size_t j = i;
            while (j < end) { if (u[j] < 0x80) { j++; continue; } int l = utf8_valid_len(u, j, end); if (!l) break; j += l; }
            if (j > i) {
                pieces.clear();
                pre_tokenize(proto.get(), s, i, j, pieces);
                for (const Piece& p : pieces) counts[s.substr(p.start, p.end - p.start)]++;
            }
            size_t k = j;
            while (k < end && u[k] >= 0x80 && !utf8_valid_len(u, k, end)) k++;
            if (k > j) counts[s.substr(j, k - j)]++;
            i = k;
        }
    }
    std::unordered_map<std::string, uint64_t> word_counts = std::move(local[0]);
    for (int k = 1; k < nthreads; k++) for (auto& kv : local[k]) word_counts[kv.first] += kv.second;
    local.clear();
    if (verbose) fprintf(stderr, "tokenizer train: %zu distinct pre-tokens (%.1fs)\n", word_counts.size(), secs());
    // 2. alphabet: the 256 byte characters sorted by code point
    std::vector<std::string> id_to_word;           // raw bytes of each token
    std::unordered_map<std::string, uint32_t> word_to_id;
    int order[256];
    for (int b = 0; b < 256; b++) order[b] = b;
    std::sort(order, order + 256, [&](int x, int y) { return A.byte_to_cp[x] < A.byte_to_cp[y]; });
    uint32_t byte_tok[256];
    for (int k = 0; k < 256; k++) {
        byte_tok[order[k]] = (uint32_t)k;
        std::string s(1, (char)order[k]);
        id_to_word.push_back(s); word_to_id[s] = (uint32_t)k;
    }
    const int n_special = 2;
    int target = vocab_size - n_special;   // learned tokens + alphabet
    // words, sorted so that everything downstream is deterministic
    std::vector<std::pair<std::string, uint64_t>> sorted_words(word_counts.begin(), word_counts.end());
    word_counts.clear();
    std::sort(sorted_words.begin(), sorted_words.end());
    std::vector<std::vector<uint32_t>> words(sorted_words.size());
    std::vector<int64_t> counts(sorted_words.size());
    for (size_t i = 0; i < sorted_words.size(); i++) {
        for (unsigned char ch : sorted_words[i].first) words[i].push_back(byte_tok[ch]);
        counts[i] = (int64_t)sorted_words[i].second;
    }
    sorted_words.clear();
    // 3. pair counts and where each pair occurs
    std::unordered_map<uint64_t, int64_t> pair_counts;
    std::unordered_map<uint64_t, std::vector<uint32_t>> where;
    for (size_t i = 0; i < words.size(); i++) {
        const auto& w = words[i];
        for (size_t k = 0; k + 1 < w.size(); k++) {
            uint64_t pr = PairMap::key(w[k], w[k + 1]);
            pair_counts[pr] += counts[i];
            auto& v = where[pr];
            if (v.empty() || v.back() != (uint32_t)i) v.push_back((uint32_t)i);
        }
    }
    std::vector<std::vector<uint32_t>> pool;   // word-index lists carried by heap entries
    std::priority_queue<TrainMerge> queue;
    auto drain_where = [&] {
        for (auto& kv : where) {
            int64_t cnt = pair_counts[kv.first];
            if (cnt > 0) {
                std::vector<uint32_t>& v = kv.second;
                std::sort(v.begin(), v.end());
                v.erase(std::unique(v.begin(), v.end()), v.end());
                pool.push_back(std::move(v));
                queue.push({cnt, kv.first, (uint32_t)pool.size() - 1});
            }
        }
        where.clear();
    };
    drain_where();
    if (verbose) fprintf(stderr, "tokenizer train: %zu words, %zu pairs (%.1fs)\n", words.size(), pair_counts.size(), secs());
    // 4. merges
    std::vector<std::pair<uint64_t, uint32_t>> merges;   // (pair, new id), in order
    std::vector<PairChange> changes;
    while ((int)id_to_word.size() < target && !queue.empty()) {
        TrainMerge top = queue.top(); queue.pop();
        int64_t cur = pair_counts[top.pair];
        if (top.count != cur) { top.count = cur; queue.push(top); continue; }
        if (top.count < 1) break;
        uint32_t a = (uint32_t)(top.pair >> 32), b = (uint32_t)top.pair;
        std::string nw = id_to_word[a] + id_to_word[b];
        uint32_t c;
        auto it = word_to_id.find(nw);
        if (it != word_to_id.end()) c = it->second;
        else { c = (uint32_t)id_to_word.size(); id_to_word.push_back(nw); word_to_id[nw] = c; }
        merges.push_back({top.pair, c});
        changes.clear();
        std::vector<uint32_t> pos = std::move(pool[top.pos]);
        for (uint32_t wi : pos) word_merge(words[wi], a, b, c, wi, changes);
        for (const PairChange& ch : changes) {
            pair_counts[ch.pair] += ch.change * counts[ch.word];
            if (ch.change > 0) where[ch.pair].push_back(ch.word);
        }
        drain_where();
        if (verbose && merges.size() % 5000 == 0)
            fprintf(stderr, "tokenizer train: %zu merges, vocabulary %zu (%.1fs)\n", merges.size(), id_to_word.size(), secs());
    }
    if (verbose) fprintf(stderr, "tokenizer train: %zu merges (%.1fs)\n", merges.size(), secs());
    // a pair merged twice keeps its last rank (tokenizers collects the merges into a map)
    std::unordered_map<uint64_t, size_t> last;
    for (size_t i = 0; i < merges.size(); i++) last[merges[i].first] = i;
    // the tokenizer
    std::unique_ptr<Tokenizer> t(new Tokenizer());
    for (size_t id = 0; id < id_to_word.size(); id++) tok_add_vocab(t.get(), bytes_to_bytelevel(id_to_word[id]), (int)id, "train");
    t->merge_map.reserve(merges.size() + 1);
    for (size_t i = 0; i < merges.size(); i++) {
        if (last[merges[i].first] != i) continue;
        uint32_t a = (uint32_t)(merges[i].first >> 32), b = (uint32_t)merges[i].first;
        tok_add_merge(t.get(), t->id_str[a], t->id_str[b], "train");
    }
    int n = (int)id_to_word.size();
    AddedToken bos; bos.id = n; bos.content = DEEPSEEK_BOS; bos.special = true; bos.normalized = false;
    AddedToken eos; eos.id = n + 1; eos.content = DEEPSEEK_EOS; eos.special = true; eos.normalized = false;
    tok_add_added(t.get(), bos, "train");
    tok_add_added(t.get(), eos, "train");
    deepseek_pretokenizer(t.get());
    t->has_template = true;
    t->post_prefix = {n};
    t->bos = n; t->eos = n + 1;
    tok_finish(t.get());
    return t.release();
}

void tokenizer_train_files(const std::vector<std::string>& files, int vocab_size, const std::string& out_path, bool verbose) {
    if (files.empty()) die("tokenizer train: no input files");
    if (vocab_size < 256 + 2) die("tokenizer train: --vocab-size %d is below 258 (256 byte symbols + BOS + EOS)", vocab_size);
    std::vector<std::string> texts;
    for (const std::string& f : files) texts.push_back(read_file(f));
    std::unique_ptr<Tokenizer> t(tokenizer_train_text(texts, vocab_size, verbose));
    write_file_atomic(out_path, tokenizer_to_json(t.get()));
    if (verbose) fprintf(stderr, "tokenizer train: wrote %s (vocabulary %d)\n", out_path.c_str(), t->vocab_size);
}

// ----------------------------------------------------------------------------
// the command line: deepseek tokenizer train|encode|decode|import-gguf|info|bench

static const size_t INPUT_MAX_BYTES = 0x7FFFFFFFu;   // encode's limit (token offsets are int32)
static std::string read_all_stdin() {
    std::string s;
    if (!read_stream(stdin, INPUT_MAX_BYTES, &s)) die("tokenizer: stdin holds more than the %zu bytes it may", INPUT_MAX_BYTES);
    if (ferror(stdin)) die("tokenizer: error reading stdin");
    return s;
}

// --input FILE for encode/decode: a regular file, or a stream (a pipe, /dev/stdin, /dev/null) read to its end,
// as stdin is; a directory is refused by name, and a stream that never ends (/dev/zero) stops at encode's 2 GiB limit.
static std::string read_input(const std::string& path) { return read_text_input(path, INPUT_MAX_BYTES); }

static void write_stdout(const std::string& s) {
    if (!s.empty() && fwrite(s.data(), 1, s.size(), stdout) != s.size()) die("tokenizer: cannot write to stdout");
    fflush(stdout);
}

static std::string describe_pre(const Tokenizer* t) {
    std::string s;
    for (const PreStep& st : t->pre) {
        if (st.kind == PreStep::SPLIT) {
            std::string p = st.pattern;
            std::string shown;
            for (char c : p) { if (c == '\r') shown += "\\r"; else if (c == '\n') shown += "\\n"; else shown += c; }
            s += "  Split(" + std::string(st.pattern_is_regex ? "regex " : "string ") + shown + ", " +
                 behavior_name(st.behavior) + (st.invert ? ", invert" : "") + ")\n";
        } else if (st.kind == PreStep::DIGITS) {
            s += std::string("  Digits(individual_digits=") + (st.individual_digits ? "true" : "false") + ")\n";
        } else {
            s += std::string("  ByteLevel(add_prefix_space=") + (st.add_prefix_space ? "true" : "false") +
                 ", use_regex=" + (st.use_regex ? "true" : "false") + ")\n";
        }
    }
    return s;
}

static const char* TOKENIZER_USAGE =
    "usage: deepseek tokenizer <command> [flags]\n"
    "  train --input FILE [FILE...] --vocab-size N --out tokenizer.json [--quiet]\n"
    "        byte-level BPE with DeepSeek's pre-tokenizer (all 256 bytes, BOS/EOS after the learned tokens)\n"
    "  encode --tokenizer FILE [--input FILE] [--bos]   the whole input as one text → ids on one line\n"
    "  decode --tokenizer FILE [--input FILE]           ids (whitespace-separated) → the bytes\n"
    "  import-gguf FILE --out tokenizer.json            a GGUF vocabulary (DeepSeek LLM) → tokenizer.json\n"
    "  info --tokenizer FILE                            vocabulary size, special tokens, pre-tokenizer\n"
    "  bench --tokenizer FILE --input FILE [--repeat N] encode/decode speed on one thread (MB/s)\n";

int cmd_tokenizer(int argc, char** argv) {
    if (argc < 3) { fputs(TOKENIZER_USAGE, stderr); return 1; }
    if (is_help(argc, argv, 2)) { fputs(TOKENIZER_USAGE, stdout); return 0; }
    std::string sub = argv[2];
    std::string name = "tokenizer " + sub;
    if (sub == "encode") {
        Args a(argc, argv, 3, name, nullptr, {"tokenizer", "input"}, {"bos"});
        if (!a.has("tokenizer")) die("%s: --tokenizer FILE is required", name.c_str());
        std::unique_ptr<Tokenizer, void (*)(Tokenizer*)> t(tokenizer_load(a.str("tokenizer")), tokenizer_free);
        std::string text = a.has("input") ? read_input(a.str("input")) : read_all_stdin();
        std::vector<int> ids = tokenizer_encode(t.get(), text, a.flag("bos"));
        std::string out;
        out.reserve(ids.size() * 6 + 1);
        for (size_t i = 0; i < ids.size(); i++) { if (i) out += ' '; out += std::to_string(ids[i]); }
        out += '\n';
        write_stdout(out);
        return 0;
    }
    if (sub == "decode") {
        Args a(argc, argv, 3, name, nullptr, {"tokenizer", "input"}, {});
        if (!a.has("tokenizer")) die("%s: --tokenizer FILE is required", name.c_str());
        std::unique_ptr<Tokenizer, void (*)(Tokenizer*)> t(tokenizer_load(a.str("tokenizer")), tokenizer_free);
        std::string text = a.has("input") ? read_input(a.str("input")) : read_all_stdin();
        std::vector<int> ids;
        size_t i = 0;
        while (i < text.size()) {
            while (i < text.size() && isspace((unsigned char)text[i])) i++;
            if (i >= text.size()) break;
            size_t j = i;
            while (j < text.size() && !isspace((unsigned char)text[j])) j++;
            std::string w = text.substr(i, j - i);
            char* endp = nullptr;
            long long v = strtoll(w.c_str(), &endp, 10);
            if (*endp || w.empty() || v < 0 || v > 0x7FFFFFFF) die("%s: \"%s\" is not a token id", name.c_str(), w.c_str());
            ids.push_back((int)v);
            i = j;
        }
        write_stdout(tokenizer_decode(t.get(), ids));
        return 0;
    }
    if (sub == "import-gguf") {
        Args a(argc, argv, 3, name, nullptr, {"out"}, {}, -1);
        if (a.positional.size() != 1) die("%s: give one GGUF file", name.c_str());
        if (!a.has("out")) die("%s: --out tokenizer.json is required", name.c_str());
        std::unique_ptr<Tokenizer, void (*)(Tokenizer*)> t(tokenizer_from_gguf(a.positional[0]), tokenizer_free);
        write_file_atomic(a.str("out"), tokenizer_to_json(t.get()));
        fprintf(stderr, "tokenizer import-gguf: wrote %s (%zu tokens, %zu merges, %zu added tokens)\n", a.str("out").c_str(),
                t->vocab.size(), t->merges.size(), t->added.size());
        return 0;
    }
    if (sub == "train") {
        Args a(argc, argv, 3, name, nullptr, {"input", "vocab-size", "out"}, {"quiet"}, -1);
        std::vector<std::string> files;
        if (a.has("input")) files.push_back(a.str("input"));
        for (const std::string& p : a.positional) files.push_back(p);
        if (files.empty()) die("%s: --input FILE... is required", name.c_str());
        if (!a.has("out")) die("%s: --out tokenizer.json is required", name.c_str());
        int v = (int)a.integer("vocab-size", 32000, 258, 1 << 24);
        tokenizer_train_files(files, v, a.str("out"), !a.flag("quiet"));
        return 0;
    }
    if (sub == "info") {
        Args a(argc, argv, 3, name, nullptr, {"tokenizer"}, {});
        if (!a.has("tokenizer")) die("%s: --tokenizer FILE is required", name.c_str());
        std::unique_ptr<Tokenizer, void (*)(Tokenizer*)> t(tokenizer_load(a.str("tokenizer")), tokenizer_free);
        printf("vocabulary size: %d (%zu BPE tokens, %zu merges, %zu added tokens)\n", t->vocab_size, t->vocab.size(),
               t->merges.size(), t->added.size());
        printf("bos: %d%s%s\neos: %d%s%s\n", t->bos, t->bos >= 0 ? " " : "", t->bos >= 0 ? t->id_str[t->bos].c_str() : "",
               t->eos, t->eos >= 0 ? " " : "", t->eos >= 0 ? t->id_str[t->eos].c_str() : "");
        printf("added tokens:\n");
        for (const AddedToken& ad : t->added)
            printf("  %d %s%s\n", ad.id, ad.content.c_str(), ad.special ? " (special)" : "");
        printf("pre-tokenizer:\n%s", describe_pre(t.get()).c_str());
        printf("ignore_merges: %s\n", t->ignore_merges ? "true" : "false");
        return 0;
    }
    if (sub == "bench") {
        Args a(argc, argv, 3, name, nullptr, {"tokenizer", "input", "repeat"}, {});
        if (!a.has("tokenizer") || !a.has("input")) die("%s: --tokenizer FILE and --input FILE are required", name.c_str());
        int repeat = (int)a.integer("repeat", 3, 1, 1000);
        auto t0 = std::chrono::steady_clock::now();
        std::unique_ptr<Tokenizer, void (*)(Tokenizer*)> t(tokenizer_load(a.str("tokenizer")), tokenizer_free);
        double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::string text = read_file(a.str("input"));
        double best_enc = 1e30, best_dec = 1e30;
        std::vector<int> ids;
        for (int r = 0; r < repeat; r++) {
            // a fresh cache each time: the first pass is the honest one
            std::unique_ptr<Tokenizer, void (*)(Tokenizer*)> fresh(tokenizer_load(a.str("tokenizer")), tokenizer_free);
            auto s0 = std::chrono::steady_clock::now();
            ids = tokenizer_encode(fresh.get(), text, false);
            best_enc = std::min(best_enc, std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count());
            auto s1 = std::chrono::steady_clock::now();
            std::string back = tokenizer_decode(fresh.get(), ids);
            best_dec = std::min(best_dec, std::chrono::duration<double>(std::chrono::steady_clock::now() - s1).count());
        }
        uint64_t h = 0xcbf29ce484222325ULL;   // FNV-1a over the ids as little-endian uint32
        for (int id : ids) for (int k = 0; k < 4; k++) { h ^= (uint8_t)((uint32_t)id >> (8 * k)); h *= 0x100000001b3ULL; }
        double mb = text.size() / 1e6;
        printf("bytes %zu tokens %zu fnv %016llx load_s %.3f encode_s %.4f encode_MBps %.2f decode_MBps %.1f\n", text.size(),
               ids.size(), (unsigned long long)h, load_s, best_enc, mb / best_enc, mb / best_dec);
        return 0;
    }
    die("tokenizer: unknown command \"%s\" (train, encode, decode, import-gguf, info, bench)", sub.c_str());
}
