// train.cu — training the DeepSeek LLM recipe. Pre-training: token shards, the data loader, the multi-step
// learning-rate schedule, the paper's scaling laws, gradient accumulation, validation in bits per byte, the
// loss-curve picture. SFT and DPO: chat JSONL, the assistant-token loss, the DPO loss against a frozen reference.
// All three run one training loop (run_training, section "the training loop"): AdamW, clipping at norm 1.0, the
// non-finite check, the learning-rate schedule, metrics.jsonl, progress lines, evaluation points, checkpoints that
// resume bit-exactly, pruning and signals exist there once; a stage (struct Stage) supplies one step's gradients and
// metrics from its batch (windows of a token shard; items in a shuffled order per epoch), its evaluation, the wording
// of its progress line and its trainer_state.json. Data parallelism (MPI, NCCL, ZeRO-1) plugs into pre-training
// through the loader's rank/world and one gradient all-reduce point; SFT and DPO run one rank.
//
// What it is: the plain fp32 CPU training loop, deterministic to the bit (a run stopped and resumed gives the same
// weights as a run that never stopped). What it is not: fast — the speed is the model's forward/backward.
// With --device cuda the same loop drives the CUDA backend (deepseek.cu) through a few backend_* calls (section
// "the backend a loop runs on"); checkpoints are the same files either way.
//
// Shapes: B sequences per micro-batch, T tokens per sequence; a step = accum micro-batches × world ranks.
#include "deepseek.h"
#include <functional>    // std::function: a stage's hooks, checkpoint_save's per-rank hook, the JSONL readers
#include <algorithm>     // std::sort, std::min, std::max
#include <chrono>        // steady_clock: tokens/s, ETA
#include <cerrno>        // errno
#include <cmath>         // pow, cos, log, sqrt, isfinite
#include <csignal>       // sigaction: SIGINT/SIGTERM finish the step and checkpoint
#include <cstdio>        // printf, FILE
#include <cstring>       // memcpy, strerror
#include <memory>        // std::unique_ptr: a tokenizer freed also when an error unwinds
#include <dirent.h>      // opendir: listing checkpoints
#include <fcntl.h>       // open (fsync of directories)
#include <climits>       // PATH_MAX
#include <cstdlib>       // atexit, realpath
#include <sys/file.h>    // flock: one run per output directory
#include <sys/mman.h>    // mmap: token shards
#include <sys/stat.h>    // stat
#include <unistd.h>      // fsync, unlink, rmdir, getpid, gethostname
#include <nlohmann/json.hpp>  // nlohmann::json: data.json, trainer_state.json, metrics.jsonl
#ifdef _OPENMP
#include <omp.h>         // omp_set_num_threads, omp_get_max_threads
#endif

using json = nlohmann::json;

// ============================================================================
// the paper's constants (DeepSeek LLM, arXiv 2401.02954, §2.3 and §3)

// (AdamW's β1, β2, ε, weight decay and the clipping norm: deepseek.h, beside the Backend that applies them)
constexpr long PAPER_WARMUP_STEPS = 2000;
constexpr double MULTISTEP_AT_1 = 0.8, MULTISTEP_FACTOR_1 = 0.316;  // after 80% of the tokens: 31.6% of the peak
constexpr double MULTISTEP_AT_2 = 0.9, MULTISTEP_FACTOR_2 = 0.1;    // after 90%: 10%
// scaling laws, C in FLOPs:  B_opt = 0.2920·C^0.3271,  η_opt = 0.3118·C^−0.1250,
//                            M_opt = 0.1715·C^0.5243,  D_opt = 5.8316·C^0.4757
constexpr double BOPT_K = 0.2920, BOPT_E = 0.3271, LROPT_K = 0.3118, LROPT_E = -0.1250;
constexpr double MOPT_K = 0.1715, MOPT_E = 0.5243, DOPT_K = 5.8316, DOPT_E = 0.4757;

// ============================================================================
// small helpers

static std::string hms(double s) {
    long t = (long)(s + 0.5);
    char b[32];
    if (t >= 3600) snprintf(b, sizeof b, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(b, sizeof b, "%ld:%02ld", t / 60, t % 60);
    return b;
}
// what a non-regular file is, for messages: "a directory", "a pipe (FIFO)", …
static const char* mode_kind(mode_t m) {
    return S_ISDIR(m) ? "a directory" : S_ISFIFO(m) ? "a pipe (FIFO)" : S_ISCHR(m) || S_ISBLK(m) ? "a device" :
           S_ISSOCK(m) ? "a socket" : S_ISREG(m) ? "a file" : "special";
}
// OBJ[KEY] as a JSON object (null if absent and not required), or one error line naming WHERE and the field
static const json* json_object(const json& obj, const char* key, const std::string& where, bool required) {
    const json* v = json_field(obj, key, where, required);
    if (v && !v->is_object()) {
        std::string got = v->dump();
        if (got.size() > 60) got = got.substr(0, 57) + "...";
        die("%s: field '%s' must be an object, got %s", where.c_str(), key, got.c_str());
    }
    return v;
}
// removes a directory tree (checkpoints are flat directories of plain files); a symbolic link is removed itself,
// never followed
static void remove_tree(const std::string& path) {
    struct stat st;
    if (lstat(path.c_str(), &st) != 0) return;
    if (!S_ISDIR(st.st_mode)) { unlink(path.c_str()); return; }
    DIR* d = opendir(path.c_str());
    if (!d) return;
    while (struct dirent* e = readdir(d)) {
        std::string n = e->d_name;
        if (n == "." || n == "..") continue;
        remove_tree(path + "/" + n);
    }
    closedir(d);
    rmdir(path.c_str());
}
static void fsync_dir(const std::string& path) {
    int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) { fsync(fd); close(fd); }
}
static std::string parent_dir(const std::string& path) {
    std::string p = path;
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    size_t s = p.find_last_of('/');
    return s == std::string::npos ? "." : (s == 0 ? "/" : p.substr(0, s));
}

// Temporary files and directories being written (X.tmp beside its target X): removed when the process fails before
// renaming one into place, so that no stray X.tmp is left beside a target that could not be replaced. die() exits
// through atexit; under the tests, where die() throws, ~TmpGuard removes it as the exception passes.
static std::vector<std::string> g_pending_tmp;
static void remove_pending_tmp() {
    for (const std::string& p : g_pending_tmp) remove_tree(p);
    g_pending_tmp.clear();
}
struct TmpGuard {
    std::string path;
    explicit TmpGuard(const std::string& p) : path(p) {
        static bool hooked = atexit(remove_pending_tmp) == 0;
        (void)hooked;
        g_pending_tmp.push_back(path);
    }
    void forget() {   // renamed into place: nothing to remove
        auto it = std::find(g_pending_tmp.begin(), g_pending_tmp.end(), path);
        if (it != g_pending_tmp.end()) g_pending_tmp.erase(it);
        path.clear();
    }
    ~TmpGuard() {
        if (path.empty()) return;
        std::string p = path;
        forget();
        remove_tree(p);
    }
    TmpGuard(const TmpGuard&) = delete;
    TmpGuard& operator=(const TmpGuard&) = delete;
};
// write_file_atomic (PATH.tmp, then a rename) that leaves no PATH.tmp behind when it fails
static void write_atomic(const std::string& path, const std::string& content) {
    TmpGuard tmp(path + ".tmp");
    write_file_atomic(path, content);
    tmp.forget();
}
static void copy_file(const std::string& from, const std::string& to) { write_atomic(to, read_file(from)); }

// ============================================================================
// token shards: a 256 × int32 header, then the tokens as uint32 (DeepSeek's vocabulary needs more than 16 bits)
//   header[0] magic, [1] version, [2] vocabulary size, [3] token count (low 32 bits), [4] (high 32 bits)

constexpr int32_t SHARD_MAGIC = 20240102;   // the paper's arXiv number, 2401.02954
constexpr int32_t SHARD_VERSION = 1;
constexpr int SHARD_HEADER_INTS = 256;

void shard_write(const std::string& path, const std::vector<uint32_t>& tokens, int vocab_size) {
    std::vector<int32_t> h(SHARD_HEADER_INTS, 0);
    h[0] = SHARD_MAGIC;
    h[1] = SHARD_VERSION;
    h[2] = vocab_size;
    h[3] = (int32_t)(uint32_t)(tokens.size() & 0xffffffffu);
    h[4] = (int32_t)(uint32_t)((uint64_t)tokens.size() >> 32);
    std::string bytes((const char*)h.data(), h.size() * 4);
    bytes.append((const char*)tokens.data(), tokens.size() * 4);
    write_atomic(path, bytes);
}

Shard::~Shard() { if (map) munmap(map, map_size); }

// Maps a shard and validates it fully: header, size, and every token below the vocabulary size.
void shard_open(Shard* s, const std::string& path, int max_vocab) {
    int fd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);   // O_NONBLOCK: a FIFO must not block the open
    if (fd < 0) die("cannot open token shard %s: %s", path.c_str(), strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) { close(fd); die("cannot stat %s", path.c_str()); }
    if (!S_ISREG(st.st_mode)) { close(fd); die("token shard %s is %s, not a regular file", path.c_str(), mode_kind(st.st_mode)); }
    size_t size = (size_t)st.st_size;
    if (size < SHARD_HEADER_INTS * 4) { close(fd); die("%s: not a token shard (only %zu bytes)", path.c_str(), size); }
    void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) die("cannot map %s: %s", path.c_str(), strerror(errno));
    s->map = map;
    s->map_size = size;
    const int32_t* h = (const int32_t*)map;
    if (h[0] != SHARD_MAGIC) die("%s: not a token shard (magic %d, expected %d)", path.c_str(), h[0], SHARD_MAGIC);
    if (h[1] != SHARD_VERSION) die("%s: unsupported token shard version %d (expected %d)", path.c_str(), h[1], SHARD_VERSION);
    s->vocab_size = h[2];
    s->n = (size_t)(uint32_t)h[3] | ((size_t)(uint32_t)h[4] << 32);
    if (s->vocab_size < 1) die("%s: invalid vocabulary size %d in the shard header", path.c_str(), s->vocab_size);
    if (max_vocab > 0 && s->vocab_size > max_vocab)
        die("%s: the shard's vocabulary (%d) is larger than the model's (%d)", path.c_str(), s->vocab_size, max_vocab);
    // in tokens, not bytes: n·4 wraps for a header count ≥ 2^62, and the check would pass a file that holds 10 tokens
    if ((size - SHARD_HEADER_INTS * 4) % 4 != 0 || s->n != (size - SHARD_HEADER_INTS * 4) / 4)
        die("%s: truncated or corrupt token shard (header says %zu tokens, file has %zu bytes)", path.c_str(), s->n, size);
    s->tokens = (const uint32_t*)((const char*)map + SHARD_HEADER_INTS * 4);
    for (size_t i = 0; i < s->n; i++)
        if (s->tokens[i] >= (uint32_t)s->vocab_size)
            die("%s: token %zu has id %u, outside the shard's vocabulary %d", path.c_str(), i, s->tokens[i], s->vocab_size);
}

// ============================================================================
// data prepare: text files → train/val token shards + data.json

// Unigram entropy of a token sequence in bits per token: H = −Σ p·log2 p over the sequence's own frequencies.
// The floor a model that ignores context could reach; the demo's validation bits per byte must fall well below it.
double unigram_entropy_bits(const std::vector<uint32_t>& tokens, int vocab_size) {
    std::vector<double> count(vocab_size, 0.0);
    for (uint32_t t : tokens) count[t] += 1.0;
    double n = (double)tokens.size(), h = 0.0;
    for (double c : count)
        if (c > 0) h -= c / n * log2(c / n);
    return h;
}

// Splits a text into documents at blank lines and sends every ⌈1/F⌉-th one (exactly a fraction F of them, spread
// evenly, no RNG) to validation. Document i goes to validation iff ⌊(i+1)·F⌋ > ⌊i·F⌋.
void split_train_val(const std::string& text, double val_fraction, std::string* train, std::string* val) {
    size_t pos = 0;
    long i = 0;
    while (pos < text.size()) {
        size_t end = text.find("\n\n", pos);
        end = end == std::string::npos ? text.size() : end + 2;
        while (end < text.size() && text[end] == '\n') end++;  // a run of blank lines ends the document
        bool to_val = floor((double)(i + 1) * val_fraction) > floor((double)i * val_fraction);
        (to_val ? val : train)->append(text, pos, end - pos);
        pos = end;
        i++;
    }
}

// When the documents are too few for the fraction F (a novel, a log, a source file: a text without blank lines),
// the last fraction F of the training text (the files in order) goes to validation instead, cut at the line
// boundary nearest to that point (a file's end counts as one) when it keeps the held-out share within a factor 2 of
// F; otherwise — a single line — at the nearest UTF-8 character boundary inside the line. parts[0][file] holds each
// file's text (parts[1] is empty); returns how the cut was made ("" when the text is too short to cut at all).
static std::string hold_out_tail(double vf, std::vector<std::string> parts[2]) {
    size_t n = parts[0].size();
    std::vector<size_t> start(n + 1, 0);   // start[i]: where file i begins in the concatenated text
    for (size_t i = 0; i < n; i++) start[i + 1] = start[i] + parts[0][i].size();
    size_t total = start[n];
    if (total < 2) return "";
    size_t want_val = std::max<size_t>(1, (size_t)llround((double)total * vf));
    size_t target = total - std::min(want_val, total - 1);   // the cut: [0, target) trains, [target, total) validates
    size_t k = 0;
    while (start[k + 1] <= target) k++;                       // the file the target falls in (target < total)
    const std::string& t = parts[0][k];
    size_t off = target - start[k];
    // the nearest line starts at or before / after the target (a file's start or end is one)
    size_t back = off == 0 ? 0 : (t.rfind('\n', off - 1) == std::string::npos ? 0 : t.rfind('\n', off - 1) + 1);
    size_t fwd = t.find('\n', off == 0 ? 0 : off - 1);
    fwd = off == 0 ? 0 : fwd == std::string::npos ? t.size() : fwd + 1;
    size_t best = 0;
    bool found = false;
    for (size_t c : {start[k] + back, start[k] + fwd}) {
        if (c == 0 || c >= total) continue;
        size_t val = total - c;
        if (val * 2 < want_val || val > want_val * 2) continue;   // too far from the fraction asked for
        if (!found || (c > target ? c - target : target - c) < (best > target ? best - target : target - best)) best = c;
        found = true;
    }
    std::string how = "cut at a line boundary";
    if (!found) {   // inside the line: back to the start of a UTF-8 character (continuation bytes are 10xxxxxx)
        size_t c = off;
        while (c > 0 && ((unsigned char)t[c] & 0xC0) == 0x80) c--;
        if (c == 0 && start[k] == 0) {   // the first character of the text: forward to the next one instead
            c = off;
            while (c < t.size() && ((unsigned char)t[c] & 0xC0) == 0x80) c++;
        }
        best = start[k] + c;
        if (best == 0 || best >= total) return "";
        how = "cut inside a line, at a UTF-8 character boundary: the text has no line boundary near the cut";
    }
    for (size_t i = 0; i < n; i++) {
        if (start[i + 1] <= best) continue;                      // wholly before the cut: training
        size_t from = best > start[i] ? best - start[i] : 0;     // this file's part from the cut on: validation
        parts[1][i] = parts[0][i].substr(from);
        parts[0][i].resize(from);
    }
    return how;
}

static int cmd_data_prepare(int argc, char** argv) {
    if (is_help(argc, argv, 3)) {
        printf("usage: deepseek data prepare --input FILE [FILE...] (--tokenizer tokenizer.json | --vocab-size N) --out DIR\n"
               "                            [--val-fraction F]\n"
               "  --vocab-size N trains a byte-level BPE tokenizer of N tokens on the training split only.\n"
               "  splits each text into documents at blank lines, sends a fraction F (default 0.05; 0: no validation\n"
               "  split) of them, evenly spread, to validation; when the documents are too few for F (a text without\n"
               "  blank lines is one document), the last fraction F of the text instead, cut at the nearest line\n"
               "  boundary (inside a single line: at a UTF-8 character boundary), with a note saying so. Encodes both\n"
               "  splits (BOS at the start of each file's part) and writes\n"
               "  DIR/train.bin, DIR/val.bin (a 256 × int32 header: magic %d, version, vocab size, token count; then\n"
               "  uint32 tokens), DIR/tokenizer.json (a copy) and DIR/data.json (tokens, bytes, unigram entropy).\n",
               SHARD_MAGIC);
        return 0;
    }
    // --input takes several files: gather the positionals that follow it
    std::vector<std::string> inputs;
    std::vector<char*> rest = {argv[0], argv[1], argv[2]};
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--input")) {
            int j = i + 1;
            while (j < argc && strncmp(argv[j], "--", 2) != 0) inputs.push_back(argv[j++]);
            if (j == i + 1) die("data prepare: --input needs at least one file");
            i = j - 1;
        } else rest.push_back(argv[i]);
    }
    Args a((int)rest.size(), rest.data(), 3, "data prepare", nullptr, {"tokenizer", "vocab-size", "out", "val-fraction", "threads"}, {});
    if (inputs.empty()) die("data prepare: --input FILE... is required");
    if (a.has("tokenizer") == a.has("vocab-size"))
        die("data prepare: give --tokenizer FILE, or --vocab-size N to train one on the training split");
    if (!a.has("out")) die("data prepare: --out DIR is required");
    double vf = a.real("val-fraction", 0.05, 0.0, 0.5);
    for (auto& f : inputs) require_file(f, "data prepare: input file");
    std::string out = a.str("out");
    make_dirs(out);
    std::vector<std::string> parts[2];   // [split][file]
    for (auto& f : inputs) {
        std::string text = read_file(f), part[2];
        split_train_val(text, vf, &part[0], &part[1]);
        for (int s = 0; s < 2; s++) parts[s].push_back(std::move(part[s]));
    }
    std::string val_split = "documents";
    bool any_val = false;
    for (auto& p : parts[1]) any_val |= !p.empty();
    if (vf > 0 && !any_val) {   // too few documents for the fraction: the text's tail instead (hold_out_tail)
        std::string how = hold_out_tail(vf, parts);
        if (!how.empty()) {
            size_t held = 0, total = 0;
            for (size_t i = 0; i < inputs.size(); i++) held += parts[1][i].size(), total += parts[0][i].size() + parts[1][i].size();
            printf("note: data prepare: too few documents (blank-line separated) for a validation fraction of %g: "
                   "validation holds out the last %zu bytes (%.1f%%) of the text instead, %s\n", vf, held,
                   100.0 * held / total, how.c_str());
            val_split = how.rfind("cut at a line", 0) == 0 ? "tail, at a line boundary" : "tail, inside a line";
        }
    }
    std::string tok_path = a.str("tokenizer");
    if (a.has("vocab-size")) {   // a tokenizer of our own, trained on the training split only
        int vocab = (int)a.integer("vocab-size", 0, 300, 4000000);
        std::string train_txt = out + "/train.txt";
        TmpGuard scratch(train_txt);   // the tokenizer's input, removed however training it ends
        std::string all;
        for (auto& p : parts[0]) all += p;
        write_atomic(train_txt, all);
        tok_path = out + "/tokenizer.json";
        printf("data prepare: training a %d-token BPE tokenizer on the training split (%.2f MB)\n", vocab, all.size() / 1e6);
        fflush(stdout);
        tokenizer_train_files({train_txt}, vocab, tok_path, false);
        unlink(train_txt.c_str());
    }
    std::unique_ptr<Tokenizer, void (*)(Tokenizer*)> tok_owner(tokenizer_load(tok_path), tokenizer_free);
    Tokenizer* tok = tok_owner.get();   // (freed also when an error unwinds: tests and fuzzers make die() throw)
    int V = tokenizer_vocab_size(tok);
    std::vector<uint32_t> split_tokens[2];
    size_t split_bytes[2] = {0, 0};
    long docs_done = 0;
    for (size_t fi = 0; fi < inputs.size(); fi++) {
        const std::string& f = inputs[fi];
        std::string part[2] = {parts[0][fi], parts[1][fi]};
        for (int s = 0; s < 2; s++) {
            if (part[s].empty()) continue;
            printf("data prepare: %s: encoding %s split (%.2f MB)\n", f.c_str(), s ? "val" : "train", part[s].size() / 1e6);
            fflush(stdout);
            std::vector<int> ids = tokenizer_encode(tok, part[s], true);
            for (int id : ids) split_tokens[s].push_back((uint32_t)id);
            split_bytes[s] += part[s].size();
        }
        docs_done++;
    }
    if (split_tokens[0].empty()) die("data prepare: the inputs hold no text for training");
    if (vf > 0 && split_tokens[1].empty()) die("data prepare: the inputs are too short to hold out a validation split");
    json j;
    j["tokenizer"] = "tokenizer.json";
    j["vocab_size"] = V;
    j["bos_token_id"] = tokenizer_bos_id(tok);
    j["eos_token_id"] = tokenizer_eos_id(tok);
    j["val_fraction"] = vf;
    j["val_split"] = vf > 0 ? val_split : "none";
    j["inputs"] = inputs;
    const char* names[2] = {"train", "val"};
    for (int s = 0; s < 2; s++) {
        if (split_tokens[s].empty()) continue;
        shard_write(out + "/" + names[s] + ".bin", split_tokens[s], V);
        double h = unigram_entropy_bits(split_tokens[s], V);
        double tpb = (double)split_tokens[s].size() / split_bytes[s];
        j[names[s]] = {{"file", std::string(names[s]) + ".bin"}, {"tokens", split_tokens[s].size()}, {"bytes", split_bytes[s]},
                       {"bytes_per_token", 1.0 / tpb}, {"unigram_bits_per_token", h}, {"unigram_bits_per_byte", h * tpb}};
        printf("data prepare: %s: %zu tokens, %zu bytes (%.3f bytes/token), unigram entropy %.3f bits/token = %.4f bits/byte\n",
               names[s], split_tokens[s].size(), split_bytes[s], 1.0 / tpb, h, h * tpb);
    }
    if (tok_path != out + "/tokenizer.json") copy_file(tok_path, out + "/tokenizer.json");
    write_atomic(out + "/data.json", j.dump(2) + "\n");
    printf("data prepare: wrote %s/{train.bin,val.bin,data.json,tokenizer.json} from %ld file(s)\n", out.c_str(), docs_done);
    return 0;
}

int cmd_data(int argc, char** argv) {
    if (argc < 3) die("data: give a subcommand: prepare (see deepseek data --help)");
    if (!strcmp(argv[2], "-h") || !strcmp(argv[2], "--help")) {
        printf("usage: deepseek data prepare --input FILE... (--tokenizer FILE | --vocab-size N) --out DIR [--val-fraction F]\n"
               "  (deepseek data prepare --help for details)\n");
        return 0;
    }
    if (!strcmp(argv[2], "prepare")) return cmd_data_prepare(argc, argv);
    die("data: unknown subcommand '%s' (only: prepare)", argv[2]);
}

// ============================================================================
// the data loader: windows of T+1 tokens, shuffled per epoch from the seed, sharded by rank, resumable
//
// The shard is cut into ⌊(n−1)/T⌋ windows; window w covers tokens [w·T, w·T + T] (inputs are the first T, targets
// the last T). Each epoch visits the windows in a permutation drawn from (seed, epoch); rank r of N reads the
// permutation positions p ≡ r (mod N), so the ranks' windows are disjoint. The cursor (epoch, index) is all the
// state there is: saving it and seeking back to it resumes the stream exactly.

static uint64_t splitmix64(uint64_t* s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void loader_shuffle(DataLoader* d) {
    d->perm.resize(d->num_windows);
    for (size_t i = 0; i < d->num_windows; i++) d->perm[i] = i;
    uint64_t s = d->seed * 0x2545F4914F6CDD1Dull + d->epoch;  // Fisher–Yates from (seed, epoch)
    for (size_t i = d->num_windows - 1; i > 0; i--) std::swap(d->perm[i], d->perm[splitmix64(&s) % (i + 1)]);
}

void loader_init(DataLoader* d, const std::string& path, int B, int T, int rank, int world, uint64_t seed, int max_vocab,
                 bool shuffle) {
    if (world < 1 || rank < 0 || rank >= world) die("loader: invalid rank %d of %d", rank, world);
    shard_open(&d->shard, path, max_vocab);
    d->B = B; d->T = T; d->rank = rank; d->world = world; d->seed = seed; d->shuffle = shuffle;
    d->num_windows = d->shard.n > 0 ? (d->shard.n - 1) / T : 0;
    d->per_rank = d->num_windows / world;   // every rank reads the same count; the few leftover windows are skipped
    if (d->per_rank < (size_t)B)
        die("%s: %zu tokens make %zu windows of %d+1 tokens, fewer than one micro-batch (%d sequences × %d rank(s))",
            path.c_str(), d->shard.n, d->num_windows, T, B, world);
    loader_seek(d, 0, 0);
}

void loader_seek(DataLoader* d, uint64_t epoch, size_t index) {
    if (index > d->per_rank) die("loader: cursor %zu is beyond the %zu windows of this rank", index, d->per_rank);
    d->epoch = epoch;
    d->index = index;
    if (d->shuffle) loader_shuffle(d);
    else { d->perm.resize(d->num_windows); for (size_t i = 0; i < d->num_windows; i++) d->perm[i] = i; }
}

// Fills inputs and targets [B, T] with the next B windows of this rank.
void loader_next(DataLoader* d, int* inputs, int* targets) {
    for (int b = 0; b < d->B; b++) {
        if (d->index >= d->per_rank) loader_seek(d, d->epoch + 1, 0);
        size_t w = d->perm[d->index * d->world + d->rank];
        const uint32_t* src = d->shard.tokens + w * d->T;
        for (int t = 0; t < d->T; t++) {
            inputs[b * d->T + t] = (int)src[t];
            targets[b * d->T + t] = (int)src[t + 1];
        }
        d->index++;
    }
}

// ============================================================================
// AdamW (Loshchilov & Hutter; torch.optim.AdamW's arithmetic), β1 0.9, β2 0.95, ε 1e-8, weight decay 0.1
//   p ← p·(1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
//   p ← p − (lr / (1−β1ᵗ)) · m / (sqrt(v) / sqrt(1−β2ᵗ) + ε)          (t = 1, 2, … the update count)
// Weight decay applies to the matrices (embeddings and lm_head included, as transformers' default parameter groups
// do) and not to the RMSNorm weights: decaying a norm weight pulls the layer's gain toward 0, not toward "simple".

void adamw_step(float* p, const float* g, float* m, float* v, size_t n, float lr, float weight_decay, long t) {
    float b1 = (float)ADAMW_BETA1, b2 = (float)ADAMW_BETA2, eps = (float)ADAMW_EPS;
    double bc1 = 1.0 - pow(ADAMW_BETA1, (double)t), bc2 = 1.0 - pow(ADAMW_BETA2, (double)t);
    float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2), decay = 1.0f - lr * weight_decay;
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i];
        float mi = m[i] + (1.0f - b1) * (gi - m[i]);   // torch: exp_avg.lerp_(grad, 1 − β1)
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}

void adamw_update_range(Model* model, AdamW* opt, float lr, size_t b, size_t e) {
    if (b > e || e > model->num_parameters) die("adamw: range [%zu, %zu) outside the %zu parameters", b, e, model->num_parameters);
    if (opt->m.size() != e - b) {
        reserve_huge(&opt->m, e - b);
        reserve_huge(&opt->v, e - b);
        opt->m.assign(e - b, 0.0f);
        opt->v.assign(e - b, 0.0f);
    }
    opt->t++;
    for (const ParamView& pv : param_views(model->cfg)) {
        size_t n = 1;
        for (int64_t d : pv.shape) n *= (size_t)d;
        size_t lo = std::max(b, pv.offset), hi = std::min(e, pv.offset + n);
        if (lo >= hi) continue;
        adamw_step(model->params_memory.data() + lo, model->grads_memory.data() + lo, opt->m.data() + (lo - b),
                   opt->v.data() + (lo - b), hi - lo, lr, pv.is_matrix ? (float)WEIGHT_DECAY : 0.0f, opt->t);
    }
}
void adamw_update(Model* model, AdamW* opt, float lr) { adamw_update_range(model, opt, lr, 0, model->num_parameters); }

// ============================================================================
// gradient clipping at global norm 1.0 (torch.nn.utils.clip_grad_norm_):
//   norm = sqrt(Σ g²) over every parameter;  g ← g · min(1, max_norm / (norm + 1e-6))
// The sum runs in fixed 64K-element chunks added in order, so the result does not depend on the thread count.

// Σ x_i² in double over 16 interleaved lanes (element i → lane i mod 16), then the lanes in order: a fixed order,
// so the same bits whatever the build or alignment, that vectorises (one running sum kept it scalar: 13 ms for 20M
// gradients). x_i² is exact in double, so a fused multiply-add gives the same bits as a multiply and an add.
double sum_squares(const float* x, size_t n) {
    double lane[16] = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) lane[l] += (double)x[i + l] * x[i + l];
    for (int l = 0; i < n; i++, l++) lane[l] += (double)x[i] * x[i];
    double s = 0.0;
    for (double v : lane) s += v;
    return s;
}

// Σ x_i² over fixed 64K-element chunks summed in parallel and added in order: the same bits whatever the thread
// count (a resumed run is bit-exact). The global norm and the data-parallel norm (dist_sum_squares) share it.
double grad_sum_squares(const float* x, size_t n) {
    const size_t CHUNK = 65536;
    size_t nchunks = (n + CHUNK - 1) / CHUNK;
    std::vector<double> part(nchunks, 0.0);
    #pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nchunks; c++) part[c] = sum_squares(x + c * CHUNK, std::min(n, (c + 1) * CHUNK) - c * CHUNK);
    double s = 0.0;
    for (double v : part) s += v;
    return s;
}

double grad_global_norm(const float* g, size_t n) { return sqrt(grad_sum_squares(g, n)); }

// torch's clip coefficient: max_norm / (norm + 1e-6), clamped to 1 (in double; a NaN norm gives 1, no scaling, and
// the loop's non-finite check stops the run). Every clipping site uses it: clip_grad_norm and the training loop's
// backend_clip (the CPU scales its range of the gradients in place; the CUDA backend hands it to AdamW as grad_scale),
// each applying it to the gradients as a float.
double clip_coefficient(double norm, double max_norm) {
    double coef = max_norm / (norm + 1e-6);
    return coef < 1.0 ? coef : 1.0;
}

double clip_grad_norm(float* g, size_t n, double max_norm) {
    double norm = grad_global_norm(g, n);
    double coef = clip_coefficient(norm, max_norm);
    if (coef < 1.0) {
        float c = (float)coef;
        #pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) g[i] *= c;
    }
    return norm;
}

// ============================================================================
// learning-rate schedules. step = 0, 1, … the update about to be taken, of total; warmup linear to the peak:
//   lr = peak · (step+1)/warmup                       while step < warmup
//   multistep (the paper's): peak, then 31.6% of the peak once 80% of the training tokens are seen, 10% after 90%
//   cosine (for comparison): peak · (0.1 + 0.9 · ½(1 + cos(π · progress))), decaying to the same 10%
// With a constant batch, "tokens seen" is proportional to steps: the drop is at the first step ≥ 0.8·total.

long default_warmup_steps(long total_steps) {
    // the paper warms up over 2000 of its ~212k steps; a short run keeps a proportion of 5% (at least 1 step)
    return std::max(1L, std::min(PAPER_WARMUP_STEPS, total_steps / 20));
}

double lr_at(LRSchedule sched, double peak, long step, long total, long warmup) {
    if (step < warmup) return peak * (double)(step + 1) / (double)warmup;
    if (sched == LRSchedule::MULTISTEP) {
        if ((double)step >= MULTISTEP_AT_2 * (double)total) return peak * MULTISTEP_FACTOR_2;
        if ((double)step >= MULTISTEP_AT_1 * (double)total) return peak * MULTISTEP_FACTOR_1;
        return peak;
    }
    double progress = total > warmup ? (double)(step - warmup) / (double)(total - warmup) : 1.0;
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + cos(M_PI * std::min(1.0, progress))));
}

// ============================================================================
// scaling laws: the paper's fits, and a concrete shape whose M is near M_opt

ScalingPlan scaling_plan(double C) {
    ScalingPlan p;
    p.compute = C;
    p.batch_tokens = BOPT_K * pow(C, BOPT_E);
    p.learning_rate = LROPT_K * pow(C, LROPT_E);
    p.flops_per_token = MOPT_K * pow(C, MOPT_E);
    p.tokens = DOPT_K * pow(C, DOPT_E);
    return p;
}

// A shape for M_target: head_dim 64 (128 from d_model 2048 up, as the released models), MHA, FFN 8/3·C rounded up
// to a multiple of 256 (as the released models), and the depth L whose width C (a multiple of the head_dim) makes M closest to the
// target while keeping the aspect ratio C/L nearest to 100 — between the 7B's 137 and the 67B's 86.
Config plan_shape(double M_target, int seq_len, int vocab_size) {
    Config best;
    double best_score = 1e300;
    for (int L = 1; L <= 160; L++) {
        for (int C = 64; C <= 16384; C += 64) {
            int D = C >= 2048 ? 128 : 64;
            if (C % D) continue;
            double M = 72.0 * L * (double)C * C + 12.0 * L * (double)C * seq_len;
            double score = fabs(log(M / M_target)) * 4.0 + fabs(log((double)C / L / 100.0));
            if (score < best_score) {
                best_score = score;
                best = Config();
                best.vocab_size = vocab_size; best.hidden_size = C; best.num_hidden_layers = L;
                best.head_dim = D; best.num_attention_heads = C / D; best.num_key_value_heads = C / D;
                best.intermediate_size = (int)((8.0 * C / 3.0 + 255.0) / 256.0) * 256;
                best.max_position_embeddings = std::max(seq_len, 256);
            }
        }
    }
    return best;
}

static const char* PLAN_USAGE =
    "usage: deepseek plan (--compute C | --flops-per-token M --tokens D) [--seq-len T] [--vocab-size V]\n"
               "  the paper's scaling laws for a compute budget C = M·D (FLOPs):\n"
               "    batch_tokens  B_opt = 0.2920·C^0.3271      learning_rate  η_opt = 0.3118·C^-0.1250\n"
               "    flops_per_token M_opt = 0.1715·C^0.5243   tokens         D_opt = 5.8316·C^0.4757\n"
               "  and a concrete shape (layers, hidden_size, heads) whose M = 72·L·C² + 12·L·C·T is near M_opt\n"
               "  (T = --seq-len, default 4096 as in the paper).\n";

int cmd_plan(int argc, char** argv) {
    Args a(argc, argv, 2, "plan", PLAN_USAGE, {"compute", "flops-per-token", "tokens", "seq-len", "vocab-size"}, {});
    double C;
    if (a.has("compute")) {
        if (a.has("flops-per-token") || a.has("tokens")) die("plan: give --compute C or --flops-per-token M --tokens D, not both");
        C = a.real("compute", 0, 1e6, 1e30);
    } else if (a.has("flops-per-token") && a.has("tokens")) {
        C = a.real("flops-per-token", 0, 1, 1e20) * a.real("tokens", 0, 1, 1e20);
    } else die("plan: give --compute C (FLOPs) or both --flops-per-token M and --tokens D");
    int T = (int)a.integer("seq-len", 4096, 1, 1 << 20);
    int V = (int)a.integer("vocab-size", 102400, 1, 4000000);
    ScalingPlan p = scaling_plan(C);
    Config s = plan_shape(p.flops_per_token, T, V);
    printf("compute: %.4g\n", C);
    printf("batch_tokens: %.0f\n", p.batch_tokens);
    printf("batch_sequences: %.1f (of %d tokens)\n", p.batch_tokens / T, T);
    printf("learning_rate: %.4g\n", p.learning_rate);
    printf("flops_per_token: %.4g\n", p.flops_per_token);
    printf("tokens: %.4g\n", p.tokens);
    printf("steps: %.0f\n", ceil(p.tokens / p.batch_tokens));
    printf("shape: layers %d, hidden_size %d, heads %d (head_dim %d), intermediate_size %d, vocab_size %d\n",
           s.num_hidden_layers, s.hidden_size, s.num_attention_heads, s.head_dim, s.intermediate_size, V);
    printf("shape_flops_per_token: %.4g (%.1f%% of M_opt, context %d)\n", config_flops_per_token(s, T),
           100.0 * config_flops_per_token(s, T) / p.flops_per_token, T);
    printf("shape_parameters: %zu\n", config_num_parameters(s));
    return 0;
}

// ============================================================================
// objectives: a batch → its loss and per-token loss weights
//
// Every stage's gradient comes from per-token loss weights: the forward pass gives each token's nll, the objective
// fills dlosses[B·T] with ∂(loss)/∂(nll of each token), and model_backward(dlosses) gives the gradient.
// Pre-training (pretrain_objective): the mean next-token cross-entropy, 1/N per token. SFT (sft_forward_backward):
// the same mean over the assistant tokens only (the others' targets are −1). DPO (dpo_forward_backward):
// per-sequence weights ±β·σ(…)/n from the sequences' log-probs. A stage's step (struct Stage) runs its objective.

// (pretrain_objective, below the backend section: it runs on either backend)

// ============================================================================
// (the Backend a loop runs on — the CPU's Model or the CUDA model — is deepseek.cu's section "backends")

// pre-training's objective: the forward (mean loss over the unmasked tokens) and the per-token weights 1/N
float pretrain_objective(Backend* be, const int* inputs, const int* targets, int B, int T, std::vector<float>* dlosses) {
    float loss = backend_forward(be, inputs, targets, B, T);
    model_mean_loss_weights(targets, B * T, dlosses);
    return loss;
}

// ============================================================================
// evaluation: validation loss and bits per byte; a short greedy sample

// Bits per byte = Σ nll / ln 2 / Σ bytes of the target tokens: independent of the tokenizer, as in the paper.
// token_bytes[id] is the byte length of each token (0 for special tokens such as BOS); without a tokenizer (empty
// table) the split's mean bytes per token stands in.
EvalResult evaluate(Backend* be, DataLoader* val, int max_windows, const std::vector<int>& token_bytes,
                              double mean_bytes_per_token) {
    EvalResult r;
    int B = val->B, T = val->T;
    std::vector<int> in((size_t)B * T), tg((size_t)B * T);
    loader_seek(val, 0, 0);
    size_t windows = std::min((size_t)std::max(max_windows, B), val->per_rank) / B * B;
    double nll = 0, bytes = 0;
    size_t tokens = 0;
    for (size_t w = 0; w < windows; w += B) {
        loader_next(val, in.data(), tg.data());
        backend_forward(be, in.data(), tg.data(), B, T);
        const float* losses = backend_losses(be);
        for (size_t i = 0; i < (size_t)B * T; i++) {
            nll += losses[i];
            bytes += token_bytes.empty() ? mean_bytes_per_token : tg[i] < (int)token_bytes.size() ? token_bytes[tg[i]] : 0;
        }
        tokens += (size_t)B * T;
    }
    r.loss = nll / std::max<size_t>(tokens, 1);
    r.bits_per_byte = bytes > 0 ? nll / log(2.0) / bytes : 0;
    r.tokens = tokens;
    return r;
}

// Greedy decoding by full recomputation (the KV-cache sampler lives in infer.cu): argmax over the ids below limit.
std::vector<int> sample_greedy(Model* m, std::vector<int> ids, int n_new, int limit) {
    int ctx = m->cfg.max_position_embeddings;
    for (int i = 0; i < n_new; i++) {
        int start = std::max(0, (int)ids.size() - ctx), T = (int)ids.size() - start;
        model_forward(m, ids.data() + start, nullptr, 1, T);
        const float* z = m->acts.logits + (size_t)(T - 1) * m->cfg.vocab_size;
        int best = 0;
        for (int v = 1; v < std::min(limit, m->cfg.vocab_size); v++)
            if (z[v] > z[best]) best = v;
        ids.push_back(best);
    }
    return ids;
}
// sample_greedy on the GPU: the prompt into a KV cache, then one token at a time, up to the model's context
static std::vector<int> sample_greedy_cuda(CudaModel* g, const Config& c, std::vector<int> ids, int n_new, int limit) {
    int total = std::min((int)ids.size() + n_new, c.max_position_embeddings);
    if (ids.empty() || (int)ids.size() >= total) return ids;
    CudaDecode* d = cuda_decode_create(g, total);
    const float* z = nullptr;
    for (size_t t = 0; t < ids.size(); t++) z = cuda_decode_step(d, ids[t], (int)t, t + 1 == ids.size());
    while ((int)ids.size() < total) {
        int best = 0;
        for (int v = 1; v < std::min(limit, c.vocab_size); v++)
            if (z[v] > z[best]) best = v;
        ids.push_back(best);
        if ((int)ids.size() < total) z = cuda_decode_step(d, best, (int)ids.size() - 1, true);
    }
    cuda_decode_free(d);
    return ids;
}

// ============================================================================
// checkpoints: a Hugging Face model directory + optimizer.safetensors (AdamW m and v per tensor) + trainer_state.json
//
// Written to OUT/step_NNNNNN.tmp, every file fsynced, then renamed to OUT/step_NNNNNN: a checkpoint directory
// without the .tmp suffix is always complete, whatever moment the process is killed at. trainer_state.json is the
// last file written. Old checkpoints are renamed to .del before removal, for the same reason.

static std::string step_name(long step) {
    char b[32];
    snprintf(b, sizeof b, "step_%06ld", step);
    return b;
}

// write_shards (ZeRO-1): called once the temporary directory exists, it has every rank write its optimizer shard
// there (optimizer-rank<r>-of-<N>.safetensors) in place of optimizer.safetensors, before the rename publishes it.
void checkpoint_save(const std::string& dir, const Model& m, const AdamW& opt, const json& state, const std::string& tokenizer,
                     const std::function<void(const std::string& tmp)>& write_shards = nullptr) {
    std::string tmp = dir + ".tmp", old = dir + ".del";
    remove_tree(tmp);
    TmpGuard guard(tmp);   // a failed save (a full disk) leaves no DIR.tmp behind
    make_dirs(tmp);
    if (write_shards) write_shards(tmp);
    model_save_dir(m, tmp, StoreDtype::F32);
    if (!write_shards) {
        std::vector<TensorOut> ts;
        for (const ParamView& pv : param_views(m.cfg)) {
            ts.push_back({"exp_avg." + pv.name, DType::F32, pv.shape, opt.m.data() + pv.offset});
            ts.push_back({"exp_avg_sq." + pv.name, DType::F32, pv.shape, opt.v.data() + pv.offset});
        }
        safetensors_write(tmp + "/optimizer.safetensors", ts, false, {{"step", std::to_string(opt.t)}, {"optimizer", "AdamW"}});
    }
    if (!tokenizer.empty() && file_exists(tokenizer)) copy_file(tokenizer, tmp + "/tokenizer.json");
    write_atomic(tmp + "/trainer_state.json", state.dump(2) + "\n");
    fsync_dir(tmp);
    bool replacing = dir_exists(dir);
    if (replacing) {  // e.g. OUT/final from an earlier run: move it aside, then drop it
        remove_tree(old);
        if (rename(dir.c_str(), old.c_str()) != 0) die("cannot move %s aside: %s", dir.c_str(), strerror(errno));
    }
    if (rename(tmp.c_str(), dir.c_str()) != 0) {
        int e = errno;
        if (replacing) rename(old.c_str(), dir.c_str());   // the earlier checkpoint back in its place
        die("cannot rename %s to %s: %s", tmp.c_str(), dir.c_str(), strerror(e));
    }
    guard.forget();
    fsync_dir(parent_dir(dir));
    remove_tree(old);
}

constexpr long long MAX_STEPS = 1LL << 40;   // --steps' bound: a step count past it is not a real one

// Loads weights, AdamW state and trainer_state.json from a checkpoint directory; the step is typed and checked
// (the rest of trainer_state.json is the caller's: pre-training and alignment keep different fields).
static json checkpoint_load(const std::string& dir, Model* m, AdamW* opt) {
    require_dir(dir, "checkpoint");
    std::string sp = dir + "/trainer_state.json";
    if (!path_exists(sp)) die("%s: not a training checkpoint (no trainer_state.json)", dir.c_str());
    json state = json_parse_file(sp);   // a directory or FIFO in its place is refused by name
    long step = (long)json_int(state, "step", sp, 0, 0, MAX_STEPS, true);
    json_object(state, "settings", sp, true);
    model_load_dir(m, dir);
    opt->m.clear();
    opt->v.clear();
    if (file_exists(dir + "/optimizer.safetensors") || zero_state_world(dir) == 0) {
        SafeTensors st;
        st.open_file(dir + "/optimizer.safetensors");
        auto at = st.metadata.find("step");
        if (at != st.metadata.end() && at->second != std::to_string(step))
            die("%s/optimizer.safetensors is at step %s but trainer_state.json at step %ld: the checkpoint mixes two saves",
                dir.c_str(), at->second.c_str(), step);
        opt->m.assign(m->num_parameters, 0.0f);
        opt->v.assign(m->num_parameters, 0.0f);
        for (const ParamView& pv : param_views(m->cfg)) {
            st.read_f32("exp_avg." + pv.name, pv.shape, opt->m.data() + pv.offset);
            st.read_f32("exp_avg_sq." + pv.name, pv.shape, opt->v.data() + pv.offset);
        }
    }   // else ZeRO-1 shards (optimizer-rank*-of-*.safetensors): load_optimizer_state reads them for this rank
    opt->t = step;
    return state;
}

long checkpoint_read(const std::string& dir, Model* m, AdamW* opt) {
    checkpoint_load(dir, m, opt);
    return opt->t;
}

static bool is_step_name(const std::string& n) {
    return n.size() == 11 && n.rfind("step_", 0) == 0 && n.find_first_not_of("0123456789", 5) == std::string::npos;
}
// The newest complete checkpoint in a run directory ("" if none); a checkpoint directory itself is returned as is.
// A finished run's final/ counts, by its step: after `--resume RUN --steps more` its step_NNNNNN pass it.
std::string checkpoint_latest(const std::string& dir) {
    if (path_exists(dir + "/trainer_state.json")) return dir;   // (not a regular file: checkpoint_load says what it is)
    DIR* d = opendir(dir.c_str());
    if (!d) return "";
    std::vector<std::string> steps;
    while (struct dirent* e = readdir(d)) {
        std::string n = e->d_name;
        if (is_step_name(n) && file_exists(dir + "/" + n + "/trainer_state.json")) steps.push_back(n);
    }
    closedir(d);
    std::sort(steps.begin(), steps.end());
    std::string fin = dir + "/final", fs = fin + "/trainer_state.json";
    if (file_exists(fs)) {
        long final_step = (long)json_int(json_parse_file(fs), "step", fs, 0, 0, MAX_STEPS, true);
        if (steps.empty() || final_step >= atol(steps.back().c_str() + 5)) return fin;
    }
    if (steps.empty()) return "";
    return dir + "/" + steps.back();
}

// keeps the newest `keep` step_NNNNNN checkpoints of a run directory
static void checkpoint_prune(const std::string& dir, int keep) {
    DIR* d = opendir(dir.c_str());
    if (!d) return;
    std::vector<std::string> steps;
    while (struct dirent* e = readdir(d)) {
        std::string n = e->d_name;
        if (is_step_name(n)) steps.push_back(n);
    }
    closedir(d);
    std::sort(steps.begin(), steps.end());
    for (size_t i = 0; i + keep < steps.size(); i++) {
        std::string p = dir + "/" + steps[i];
        if (rename(p.c_str(), (p + ".del").c_str()) == 0) remove_tree(p + ".del");
    }
}

// ============================================================================
// signals: SIGINT / SIGTERM finish the current step, write a checkpoint and exit cleanly (a second one kills)

static volatile sig_atomic_t g_stop_signal = 0;
static void on_stop_signal(int sig) { g_stop_signal = sig; }
static void install_stop_handlers() {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESETHAND;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
}

// ============================================================================
// the run's settings (flags; saved in trainer_state.json so --resume continues the same run)

struct TrainSettings {
    std::string data, out, model_source;   // model_source: "preset:NAME", "model:DIR" or "plan"
    long steps = 0;
    long batch_tokens = 0;
    int seq_len = 0;
    int micro_batch = 0;     // sequences per forward pass
    int accum = 1;           // micro-batches per step and rank
    double lr = 0;
    LRSchedule schedule = LRSchedule::MULTISTEP;
    long warmup = 0;
    long eval_every = 0, save_every = 0;
    int eval_windows = 0;    // validation windows per evaluation
    int keep = 3;
    int sample_tokens = 32;
    uint64_t seed = 1337;
    double compute = 0;      // when the laws chose batch/lr/tokens
    int rank = 0, world = 1; // data parallelism: this process among `world` MPI ranks (a lone process: 0 of 1)
    int zero = 0;            // ZeRO stage: 1 shards AdamW's m and v over the ranks
};

static json settings_json(const TrainSettings& s) {
    return {{"data", s.data}, {"out", s.out}, {"model_source", s.model_source}, {"steps", s.steps},
            {"batch_tokens", s.batch_tokens}, {"seq_len", s.seq_len}, {"micro_batch", s.micro_batch}, {"accum", s.accum},
            {"lr", s.lr}, {"lr_schedule", s.schedule == LRSchedule::MULTISTEP ? "multistep" : "cosine"},
            {"warmup_steps", s.warmup}, {"eval_every", s.eval_every}, {"save_every", s.save_every},
            {"eval_windows", s.eval_windows}, {"keep", s.keep}, {"sample_tokens", s.sample_tokens}, {"seed", s.seed},
            {"compute", s.compute}, {"world_size", s.world}, {"zero", s.zero}};
}
// trainer_state.json's "settings", every field typed and in the range its flag allows (WHERE names the file)
static TrainSettings settings_from_json(const json& j, const std::string& where) {
    TrainSettings s;
    s.data = json_str(j, "data", where, "", true);
    s.out = json_str(j, "out", where, "", true);
    s.model_source = json_str(j, "model_source", where, "", true);
    s.steps = (long)json_int(j, "steps", where, 0, 1, MAX_STEPS, true);
    s.batch_tokens = (long)json_int(j, "batch_tokens", where, 0, 1, MAX_STEPS, true);
    s.seq_len = (int)json_int(j, "seq_len", where, 0, 1, 1 << 20, true);
    s.micro_batch = (int)json_int(j, "micro_batch", where, 0, 1, 1 << 20, true);
    s.accum = (int)json_int(j, "accum", where, 0, 1, 1 << 30, true);
    s.lr = json_num(j, "lr", where, 0, 1e-12, 1e300, true);
    std::string sched = json_str(j, "lr_schedule", where, "", true);
    if (sched != "multistep" && sched != "cosine")
        die("%s: field 'lr_schedule' must be \"multistep\" or \"cosine\", got \"%s\"", where.c_str(), sched.c_str());
    s.schedule = sched == "cosine" ? LRSchedule::COSINE : LRSchedule::MULTISTEP;
    s.warmup = (long)json_int(j, "warmup_steps", where, 0, 0, MAX_STEPS, true);
    s.eval_every = (long)json_int(j, "eval_every", where, 0, 0, MAX_STEPS, true);
    s.save_every = (long)json_int(j, "save_every", where, 0, 0, MAX_STEPS, true);
    s.eval_windows = (int)json_int(j, "eval_windows", where, 0, 1, 1 << 24, true);
    s.keep = (int)json_int(j, "keep", where, 0, 1, 1 << 20, true);
    s.sample_tokens = (int)json_int(j, "sample_tokens", where, 0, 0, 1 << 16, true);
    s.seed = (uint64_t)json_int(j, "seed", where, 0, 0, 1LL << 62, true);
    s.compute = json_num(j, "compute", where, 0, 0, 1e30, true);
    s.world = (int)json_int(j, "world_size", where, 1, 1, 1 << 20, true);
    s.zero = (int)json_int(j, "zero", where, 0, 0, 1);
    // the batch is accum micro-batches of micro_batch sequences of seq_len tokens on each of world_size ranks
    __int128 bt = (__int128)s.accum * s.micro_batch * s.world * s.seq_len;
    if (bt != s.batch_tokens)
        die("%s: batch_tokens %ld is not accum × micro_batch × world_size × seq_len (%d × %d × %d × %d)", where.c_str(),
            s.batch_tokens, s.accum, s.micro_batch, s.world, s.seq_len);
    return s;
}

// ============================================================================
// metrics and the loss-curve picture

// metrics.jsonl's records, each an object with an integer "step" and numbers (or null: a NaN) for its values. A torn
// last line (no newline: a process killed mid-write) is dropped; any other bad line is damage, and an error naming it.
// Not a regular file (/dev/null standing in for it): no records.
static std::vector<json> read_jsonl(const std::string& path) {
    std::vector<json> v;
    if (!file_exists(path)) return v;
    std::string text = read_file(path);
    size_t pos = 0;
    int line = 0;
    while (pos < text.size()) {
        size_t e = text.find('\n', pos);
        if (e == std::string::npos) break;
        line++;
        std::string where = path + ":" + std::to_string(line);
        json j;
        try { j = json::parse(text.substr(pos, e - pos)); } catch (const json::exception&) {
            die("%s: not a metrics record (invalid JSON)", where.c_str());
        }
        if (!j.is_object()) die("%s: not a metrics record (expected a JSON object)", where.c_str());
        json_int(j, "step", where, 0, 0, MAX_STEPS, true);
        for (const char* k : {"tokens", "loss", "val_loss", "val_bpb"}) json_num(j, k, where, 0, -1e308, 1e308);
        v.push_back(std::move(j));
        pos = e + 1;
    }
    return v;
}
// a record's number (checked by read_jsonl), NaN when absent or null
static double metric_num(const json& j, const char* key) {
    auto it = j.find(key);
    return it == j.end() || !it->is_number() ? NAN : it->get<double>();
}

// Rewrites metrics.jsonl keeping only the records up to `step` (a resumed run replaces what followed its checkpoint).
static void metrics_truncate(const std::string& path, long step) {
    if (!file_exists(path)) return;
    std::string kept;
    for (const json& j : read_jsonl(path))
        if (j["step"].get<long>() <= step) kept += j.dump() + "\n";
    write_atomic(path, kept);
}

// metrics.jsonl, appended to: a regular file, or a character device standing in for one (/dev/null). A FIFO would
// block and a directory cannot be written: both refused. Every write is checked (a full disk is an error).
static std::string g_metrics_path;
static FILE* metrics_open(const std::string& path) {
    struct stat st;
    if (stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode) && !S_ISCHR(st.st_mode))
        die("%s is %s, not a regular file", path.c_str(), mode_kind(st.st_mode));
    FILE* f = fopen(path.c_str(), "a");
    if (!f) die("cannot write %s: %s", path.c_str(), strerror(errno));
    g_metrics_path = path;
    return f;
}
static void metrics_close(FILE* f) {
    if (f && fclose(f) != 0) die("cannot write %s: %s", g_metrics_path.c_str(), strerror(errno));
}

// train and validation loss against tokens, with gnuplot (Debian gnuplot-nox); a note if it is missing
static std::string plot_loss_curve(const std::string& out) {
    std::string metrics = out + "/metrics.jsonl", tr = out + "/loss_train.tsv", va = out + "/loss_val.tsv";
    std::string ttrain = "# tokens\tloss\n", tval = "# tokens\tval_loss\tval_bpb\n";
    for (const json& j : read_jsonl(metrics)) {
        char b[128];
        double tokens = metric_num(j, "tokens"), loss = metric_num(j, "loss"), vl = metric_num(j, "val_loss");
        if (!std::isnan(loss)) { snprintf(b, sizeof b, "%.0f\t%.6f\n", tokens, loss); ttrain += b; }
        if (!std::isnan(vl)) {
            snprintf(b, sizeof b, "%.0f\t%.6f\t%.6f\n", tokens, vl, metric_num(j, "val_bpb"));
            tval += b;
        }
    }
    write_atomic(tr, ttrain);
    write_atomic(va, tval);
    std::string png = out + "/loss.png", gp = out + "/loss.gp";
    std::string script =
        "set terminal pngcairo size 900,560 noenhanced\nset output '" + png + "'\n"
        "set title 'deepseek train: loss vs tokens'\nset xlabel 'tokens'\nset ylabel 'cross-entropy (nats/token)'\n"
        "set grid\nset key top right\nset format x '%.1s%c'\n"
        "plot '" + tr + "' using 1:2 with lines lw 1 lc rgb '#4a7ebb' title 'train', \\\n"
        "     '" + va + "' using 1:2 with linespoints lw 2 pt 7 lc rgb '#d0502a' title 'validation'\n";
    write_atomic(gp, script);
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) return "";
    std::string cmd = "gnuplot '" + gp + "' 2>/dev/null";
    if (system(cmd.c_str()) != 0 || !file_exists(png)) {
        // pngcairo may be missing from a minimal build; the plain png terminal is always there
        script.replace(script.find("pngcairo"), 8, "png");
        write_atomic(gp, script);
        if (system(cmd.c_str()) != 0) return "";
    }
    return file_exists(png) ? png : "";
}

// ============================================================================
// the training loop: one loop for pre-training, SFT and DPO
//
// One step: zero the gradients; the stage's objective reads its batch and fills them (all-reduced over the ranks) and
// returns its metrics; the ranks agree on the loss (their mean) and on a stop request; clipping at global norm 1.0;
// a non-finite loss or norm stops the run before any update; lr_at(step) and AdamW. Then the step's metrics record,
// the progress line every log_every steps (and the last), the evaluation every eval_every steps (and the last; also
// before the first step of a new run), a checkpoint every save_every steps or on SIGINT/SIGTERM (then the run stops),
// the newest keep kept; after the last step OUT/final instead. What differs between the stages is their struct Stage: the objective and its batch (windows
// of a token shard; items in a shuffled order per epoch), their fields of the metrics record, the wording of their
// progress line, their evaluation, and what they write to trainer_state.json.

// A run as the loop sees it. TrainRun (pre-training) and AlignRun (SFT, DPO) extend it with their data.
struct Trainer {
    std::string cmd;                // "train", "sft", "dpo": `deepseek CMD --resume …` in the stop message
    std::string out;                // the run directory
    std::string tokenizer_path;     // copied into each checkpoint ("" when there is none)
    Dist dist;                      // MPI ranks (pre-training; SFT and DPO run one rank) and ZeRO-1's shards
    int zero = 0;                   // ZeRO-1: each rank keeps its shard of AdamW's state
    Model model;
    AdamW opt;
    Backend be{&model};             // --device cuda: be.cuda holds the model on the GPU (backend_open)
    float grad_scale = 1.0f;        // CUDA: the clip coefficient AdamW applies (backend_clip)
    long step = 0, steps = 0;       // updates done; the run's last step
    double lr = 0;                  // the peak learning rate of the schedule
    LRSchedule schedule = LRSchedule::MULTISTEP;
    long warmup = 0;
    long log_every = 1;             // a progress line every log_every steps (≥ 1) and at the last
    long eval_every = 0;            // Stage::evaluate every eval_every steps and at the last (0: never)
    long save_every = 0;            // a checkpoint every save_every steps (0: only OUT/final and on a signal)
    int keep = 3;                   // step_NNNNNN checkpoints kept
    double elapsed_before = 0;      // seconds spent by earlier processes of this run (resume)
    FILE* metrics = nullptr;        // OUT/metrics.jsonl on rank 0 (open_run); the loop closes it
    void* overlap = nullptr;        // GPUs: the all-reduce overlapped with the backward (GradOverlap, dp_backward_begin)
};

// An update just taken, for the stage's fields of its metrics record and its progress line.
struct StepReport {
    double loss = 0, lr = 0, norm = 0;   // the global batch's loss, the learning rate used, the gradient norm (unclipped)
    double step_s = 0;                   // this step's seconds: its gradients and its update
    double line_s = 0;                   // seconds since the last progress line (or the loop's start)
    double elapsed = 0, eta = 0;         // the run's seconds so far (earlier processes included); an estimate of those left
    std::map<std::string, double> sums;  // each numeric metric of Stage::step summed over the steps since the last line
    int nsum = 0;                        // those steps
};

struct Stage {
    std::string step_word;          // a step in its messages: "step" (pre-training), "sft step", "dpo step"
    std::string none_saved;         // the non-finite message's last good checkpoint when this process wrote none
    // One step's gradients, accumulated into the zeroed gradients and summed over the ranks; returns this rank's
    // metrics for the record and the progress line, "loss" among them (this rank's; the loop averages it over ranks).
    std::function<json()> step;
    std::function<void(json* record, const StepReport&)> record;   // its fields of the step's metrics record
    std::function<void(const StepReport&)> progress;               // its progress line
    std::function<void()> evaluate;                                // held-out evaluation, samples
    std::function<json(double elapsed)> state;                     // trainer_state.json of a checkpoint
};

// ---------------------------------------------------------------------------- data parallelism: one path, two backends
// The ranks' gradients are summed (an all-reduce; under ZeRO-1 a reduce-scatter, since a rank needs only its shard of
// the sum), clipped at the global norm (under ZeRO-1 the shards' Σg² added over ranks), AdamW updates the rank's range
// of the weights (everything, or its shard), and under ZeRO-1 an all-gather reassembles the weights. The backend says
// where the gradients and weights are (backend_grads, backend_weights: host memory on the CPU, device memory on the
// GPU); only the collective differs: MPI on the CPU, NCCL on the GPU. So the CPU's MPI tests run the logic the GPUs run.
static void dp_allreduce(const Trainer* t, float* x, size_t n) {
    if (t->dist.world == 1) return;
    if (t->be.cuda) dist_nccl_allreduce_sum(t->dist, x, n, nullptr);
    else dist_allreduce_sum(t->dist, x, n);
}
static void dp_reduce_scatter(const Trainer* t, float* x) {
    if (t->dist.world == 1) return;
    if (t->be.cuda) dist_nccl_reduce_scatter_sum(t->dist, x, nullptr);
    else dist_reduce_scatter_sum(t->dist, x);
}
static void dp_allgather(const Trainer* t, float* x) {
    if (t->dist.world == 1) return;
    if (t->be.cuda) dist_nccl_allgather(t->dist, x, nullptr);
    else dist_allgather(t->dist, x);
}
// AdamW's range for this rank: its ZeRO-1 shard (dist_shards), or every parameter. Before backend_open.
static void dp_optimizer_range(Trainer* t) {
    t->be.opt_begin = t->zero ? t->dist.shard_begin() : 0;
    t->be.opt_end = t->zero ? t->dist.shard_end() : t->model.num_parameters;
    if (t->zero && t->dist.shard.size() != (size_t)t->dist.world + 1) die("ZeRO-1: call dist_shards first");
}
// GPUs without ZeRO-1: the all-reduce overlapped with the last micro-batch's backward. The backward runs from the last
// layer to the first, so layer l's gradient slices are final while layers l−1 … 0 are still computed: each layer's 9
// slices go to NCCL at once, one grouped all-reduce on a communication stream that waits for the layer's kernels (an
// event); reduce_gradients adds the embedding, the final norm and lm_head, then the compute stream waits for the
// communication stream. The same sums as one all-reduce of the whole buffer. DEEPSEEK_GRAD_OVERLAP=0 turns it off.
// (Under ZeRO-1 the reduce-scatter's shards do not follow the layers: one collective after the backward.)
#ifdef DEEPSEEK_NCCL
struct GradOverlap {
    cudaStream_t comm = nullptr;
    std::vector<cudaEvent_t> layer_done;                          // one per layer
    cudaEvent_t comm_done = nullptr;
    std::vector<std::vector<std::pair<size_t, size_t>>> slices;   // per layer: (offset, count) of its tensors
    std::vector<std::pair<size_t, size_t>> rest;                  // the embedding, the final norm, lm_head
    bool active = false;                                          // this step's backward handed its layers over
};
static void cuda_ok(cudaError_t e, const char* what) {
    if (e != cudaSuccess) die("CUDA: %s failed: %s", what, cudaGetErrorString(e));
}
static GradOverlap* overlap_state(Trainer* t) {
    if (t->overlap) return (GradOverlap*)t->overlap;
    GradOverlap* o = new GradOverlap;
    const Config& c = t->model.cfg;
    cuda_ok(cudaStreamCreateWithFlags(&o->comm, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    o->layer_done.resize(c.num_hidden_layers);
    for (cudaEvent_t& e : o->layer_done) cuda_ok(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
    cuda_ok(cudaEventCreateWithFlags(&o->comm_done, cudaEventDisableTiming), "cudaEventCreate");
    o->slices.resize(c.num_hidden_layers);
    for (const ParamView& pv : param_views(c)) {
        size_t n = 1;
        for (int64_t d : pv.shape) n *= (size_t)d;
        int l = -1;
        if (sscanf(pv.name.c_str(), "model.layers.%d.", &l) == 1) o->slices[l].push_back({pv.offset, n});
        else o->rest.push_back({pv.offset, n});
    }
    t->overlap = o;
    return o;
}
#endif
static bool dp_overlaps(const Trainer* t) {
    if (!t->be.cuda || t->dist.world == 1 || t->zero || !dist_nccl_available()) return false;
    const char* e = getenv("DEEPSEEK_GRAD_OVERLAP");
    return !(e && std::string(e) == "0");
}
// before the step's last backward: from here each finished layer's gradients are summed over the ranks
static void dp_backward_begin(Trainer* t) {
#ifdef DEEPSEEK_NCCL
    if (!dp_overlaps(t)) return;
    GradOverlap* o = overlap_state(t);
    o->active = true;
    float* g = backend_grads(&t->be);
    cuda_model_on_layer_grads(t->be.cuda, [t, o, g](int l) {
        cuda_ok(cudaEventRecord(o->layer_done[l], 0), "cudaEventRecord");   // after layer l's kernels (default stream)
        cuda_ok(cudaStreamWaitEvent(o->comm, o->layer_done[l], 0), "cudaStreamWaitEvent");
        dist_nccl_allreduce_slices(t->dist, g, o->slices[l], o->comm);
    });
#else
    (void)t;
#endif
}
// the overlapped all-reduce's rest, and the compute stream made to wait for it; false if this step had none
static bool dp_overlap_finish(Trainer* t) {
#ifdef DEEPSEEK_NCCL
    GradOverlap* o = (GradOverlap*)t->overlap;
    if (!o || !o->active) return false;
    o->active = false;
    cuda_model_on_layer_grads(t->be.cuda, nullptr);
    cuda_ok(cudaEventRecord(o->layer_done[0], 0), "cudaEventRecord");   // the whole backward, embedding included
    cuda_ok(cudaStreamWaitEvent(o->comm, o->layer_done[0], 0), "cudaStreamWaitEvent");
    dist_nccl_allreduce_slices(t->dist, backend_grads(&t->be), o->rest, o->comm);
    cuda_ok(cudaEventRecord(o->comm_done, o->comm), "cudaEventRecord");
    cuda_ok(cudaStreamWaitEvent(0, o->comm_done, 0), "cudaStreamWaitEvent");   // clipping and AdamW follow the sums
    return true;
#else
    (void)t;
    return false;
#endif
}
static void dp_overlap_free(Trainer* t) {
#ifdef DEEPSEEK_NCCL
    GradOverlap* o = (GradOverlap*)t->overlap;
    if (!o) return;
    cuda_ok(cudaStreamSynchronize(o->comm), "cudaStreamSynchronize");
    for (cudaEvent_t e : o->layer_done) cuda_ok(cudaEventDestroy(e), "cudaEventDestroy");
    cuda_ok(cudaEventDestroy(o->comm_done), "cudaEventDestroy");
    cuda_ok(cudaStreamDestroy(o->comm), "cudaStreamDestroy");
    delete o;
#endif
    t->overlap = nullptr;
}
// The gradient sum over ranks. Each rank's loss weights carry 1/world, so the sum is the gradient of the global
// batch's mean loss.
static void reduce_gradients(Trainer* t) {
    if (dp_overlap_finish(t)) return;
    float* g = backend_grads(&t->be);
    if (t->zero) dp_reduce_scatter(t, g);
    else dp_allreduce(t, g, t->model.num_parameters);
}
// clipping at the global norm: Σg² over the valid range (the shard's parts added over ranks under ZeRO-1); returns the norm
static double clip_gradients(Trainer* t) {
    double s = backend_grad_sum_squares(&t->be);
    if (t->zero) dist_allreduce_sum(t->dist, &s, 1);   // one double, over MPI on either backend
    double norm = sqrt(s);
    backend_clip(&t->be, clip_coefficient(norm, CLIP_GRAD_NORM), &t->grad_scale);
    return norm;
}
// AdamW on the rank's range; under ZeRO-1 the ranks then all-gather the weights
static void optimizer_update(Trainer* t, float lr) {
    backend_adamw(&t->be, &t->opt, lr, t->grad_scale);
    if (!t->zero) return;
    dp_allgather(t, backend_weights(&t->be));
    backend_weights_changed(&t->be);
}

static void write_metric(FILE* f, const json& j) {
    if (!f) return;
    std::string line = j.dump() + "\n";
    if (fwrite(line.data(), 1, line.size(), f) != line.size() || fflush(f) != 0)
        die("cannot write %s: %s", g_metrics_path.c_str(), strerror(errno));
}

// Called on every rank. Rank 0 writes the model directory and trainer state; without ZeRO-1 also the (replicated)
// optimizer state, with ZeRO-1 each rank writes its shard into rank 0's temporary directory, which across machines
// must be on a shared filesystem.
static void save_checkpoint(Trainer* t, const std::string& dir, const json& state) {
    backend_to_host(&t->be, &t->opt);   // --device cuda: the weights and AdamW state from the GPU
    if (!t->zero) {
        if (t->dist.rank == 0) checkpoint_save(dir, t->model, t->opt, state, t->tokenizer_path);
        dist_barrier(t->dist);
        return;
    }
    auto write_shard = [t](const std::string& tmp) {
        dist_barrier(t->dist);   // rank 0 has made the temporary directory
        zero_state_save(t->dist, tmp, {{"exp_avg", t->opt.m.data()}, {"exp_avg_sq", t->opt.v.data()}}, t->model.num_parameters);
        dist_barrier(t->dist);   // every shard is written
    };
    if (t->dist.rank == 0) checkpoint_save(dir, t->model, t->opt, state, t->tokenizer_path, write_shard);
    else write_shard(dir + ".tmp");
    dist_barrier(t->dist);       // the checkpoint is in place
}

// Runs the optimisation from t->step to t->steps; returns the final checkpoint's path (OUT/final), or after a signal
// the checkpoint it wrote. Closes t->metrics.
static std::string run_training(Trainer* t, const Stage& st) {
    install_stop_handlers();
    if (t->step == 0 && t->eval_every > 0) st.evaluate();   // the untrained model's numbers, for the curve
    double t_start = now_seconds(), t_line = t_start;
    long first_step = t->step;
    std::string last_ckpt;
    StepReport rep;
    while (t->step < t->steps) {
        double t0 = now_seconds();
        backend_zero_grad(&t->be);
        json m = st.step();
        double shared[2] = {m["loss"].get<double>(), (double)g_stop_signal};   // the global batch's loss; a stop request on any rank
        dist_allreduce_sum(t->dist, shared, 2);
        double loss = shared[0] / t->dist.world;
        bool stop = shared[1] > 0;
        double norm = clip_gradients(t);
        if (!std::isfinite(loss) || !std::isfinite(norm)) {
            if (t->metrics) fclose(t->metrics);
            t->metrics = nullptr;
            die("%s %ld: the loss is not finite (loss %g, grad norm %g): stopping without an update; the last good "
                "checkpoint is %s", st.step_word.c_str(), t->step + 1, loss, norm,
                last_ckpt.empty() ? st.none_saved.c_str() : last_ckpt.c_str());
        }
        double lr = lr_at(t->schedule, t->lr, t->step, t->steps, t->warmup);
        optimizer_update(t, (float)lr);
        t->step++;
        double t1 = now_seconds();
        m["loss"] = loss;
        for (auto it = m.begin(); it != m.end(); ++it)
            if (it.value().is_number()) rep.sums[it.key()] += it.value().get<double>();
        rep.nsum++;
        rep.loss = loss; rep.lr = lr; rep.norm = norm; rep.step_s = t1 - t0; rep.line_s = t1 - t_line;
        rep.elapsed = t->elapsed_before + (t1 - t_start);
        double per_step = (t1 - t_start) / (double)(t->step - first_step);
        rep.eta = per_step * (t->steps - t->step);
        json record = m;
        record["step"] = t->step; record["lr"] = lr; record["grad_norm"] = norm; record["elapsed_s"] = rep.elapsed;
        st.record(&record, rep);
        write_metric(t->metrics, record);
        bool last = t->step == t->steps;
        if (t->step % t->log_every == 0 || last) {
            st.progress(rep);
            fflush(stdout);
            rep.sums.clear();
            rep.nsum = 0;
            t_line = t1;
        }
        if (t->eval_every > 0 && (t->step % t->eval_every == 0 || last)) st.evaluate();
        if (!last && ((t->save_every > 0 && t->step % t->save_every == 0) || stop)) {
            last_ckpt = t->out + "/" + step_name(t->step);
            save_checkpoint(t, last_ckpt, st.state(rep.elapsed));
            if (t->dist.rank == 0) checkpoint_prune(t->out, t->keep);
            printf("checkpoint: %s\n", last_ckpt.c_str());
        }
        if (stop && !last) {
            metrics_close(t->metrics);
            t->metrics = nullptr;
            std::string by = g_stop_signal ? std::to_string((int)g_stop_signal) : "on another rank";
            printf("stopped by signal %s after step %ld; resume with: deepseek %s --resume %s\n", by.c_str(), t->step,
                   t->cmd.c_str(), last_ckpt.c_str());
            return last_ckpt;
        }
    }
    metrics_close(t->metrics);
    t->metrics = nullptr;
    std::string final_dir = t->out + "/final";
    save_checkpoint(t, final_dir, st.state(t->elapsed_before + (now_seconds() - t_start)));
    return final_dir;
}

// ============================================================================
// pre-training's stage: accum micro-batches of windows from the token shard per step and rank, the mean next-token
// loss (pretrain_objective), validation bits per byte and a greedy sample at each evaluation

struct TrainRun : Trainer {
    TrainSettings s;
    DataLoader train, val;
    bool has_val = false;
    std::vector<int> token_bytes;   // for bits per byte
    Tokenizer* tok = nullptr;       // for samples (null if the data directory has none); freed with the run
    double tokens_seen = 0;
    double unigram_bpb = 0;
    double mean_bytes_per_token = 0;  // bits per byte without a tokenizer
    TrainRun() = default;
    TrainRun(const TrainRun&) = delete;
    TrainRun& operator=(const TrainRun&) = delete;
    ~TrainRun() { tokenizer_free(tok); }   // (also when an error unwinds: tests and fuzzers make die() throw)
};

// AdamW state from a checkpoint, for this rank: optimizer.safetensors (replicated; sliced under ZeRO-1) or the
// ZeRO-1 files of any world size (re-sharded; assembled whole without ZeRO-1)
static void load_optimizer_state(TrainRun* r, const std::string& ckpt) {
    size_t n = r->model.num_parameters;
    Dist own = r->dist;
    if (!r->s.zero) { own.rank = 0; own.world = 1; }
    dist_shards(&own, n);
    size_t b = own.shard_begin(), e = own.shard_end();
    if (r->opt.m.size() == n) {
        if (r->s.zero) {
            r->opt.m = std::vector<float>(r->opt.m.begin() + b, r->opt.m.begin() + e);
            r->opt.v = std::vector<float>(r->opt.v.begin() + b, r->opt.v.begin() + e);
        }
        return;
    }
    r->opt.m.assign(e - b, 0.0f);
    r->opt.v.assign(e - b, 0.0f);
    zero_state_load(own, ckpt, {{"exp_avg", r->opt.m.data()}, {"exp_avg_sq", r->opt.v.data()}}, n);
}

static json trainer_state(const TrainRun& r, double elapsed) {
    return {{"step", r.step}, {"tokens_seen", r.tokens_seen}, {"elapsed_s", elapsed},
            {"data_cursor", {{"epoch", r.train.epoch}, {"index", r.train.index}, {"rank", r.train.rank}}},
            {"rng", {{"kind", "splitmix64 window shuffle"}, {"seed", r.s.seed}, {"epoch", r.train.epoch}}},
            {"optimizer", {{"name", "AdamW"}, {"beta1", ADAMW_BETA1}, {"beta2", ADAMW_BETA2}, {"eps", ADAMW_EPS},
                           {"weight_decay", WEIGHT_DECAY}, {"clip_grad_norm", CLIP_GRAD_NORM}}},
            {"settings", settings_json(r.s)}};
}

static void run_eval(TrainRun* r) {
    if (!r->has_val || r->s.rank != 0) return;
    EvalResult e = evaluate(&r->be, &r->val, r->s.eval_windows, r->token_bytes, r->mean_bytes_per_token);
    printf("eval  step %ld | val loss %.4f | val bpb %.4f (unigram %.4f) | %zu tokens\n", r->step, e.loss, e.bits_per_byte,
           r->unigram_bpb, e.tokens);
    write_metric(r->metrics, {{"step", r->step}, {"tokens", r->tokens_seen}, {"val_loss", e.loss}, {"val_bpb", e.bits_per_byte}});
    if (r->tok && r->s.sample_tokens > 0) {
        std::vector<int> prompt;
        for (int i = 0; i < 8 && i < (int)r->val.shard.n; i++) prompt.push_back((int)r->val.shard.tokens[i]);
        int limit = tokenizer_vocab_size(r->tok);
        std::vector<int> ids = r->be.cuda ? sample_greedy_cuda(r->be.cuda, r->model.cfg, prompt, r->s.sample_tokens, limit)
                                          : sample_greedy(&r->model, prompt, r->s.sample_tokens, limit);
        std::string text;
        int bos = tokenizer_bos_id(r->tok), eos = tokenizer_eos_id(r->tok);
        for (size_t i = 0; i < ids.size(); i++) {
            if (ids[i] == bos || ids[i] == eos) continue;
            if (i == prompt.size()) text += "⟨";  // where the model's own tokens begin
            text += tokenizer_decode(r->tok, {ids[i]});
        }
        for (char& c : text) if (c == '\n') c = ' ';
        printf("sample: %s\n", text.c_str());
    }
    fflush(stdout);
}

// the loop's settings from the run's (once they are final: after --resume's changes)
static void train_loop_settings(TrainRun* r) {
    const TrainSettings& s = r->s;
    r->cmd = "train"; r->out = s.out; r->zero = s.zero;
    r->steps = s.steps; r->lr = s.lr; r->schedule = s.schedule; r->warmup = s.warmup;
    r->log_every = 1; r->eval_every = s.eval_every; r->save_every = s.save_every; r->keep = s.keep;
}

// Pre-training's stage on the loop: r->s.steps steps from r->step; returns the final checkpoint's path.
static std::string train_loop(TrainRun* r) {
    const TrainSettings& s = r->s;
    int B = s.micro_batch, T = s.seq_len;
    std::vector<int> in((size_t)B * T), tg((size_t)B * T);
    std::vector<float> dl;
    double step_tokens = (double)B * T * s.accum * s.world;
    Stage st;
    st.step_word = "step";
    st.none_saved = "(none written by this process)";
    st.step = [&]() -> json {
        double loss = 0;
        for (int k = 0; k < s.accum; k++) {
            loader_next(&r->train, in.data(), tg.data());
            loss += pretrain_objective(&r->be, in.data(), tg.data(), B, T, &dl) / s.accum;
            for (float& w : dl) w /= (float)(s.accum * s.world);   // the step's loss: the mean over micro-batches and ranks
            if (k == s.accum - 1) dp_backward_begin(r);   // GPUs: each finished layer's gradients summed at once
            backend_backward(&r->be, dl.data());
        }
        reduce_gradients(r);
        r->tokens_seen += step_tokens;   // read: the step's tokens are seen
        return {{"loss", loss}};
    };
    st.record = [&](json* rec, const StepReport& p) {
        (*rec)["tokens"] = r->tokens_seen;
        (*rec)["tokens_per_s"] = step_tokens / p.step_s;
    };
    st.progress = [&](const StepReport& p) {
        printf("step %ld/%ld | loss %.4f | lr %.3e | norm %.3f | %.0f tok/s | %s elapsed | ETA %s\n", r->step, s.steps, p.loss,
               p.lr, p.norm, step_tokens / p.step_s, hms(p.elapsed).c_str(), hms(p.eta).c_str());
    };
    st.evaluate = [r]() { run_eval(r); };
    st.state = [r](double elapsed) { return trainer_state(*r, elapsed); };
    return run_training(r, st);
}

// ============================================================================
// the run directory: one run at a time, and never two runs mixed in one
//
// OUT/.lock is held under an exclusive flock(2) for the whole process (the kernel releases it however the process
// ends, kill -9 included); its text is the holder's pid and host, for the message a second run gets. Under MPI only
// rank 0 takes it: the ranks of one run share OUT, and rank 0 is the one that writes there.

static int g_lock_fd = -1;
static void lock_run_dir(const std::string& out, const char* cmd) {
    std::string path = out + "/.lock";
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_NONBLOCK | O_CLOEXEC, 0644);
    if (fd < 0) die("%s: cannot create %s: %s", cmd, path.c_str(), strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) { close(fd); die("%s: cannot stat %s: %s", cmd, path.c_str(), strerror(errno)); }
    if (!S_ISREG(st.st_mode)) { close(fd); die("%s: %s is %s, not a regular file", cmd, path.c_str(), mode_kind(st.st_mode)); }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char buf[300] = {0}, host[256] = {0};
        long pid = 0;
        ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
        close(fd);
        if (e != EWOULDBLOCK) die("%s: cannot lock %s: %s", cmd, path.c_str(), strerror(e));
        if (n > 0 && sscanf(buf, "%ld %255s", &pid, host) == 2)
            die("%s: %s is in use by another training (pid %ld on %s)", cmd, out.c_str(), pid, host);
        die("%s: %s is in use by another training (its pid is not recorded in %s)", cmd, out.c_str(), path.c_str());
    }
    char host[256] = {0};
    if (gethostname(host, sizeof host - 1) != 0 || !host[0]) snprintf(host, sizeof host, "unknown-host");
    std::string text = std::to_string((long)getpid()) + " " + host + "\n";
    if (ftruncate(fd, 0) != 0 || pwrite(fd, text.data(), text.size(), 0) != (ssize_t)text.size())
        die("%s: cannot write %s: %s", cmd, path.c_str(), strerror(errno));
    if (g_lock_fd >= 0) close(g_lock_fd);
    g_lock_fd = fd;   // held until the process exits
}

// What of a run is in OUT: checkpoints (step_NNNNNN, final, and their .tmp/.del), a metrics.jsonl file,
// trainer_state.json (OUT is itself a checkpoint). The other files a run writes (loss.png, loss.gp, loss_*.tsv) go
// with it under --overwrite but do not by themselves make OUT "another run".
static std::vector<std::string> run_files(const std::string& out, bool with_plots) {
    std::vector<std::string> found;
    DIR* d = opendir(out.c_str());
    if (!d) return found;
    while (struct dirent* e = readdir(d)) {
        std::string n = e->d_name;
        std::string base = n.size() > 4 && (n.compare(n.size() - 4, 4, ".tmp") == 0 || n.compare(n.size() - 4, 4, ".del") == 0)
                               ? n.substr(0, n.size() - 4) : n;
        bool is_run = is_step_name(base) || base == "final" || n == "trainer_state.json" ||
                      (n == "metrics.jsonl" && file_exists(out + "/" + n)) || n == "metrics.jsonl.tmp";
        bool is_plot = base == "loss.png" || base == "loss.gp" || base == "loss_train.tsv" || base == "loss_val.tsv";
        if (is_run || (with_plots && is_plot)) found.push_back(n);
    }
    closedir(d);
    std::sort(found.begin(), found.end());
    return found;
}
static std::string real_path(const std::string& p) {
    char buf[PATH_MAX];
    return realpath(p.c_str(), buf) ? std::string(buf) : p;
}

// Makes OUT, locks it (rank 0), and makes sure it holds no other run. A new run (resume_of empty) is refused when OUT
// holds one, unless `overwrite`, which removes that run's files first. A resumed run may write to its own run
// directory (resume_of: the checkpoint's) or to a directory without a run in it.
static void claim_run_dir(const std::string& out, const char* cmd, bool overwrite, const std::string& resume_of) {
    struct stat st;
    if (stat(out.c_str(), &st) == 0 && !S_ISDIR(st.st_mode))
        die("%s: --out %s is %s, not a directory", cmd, out.c_str(), mode_kind(st.st_mode));
    make_dirs(out);
    lock_run_dir(out, cmd);
    if (!resume_of.empty() && real_path(out) == real_path(resume_of)) return;   // continuing this run in place
    std::vector<std::string> old = run_files(out, overwrite);
    if (old.empty()) return;
    std::string list;
    for (size_t i = 0; i < old.size() && i < 3; i++) list += (i ? ", " : "") + old[i];
    if (old.size() > 3) list += ", …";
    if (std::find(old.begin(), old.end(), "trainer_state.json") != old.end())
        die("%s: --out %s is itself a checkpoint (it holds trainer_state.json); give a run directory", cmd, out.c_str());
    if (!resume_of.empty())
        die("%s: --out %s holds another run (%s); resume into an empty directory, or into the checkpoint's own run %s",
            cmd, out.c_str(), list.c_str(), resume_of.c_str());
    if (!overwrite)
        die("%s: --out %s holds another run (%s); continue it with --resume %s, or give --overwrite to delete it and "
            "start over", cmd, out.c_str(), list.c_str(), out.c_str());
    for (const std::string& n : old) remove_tree(out + "/" + n);
    for (const std::string& n : run_files(out, true))
        die("%s: --overwrite could not remove %s/%s", cmd, out.c_str(), n.c_str());
    printf("note: --overwrite: removed the earlier run in %s (%s)\n", out.c_str(), list.c_str());
}

// OUT for a run of any stage: locked, holding no other run (claim_run_dir; resume_of: the resumed checkpoint's run
// directory, "" for a new run), and OUT/metrics.jsonl opened for the loop (t->metrics), cut back to t->step on
// resume or started afresh. Rank 0's work; the other ranks only make OUT.
static void open_run(Trainer* t, bool overwrite, const std::string& resume_of) {
    if (t->dist.rank != 0) { make_dirs(t->out); return; }
    claim_run_dir(t->out, t->cmd.c_str(), overwrite, resume_of);
    std::string path = t->out + "/metrics.jsonl";
    if (!resume_of.empty()) metrics_truncate(path, t->step);
    else if (file_exists(path)) unlink(path.c_str());   // (a device standing in for it, e.g. /dev/null, stays)
    t->metrics = metrics_open(path);
}

// --resume continues a run, --overwrite starts a new one: never both
static void refuse_overwrite_on_resume(const Args& a) {
    if (a.flag("overwrite")) die("%s: --overwrite starts a new run; --resume continues one: give one of them", a.cmd.c_str());
}

// --resume of a finished run (its final/, no steps left): says so, and that `more` would go on; the caller exits 0
static bool run_finished(const char* cmd, const std::string& ckpt, long step, long steps, const std::string& more) {
    if (step != steps || ckpt.size() < 6 || ckpt.compare(ckpt.size() - 6, 6, "/final") != 0) return false;
    printf("%s: %s is finished (step %ld of %ld); nothing to do — give %s to train on from it\n", cmd,
           parent_dir(ckpt).c_str(), step, steps, more.c_str());
    return true;
}

// ============================================================================
// deepseek train

static const char* TRAIN_USAGE =
    "usage: deepseek train (--preset NAME | --model DIR | --compute C) --data DIR --out DIR [flags]\n"
           "       deepseek train --resume CHECKPOINT|RUN_DIR [--out DIR] [--data DIR] [--steps N] [--eval-every K]\n"
           "                      [--save-every K] [--zero 0|1] [--threads N] [--device D]\n"
           "  pre-training on token shards from `deepseek data prepare` (DIR/train.bin, DIR/val.bin, DIR/data.json).\n"
           "  AdamW (β1 0.9, β2 0.95, ε 1e-8, weight decay 0.1 on matrices), gradient clipping at norm 1.0,\n"
           "  gradient accumulation up to the batch size, the paper's multi-step schedule.\n"
           "  --compute C          take batch size, learning rate and token budget from the paper's scaling laws:\n"
           "                       B_opt, η_opt, and D = C / M for a given model (C = M·D); without --preset/--model,\n"
           "                       the shape near M_opt and D_opt tokens (see deepseek plan)\n"
           "  --steps N            optimizer steps (default: tokens from --compute / batch, else 100)\n"
           "  --batch-tokens N     tokens per step (default: B_opt with --compute, else 16 sequences)\n"
           "  --seq-len T          tokens per sequence (default min(256, the model's context))\n"
           "  --micro-batch N      sequences per forward pass (default: up to 4096 tokens); accumulation fills the batch\n"
           "  --lr X               peak learning rate (default: η_opt with --compute, else 1e-3)\n"
           "  --lr-schedule S      multistep (the paper's: 31.6% of peak after 80% of tokens, 10% after 90%) | cosine\n"
           "  --warmup-steps N     linear warmup (default: 5% of the steps, at most the paper's 2000; 0 = none)\n"
           "  --eval-every K       validation loss, bits per byte and a greedy sample every K steps (default steps/10;\n"
           "                       0 = never)\n"
           "  --eval-windows N     validation sequences per evaluation (default 64)\n"
           "  --save-every K       checkpoint every K steps (default steps/10; 0 = only OUT/final and on a signal);\n"
           "                       --keep N keeps the newest N (default 3)\n"
           "  --sample-tokens N    length of the greedy sample at each evaluation (default 32; 0 = none)\n"
           "  --resume DIR         continue a run exactly (a checkpoint, or a run directory: its newest checkpoint,\n"
           "                       final/ included). The run keeps its settings; --steps N may move its end (a finished\n"
           "                       run goes on from final/ only with --steps beyond its last step; without, it says it\n"
           "                       is finished and exits 0). Writes to the checkpoint's own run directory, or to an\n"
           "                       --out holding no other run\n"
           "  --overwrite          --out holds an earlier run (checkpoints, metrics.jsonl): delete its files and start\n"
           "                       over (without it, such an --out is refused: continue that run with --resume)\n"
           "  --seed S             initialisation and data order (default 1337)     --threads N   OpenMP threads\n"
           "  --zero 0|1           ZeRO-1: shard AdamW's state over the MPI ranks (default 0)\n"
           "  --device D           auto (the GPU when there is one) | cpu (fp32, the reference) | cuda (bf16 on one GPU\n"
           "                       per rank, fp32 master weights and AdamW state); checkpoints resume on either\n"
           "  --recompute          --device cuda: keep RMSNorm/SwiGLU outputs for one layer and recompute them in\n"
           "                       backward (less activation memory, same gradients)\n"
           "  data parallel:       mpirun -np N deepseek train ... (or srun): --micro-batch is per rank, --batch-tokens\n"
           "                       global; rank r reads windows r, r+N, ... of each step's global batch; rank 0 logs.\n"
           "                       The ranks sum gradients over MPI on the CPU and over NCCL on GPUs (one GPU per\n"
           "                       rank: the rank's index on its machine picks it)\n"
           "  outputs: OUT/metrics.jsonl, OUT/step_NNNNNN/ checkpoints, OUT/final/ (model directory + optimizer and\n"
           "  trainer state), OUT/loss.png. SIGINT/SIGTERM finish the step, write a checkpoint and exit.\n"
           "  one run per --out: OUT/.lock (an flock held while training, naming the holder's pid and host; under MPI\n"
           "  rank 0 holds it for the ranks) makes a second run on the same OUT an error.\n";

// A file name data.json gives (a shard, the tokenizer): a plain name inside the data directory, as `data prepare`
// writes them. A path ("../x", "/etc/x", "sub/x") would make training read whatever the file points at.
static std::string data_name(const std::string& f, const std::string& where, const char* field) {
    if (f.empty() || f == "." || f == ".." || f.find('/') != std::string::npos || f.find('\0') != std::string::npos)
        die("%s: field '%s' must be a file name in the data directory, got \"%s\"", where.c_str(), field, f.c_str());
    return f;
}
// data.json's entry for a split ("" when it has none): {"file": NAME, ...}, NAME in the data directory
static std::string data_file(const std::string& data, const json& dj, const std::string& where, const char* split) {
    const json* sp = json_object(dj, split, where, false);
    if (!sp) return "";
    std::string at = where + ": " + split;
    return data + "/" + data_name(json_str(*sp, "file", at, std::string(split) + ".bin"), at, "file");
}
// the flags a resumed run takes; the others are the run's own settings, kept from its checkpoint
static const char* const RESUME_KEEPS[] = {"batch-tokens", "seq-len", "micro-batch", "lr", "lr-schedule", "warmup-steps",
                                           "eval-windows", "keep", "sample-tokens", "seed"};

int cmd_train(int argc, char** argv) {
    Args a(argc, argv, 2, "train", TRAIN_USAGE,
           {"preset", "model", "data", "out", "steps", "batch-tokens", "seq-len", "micro-batch", "lr", "lr-schedule",
            "warmup-steps", "compute", "eval-every", "eval-windows", "save-every", "keep", "sample-tokens", "seed", "resume", "zero",
            "threads", "device"},
           {"overwrite", "recompute"});
    std::string device = a.str("device", "auto");
    Device dev = device_select(device);   // dies here if --device cuda cannot run
    TrainRun r;
    TrainSettings& s = r.s;
    dist_init(&r.dist);   // rank and world from mpirun / srun; a lone process is rank 0 of 1
    if (r.dist.rank != 0 && !freopen("/dev/null", "w", stdout)) die("rank %d: cannot silence stdout", r.dist.rank);
    // GPUs: one per rank, picked by the rank's index on its machine; the ranks' gradients are summed over NCCL
    if (dev == Device::CUDA) {
        int ngpu = cuda_device_count();
        if (r.dist.local_world > ngpu)
            die("train: %d ranks on this machine share %d GPU(s); the CUDA backend needs one GPU per rank (launch at most "
                "%d ranks per machine, or use --device cpu)", r.dist.local_world, ngpu, ngpu);
        cuda_use_local_rank(r.dist.local_rank);
        if (r.dist.world > 1) dist_nccl_init(&r.dist);
    }
    bool resume = a.has("resume");
    std::string ckpt;
    uint64_t cursor_epoch = 0;     // the checkpoint's data cursor, and the ranks and accumulation that made it
    size_t cursor_index = 0;
    int saved_world = 1, saved_accum = 1;
    if (resume) {
        if (a.has("preset") || a.has("model") || a.has("compute"))
            die("train: --resume continues a run with its own model and settings; drop --preset/--model/--compute");
        refuse_overwrite_on_resume(a);
        for (const char* k : RESUME_KEEPS)
            if (a.has(k))
                die("train: --%s cannot change on --resume (the run keeps its settings; a resumed run takes --out, --data, "
                    "--steps, --eval-every, --save-every, --zero, --threads, --device)", k);
        require_dir(a.str("resume"), "train: --resume");
        ckpt = checkpoint_latest(a.str("resume"));
        if (ckpt.empty()) die("train: no complete checkpoint in %s", a.str("resume").c_str());
        std::string sp = ckpt + "/trainer_state.json";
        json state = checkpoint_load(ckpt, &r.model, &r.opt);
        s = settings_from_json(*json_object(state, "settings", sp, true), sp + ": settings");
        r.step = (long)r.opt.t;
        r.tokens_seen = json_num(state, "tokens_seen", sp, 0.0, 0, 1e300, true);
        r.elapsed_before = json_num(state, "elapsed_s", sp, 0.0, 0, 1e300);
        if (r.step > s.steps) die("%s: step %ld is past the run's settings.steps %ld", sp.c_str(), r.step, s.steps);
        if (r.tokens_seen != (double)r.step * (double)s.batch_tokens)
            die("%s: tokens_seen %.0f is not step × batch_tokens (%ld × %ld)", sp.c_str(), r.tokens_seen, r.step, s.batch_tokens);
        if (s.seq_len > r.model.cfg.max_position_embeddings)
            die("%s: settings.seq_len %d is beyond the model's context (max_position_embeddings %d)", sp.c_str(), s.seq_len,
                r.model.cfg.max_position_embeddings);
        // the data cursor and the shuffle's state: checked against the data once the loader has opened it
        const json* cur = json_object(state, "data_cursor", sp, true);
        cursor_epoch = (uint64_t)json_int(*cur, "epoch", sp + ": data_cursor", 0, 0, MAX_STEPS, true);
        cursor_index = (size_t)json_int(*cur, "index", sp + ": data_cursor", 0, 0, 1LL << 62, true);
        json_int(*cur, "rank", sp + ": data_cursor", 0, 0, 0);   // rank 0 writes the state
        if (const json* rng = json_object(state, "rng", sp, false)) {
            std::string kind = json_str(*rng, "kind", sp + ": rng", "", true);
            if (kind != "splitmix64 window shuffle")
                die("%s: rng: field 'kind' must be \"splitmix64 window shuffle\", got \"%s\"", sp.c_str(), kind.c_str());
            long long seed = json_int(*rng, "seed", sp + ": rng", 0, 0, 1LL << 62, true);
            long long ep = json_int(*rng, "epoch", sp + ": rng", 0, 0, MAX_STEPS, true);
            if ((uint64_t)seed != s.seed || (uint64_t)ep != cursor_epoch)
                die("%s: rng (seed %lld, epoch %lld) does not match settings.seed %llu and data_cursor.epoch %llu", sp.c_str(),
                    seed, ep, (unsigned long long)s.seed, (unsigned long long)cursor_epoch);
        }
        saved_world = s.world;
        saved_accum = s.accum;
        s.out = a.str("out", parent_dir(ckpt));   // OUT/step_NNNNNN or OUT/final → OUT
        if (a.has("data")) s.data = a.str("data");
        if (a.has("steps")) s.steps = a.integer("steps", 0, 1, MAX_STEPS);
        if (a.has("eval-every")) s.eval_every = a.integer("eval-every", 0, 0, MAX_STEPS);
        if (a.has("save-every")) s.save_every = a.integer("save-every", 0, 0, MAX_STEPS);
        if (r.step > s.steps) die("train: the checkpoint is at step %ld, past --steps %ld", r.step, s.steps);
        // a finished run (its final/) has nothing left to do unless --steps goes further; say so, and succeed
        if (run_finished("train", ckpt, r.step, s.steps, "--steps N (more than " + std::to_string(r.step) + ")")) {
            dist_finalize(&r.dist);
            return 0;
        }
        // the loaders are opened below; the cursor is applied after
        r.train.epoch = cursor_epoch;
        r.train.index = cursor_index;
        if (a.has("zero")) s.zero = (int)a.integer("zero", 0, 0, 1);
        if (s.world != r.dist.world) {
            // re-shard the run: the same sequences per step and the same global window order, over the new ranks
            long seqs = (long)s.accum * s.micro_batch * s.world;
            size_t done = r.train.index * (size_t)s.world;   // this epoch's windows read by all ranks together
            if (seqs % ((long)s.micro_batch * r.dist.world) != 0 || done % r.dist.world != 0)
                die("train: %s was saved by %d rank(s); its batch of %ld sequences (micro-batch %d) cannot be split over %d "
                    "rank(s): resume with %d rank(s)", ckpt.c_str(), s.world, seqs, s.micro_batch, r.dist.world, s.world);
            printf("note: re-sharding the run from %d to %d rank(s): %d micro-batch(es) per step and rank\n", s.world,
                   r.dist.world, (int)(seqs / ((long)s.micro_batch * r.dist.world)));
            s.accum = (int)(seqs / ((long)s.micro_batch * r.dist.world));
            r.train.index = done / r.dist.world;
        }
        s.rank = r.dist.rank;
        s.world = r.dist.world;
        printf("resuming %s at step %ld (%.0f tokens seen)\n", ckpt.c_str(), r.step, r.tokens_seen);
    } else {
        if (!a.has("data")) die("train: --data DIR is required (made by deepseek data prepare)");
        if (!a.has("out")) die("train: --out DIR is required");
        s.data = a.str("data");
        s.out = a.str("out");
        s.seed = (uint64_t)a.integer("seed", 1337, 0, 1LL << 62);
        s.zero = (int)a.integer("zero", 0, 0, 1);
        s.rank = r.dist.rank;
        s.world = r.dist.world;
    }
    // the data: data.json names the shards and the tokenizer
    require_dir(s.data, "train: data directory");
    std::string dj_path = s.data + "/data.json";
    if (!path_exists(dj_path)) die("train: %s is missing (make it with deepseek data prepare)", dj_path.c_str());
    json dj = json_parse_file(dj_path);
    int data_vocab = (int)json_int(dj, "vocab_size", dj_path, 0, 1, 1 << 30, true);
    int data_bos = (int)json_int(dj, "bos_token_id", dj_path, -1, -1, data_vocab - 1);
    int data_eos = (int)json_int(dj, "eos_token_id", dj_path, -1, -1, data_vocab - 1);
    std::string data_tokenizer = data_name(json_str(dj, "tokenizer", dj_path, "tokenizer.json"), dj_path, "tokenizer");
    const json* dj_val = json_object(dj, "val", dj_path, false);
    double val_unigram_bpb = dj_val ? json_num(*dj_val, "unigram_bits_per_byte", dj_path + ": val", 0.0, 0, 1e6) : 0.0;
    double val_bytes_per_token = dj_val ? json_num(*dj_val, "bytes_per_token", dj_path + ": val", 0.0, 0, 1e9) : 0.0;
    std::string train_path = data_file(s.data, dj, dj_path, "train"), val_path = data_file(s.data, dj, dj_path, "val");
    if (train_path.empty()) die("%s: no train split", dj_path.c_str());
    if (!path_exists(train_path)) die("train: token shard %s is missing", train_path.c_str());

    if (!resume) {
        // the model, and what the scaling laws say
        int sources = a.has("preset") + a.has("model");
        if (sources > 1) die("train: give one of --preset NAME or --model DIR");
        if (sources == 0 && !a.has("compute")) die("train: give --preset NAME, --model DIR or --compute C");
        s.compute = a.has("compute") ? a.real("compute", 0, 1e6, 1e30) : 0;
        ScalingPlan plan = scaling_plan(s.compute > 0 ? s.compute : 1e18);
        if (sources == 1) {
            model_from_args(&r.model, a, s.seed);
            s.model_source = a.has("preset") ? "preset:" + a.str("preset") : "model:" + a.str("model");
        }
        int ctx_guess = sources == 1 ? r.model.cfg.max_position_embeddings : 256;
        s.seq_len = (int)a.integer("seq-len", std::min(256, ctx_guess), 1, 1 << 20);
        if (sources == 0) {
            Config cfg = plan_shape(plan.flops_per_token, s.seq_len, data_vocab);
            cfg.bos_token_id = data_bos >= 0 ? data_bos : 0;
            cfg.eos_token_id = data_eos >= 0 ? data_eos : 1;
            model_build(&r.model, cfg);
            model_init_random(&r.model, s.seed, 0.006f);
            s.model_source = "plan";
            printf("model from the scaling laws: layers %d, hidden_size %d, heads %d, intermediate_size %d, vocab %d (%zu parameters)\n",
                   cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, cfg.vocab_size,
                   r.model.num_parameters);
        }
        if (s.seq_len > r.model.cfg.max_position_embeddings)
            die("train: --seq-len %d is beyond the model's context (max_position_embeddings %d)", s.seq_len,
                r.model.cfg.max_position_embeddings);
        long bt_default = s.compute > 0 ? (long)llround(plan.batch_tokens) : 16L * s.seq_len;
        long bt = a.integer("batch-tokens", bt_default, 1, 1L << 40);
        if (bt < s.seq_len) die("train: --batch-tokens %ld is smaller than one sequence of --seq-len %d", bt, s.seq_len);
        long seqs = std::max(1L, (long)llround((double)bt / s.seq_len / s.world));   // per rank
        // micro-batches of up to 4096 tokens by default, as even as the batch allows; accumulation makes up the rest
        long cap = std::max(1L, 4096L / s.seq_len), accum_guess = (seqs + cap - 1) / cap;
        s.micro_batch = (int)a.integer("micro-batch", std::max(1L, (long)llround((double)seqs / accum_guess)), 1, 1 << 20);
        if (s.micro_batch > seqs) die("train: --micro-batch %d is larger than the batch (%ld sequences)", s.micro_batch, seqs);
        s.accum = (int)std::max(1L, (long)llround((double)seqs / s.micro_batch));
        s.batch_tokens = (long)s.accum * s.micro_batch * s.world * s.seq_len;
        if (s.batch_tokens != bt)
            printf("note: batch of %ld tokens rounded to %ld (%d × %d sequences × %d tokens)\n", bt, s.batch_tokens, s.accum,
                   s.micro_batch, s.seq_len);
        s.lr = a.real("lr", s.compute > 0 ? plan.learning_rate : 1e-3, 1e-12, 1e300);
        // the token budget: D_opt for the planned model; for a given model, D = C / M (the paper's C = M·D)
        double M = config_flops_per_token(r.model.cfg, s.seq_len);
        double budget = sources == 0 ? plan.tokens : s.compute / M;
        long steps_default = s.compute > 0 ? std::max(1L, (long)ceil(budget / s.batch_tokens)) : 100;
        s.steps = a.integer("steps", steps_default, 1, 1L << 40);
        std::string sched = a.str("lr-schedule", "multistep");
        if (sched != "multistep" && sched != "cosine") die("train: --lr-schedule must be multistep or cosine, got '%s'", sched.c_str());
        s.schedule = sched == "cosine" ? LRSchedule::COSINE : LRSchedule::MULTISTEP;
        s.warmup = a.integer("warmup-steps", default_warmup_steps(s.steps), 0, 1L << 40);
        s.eval_every = a.integer("eval-every", std::max(1L, s.steps / 10), 0, 1L << 40);
        s.save_every = a.integer("save-every", std::max(1L, s.steps / 10), 0, 1L << 40);
        s.eval_windows = (int)a.integer("eval-windows", 64, 1, 1 << 24);
        s.keep = (int)a.integer("keep", 3, 1, 1 << 20);
        s.sample_tokens = (int)a.integer("sample-tokens", 32, 0, 1 << 16);
        if (s.compute > 0)
            printf("scaling laws for C = %.3g: B_opt %.0f tokens, lr %.3g, M_opt %.3g, D_opt %.3g; this model: M %.3g, "
                   "budget %.3g tokens\n", s.compute, plan.batch_tokens, plan.learning_rate, plan.flops_per_token, plan.tokens, M, budget);
        // the data's special tokens, for the generation config of the checkpoints
        int bos = data_bos, eos = data_eos;
        if (bos >= 0 && bos < r.model.cfg.vocab_size) r.model.cfg.bos_token_id = bos;
        if (eos >= 0 && eos < r.model.cfg.vocab_size) r.model.cfg.eos_token_id = eos;
    }
    if (data_vocab > r.model.cfg.vocab_size)
        die("train: the data's vocabulary (%d) is larger than the model's (%d)", data_vocab, r.model.cfg.vocab_size);
    if (s.zero) dist_shards(&r.dist, r.model.num_parameters);
    if (resume) load_optimizer_state(&r, ckpt);
    {   // loaders (the resume cursor was parked in r.train before init)
        uint64_t ep = r.train.epoch;
        size_t ix = r.train.index;
        loader_init(&r.train, train_path, s.micro_batch, s.seq_len, s.rank, s.world, s.seed, r.model.cfg.vocab_size, true);
        if (r.train.shard.vocab_size != data_vocab)
            die("%s: the shard's vocabulary (%d) is not data.json's vocab_size (%d)", train_path.c_str(),
                r.train.shard.vocab_size, data_vocab);
        if (resume) {
            // The cursor must lie in the data: index ≤ the windows per rank of the saving run's ranks. In the first epoch
            // it is exactly where r.step steps leave each rank: k = step·accum·micro_batch windows read (after the first
            // epoch a run re-sharded on the way may differ by the windows left over at each epoch's end).
            std::string sp = ckpt + "/trainer_state.json";
            size_t per_rank = r.train.num_windows / (size_t)saved_world;
            unsigned __int128 k = (unsigned __int128)r.step * (unsigned)saved_accum * (unsigned)s.micro_batch;
            if (cursor_index > per_rank)
                die("%s: data_cursor.index %zu is past the data: %s holds %zu windows of %d+1 tokens per rank (%d rank(s))",
                    sp.c_str(), cursor_index, train_path.c_str(), per_rank, s.seq_len, saved_world);
            if (cursor_epoch == 0 && k <= per_rank && cursor_index != (size_t)k)
                die("%s: data_cursor (epoch 0, index %zu) is not where %ld steps of %d × %d sequences per rank leave %s "
                    "(index %zu): the checkpoint and the data do not belong together", sp.c_str(), cursor_index, r.step,
                    saved_accum, s.micro_batch, train_path.c_str(), (size_t)k);
            if (cursor_epoch == 0 && k > per_rank)
                die("%s: data_cursor is in epoch 0, but %ld steps of %d × %d sequences per rank read %s more than once "
                    "(%zu windows per rank): the checkpoint and the data do not belong together", sp.c_str(), r.step,
                    saved_accum, s.micro_batch, train_path.c_str(), per_rank);
            loader_seek(&r.train, ep, ix);
        }
    }
    if (!val_path.empty() && path_exists(val_path)) {
        Shard probe;
        shard_open(&probe, val_path, r.model.cfg.vocab_size);
        if (probe.n > 0 && (probe.n - 1) / s.seq_len >= (size_t)s.micro_batch) {
            loader_init(&r.val, val_path, s.micro_batch, s.seq_len, 0, 1, 0, r.model.cfg.vocab_size, false);
            r.has_val = true;
        } else printf("note: the validation split is shorter than one micro-batch; no validation\n");
    } else if (!val_path.empty()) die("train: token shard %s is missing", val_path.c_str());
    r.unigram_bpb = val_unigram_bpb;
    // the tokenizer: bytes per token for bits per byte, and the samples
    r.tokenizer_path = s.data + "/" + data_tokenizer;
    if (path_exists(r.tokenizer_path)) {   // (not a regular file: tokenizer_load says what it is)
        r.tok = tokenizer_load(r.tokenizer_path);
        int tv = tokenizer_vocab_size(r.tok), bos = tokenizer_bos_id(r.tok), eos = tokenizer_eos_id(r.tok);
        r.token_bytes.assign(tv, 0);
        for (int id = 0; id < tv; id++) {
            if (id == bos || id == eos) continue;
            try { r.token_bytes[id] = (int)tokenizer_token_bytes(r.tok, id).size(); } catch (const DeepseekError&) {}
        }
    } else {
        r.tokenizer_path.clear();
        r.mean_bytes_per_token = val_bytes_per_token;
        printf("note: no tokenizer in %s: no samples; bits per byte from the split's mean bytes per token\n", s.data.c_str());
    }
    // OUT: locked for this run, and holding no other (rank 0 speaks for the ranks, which share it)
    train_loop_settings(&r);
    open_run(&r, a.flag("overwrite"), resume ? parent_dir(ckpt) : "");

    printf("model: %s, %zu parameters, M = %.3g FLOPs/token\n", s.model_source.c_str(), r.model.num_parameters,
           config_flops_per_token(r.model.cfg, s.seq_len));
    printf("data: %s (%zu train tokens%s), seq_len %d\n", s.data.c_str(), r.train.shard.n,
           r.has_val ? (", " + std::to_string(r.val.shard.n) + " val tokens").c_str() : "", s.seq_len);
    printf("batch: %ld tokens = %d micro-batches × %d sequences × %d tokens × %d rank(s); %ld steps = %.3g tokens\n",
           s.batch_tokens, s.accum, s.micro_batch, s.seq_len, s.world, s.steps, (double)s.steps * s.batch_tokens);
    printf("optimizer: AdamW lr %.3g (%s, warmup %ld), betas (%.2f, %.2f), eps %.0e, weight decay %.1f, clip %.1f; %d threads\n",
           s.lr, s.schedule == LRSchedule::MULTISTEP ? "multistep" : "cosine", s.warmup, ADAMW_BETA1, ADAMW_BETA2, ADAMW_EPS,
           WEIGHT_DECAY, CLIP_GRAD_NORM, num_threads());
    if (s.world > 1 || s.zero)
        printf("data parallel: %d rank(s) (%d on this machine), gradients summed over %s%s%s\n", s.world, r.dist.local_world,
               dev == Device::CUDA ? "NCCL" : "MPI",
               dev == Device::CUDA && s.world > 1 && !s.zero && dist_nccl_available() ? " (each layer's as its backward ends)" : "",
               s.zero ? "; ZeRO-1: each rank keeps 1/world of AdamW's state" : "");
    dp_optimizer_range(&r);
    backend_open(&r.be, dev, r.opt, s.micro_batch, s.seq_len, a.flag("recompute"), "train");
    fflush(stdout);

    std::string final_dir = train_loop(&r);
    dp_overlap_free(&r);
    backend_close(&r.be);
    if (r.step == s.steps && s.rank == 0) {
        std::string png = plot_loss_curve(s.out);
        // the run's story in one line: validation bits per byte from the first evaluation to the last
        double first = NAN, last = NAN;
        for (const json& j : read_jsonl(s.out + "/metrics.jsonl"))
            if (!std::isnan(metric_num(j, "val_bpb"))) { if (std::isnan(first)) first = metric_num(j, "val_bpb"); last = metric_num(j, "val_bpb"); }
        if (!std::isnan(last))
            printf("validation bits per byte: %.4f -> %.4f (unigram entropy of the validation tokens: %.4f bits/byte)\n", first,
                   last, r.unigram_bpb);
        printf("metrics: %s/metrics.jsonl\n", s.out.c_str());
        printf("loss curve: %s\n", png.empty() ? "(gnuplot not found: see loss_train.tsv, loss_val.tsv)" : png.c_str());
        printf("final: %s\n", final_dir.c_str());
    }
    dist_finalize(&r.dist);
    return 0;
}

// ============================================================================
// SFT and DPO
//
// Alignment turns a pre-trained base model into a chat model in two stages (paper §5):
//   SFT  next-token loss on conversations rendered with the DeepSeek chat template, on assistant tokens only
//        (the reply and its EOS); everything else is context. L = mean over the batch's assistant tokens of nll_t.
//   DPO  from the SFT model π and a frozen copy of it, the reference, on pairs (prompt x, chosen y_c, rejected y_r):
//        L = −log σ(β[(log π(y_c|x) − log ref(y_c|x)) − (log π(y_r|x) − log ref(y_r|x))]),
//        with log π(y|x) = −Σ_{t ∈ reply} nll_t, so dL/dnll_t = −dL/dlog π(y|x) on the reply's tokens.
// Both only need what the model already exposes: model_forward's per-token NLL (acts.losses) and
// model_backward's per-token loss weights; the chat template and its assistant mask are infer.cu's chat_tokens.

// ---------------------------------------------------------------------------- JSONL readers

// A message list must be: an optional system message first, then user/assistant alternating, starting with user.
// Returns "" or what is wrong.
static std::string parse_messages(const json& j, std::vector<ChatMessage>* out) {
    if (!j.is_array()) return "\"messages\" must be a list";
    if (j.empty()) return "\"messages\" is empty";
    out->clear();
    for (size_t i = 0; i < j.size(); i++) {
        const json& m = j[i];
        if (!m.is_object()) return "messages[" + std::to_string(i) + "] is not an object";
        if (!m.contains("role") || !m["role"].is_string()) return "messages[" + std::to_string(i) + "] has no string \"role\"";
        if (!m.contains("content") || !m["content"].is_string())
            return "messages[" + std::to_string(i) + "] has no string \"content\"";
        std::string role = m["role"], content = m["content"];
        if (role != "system" && role != "user" && role != "assistant")
            return "messages[" + std::to_string(i) + "].role is '" + role + "' (expected system, user or assistant)";
        bool first = out->empty();
        if (role == "system" && !first) return "messages[" + std::to_string(i) + "]: a system message may only come first";
        std::string want = (first || out->back().role == "system" || out->back().role == "assistant") ? "user" : "assistant";
        if (role != "system" && role != want)
            return "messages[" + std::to_string(i) + "].role is '" + role + "' where '" + want + "' was expected (turns alternate, user first)";
        out->push_back({role, content});
    }
    return "";
}

// Reads PATH line by line; `take` parses one JSON object and returns "" or what is wrong with it.
// Blank lines are ignored. Bad lines stop the run (die) unless skip_bad, which reports and counts them.
void read_jsonl_records(const std::string& path, bool skip_bad, int* skipped,
                        const std::function<std::string(const json&, int)>& take) {
    std::string text = read_file(path);
    int line = 0, bad = 0;
    size_t pos = 0;
    while (pos < text.size()) {
        size_t nl = text.find('\n', pos);
        if (nl == std::string::npos) nl = text.size();
        std::string s = text.substr(pos, nl - pos);
        pos = nl + 1;
        line++;
        if (s.find_first_not_of(" \t\r") == std::string::npos) continue;
        std::string why;
        try {
            json j = json::parse(s);
            why = j.is_object() ? take(j, line) : "expected a JSON object";
        } catch (const json::exception& e) {
            why = e.what();
            size_t b = why.find("] ");   // "[json.exception.parse_error.101] parse error at ..." → "parse error at ..."
            if (why.rfind("[json.exception", 0) == 0 && b != std::string::npos) why = why.substr(b + 2);
            why = "invalid JSON: " + why;
        }
        if (why.empty()) continue;
        if (!skip_bad) die("%s:%d: %s (use --skip-bad to skip bad lines)", path.c_str(), line, why.c_str());
        if (++bad <= 20) fprintf(stderr, "warning: %s:%d: %s (skipped)\n", path.c_str(), line, why.c_str());
    }
    if (bad > 20) fprintf(stderr, "warning: %s: %d more bad lines skipped\n", path.c_str(), bad - 20);
    if (bad) fprintf(stderr, "%s: skipped %d bad line%s\n", path.c_str(), bad, bad == 1 ? "" : "s");
    if (skipped) *skipped = bad;
}

std::vector<SftExample> sft_read_jsonl(const std::string& path, bool skip_bad, int* skipped) {
    std::vector<SftExample> out;
    read_jsonl_records(path, skip_bad, skipped, [&](const json& j, int line) -> std::string {
        if (!j.contains("messages")) return "no \"messages\" field";
        SftExample ex;
        std::string why = parse_messages(j["messages"], &ex.messages);
        if (!why.empty()) return why;
        bool any = false;
        for (auto& m : ex.messages) any |= m.role == "assistant";
        if (!any) return "no assistant message (nothing to train on)";
        if (ex.messages.back().role != "assistant") return "the conversation ends with a user turn (no reply to train on)";
        ex.line = line;
        out.push_back(std::move(ex));
        return "";
    });
    if (out.empty()) die("%s: no conversations", path.c_str());
    return out;
}

std::vector<DpoExample> dpo_read_jsonl(const std::string& path, bool skip_bad, int* skipped) {
    std::vector<DpoExample> out;
    read_jsonl_records(path, skip_bad, skipped, [&](const json& j, int line) -> std::string {
        DpoExample ex;
        bool has_p = j.contains("prompt"), has_m = j.contains("messages");
        if (has_p == has_m) return "give exactly one of \"prompt\" (a string) or \"messages\" (a list)";
        if (has_p) {
            if (!j["prompt"].is_string()) return "\"prompt\" must be a string";
            ex.prompt.push_back({"user", j["prompt"].get<std::string>()});
        } else {
            std::string why = parse_messages(j["messages"], &ex.prompt);
            if (!why.empty()) return why;
            if (ex.prompt.back().role != "user") return "\"messages\" must end with a user turn (the prompt to answer)";
        }
        for (const char* k : {"chosen", "rejected"}) {
            if (!j.contains(k)) return std::string("no \"") + k + "\" field";
            if (!j[k].is_string()) return std::string("\"") + k + "\" must be a string";
        }
        ex.chosen = j["chosen"];
        ex.rejected = j["rejected"];
        if (ex.chosen == ex.rejected) return "\"chosen\" and \"rejected\" are the same text";
        ex.line = line;
        out.push_back(std::move(ex));
        return "";
    });
    if (out.empty()) die("%s: no preference pairs", path.c_str());
    return out;
}

// ---------------------------------------------------------------------------- DPO loss

// −log σ(x) = softplus(−x) = max(−x, 0) + log1p(exp(−|x|)): exact for any x, no overflow.
static double neg_log_sigmoid(double x) { return std::max(-x, 0.0) + log1p(exp(-fabs(x))); }
static double sigmoid(double x) { return x >= 0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x)); }

// z_i = β[(πc_i − rc_i) − (πr_i − rr_i)];  L = (1/n) Σ_i −log σ(z_i)
// dL/dπc_i = −(β/n)·σ(−z_i),  dL/dπr_i = +(β/n)·σ(−z_i)
double dpo_loss(const double* pc, const double* pr, const double* rc, const double* rr, int n, double beta,
                double* gc, double* gr, DpoStats* st) {
    if (n <= 0) die("dpo: no pairs");
    double loss = 0, acc = 0, margin = 0, rwc = 0, rwr = 0;
    for (int i = 0; i < n; i++) {
        double c = beta * (pc[i] - rc[i]), r = beta * (pr[i] - rr[i]), z = c - r;
        loss += neg_log_sigmoid(z);
        double g = beta * sigmoid(-z) / n;
        if (gc) gc[i] = -g;
        if (gr) gr[i] = g;
        acc += c > r;
        margin += z;
        rwc += c;
        rwr += r;
    }
    if (st) *st = {loss / n, acc / n, margin / n, rwc / n, rwr / n};
    return loss / n;
}

// ---------------------------------------------------------------------------- sequences and batches

void dpo_render(const Tokenizer* tok, const DpoExample& ex, ChatSeq* c, ChatSeq* r) {
    std::vector<ChatMessage> msgs = ex.prompt;
    msgs.push_back({"assistant", ex.chosen});
    chat_tokens(tok, msgs, false, &c->ids, &c->trained);
    msgs.back().content = ex.rejected;
    chat_tokens(tok, msgs, false, &r->ids, &r->trained);
    // only the final reply is scored: earlier assistant turns of a multi-turn prompt are context
    for (ChatSeq* s : {c, r}) {
        size_t last = s->ids.size() - 1;                         // the final EOS
        while (last > 0 && s->trained[last - 1]) last--;         // back to the start of the final reply
        for (size_t i = 0; i < last; i++) s->trained[i] = 0;
    }
}

int chat_batch(const std::vector<const ChatSeq*>& rows, int pad, std::vector<int>* inputs, std::vector<int>* targets) {
    int T = 1;
    for (const ChatSeq* s : rows) T = std::max(T, (int)s->ids.size() - 1);
    int B = (int)rows.size();
    inputs->assign((size_t)B * T, pad);
    targets->assign((size_t)B * T, -1);
    for (int b = 0; b < B; b++) {
        const ChatSeq& s = *rows[b];
        for (int t = 0; t + 1 < (int)s.ids.size(); t++) {
            (*inputs)[(size_t)b * T + t] = s.ids[t];
            if (s.trained[t + 1]) (*targets)[(size_t)b * T + t] = s.ids[t + 1];
        }
    }
    return T;
}

// Σ of the per-token losses over row b: the row's total NLL on its trained tokens (masked targets give 0)
static double row_nll(const float* losses, int b, int T) {
    double s = 0;
    for (int t = 0; t < T; t++) s += losses[(size_t)b * T + t];
    return s;
}

// Forward passes over seqs, `batch` rows at a time (each batch padded to its longest row); after each one,
// visit(i, n, targets, T): rows i … i+n−1, their targets [n, T], and backend_losses(be) holding their nll.
template <typename Visit>
static void forward_chat_batches(Backend* be, const std::vector<ChatSeq>& seqs, int batch, int pad, Visit visit) {
    std::vector<int> in, tg;
    for (size_t i = 0; i < seqs.size(); i += batch) {
        std::vector<const ChatSeq*> rows;
        for (size_t j = i; j < std::min(seqs.size(), i + batch); j++) rows.push_back(&seqs[j]);
        int T = chat_batch(rows, pad, &in, &tg);
        backend_forward(be, in.data(), tg.data(), (int)rows.size(), T);
        visit(i, rows.size(), tg, T);
    }
}
void sequence_logps(Backend* be, const std::vector<ChatSeq>& seqs, int batch, int pad, std::vector<double>* out) {
    out->assign(seqs.size(), 0.0);
    forward_chat_batches(be, seqs, batch, pad, [&](size_t i, size_t n, const std::vector<int>&, int T) {
        for (size_t b = 0; b < n; b++) (*out)[i + b] = -row_nll(backend_losses(be), (int)b, T);
    });
}

// Drops sequences longer than the context (+1: the last token is only a target) or with nothing to train on.
static std::vector<ChatSeq> fit_context(std::vector<ChatSeq> seqs, int ctx, const char* what, int* dropped) {
    std::vector<ChatSeq> kept;
    for (ChatSeq& s : seqs) {
        bool any = false;
        for (size_t i = 1; i < s.trained.size(); i++) any |= s.trained[i] != 0;
        if ((int)s.ids.size() - 1 <= ctx && any) kept.push_back(std::move(s));
    }
    *dropped = (int)(seqs.size() - kept.size());
    if (*dropped) fprintf(stderr, "warning: %d %s longer than the context (%d tokens) dropped\n", *dropped, what, ctx);
    return kept;
}

// ---------------------------------------------------------------------------- the two objectives, one step each

float sft_forward_backward(Backend* be, const std::vector<const ChatSeq*>& rows, int pad) {
    std::vector<int> in, tg;
    std::vector<float> w;
    int T = chat_batch(rows, pad, &in, &tg);
    float loss = backend_forward(be, in.data(), tg.data(), (int)rows.size(), T);
    model_mean_loss_weights(tg.data(), (int)tg.size(), &w);   // 1/N on the N assistant tokens, exactly 0 elsewhere
    backend_backward(be, w.data());
    return loss;
}

double dpo_forward_backward(Backend* be, const std::vector<const ChatSeq*>& rows, const double* ref_chosen,
                                   const double* ref_rejected, double beta, int pad, DpoStats* stats) {
    if (rows.empty() || rows.size() % 2) die("dpo: rows must be n chosen then n rejected sequences");
    int n = (int)rows.size() / 2;
    std::vector<int> in, tg;
    int T = chat_batch(rows, pad, &in, &tg);
    backend_forward(be, in.data(), tg.data(), 2 * n, T);
    const float* losses = backend_losses(be);
    std::vector<double> pc(n), pr(n), gc(n), gr(n);
    for (int i = 0; i < n; i++) { pc[i] = -row_nll(losses, i, T); pr[i] = -row_nll(losses, n + i, T); }
    double loss = dpo_loss(pc.data(), pr.data(), ref_chosen, ref_rejected, n, beta, gc.data(), gr.data(), stats);
    // log π = −Σ nll_t over the reply's tokens, so dL/dnll_t = −dL/dlog π on them and 0 elsewhere
    std::vector<float> w(tg.size(), 0.0f);
    for (int r = 0; r < 2 * n; r++) {
        float g = (float)-(r < n ? gc[r] : gr[r - n]);
        for (int t = 0; t < T; t++)
            if (tg[(size_t)r * T + t] >= 0) w[(size_t)r * T + t] = g;
    }
    backend_backward(be, w.data());
    return loss;
}

// ---------------------------------------------------------------------------- the alignment stages on the loop
//
// SFT and DPO run on the training loop (run_training): AdamW, clipping at norm 1.0, the non-finite check, linear
// warmup then cosine decay to 10% of the peak (lr_at), checkpoints every --save-every steps and OUT/final at the end,
// --resume, SIGINT/SIGTERM → finish the step, checkpoint, exit, and OUT/metrics.jsonl; one rank. What differs from
// pre-training is the batch: items (conversations or pairs), B per step, in a fresh seeded order each epoch — so the
// step alone fixes the data cursor (epoch = step / steps_per_epoch), and a resumed run reads exactly what the first
// would have. Their evaluation runs before training and after each epoch; their progress line averages the steps
// since the last one.

struct AlignRun : Trainer {
    Device device = Device::CPU;          // --device (not saved with the settings: a run resumes on either backend)
    bool recompute = false;               // --recompute (CUDA; like --device, not saved)
    Tokenizer* tok = nullptr;             // freed with the run (~AlignRun), also when an error unwinds
    int pad = 0;                          // padding input id (EOS); padded targets are −1
    json settings;                        // the run's flags, kept in trainer_state.json for --resume
    size_t n_items = 0;
    int B = 0, epochs = 0;
    long steps_per_epoch = 0;
    uint64_t seed = 1;
    AlignRun() = default;
    AlignRun(const AlignRun&) = delete;
    AlignRun& operator=(const AlignRun&) = delete;
    ~AlignRun() { tokenizer_free(tok); }
};

// epoch e's order of n items: a Fisher–Yates shuffle driven by splitmix64 from (seed, e) (same on every platform)
static std::vector<int> epoch_order(size_t n, uint64_t seed, long epoch) {
    std::vector<int> v(n);
    for (size_t i = 0; i < n; i++) v[i] = (int)i;
    uint64_t s = seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(epoch + 1));
    auto next = [&]() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    };
    for (size_t i = n; i > 1; i--) std::swap(v[i - 1], v[next() % i]);
    return v;
}

static json align_state(const AlignRun& r, double elapsed) {
    return {{"stage", r.cmd}, {"step", r.step}, {"elapsed_s", elapsed},
            {"data_cursor", {{"epoch", r.step / r.steps_per_epoch}, {"index", (r.step % r.steps_per_epoch) * r.B}}},
            {"rng", {{"kind", "splitmix64 item shuffle per epoch"}, {"seed", r.seed}}},
            {"optimizer", {{"name", "AdamW"}, {"beta1", ADAMW_BETA1}, {"beta2", ADAMW_BETA2}, {"eps", ADAMW_EPS},
                           {"weight_decay", WEIGHT_DECAY}, {"clip_grad_norm", CLIP_GRAD_NORM}}},
            {"settings", r.settings}};
}

// An alignment stage on the loop. step_fn: gradients of one step's items (accumulated into the zeroed gradients) →
// its metrics, "loss" among them (SFT: "tokens", the step's, gives the line's tok/s). eval(epoch): held-out
// evaluation, epoch 0 before training. Returns the final checkpoint (or the signal's checkpoint).
static std::string align_loop(AlignRun* r, const std::function<json(const std::vector<int>&)>& step_fn,
                              const std::function<void(int epoch)>& eval) {
    long order_epoch = -1;
    std::vector<int> order;
    auto epoch_of_last_step = [r]() { return (r->step - 1) / r->steps_per_epoch + 1; };   // 1-based
    Stage st;
    st.step_word = r->cmd + " step";
    st.none_saved = "(none)";
    st.step = [&]() -> json {
        long ep = r->step / r->steps_per_epoch, k = r->step % r->steps_per_epoch;
        if (ep != order_epoch) { order = epoch_order(r->n_items, r->seed, ep); order_epoch = ep; }
        std::vector<int> items(order.begin() + k * r->B, order.begin() + std::min(r->n_items, (size_t)(k + 1) * r->B));
        return step_fn(items);
    };
    st.record = [&](json* rec, const StepReport& p) {
        (*rec)["stage"] = r->cmd;
        (*rec)["epoch"] = epoch_of_last_step();
        (*rec)["step_s"] = p.step_s;
    };
    st.progress = [&](const StepReport& p) {
        printf("%s step %ld/%ld | epoch %ld", r->cmd.c_str(), r->step, r->steps, epoch_of_last_step());
        for (auto& kv : p.sums)
            if (kv.first == "tokens") printf(" | %.0f tok/s", kv.second / p.line_s);
            else printf(" | %s %.4f", kv.first.c_str(), kv.second / p.nsum);
        printf(" | lr %.3g | norm %.3f | %s elapsed | ETA %s\n", p.lr, p.norm, hms(p.elapsed).c_str(), hms(p.eta).c_str());
    };
    st.evaluate = [&]() { eval((int)(r->step / r->steps_per_epoch)); };   // at each epoch's end (eval_every)
    st.state = [r](double elapsed) { return align_state(*r, elapsed); };
    return run_training(r, st);
}

// ---------------------------------------------------------------------------- shared command plumbing

// --resume DIR: the checkpoint's saved flags fill in every flag not given again on the command line
static std::string align_resume_flags(Args* a) {
    if (!a->has("resume")) return "";
    refuse_overwrite_on_resume(*a);
    require_dir(a->str("resume"), a->cmd + ": --resume");
    std::string ckpt = checkpoint_latest(a->str("resume"));
    if (ckpt.empty()) die("%s: no checkpoint in %s", a->cmd.c_str(), a->str("resume").c_str());
    std::string sp = ckpt + "/trainer_state.json";
    json st = json_parse_file(sp);
    if (!st.is_object() || json_str(st, "stage", sp, "") != a->cmd)
        die("%s: %s is not a checkpoint of a `deepseek %s` run", a->cmd.c_str(), ckpt.c_str(), a->cmd.c_str());
    const json* set = json_object(st, "settings", sp, true);
    for (auto it = set->begin(); it != set->end(); ++it) {   // every saved flag is a string; skip-bad a switch
        if (it.key() == "skip-bad") {
            if (json_bool(*set, "skip-bad", sp + ": settings", false)) a->switches["skip-bad"] = true;
            continue;
        }
        std::string v = json_str(*set, it.key().c_str(), sp + ": settings", "", true);
        if (!a->has(it.key())) a->values[it.key()] = v;
    }
    return ckpt;
}
static json align_settings(const Args& a) {
    json j = json::object();
    for (auto& kv : a.values)
        if (kv.first != "resume" && kv.first != "threads" && kv.first != "device") j[kv.first] = kv.second;
    j["skip-bad"] = a.flag("skip-bad");
    return j;
}
static void align_require(const Args& a) {
    if (!a.has("model")) die("%s: --model DIR is required", a.cmd.c_str());
    if (!a.has("data")) die("%s: --data FILE is required", a.cmd.c_str());
    if (!a.has("out")) die("%s: --out DIR is required", a.cmd.c_str());
}
// the model to start from (--model) and its tokenizer
static void align_load(const Args& a, AlignRun* r) {
    std::string dir = a.str("model");
    require_dir(dir, a.cmd + ": model directory");
    r->tokenizer_path = a.str("tokenizer", dir + "/tokenizer.json");
    if (!path_exists(r->tokenizer_path))
        die("%s: no tokenizer at %s (give --tokenizer FILE)", a.cmd.c_str(), r->tokenizer_path.c_str());
    r->tok = tokenizer_load(r->tokenizer_path);
    model_load_dir(&r->model, dir);
    int V = r->model.cfg.vocab_size, tv = tokenizer_vocab_size(r->tok);
    if (tv > V) die("%s: the tokenizer has %d tokens but the model only %d embedding rows", a.cmd.c_str(), tv, V);
    if (tokenizer_bos_id(r->tok) < 0 || tokenizer_eos_id(r->tok) < 0)
        die("%s: the tokenizer %s has no BOS/EOS token, which the chat template needs", a.cmd.c_str(), r->tokenizer_path.c_str());
    r->pad = tokenizer_eos_id(r->tok);   // pad = EOS (the release's tokenizer_config); padded targets are −1
}
// the flags every stage shares (read before the data, so a bad value stops the run at once)
static void align_config(const Args& a, AlignRun* r, int default_epochs, int default_batch, double default_lr) {
    r->cmd = a.cmd;
    r->device = device_select(a.str("device", "auto"));   // dies here if --device cuda cannot run
    r->recompute = a.flag("recompute");
    r->out = a.str("out");
    r->epochs = (int)a.integer("epochs", default_epochs, 1, 100000);
    r->B = (int)a.integer("batch", default_batch, 1, 1 << 20);
    r->lr = a.real("lr", default_lr, 1e-12, 1);
    r->seed = (uint64_t)a.integer("seed", 1, 0, 1ll << 53);
    r->log_every = (int)a.integer("log-every", 10, 1, 1 << 30);
    r->keep = (int)a.integer("keep", 3, 1, 1 << 20);
    r->warmup = a.integer("warmup", -1, 0, 1ll << 40);
    r->save_every = a.integer("save-every", -1, 0, 1ll << 40);
}
// Says which backend runs; for --device cuda puts the model on the GPU, sized for the largest forward: `rows`
// sequences of the longest one (ids − 1 tokens). Before align_start, which uploads a resumed checkpoint's state.
static void align_device(AlignRun* r, int rows, const std::vector<const std::vector<ChatSeq>*>& sets) {
    int T = 1;
    for (const auto* set : sets)
        for (const ChatSeq& q : *set) T = std::max(T, (int)q.ids.size() - 1);
    dp_optimizer_range(r);
    backend_open(&r->be, r->device, AdamW(), rows, T, r->recompute, r->cmd.c_str());
}
// the schedule and the output directory; with a checkpoint, its weights, AdamW state and step. Returns false (and
// says so) when the checkpoint is a finished run's final/ with no steps left: nothing to do.
static bool align_start(const Args& a, AlignRun* r, const std::string& ckpt, size_t n_items, double default_warmup_share) {
    r->n_items = n_items;
    r->steps_per_epoch = ((long)n_items + r->B - 1) / r->B;
    r->steps = r->steps_per_epoch * r->epochs;
    r->schedule = LRSchedule::COSINE;
    if (r->warmup < 0) r->warmup = std::max(1L, (long)(r->steps * default_warmup_share));
    if (r->save_every < 0) r->save_every = std::max(1L, r->steps / 4);
    r->eval_every = r->steps_per_epoch;   // held-out evaluation at each epoch's end
    r->settings = align_settings(a);
    if (!ckpt.empty()) {
        Model start;   // the checkpoint must have the starting model's shapes
        std::string sp = ckpt + "/trainer_state.json";
        json st = checkpoint_load(ckpt, &start, &r->opt);
        r->step = r->opt.t;
        if (start.num_parameters != r->model.num_parameters) die("%s: %s does not match --model's shapes", a.cmd.c_str(), ckpt.c_str());
        if (r->step > r->steps)
            die("%s: step %ld is past this run's %ld steps (%d epoch(s) × %ld steps of %d): give --epochs to match",
                sp.c_str(), r->step, r->steps, r->epochs, r->steps_per_epoch, r->B);
        if (run_finished(a.cmd.c_str(), ckpt, r->step, r->steps, "--epochs N (more than " + std::to_string(r->epochs) + ")"))
            return false;
        r->elapsed_before = json_num(st, "elapsed_s", sp, 0.0, 0, 1e300);
        open_run(r, false, parent_dir(ckpt));
        r->model.params_memory = start.params_memory;
        param_point(&r->model.params, r->model.params_memory.data(), r->model.param_sizes);
        if (r->be.cuda) {   // the checkpoint's weights and AdamW moments onto the GPU
            cuda_model_set_params(r->be.cuda, r->model);
            cuda_model_set_adam_state(r->be.cuda, r->opt.m.data(), r->opt.v.data());
        }
        printf("%s: resuming %s at step %ld of %ld\n", a.cmd.c_str(), ckpt.c_str(), r->step, r->steps);
    } else {
        open_run(r, a.flag("overwrite"), "");
        r->opt = AdamW();
    }
    return true;
}
static void align_finish(AlignRun* r, const std::string& final_dir) {
    backend_close(&r->be);
    metrics_close(r->metrics);   // (already closed by the loop, when it ran)
    r->metrics = nullptr;
    if (r->tok) tokenizer_free(r->tok);
    r->tok = nullptr;
    if (r->step == r->steps && !final_dir.empty())
        printf("%s: final model %s (metrics: %s/metrics.jsonl)\n", r->cmd.c_str(), final_dir.c_str(), r->out.c_str());
}

#define ALIGN_COMMON_FLAGS \
    "  --tokenizer FILE    tokenizer.json (default: MODEL/tokenizer.json)\n" \
    "  --warmup N          linear warmup steps (0 = none), then cosine decay to 10% of the peak\n" \
    "  --save-every N      checkpoint every N steps (default: a quarter of the run; 0 = only OUT/final and on a\n" \
    "                      signal); --keep N newest kept (default 3)\n" \
    "  --resume DIR        continue a run from its checkpoint (or its run directory's newest, final/ included), with\n" \
    "                      the same flags; a finished run goes on only with more --epochs (else: it says so, exit 0)\n" \
    "  --overwrite         --out holds an earlier run (checkpoints, metrics.jsonl): delete its files and start over\n" \
    "                      (without it such an --out is refused); OUT/.lock makes a second run on one OUT an error\n" \
    "  --skip-bad          skip malformed JSONL lines (each reported with its line number) instead of stopping\n" \
    "  --log-every N       progress line every N steps (default 10)\n" \
    "  --seed S            data order (default 1)      --threads N   OpenMP threads\n" \
    "  --device D          auto (the GPU when there is one) | cpu | cuda; checkpoints resume on either\n" \
    "  --recompute         --device cuda: keep RMSNorm/SwiGLU outputs for one layer and recompute them in backward\n" \
    "                      (less activation memory, the same gradients)\n" \
    "  AdamW (β1 0.9, β2 0.95, ε 1e-8, weight decay 0.1 on matrices), gradient clipping at 1.0, as pre-training.\n" \
    "  outputs: OUT/final/ (model directory + tokenizer + optimizer + trainer state), OUT/step_NNNNNN/ checkpoints,\n" \
    "  OUT/metrics.jsonl. SIGINT/SIGTERM finish the step, write a checkpoint and exit.\n"
// the flags of ALIGN_COMMON_FLAGS and the ones sft and dpo share, with a command's own added
static std::vector<std::string> align_value_flags(std::vector<std::string> own) {
    for (const char* f : {"model", "data", "out", "tokenizer", "val", "epochs", "batch", "lr", "warmup", "save-every", "keep",
                          "resume", "log-every", "seed", "threads", "device"})
        own.push_back(f);
    return own;
}
static const std::vector<std::string> ALIGN_SWITCHES = {"skip-bad", "overwrite", "recompute"};

// ---------------------------------------------------------------------------- deepseek sft

// mean NLL over the assistant tokens of `seqs` (no gradient)
static double sft_eval_loss(Backend* be, const std::vector<ChatSeq>& seqs, int batch, int pad) {
    double nll = 0;
    long count = 0;
    forward_chat_batches(be, seqs, batch, pad, [&](size_t, size_t, const std::vector<int>& tg, int) {
        const float* losses = backend_losses(be);
        for (size_t k = 0; k < tg.size(); k++)
            if (tg[k] >= 0) { nll += losses[k]; count++; }
    });
    return count ? nll / count : 0.0;
}

static std::vector<ChatSeq> render_sft(const Tokenizer* tok, const std::vector<SftExample>& ex) {
    std::vector<ChatSeq> seqs(ex.size());
    for (size_t i = 0; i < ex.size(); i++) chat_tokens(tok, ex[i].messages, false, &seqs[i].ids, &seqs[i].trained);
    return seqs;
}

static const char* SFT_USAGE =
    "usage: deepseek sft --model BASE_DIR --data chat.jsonl --out DIR [flags]\n"
               "       deepseek sft --resume CHECKPOINT|RUN_DIR [--threads N]\n\n"
               "Supervised fine-tuning on chat conversations, JSONL lines {\"messages\": [{\"role\": \"user\"|\"assistant\"|\"system\",\n"
               "\"content\": ...}, ...]}, rendered with the DeepSeek chat template; the loss is the mean NLL of the assistant\n"
               "tokens (each reply and its EOS); user, system and template tokens are context only. One conversation per\n"
               "row, padded to the longest of the step.\n\n"
               "  --model DIR         the base model (Hugging Face layout; its tokenizer.json unless --tokenizer)\n"
               "  --data FILE         training conversations (JSONL)\n"
               "  --out DIR           the run directory\n"
               "  --val FILE          held-out conversations: assistant-token loss before training and after each epoch\n"
               "  --epochs N          passes over the data (default 2; the paper: 4 for 7B, 2 for 67B)\n"
               "  --batch N           conversations per step (default 16)\n"
               "  --lr X              peak learning rate (default 1e-5, the paper's 7B SFT rate)\n"
               "  (warmup default: 3% of the steps)\n" ALIGN_COMMON_FLAGS;

int cmd_sft(int argc, char** argv) {
    Args a(argc, argv, 2, "sft", SFT_USAGE, align_value_flags({}), ALIGN_SWITCHES);
    std::string ckpt = align_resume_flags(&a);
    align_require(a);
    AlignRun r;
    align_config(a, &r, 2, 16, 1e-5);
    // read and check every line before anything heavy: a bad file stops here, before training starts
    int skipped = 0, vskipped = 0;
    std::vector<SftExample> train_ex = sft_read_jsonl(a.str("data"), a.flag("skip-bad"), &skipped);
    std::vector<SftExample> val_ex;
    if (a.has("val")) val_ex = sft_read_jsonl(a.str("val"), a.flag("skip-bad"), &vskipped);
    align_load(a, &r);
    int ctx = r.model.cfg.max_position_embeddings, dropped = 0, vdropped = 0;
    std::vector<ChatSeq> train = fit_context(render_sft(r.tok, train_ex), ctx, "conversations", &dropped);
    std::vector<ChatSeq> val = fit_context(render_sft(r.tok, val_ex), ctx, "held-out conversations", &vdropped);
    if (train.empty()) die("sft: no conversation fits the context of %d tokens", ctx);
    align_device(&r, r.B, {&train, &val});
    if (!align_start(a, &r, ckpt, train.size(), 0.03)) { align_finish(&r, ""); return 0; }
    long assistant_tokens = 0, all_tokens = 0;
    for (auto& q : train) {
        all_tokens += (long)q.ids.size();
        for (size_t i = 1; i < q.trained.size(); i++) assistant_tokens += q.trained[i];
    }
    printf("sft: %zu conversations (%d bad lines skipped, %d too long): %ld tokens, %ld of them assistant tokens (trained)\n",
           train.size(), skipped, dropped, all_tokens, assistant_tokens);
    printf("sft: %d epochs × %ld steps of %d conversations, lr %g (warmup %ld, cosine), %zu parameters\n",
           r.epochs, r.steps_per_epoch, r.B, r.lr, r.warmup, r.model.num_parameters);
    auto eval = [&](int epoch) {
        if (val.empty()) return;
        double vl = sft_eval_loss(&r.be, val, r.B, r.pad);
        printf("sft: held-out assistant loss %.4f %s (%zu conversations)\n", vl,
               epoch ? ("after epoch " + std::to_string(epoch)).c_str() : "before training", val.size());
        write_metric(r.metrics, {{"stage", "sft"}, {"step", r.step}, {"epoch", epoch}, {"val_loss", vl}});
    };
    std::string final_dir = align_loop(&r, [&](const std::vector<int>& items) -> json {
        std::vector<const ChatSeq*> rows;
        long tokens = 0;
        for (int i : items) { rows.push_back(&train[i]); tokens += (long)train[i].ids.size(); }
        float loss = sft_forward_backward(&r.be, rows, r.pad);
        return {{"loss", loss}, {"tokens", tokens}};
    }, eval);
    align_finish(&r, final_dir);
    return 0;
}

// ---------------------------------------------------------------------------- deepseek dpo

// chosen and rejected sequences of each pair: rows 2i and 2i+1
static std::vector<ChatSeq> render_pairs(const Tokenizer* tok, const std::vector<DpoExample>& ex, int ctx, const char* what) {
    std::vector<ChatSeq> seqs(2 * ex.size()), kept;
    for (size_t i = 0; i < ex.size(); i++) dpo_render(tok, ex[i], &seqs[2 * i], &seqs[2 * i + 1]);
    int dropped = 0;
    for (size_t i = 0; i < ex.size(); i++) {
        if ((int)std::max(seqs[2 * i].ids.size(), seqs[2 * i + 1].ids.size()) - 1 > ctx) { dropped++; continue; }
        kept.push_back(std::move(seqs[2 * i]));
        kept.push_back(std::move(seqs[2 * i + 1]));
    }
    if (dropped) fprintf(stderr, "warning: %d %s longer than the context (%d tokens) dropped\n", dropped, what, ctx);
    return kept;
}

// DPO statistics of the current policy on pairs (seqs, ref log-probs); also the share of pairs where the policy
// itself gives the chosen reply the higher log-probability (no reference involved)
static DpoStats dpo_eval(Backend* be, const std::vector<ChatSeq>& seqs, const std::vector<double>& ref, double beta,
                         int batch, int pad, double* logp_accuracy) {
    std::vector<double> lp;
    sequence_logps(be, seqs, 2 * batch, pad, &lp);
    size_t n = seqs.size() / 2;
    std::vector<double> pc(n), pr(n), rc(n), rr(n);
    double better = 0;
    for (size_t i = 0; i < n; i++) {
        pc[i] = lp[2 * i]; pr[i] = lp[2 * i + 1]; rc[i] = ref[2 * i]; rr[i] = ref[2 * i + 1];
        better += pc[i] > pr[i];
    }
    DpoStats st;
    dpo_loss(pc.data(), pr.data(), rc.data(), rr.data(), (int)n, beta, nullptr, nullptr, &st);
    if (logp_accuracy) *logp_accuracy = better / n;
    return st;
}

static const char* DPO_USAGE =
    "usage: deepseek dpo --model SFT_DIR --data prefs.jsonl --out DIR [flags]\n"
               "       deepseek dpo --resume CHECKPOINT|RUN_DIR [--threads N]\n\n"
               "Direct Preference Optimization. JSONL lines {\"prompt\": \"...\" | \"messages\": [... ending with a user turn],\n"
               "\"chosen\": \"...\", \"rejected\": \"...\"}. The policy starts from the SFT model; the reference is the same\n"
               "weights, frozen: their log-probabilities are computed once up front and cached. Loss per pair:\n"
               "  −log σ(β[(log π(chosen) − log ref(chosen)) − (log π(rejected) − log ref(rejected))])\n"
               "Logs the reward accuracy (share of pairs with β·Δchosen > β·Δrejected) and the reward margin.\n\n"
               "  --model DIR         the SFT model (the policy's start and the frozen reference)\n"
               "  --data FILE         preference pairs (JSONL)\n"
               "  --out DIR           the run directory\n"
               "  --val FILE          held-out pairs: reward accuracy and margin before and after each epoch\n"
               "  --beta X            β (default 0.1)\n"
               "  --epochs N          passes over the pairs (default 1, the paper's)\n"
               "  --batch N           pairs per step (default 8)\n"
               "  --lr X              peak learning rate (default 5e-6, the paper's)\n"
               "  (warmup default: 10% of the steps)\n" ALIGN_COMMON_FLAGS;

int cmd_dpo(int argc, char** argv) {
    Args a(argc, argv, 2, "dpo", DPO_USAGE, align_value_flags({"beta"}), ALIGN_SWITCHES);
    std::string ckpt = align_resume_flags(&a);
    align_require(a);
    AlignRun r;
    align_config(a, &r, 1, 8, 5e-6);
    double beta = a.real("beta", 0.1, 1e-6, 1e6);
    int skipped = 0, vskipped = 0;
    std::vector<DpoExample> train_ex = dpo_read_jsonl(a.str("data"), a.flag("skip-bad"), &skipped);
    std::vector<DpoExample> val_ex;
    if (a.has("val")) val_ex = dpo_read_jsonl(a.str("val"), a.flag("skip-bad"), &vskipped);
    align_load(a, &r);   // --model: the SFT weights, which are also the reference (a resumed run recomputes it)
    int ctx = r.model.cfg.max_position_embeddings;
    std::vector<ChatSeq> train = render_pairs(r.tok, train_ex, ctx, "pairs");
    std::vector<ChatSeq> val = render_pairs(r.tok, val_ex, ctx, "held-out pairs");
    size_t npairs = train.size() / 2;
    if (npairs == 0) die("dpo: no pair fits the context of %d tokens", ctx);
    int B = r.B;
    align_device(&r, 2 * B, {&train, &val});
    // the frozen reference: the starting weights' log-probabilities, once, before any update (on the same backend as
    // the policy's, so that before the first update policy and reference agree exactly)
    double t0 = now_seconds();
    std::vector<double> ref, vref;
    sequence_logps(&r.be, train, 2 * B, r.pad, &ref);
    if (!val.empty()) sequence_logps(&r.be, val, 2 * B, r.pad, &vref);
    printf("dpo: reference log-probabilities of %zu sequences cached (%.0fs)\n", train.size() + val.size(), now_seconds() - t0);
    if (!align_start(a, &r, ckpt, npairs, 0.10)) { align_finish(&r, ""); return 0; }
    printf("dpo: %zu pairs (%d bad lines skipped), β %g, %d epoch(s) × %ld steps of %d pairs, lr %g (warmup %ld, cosine)\n",
           npairs, skipped, beta, r.epochs, r.steps_per_epoch, r.B, r.lr, r.warmup);
    auto eval = [&](int epoch) {
        if (val.empty()) return;
        double lpacc;
        DpoStats v = dpo_eval(&r.be, val, vref, beta, r.B, r.pad, &lpacc);
        printf("dpo: held-out %s: loss %.4f | reward accuracy %.3f | margin %.4f | log-prob accuracy %.3f (%zu pairs)\n",
               epoch ? ("after epoch " + std::to_string(epoch)).c_str() : "before", v.loss, v.reward_accuracy,
               v.reward_margin, lpacc, val.size() / 2);
        write_metric(r.metrics, {{"stage", "dpo"}, {"step", r.step}, {"epoch", epoch}, {"val_loss", v.loss},
                                 {"val_reward_accuracy", v.reward_accuracy}, {"val_reward_margin", v.reward_margin},
                                 {"val_logp_accuracy", lpacc}});
    };
    std::string final_dir = align_loop(&r, [&](const std::vector<int>& pairs) -> json {
        // rows: chosen 0..n−1, then rejected n..2n−1
        int n = (int)pairs.size();
        std::vector<const ChatSeq*> rows;
        std::vector<double> rc(n), rr(n);
        for (int p : pairs) rows.push_back(&train[2 * p]);
        for (int p : pairs) rows.push_back(&train[2 * p + 1]);
        for (int q = 0; q < n; q++) { rc[q] = ref[2 * pairs[q]]; rr[q] = ref[2 * pairs[q] + 1]; }
        DpoStats st;
        dpo_forward_backward(&r.be, rows, rc.data(), rr.data(), beta, r.pad, &st);
        return {{"loss", st.loss}, {"reward_accuracy", st.reward_accuracy}, {"reward_margin", st.reward_margin},
                {"reward_chosen", st.reward_chosen}, {"reward_rejected", st.reward_rejected}};
    }, eval);
    align_finish(&r, final_dir);
    return 0;
}

// ============================================================================
// data parallelism: MPI, NCCL, ZeRO-1
//
// Each rank holds the whole model and runs forward/backward on its own part of every global batch. Gradients
// are summed over ranks (each rank's loss weights are 1/N_global, N_global = unmasked tokens of the whole global
// batch, so the sum is the gradient of the global mean loss: -np N with B/N rows each reproduces -np 1 with B).
//   CPU backend:  MPI_Allreduce            GPUs:  ncclAllReduce (NCCL's unique id is broadcast over MPI)
//   ZeRO-1:       reduce-scatter of the gradients → each rank updates its shard of the weights and of AdamW's
//                 m and v → all-gather of the weights. Optimizer state per rank is 1/world of the unsharded one.
// Without an MPI launch (no mpirun/srun in the environment) MPI is never initialised: one process, as before.

#ifdef DEEPSEEK_MPI
#define OMPI_SKIP_MPICXX 1   // the C API only
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>             // MPI_Init_thread, MPI_Allreduce, MPI_Reduce_scatter, MPI_Allgatherv, MPI_Bcast
#endif
// NCCL comes with the CUDA build unless it is built without (make NCCL=0: one GPU, no data-parallel GPU ranks)
#if defined(DEEPSEEK_CUDA) && !defined(DEEPSEEK_NO_NCCL)
#define DEEPSEEK_NCCL 1
#include <cuda_runtime.h>    // cudaSetDevice, cudaStream_t
#include <nccl.h>            // ncclCommInitRank, ncclAllReduce, ncclReduceScatter, ncclAllGather
#endif
#include <dirent.h>          // opendir, readdir (finding the optimizer state files)
#include <algorithm>         // std::min, std::max
#include <cerrno>            // errno
#include <climits>           // INT_MAX
#include <cstdio>            // snprintf, sscanf
#include <cstdlib>           // getenv
#include <cstring>           // memcpy, strerror

#ifdef DEEPSEEK_MPI
#define mpiCheck(call) mpi_check((call), #call, __FILE__, __LINE__)
static void mpi_check(int err, const char* what, const char* file, int line) {
    if (err == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(err, msg, &len);
    die("MPI: %s failed at %s:%d: %s", what, file, line, msg);
}
// MPI counts are int: a shard or buffer past 2^31 elements needs MPI-4 large counts, which OpenMPI 4 lacks
static int mpi_count(size_t n, const char* what) {
    if (n > (size_t)INT_MAX) die("MPI: %s of %zu elements exceeds MPI's int count limit; use more ranks or NCCL", what, n);
    return (int)n;
}
#endif

// The launchers we know set these: OpenMPI's mpirun, PMIx (srun --mpi=pmix, prrte), MPICH/Hydra and srun --mpi=pmi2,
// plain srun. A single process (none set, or a world of one srun task) never touches MPI.
bool dist_launched() {
    if (getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_RANK")) return true;
    const char* n = getenv("SLURM_NTASKS");
    return getenv("SLURM_PROCID") && n && atoi(n) > 1;
}

void dist_init(Dist* d) {
    d->rank = 0; d->world = 1; d->local_rank = 0; d->local_world = 1; d->mpi = false;
    if (!dist_launched()) return;
#ifdef DEEPSEEK_MPI
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided = 0;   // FUNNELED: only the main thread calls MPI; OpenMP threads compute
        mpiCheck(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided));
    }
    d->mpi = true;
    mpiCheck(MPI_Comm_rank(MPI_COMM_WORLD, &d->rank));
    mpiCheck(MPI_Comm_size(MPI_COMM_WORLD, &d->world));
    // the ranks sharing this machine's memory: the local rank picks the GPU
    MPI_Comm node;
    mpiCheck(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &node));
    mpiCheck(MPI_Comm_rank(node, &d->local_rank));
    mpiCheck(MPI_Comm_size(node, &d->local_world));
    MPI_Comm_free(&node);
#else
    die("launched by mpirun/srun, but this binary was built without MPI (install libopenmpi-dev and rebuild)");
#endif
}

void dist_finalize(Dist* d) {
#ifdef DEEPSEEK_NCCL
    if (d->nccl) {
        ncclResult_t r = ncclCommDestroy((ncclComm_t)d->nccl);
        d->nccl = nullptr;
        if (r != ncclSuccess) die("NCCL: ncclCommDestroy failed: %s", ncclGetErrorString(r));
    }
#endif
#ifdef DEEPSEEK_MPI
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (d->mpi && inited && !finalized) MPI_Finalize();
#endif
    d->mpi = false;
}

// shard[r] = r·n/world rounded down to a multiple of 16 elements (64 bytes, so every shard starts aligned);
// the last rank takes the remainder. Shard sizes differ by at most 16·world elements.
void dist_shards(Dist* d, size_t n) {
    d->shard.assign(d->world + 1, 0);
    for (int r = 1; r < d->world; r++) d->shard[r] = (size_t)((unsigned __int128)n * r / d->world) / 16 * 16;
    d->shard[d->world] = n;
}

void dist_allreduce_sum(const Dist& d, float* x, size_t n) {
    if (d.world == 1) return;
#ifdef DEEPSEEK_MPI
    mpiCheck(MPI_Allreduce(MPI_IN_PLACE, x, mpi_count(n, "all-reduce"), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
#endif
}
void dist_allreduce_sum(const Dist& d, double* x, size_t n) {
    if (d.world == 1) return;
#ifdef DEEPSEEK_MPI
    mpiCheck(MPI_Allreduce(MPI_IN_PLACE, x, mpi_count(n, "all-reduce"), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
#endif
}

// x[n] on every rank → x[shard[r]..shard[r+1]) = Σ_ranks x[shard[r]..shard[r+1]) on rank r; the rest of x is stale
void dist_reduce_scatter_sum(const Dist& d, float* x) {
    if (d.shard.size() != (size_t)d.world + 1) die("reduce-scatter: call dist_shards first");
    if (d.world == 1) return;
#ifdef DEEPSEEK_MPI
    std::vector<int> counts(d.world);
    for (int r = 0; r < d.world; r++) counts[r] = mpi_count(d.shard[r + 1] - d.shard[r], "reduce-scatter shard");
    std::vector<float> mine(counts[d.rank]);
    mpiCheck(MPI_Reduce_scatter(x, mine.data(), counts.data(), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
    std::copy(mine.begin(), mine.end(), x + d.shard_begin());
#endif
}

// x[shard[r]..shard[r+1]) from rank r → every rank's x
void dist_allgather(const Dist& d, float* x) {
    if (d.shard.size() != (size_t)d.world + 1) die("all-gather: call dist_shards first");
    if (d.world == 1) return;
#ifdef DEEPSEEK_MPI
    std::vector<int> counts(d.world), displs(d.world);
    mpi_count(d.shard[d.world], "all-gather buffer");   // displacements are int too
    for (int r = 0; r < d.world; r++) {
        counts[r] = (int)(d.shard[r + 1] - d.shard[r]);
        displs[r] = (int)d.shard[r];
    }
    mpiCheck(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x, counts.data(), displs.data(), MPI_FLOAT, MPI_COMM_WORLD));
#endif
}

void dist_broadcast(const Dist& d, void* buf, size_t bytes, int root) {
    if (d.world == 1) return;
#ifdef DEEPSEEK_MPI
    mpiCheck(MPI_Bcast(buf, mpi_count(bytes, "broadcast"), MPI_BYTE, root, MPI_COMM_WORLD));
#endif
}

void dist_barrier(const Dist& d) {
    if (d.world == 1) return;
#ifdef DEEPSEEK_MPI
    mpiCheck(MPI_Barrier(MPI_COMM_WORLD));
#endif
}

// ‖g‖² = Σ_i g_i². Replicated: every rank holds all of g, so the local sum is the global one. Sharded (ZeRO-1 after
// the reduce-scatter): only this rank's shard is valid; the shards' partial sums add up over ranks.
double dist_sum_squares(const Dist& d, const float* x, size_t n, bool sharded) {
    size_t b = sharded ? d.shard_begin() : 0, e = sharded ? d.shard_end() : n;
    if (sharded && d.shard.size() != (size_t)d.world + 1) die("sum of squares: call dist_shards first");
    double s = grad_sum_squares(x + b, e - b);
    if (sharded) dist_allreduce_sum(d, &s, 1);
    return s;
}

// ---------------------------------------------------------------------------- NCCL (GPUs)
// One communicator over all ranks; rank r drives GPU local_rank. Unequal ZeRO shards (the last one) use grouped
// reduces/broadcasts, one per owner; equal shards use NCCL's in-place reduce-scatter / all-gather.

#ifdef DEEPSEEK_NCCL
#define ncclCheck(call) nccl_check((call), #call, __FILE__, __LINE__)
static void nccl_check(ncclResult_t r, const char* what, const char* file, int line) {
    if (r != ncclSuccess) die("NCCL: %s failed at %s:%d: %s", what, file, line, ncclGetErrorString(r));
}
static ncclComm_t nccl_comm(const Dist& d) {
    if (!d.nccl) die("NCCL: call dist_nccl_init first");
    return (ncclComm_t)d.nccl;
}
static bool shards_equal(const Dist& d) {
    for (int r = 0; r < d.world; r++)
        if (d.shard[r + 1] - d.shard[r] != d.shard[1] - d.shard[0]) return false;
    return true;
}
#endif

bool dist_nccl_available() {
#ifdef DEEPSEEK_NCCL
    return true;
#else
    return false;
#endif
}

void dist_nccl_init(Dist* d) {
#ifdef DEEPSEEK_NCCL
    if (d->nccl) return;
    int ndev = cuda_device_count();
    if (ndev == 0) die("NCCL: no CUDA device");
    if (d->local_world > ndev)
        fprintf(stderr, "warning: %d ranks on this machine share %d GPUs (NCCL needs one GPU per rank)\n", d->local_world, ndev);
    cuda_use_local_rank(d->local_rank);   // the backend's GPU is this rank's too
    if (cudaSetDevice(cuda_device_index()) != cudaSuccess) die("NCCL: cudaSetDevice(%d) failed", cuda_device_index());
    ncclUniqueId id;
    if (d->rank == 0) ncclCheck(ncclGetUniqueId(&id));
    dist_broadcast(*d, &id, sizeof id, 0);   // rank 0's id reaches every rank over MPI
    ncclComm_t comm;
    ncclCheck(ncclCommInitRank(&comm, d->world, id, d->rank));
    d->nccl = comm;
#else
    (void)d;
    die("NCCL: this binary was built without NCCL (a CPU-only build, or make NCCL=0)");
#endif
}

void dist_nccl_allreduce_sum(const Dist& d, float* x, size_t n, void* stream) {
#ifdef DEEPSEEK_NCCL
    ncclCheck(ncclAllReduce(x, x, n, ncclFloat, ncclSum, nccl_comm(d), (cudaStream_t)stream));
#else
    die("NCCL: this binary was built without NCCL (a CPU-only build, or make NCCL=0)");
#endif
}

// The two sharded collectives, in place on x[n]: reduce-scatter (each rank's shard receives the sum over ranks) and
// all-gather (every rank's shard copied to all ranks).
static void nccl_sharded(const Dist& d, float* x, void* stream, bool reduce, const char* what) {
#ifdef DEEPSEEK_NCCL
    if (d.shard.size() != (size_t)d.world + 1) die("%s: call dist_shards first", what);
    cudaStream_t s = (cudaStream_t)stream;
    ncclComm_t comm = nccl_comm(d);
    if (shards_equal(d)) {   // NCCL's own collective: rank r's part lies at x + r·count
        size_t count = d.shard[1] - d.shard[0];
        if (reduce) ncclCheck(ncclReduceScatter(x, x + d.shard_begin(), count, ncclFloat, ncclSum, comm, s));
        else ncclCheck(ncclAllGather(x + d.shard_begin(), x, count, ncclFloat, comm, s));
        return;
    }
    ncclCheck(ncclGroupStart());   // unequal shards: a reduce to (a broadcast from) each shard's owner
    for (int r = 0; r < d.world; r++) {
        float* part = x + d.shard[r];
        size_t count = d.shard[r + 1] - d.shard[r];
        if (reduce) ncclCheck(ncclReduce(part, part, count, ncclFloat, ncclSum, r, comm, s));
        else ncclCheck(ncclBroadcast(part, part, count, ncclFloat, r, comm, s));
    }
    ncclCheck(ncclGroupEnd());
#else
    (void)d; (void)x; (void)stream; (void)reduce; (void)what;
    die("NCCL: this binary was built without NCCL (a CPU-only build, or make NCCL=0)");
#endif
}
void dist_nccl_reduce_scatter_sum(const Dist& d, float* x, void* stream) { nccl_sharded(d, x, stream, true, "reduce-scatter"); }
void dist_nccl_allreduce_slices(const Dist& d, float* x, const std::vector<std::pair<size_t, size_t>>& slices, void* stream) {
#ifdef DEEPSEEK_NCCL
    ncclComm_t comm = nccl_comm(d);
    ncclCheck(ncclGroupStart());
    for (const auto& sl : slices)
        ncclCheck(ncclAllReduce(x + sl.first, x + sl.first, sl.second, ncclFloat, ncclSum, comm, (cudaStream_t)stream));
    ncclCheck(ncclGroupEnd());
#else
    (void)d; (void)x; (void)slices; (void)stream;
    die("NCCL: this binary was built without NCCL (a CPU-only build, or make NCCL=0)");
#endif
}
void dist_nccl_allgather(const Dist& d, float* x, void* stream) { nccl_sharded(d, x, stream, false, "all-gather"); }

// The GPU check's probe of the NCCL path (tests/gpu_check.sh runs it under mpirun on every GPU): all-reduce,
// reduce-scatter and all-gather of n floats on device memory against the sums computed on the host. Rank r's input
// is small integers, so every order of summation is exact and the comparison is bit-exact. Returns the number of
// wrong elements (0 = pass) and describes the run in *report.
#ifdef DEEPSEEK_NCCL
static void selftest_cuda(cudaError_t e, const char* what) {
    if (e != cudaSuccess) die("NCCL self-test: %s failed: %s", what, cudaGetErrorString(e));
}
#endif
size_t dist_nccl_selftest(Dist* d, size_t n, std::string* report) {
#ifdef DEEPSEEK_NCCL
    dist_nccl_init(d);
    Dist s = *d;
    dist_shards(&s, n);
    auto input = [](int r, size_t i) { return (float)((int)((i * 7 + (size_t)r * 13) % 11) - 5); };
    std::vector<float> host(n), want(n), got(n);
    for (size_t i = 0; i < n; i++) {
        host[i] = input(d->rank, i);
        want[i] = 0;
        for (int r = 0; r < d->world; r++) want[i] += input(r, i);
    }
    float* dev = nullptr;
    if (cudaMalloc(&dev, n * sizeof(float)) != cudaSuccess) die("NCCL self-test: cudaMalloc of %zu floats failed", n);
    size_t wrong = 0;
    // all-reduce: every element is the sum
    selftest_cuda(cudaMemcpy(dev, host.data(), n * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
    dist_nccl_allreduce_sum(s, dev, n, nullptr);
    selftest_cuda(cudaMemcpy(got.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
    for (size_t i = 0; i < n; i++) wrong += got[i] != want[i];
    // reduce-scatter: this rank's shard is the sum; then all-gather: every shard is its owner's sum
    selftest_cuda(cudaMemcpy(dev, host.data(), n * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
    dist_nccl_reduce_scatter_sum(s, dev, nullptr);
    selftest_cuda(cudaMemcpy(got.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
    for (size_t i = s.shard_begin(); i < s.shard_end(); i++) wrong += got[i] != want[i];
    dist_nccl_allgather(s, dev, nullptr);
    selftest_cuda(cudaMemcpy(got.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
    for (size_t i = 0; i < n; i++) wrong += got[i] != want[i];
    if (cudaDeviceSynchronize() != cudaSuccess) die("NCCL self-test: CUDA error %s", cudaGetErrorString(cudaGetLastError()));
    selftest_cuda(cudaFree(dev), "cudaFree");
    char buf[256];
    snprintf(buf, sizeof buf, "NCCL rank %d/%d on GPU %d: %zu floats, %zu wrong", d->rank, d->world,
             d->local_rank % cuda_device_count(), n, wrong);
    *report = buf;
    return wrong;
#else
    (void)d; (void)n; (void)report;
    die("NCCL: this binary was built without NCCL (a CPU-only build, or make NCCL=0)");
#endif
}

// ---------------------------------------------------------------------------- ZeRO-1 optimizer state files
// Rank r of N writes DIR/optimizer-rank<r>-of-<N>.safetensors: each named tensor's slice [shard[r], shard[r+1]),
// metadata numel/world/rank/begin/end. Loading reads whichever files the saving run wrote and copies the parts that
// overlap this rank's shard, so a checkpoint from any world size resumes on any other (re-sharding).

static std::string zero_state_path(const std::string& dir, int rank, int world) {
    char buf[64];
    snprintf(buf, sizeof buf, "/optimizer-rank%05d-of-%05d.safetensors", rank, world);
    return dir + buf;
}

void zero_state_save(const Dist& d, const std::string& dir, const std::vector<std::pair<std::string, const float*>>& tensors,
                     size_t n) {
    if (d.shard.size() != (size_t)d.world + 1 || d.shard[d.world] != n) die("ZeRO-1 state: shards do not cover %zu elements", n);
    size_t b = d.shard_begin(), e = d.shard_end();
    std::vector<TensorOut> out;
    for (auto& t : tensors) out.push_back({t.first, DType::F32, {(int64_t)(e - b)}, t.second});
    safetensors_write(zero_state_path(dir, d.rank, d.world), out, false,
                      {{"numel", std::to_string(n)}, {"world", std::to_string(d.world)}, {"rank", std::to_string(d.rank)},
                       {"begin", std::to_string(b)}, {"end", std::to_string(e)}});
}

// the number in a file's metadata, or a clear error
static size_t meta_size(const SafeTensors& st, const std::string& key, const std::string& path) {
    auto it = st.metadata.find(key);
    if (it == st.metadata.end() || it->second.empty() || it->second.find_first_not_of("0123456789") != std::string::npos)
        die("%s: not a ZeRO-1 optimizer state file (metadata '%s' missing or not a number)", path.c_str(), key.c_str());
    return (size_t)std::stoull(it->second);
}

// The saving run's world size, from the files present: the one N for which optimizer-rank00000-of-N exists.
int zero_state_world(const std::string& dir) {
    int found = 0;
    DIR* dp = opendir(dir.c_str());
    if (!dp) die("%s: cannot open the checkpoint directory: %s", dir.c_str(), strerror(errno));
    while (struct dirent* ent = readdir(dp)) {
        int r = -1, w = -1;
        if (sscanf(ent->d_name, "optimizer-rank%5d-of-%5d", &r, &w) == 2 && r == 0 && w > 0 &&
            zero_state_path("", r, w) == std::string("/") + ent->d_name) {
            if (found && found != w) { closedir(dp); die("%s: optimizer state files of two world sizes (%d and %d)", dir.c_str(), found, w); }
            found = w;
        }
    }
    closedir(dp);
    return found;   // 0: no sharded optimizer state here
}

void zero_state_load(const Dist& d, const std::string& dir, const std::vector<std::pair<std::string, float*>>& tensors,
                     size_t n) {
    if (d.shard.size() != (size_t)d.world + 1 || d.shard[d.world] != n) die("ZeRO-1 state: shards do not cover %zu elements", n);
    int saved_world = zero_state_world(dir);
    if (saved_world == 0) die("%s: no ZeRO-1 optimizer state (optimizer-rank*-of-*.safetensors)", dir.c_str());
    size_t b = d.shard_begin(), e = d.shard_end(), covered = 0;
    for (int r = 0; r < saved_world; r++) {
        std::string path = zero_state_path(dir, r, saved_world);
        if (!file_exists(path)) die("%s: missing (the checkpoint was saved by %d ranks)", path.c_str(), saved_world);
        SafeTensors st;
        st.open_file(path);
        size_t fn = meta_size(st, "numel", path), fb = meta_size(st, "begin", path), fe = meta_size(st, "end", path);
        if (fn != n) die("%s: optimizer state for %zu parameters, the model has %zu", path.c_str(), fn, n);
        if (fb > fe || fe > n) die("%s: bad shard range [%zu, %zu)", path.c_str(), fb, fe);
        size_t lo = std::max(b, fb), hi = std::min(e, fe);
        if (lo >= hi) continue;
        for (auto& t : tensors) {
            const TensorInfo& ti = st.get(t.first);
            if (ti.dtype != DType::F32 || ti.shape != std::vector<int64_t>{(int64_t)(fe - fb)})
                die("%s: tensor '%s' is not F32 [%zu]", path.c_str(), t.first.c_str(), fe - fb);
            memcpy(t.second + (lo - b), (const float*)ti.data + (lo - fb), (hi - lo) * sizeof(float));
        }
        covered += hi - lo;
    }
    if (covered != e - b) die("%s: the optimizer state files do not cover this rank's shard", dir.c_str());
}
