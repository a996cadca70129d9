// Alignment tests: the DPO loss against TRL, SFT's assistant-only loss mask, the DPO gradient
// through the model (finite differences), JSONL error handling, and the sft / dpo / eval commands end to end.
#include <doctest/doctest.h>  // TEST_CASE, CHECK, REQUIRE
#include <algorithm>          // std::partial_sort
#include <cmath>              // fabs
#include <cstdio>             // FILE
#include <cstring>            // memcmp
#include <string>             // std::string
#include <vector>             // std::vector
#include "../deepseek.h"      // dpo_loss, chat_tokens, sft_/dpo_forward_backward, readers, Model, Tokenizer
#include "test_util.h"        // run_cmd, deepseek_bin, max_rel_err

static std::string align_tmp(const std::string& name) { return tmp_dir("align_" + name); }
static void write_text(const std::string& path, const std::string& text) {
    FILE* f = fopen(path.c_str(), "wb");
    REQUIRE(f);
    fwrite(text.data(), 1, text.size(), f);
    fclose(f);
}

// A small tokenizer trained on chat-like text (ours: the tests check properties, not ids), built once.
static const char* CHAT_TEXT =
    "User: What is 12 + 7?\n\nAssistant: The answer is 19.\n"
    "User: Sort the list: 5 2 8\n\nAssistant: The answer is 2 5 8.\n"
    "You are a helpful assistant.\n\nUser: Reverse the list: 1 2 3\n\nAssistant: The answer is 3 2 1.\n"
    "Question: How many times does a appear in: a b a? Answer: The answer is 2.\n";
static Tokenizer* test_tokenizer(std::string* path_out = nullptr) {
    static std::string path;
    static Tokenizer* tok = nullptr;
    if (!tok) {
        std::string d = align_tmp("tok");
        write_text(d + "/text.txt", std::string(CHAT_TEXT) + CHAT_TEXT);
        path = d + "/tokenizer.json";
        tokenizer_train_files({d + "/text.txt"}, 320, path, false);
        tok = tokenizer_load(path);
    }
    if (path_out) *path_out = path;
    return tok;
}
// a random model whose vocabulary covers the tokenizer's
static void small_model(Model* m, const Tokenizer* tok, int ctx = 128, uint64_t seed = 7) {
    Config c;
    c.vocab_size = tokenizer_vocab_size(tok);
    c.hidden_size = 32; c.num_hidden_layers = 2; c.num_attention_heads = 4; c.num_key_value_heads = 2;
    c.head_dim = 8; c.intermediate_size = 64; c.max_position_embeddings = ctx;
    c.bos_token_id = tokenizer_bos_id(tok);
    c.eos_token_id = tokenizer_eos_id(tok);
    model_build(m, c);
    model_init_random(m, seed, 0.2f);
}

// ---------------------------------------------------------------------------- DPO loss vs TRL

TEST_CASE("DPO loss, its gradient w.r.t. policy log-probs and the reward metrics match TRL within 1e-6") {
    SafeTensors st;
    st.open_file("tests/fixtures/dpo_trl.safetensors");
    auto vec = [&](const std::string& name) {
        const TensorInfo& t = st.get(name);
        std::vector<float> f(t.numel());
        st.read_f32(name, t.shape, f.data());
        return std::vector<double>(f.begin(), f.end());
    };
    for (const char* c : {"case0", "case1", "case2"}) {
        std::string p = std::string(c) + ".";
        std::vector<double> pc = vec(p + "policy_chosen"), pr = vec(p + "policy_rejected");
        std::vector<double> rc = vec(p + "ref_chosen"), rr = vec(p + "ref_rejected");
        int n = (int)pc.size();
        double beta = vec(p + "beta")[0];
        std::vector<double> gc(n), gr(n);
        DpoStats s;
        double loss = dpo_loss(pc.data(), pr.data(), rc.data(), rr.data(), n, beta, gc.data(), gr.data(), &s);
        // references are float64 rounded to float32: 1e-6 relative is a few float32 ulps
        auto rel = [](double a, double b) { return fabs(a - b) / std::max(fabs(b), 1e-6); };
        INFO(c << ": loss " << loss << " vs TRL " << vec(p + "loss")[0]);
        CHECK(rel(loss, vec(p + "loss")[0]) < 1e-6);
        CHECK(rel(s.loss, loss) == 0.0);
        std::vector<double> tgc = vec(p + "grad_policy_chosen"), tgr = vec(p + "grad_policy_rejected");
        for (int i = 0; i < n; i++) {
            INFO(c << " pair " << i << ": dL/dπc " << gc[i] << " vs " << tgc[i] << ", dL/dπr " << gr[i] << " vs " << tgr[i]);
            // an exactly-zero TRL gradient (σ underflow at |β·Δ| = 25) is matched within an absolute 1e-12
            CHECK(fabs(gc[i] - tgc[i]) <= 1e-6 * fabs(tgc[i]) + 1e-12);
            CHECK(fabs(gr[i] - tgr[i]) <= 1e-6 * fabs(tgr[i]) + 1e-12);
        }
        CHECK(fabs(s.reward_accuracy - vec(p + "reward_accuracy")[0]) < 1e-7);
        CHECK(fabs(s.reward_margin - vec(p + "reward_margin")[0]) <= 1e-6 * fabs(vec(p + "reward_margin")[0]) + 1e-7);
        CHECK(fabs(s.reward_chosen - vec(p + "reward_chosen")[0]) <= 1e-6 * fabs(vec(p + "reward_chosen")[0]) + 1e-7);
        CHECK(fabs(s.reward_rejected - vec(p + "reward_rejected")[0]) <= 1e-6 * fabs(vec(p + "reward_rejected")[0]) + 1e-7);
    }
}

TEST_CASE("DPO loss stays finite and exact for margins far beyond exp's range") {
    double pc[2] = {0, -5000}, pr[2] = {-5000, 0}, z[2] = {0, 0}, gc[2], gr[2];
    DpoStats s;
    double loss = dpo_loss(pc, pr, z, z, 2, 1.0, gc, gr, &s);
    // pair 0: −log σ(5000) = 0; pair 1: −log σ(−5000) = 5000; mean 2500
    CHECK(loss == doctest::Approx(2500.0).epsilon(1e-12));
    CHECK(gc[0] == 0.0);
    CHECK(gc[1] == doctest::Approx(-0.5).epsilon(1e-12));
    CHECK(gr[1] == doctest::Approx(0.5).epsilon(1e-12));
    CHECK(s.reward_accuracy == 0.5);
}

// ---------------------------------------------------------------------------- SFT mask (chat_tokens) and the DPO reply

TEST_CASE("SFT mask: exactly the assistant replies and their EOS are trained") {
    Tokenizer* tok = test_tokenizer();
    std::vector<ChatMessage> msgs = {{"system", "Answer briefly."}, {"user", "What is 12 + 7?"},
                                     {"assistant", "The answer is 19."}, {"user", "Reverse the list: 1 2 3"},
                                     {"assistant", "The answer is 3 2 1."}};
    std::vector<int> ids;
    std::vector<uint8_t> trained;
    chat_tokens(tok, msgs, false, &ids, &trained);
    REQUIRE(ids.size() == trained.size());
    // the trained tokens, read in order, are " reply" EOS for each assistant turn and nothing else
    std::vector<int> tr, ctx;
    for (size_t i = 0; i < ids.size(); i++) (trained[i] ? tr : ctx).push_back(ids[i]);
    std::string eos = tokenizer_token_bytes(tok, tokenizer_eos_id(tok)), bos = tokenizer_token_bytes(tok, tokenizer_bos_id(tok));
    CHECK(tokenizer_decode(tok, tr) == " The answer is 19." + eos + " The answer is 3 2 1." + eos);
    CHECK(tokenizer_decode(tok, ctx) == bos + "Answer briefly.\n\nUser: What is 12 + 7?\n\nAssistant:User: Reverse the list: 1 2 3\n\nAssistant:");
}

TEST_CASE("SFT: user, system and template tokens get exactly zero gradient") {
    Tokenizer* tok = test_tokenizer();
    Model m;
    small_model(&m, tok);
    Backend be(&m);   // the CPU backend
    ChatSeq a, b;
    chat_tokens(tok, {{"system", "Answer briefly."}, {"user", "What is 12 + 7?"}, {"assistant", "The answer is 19."},
                      {"user", "Sort the list: 5 2 8"}, {"assistant", "The answer is 2 5 8."}}, false, &a.ids, &a.trained);
    chat_tokens(tok, {{"user", "Reverse the list: 1 2 3"}, {"assistant", "The answer is 3 2 1."}}, false, &b.ids, &b.trained);
    int pad = tokenizer_eos_id(tok);
    // the step's per-token loss weights: 1/N on assistant targets, exactly 0 on every other position
    std::vector<int> in, tg;
    int T = chat_batch({&a, &b}, pad, &in, &tg);
    std::vector<float> w;
    model_mean_loss_weights(tg.data(), (int)tg.size(), &w);
    int n_assistant = 0;
    for (const ChatSeq* s : {&a, &b})
        for (size_t i = 1; i < s->ids.size(); i++) n_assistant += s->trained[i];
    int nonzero = 0;
    for (int r = 0; r < 2; r++) {
        const ChatSeq& s = r ? b : a;
        for (int t = 0; t < T; t++) {
            float wt = w[(size_t)r * T + t];
            bool assistant_target = t + 1 < (int)s.ids.size() && s.trained[t + 1];
            if (!assistant_target) CHECK(wt == 0.0f);
            else CHECK(wt == doctest::Approx(1.0 / n_assistant));
            nonzero += wt != 0.0f;
        }
    }
    CHECK(nonzero == n_assistant);
    // end to end: the gradient of the step equals, bit for bit, the gradient of a loss in which every
    // user/system/template position predicts its real next token but with weight 0 — their terms contribute nothing
    model_zero_grad(&m);
    float loss1 = sft_forward_backward(&be, {&a, &b}, pad);
    std::vector<float> g1 = m.grads_memory;
    std::vector<int> tg_all = tg;
    for (int r = 0; r < 2; r++) {
        const ChatSeq& s = r ? b : a;
        for (int t = 0; t + 1 < (int)s.ids.size(); t++) tg_all[(size_t)r * T + t] = s.ids[t + 1];
    }
    model_zero_grad(&m);
    model_forward(&m, in.data(), tg_all.data(), 2, T);
    model_backward(&m, w.data());
    CHECK(memcmp(m.grads_memory.data(), g1.data(), g1.size() * sizeof(float)) == 0);
    CHECK(loss1 > 0.0f);
    // (2) control: training on every token instead changes the gradient, so the comparison above can fail
    ChatSeq a_all = a, b_all = b;
    std::fill(a_all.trained.begin(), a_all.trained.end(), 1);
    std::fill(b_all.trained.begin(), b_all.trained.end(), 1);
    model_zero_grad(&m);
    sft_forward_backward(&be, {&a_all, &b_all}, pad);
    CHECK(memcmp(m.grads_memory.data(), g1.data(), g1.size() * sizeof(float)) != 0);
}

TEST_CASE("DPO reply scoring ignores the prompt and earlier assistant turns") {
    Tokenizer* tok = test_tokenizer();
    DpoExample ex;
    ex.prompt = {{"user", "What is 12 + 7?"}, {"assistant", "The answer is 19."}, {"user", "Sort the list: 5 2 8"}};
    ex.chosen = "The answer is 2 5 8.";
    ex.rejected = "The answer is 2 5 8. The answer is 2 5 8.";
    ChatSeq c, r;
    dpo_render(tok, ex, &c, &r);
    std::string eos = tokenizer_token_bytes(tok, tokenizer_eos_id(tok));
    for (auto [s, reply] : {std::make_pair(&c, ex.chosen), std::make_pair(&r, ex.rejected)}) {
        std::vector<int> tr;
        for (size_t i = 0; i < s->ids.size(); i++) if (s->trained[i]) tr.push_back(s->ids[i]);
        CHECK(tokenizer_decode(tok, tr) == " " + reply + eos);
    }
}

TEST_CASE("DPO gradient through the model matches finite differences of the DPO loss") {
    Tokenizer* tok = test_tokenizer();
    Model m;
    small_model(&m, tok, 128, 11);
    Backend be(&m);   // the CPU backend
    int pad = tokenizer_eos_id(tok);
    DpoExample e1{{{"user", "What is 12 + 7?"}}, "The answer is 19.", "The answer is 18.", 1};
    DpoExample e2{{{"user", "Sort the list: 5 2 8"}}, "The answer is 2 5 8.", "The answer is 2 5 8. The answer is 2 5 8.", 2};
    ChatSeq c1, r1, c2, r2;
    dpo_render(tok, e1, &c1, &r1);
    dpo_render(tok, e2, &c2, &r2);
    std::vector<const ChatSeq*> rows = {&c1, &c2, &r1, &r2};
    double rc[2] = {-40.0, -45.0}, rr[2] = {-41.0, -60.0}, beta = 0.5;   // a reference away from the policy
    auto loss_at = [&]() {
        std::vector<ChatSeq> seqs = {c1, c2, r1, r2};
        std::vector<double> lp;
        sequence_logps(&be, seqs, 4, pad, &lp);
        return dpo_loss(&lp[0], &lp[2], rc, rr, 2, beta, nullptr, nullptr, nullptr);
    };
    model_zero_grad(&m);
    DpoStats st;
    double loss = dpo_forward_backward(&be, rows, rc, rr, beta, pad, &st);
    CHECK(loss == doctest::Approx(loss_at()).epsilon(1e-6));
    // the 6 largest-|g| parameters: central differences in fp32 with h = 1e-2 (truncation ~h², rounding ~1e-6/h)
    std::vector<size_t> idx(m.num_parameters);
    for (size_t i = 0; i < idx.size(); i++) idx[i] = i;
    std::partial_sort(idx.begin(), idx.begin() + 6, idx.end(),
                      [&](size_t x, size_t y) { return fabs(m.grads_memory[x]) > fabs(m.grads_memory[y]); });
    for (int k = 0; k < 6; k++) {
        size_t i = idx[k];
        float w0 = m.params_memory[i], h = 1e-2f;
        m.params_memory[i] = w0 + h;
        double lp = loss_at();
        m.params_memory[i] = w0 - h;
        double lm = loss_at();
        m.params_memory[i] = w0;
        double fd = (lp - lm) / (2.0 * h), g = m.grads_memory[i];
        INFO("parameter " << i << ": analytic " << g << ", finite difference " << fd);
        CHECK(fabs(fd - g) <= 2e-2 * fabs(g) + 1e-4);
    }
}

// ---------------------------------------------------------------------------- JSONL readers

TEST_CASE("bad JSONL lines stop with their line number; --skip-bad skips and counts them") {
    std::string d = align_tmp("jsonl");
    std::string good = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\n";
    struct Bad { std::string line, why; };
    std::vector<Bad> bad = {
        {"{\"messages\": [", "invalid JSON"},
        {"[1, 2]", "expected a JSON object"},
        {"{\"text\": \"no messages\"}", "no \"messages\" field"},
        {"{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}", "'robot'"},
        {"{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\"}]}", "where 'user' was expected"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": 5}, {\"role\": \"assistant\", \"content\": \"x\"}]}", "no string \"content\""},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}", "no assistant message"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"system\", \"content\": \"y\"}]}", "only come first"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\"}]}", "ill-formed UTF-8"},
    };
    for (size_t k = 0; k < bad.size(); k++) {
        std::string path = d + "/bad" + std::to_string(k) + ".jsonl";
        write_text(path, good + "\n" + bad[k].line + "\n" + good);   // the bad line is line 3 (line 2 is blank)
        std::string msg;
        try { sft_read_jsonl(path, false, nullptr); } catch (const DeepseekError& e) { msg = e.msg; }
        INFO("line: " << bad[k].line << "\nmessage: " << msg);
        CHECK(msg.find(path + ":3: ") == 0);
        CHECK(msg.find(bad[k].why) != std::string::npos);
        int skipped = -1;
        auto ex = sft_read_jsonl(path, true, &skipped);
        CHECK(skipped == 1);
        CHECK(ex.size() == 2);
        CHECK(ex[1].line == 4);
    }
    // DPO lines
    std::string pgood = "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n";
    std::vector<Bad> pbad = {
        {"{\"chosen\": \"a\", \"rejected\": \"b\"}", "exactly one of"},
        {"{\"prompt\": \"p\", \"messages\": [], \"chosen\": \"a\", \"rejected\": \"b\"}", "exactly one of"},
        {"{\"prompt\": \"p\", \"rejected\": \"b\"}", "no \"chosen\""},
        {"{\"prompt\": \"p\", \"chosen\": 1, \"rejected\": \"b\"}", "\"chosen\" must be a string"},
        {"{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"a\"}", "the same text"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"x\"}], \"chosen\": \"a\", \"rejected\": \"b\"}", "end with a user turn"},
    };
    for (size_t k = 0; k < pbad.size(); k++) {
        std::string path = d + "/pbad" + std::to_string(k) + ".jsonl";
        write_text(path, pgood + pgood + pbad[k].line + "\n");
        std::string msg;
        try { dpo_read_jsonl(path, false, nullptr); } catch (const DeepseekError& e) { msg = e.msg; }
        INFO("line: " << pbad[k].line << "\nmessage: " << msg);
        CHECK(msg.find(path + ":3: ") == 0);
        CHECK(msg.find(pbad[k].why) != std::string::npos);
        int skipped = -1;
        CHECK(dpo_read_jsonl(path, true, &skipped).size() == 2);
        CHECK(skipped == 1);
    }
    // a file with nothing usable is an error even with --skip-bad
    write_text(d + "/allbad.jsonl", "nope\n");
    CHECK_THROWS_AS(sft_read_jsonl(d + "/allbad.jsonl", true, nullptr), DeepseekError);
    CHECK_THROWS_AS(sft_read_jsonl(d + "/missing.jsonl", false, nullptr), DeepseekError);
}

TEST_CASE("repetition detector flags a repeated sentence and nothing else") {
    CHECK(text_is_repetitive("The answer is 4. The answer is 4."));
    CHECK(text_is_repetitive("a line\nanother\na line\n"));
    CHECK(!text_is_repetitive("The answer is 4."));
    CHECK(!text_is_repetitive("The answer is 1 2 1 2."));
    CHECK(!text_is_repetitive("It is. It is not."));
    CHECK(!text_is_repetitive(""));
}

// ---------------------------------------------------------------------------- the commands

// a tiny base model directory with the test tokenizer
static std::string tiny_base(const std::string& name) {
    std::string tokpath;
    Tokenizer* tok = test_tokenizer(&tokpath);
    std::string d = align_tmp(name);
    Model m;
    small_model(&m, tok, 96, 3);
    model_save_dir(m, d + "/base", StoreDtype::F32);
    run_cmd("cp " + tokpath + " " + d + "/base/tokenizer.json");
    return d;
}

TEST_CASE("sft, dpo and eval: --help, missing flags and bad data are one clear error line, before any training") {
    for (const char* c : {"sft", "dpo", "eval"}) {
        auto r = run_cmd(deepseek_bin() + " " + c + " --help");
        CHECK(r.rc == 0);
        CHECK(r.out.find("usage: deepseek") != std::string::npos);
    }
    std::string d = tiny_base("cli_err");
    auto r = run_cmd(deepseek_bin() + " sft --model " + d + "/base --out " + d + "/o");
    CHECK(r.rc == 1);
    CHECK(r.out == "error: sft: --data FILE is required\n");
    write_text(d + "/bad.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"What is 12 + 7?\"}, "
               "{\"role\": \"assistant\", \"content\": \"The answer is 19.\"}]}\n{oops\n");
    r = run_cmd(deepseek_bin() + " sft --model " + d + "/base --data " + d + "/bad.jsonl --out " + d + "/o");
    CHECK(r.rc == 1);
    CHECK(count_lines(r.out) == 1);
    CHECK(r.out.find("error: " + d + "/bad.jsonl:2: invalid JSON") == 0);
    CHECK(!dir_exists(d + "/o"));   // stopped before training started
    r = run_cmd(deepseek_bin() + " dpo --model " + d + "/base --data " + d + "/bad.jsonl --out " + d + "/o");
    CHECK(r.rc == 1);
    CHECK(r.out.find("error: " + d + "/bad.jsonl:1: \"messages\" must end with a user turn") == 0);
    r = run_cmd(deepseek_bin() + " eval --device cpu --model " + d + "/nope --data " + d + "/bad.jsonl --skip-bad");
    CHECK(r.rc == 1);
    CHECK(r.out.find("error: eval: model directory") != std::string::npos);
    r = run_cmd(deepseek_bin() + " sft --model " + d + "/base --data " + d + "/bad.jsonl --out " + d + "/o --lr abc");
    CHECK(r.rc == 1);
    CHECK(r.out.find("error: sft: --lr must be a number") == 0);
}

TEST_CASE("sft learns the replies (loss falls), dpo raises held-out reward accuracy, eval reports every metric") {
    std::string d = tiny_base("e2e");
    // 4 conversations and one bad line: --skip-bad trains on the rest
    std::string sft =
        "{\"messages\": [{\"role\": \"user\", \"content\": \"What is 12 + 7?\"}, {\"role\": \"assistant\", \"content\": \"The answer is 19.\"}]}\n"
        "{\"messages\": [{\"role\": \"system\", \"content\": \"Answer briefly.\"}, {\"role\": \"user\", \"content\": \"Sort the list: 5 2 8\"}, {\"role\": \"assistant\", \"content\": \"The answer is 2 5 8.\"}]}\n"
        "not json\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Reverse the list: 1 2 3\"}, {\"role\": \"assistant\", \"content\": \"The answer is 3 2 1.\"}]}\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"What is 2 + 7?\"}, {\"role\": \"assistant\", \"content\": \"The answer is 9.\"}]}\n";
    write_text(d + "/sft.jsonl", sft);
    auto r = run_cmd(deepseek_bin() + " sft --model " + d + "/base --data " + d + "/sft.jsonl --val " + d + "/sft.jsonl"
                     " --out " + d + "/sft --skip-bad --epochs 30 --batch 4 --lr 1e-2 --warmup 3 --log-every 100 --save-every 0 --threads 2 --device cpu");
    INFO(r.out);
    REQUIRE(r.rc == 0);
    CHECK(r.out.find(":3: invalid JSON") != std::string::npos);
    CHECK(r.out.find("skipped 1 bad line") != std::string::npos);
    CHECK(file_exists(d + "/sft/final/model.safetensors"));
    CHECK(file_exists(d + "/sft/final/tokenizer.json"));
    CHECK(file_exists(d + "/sft/final/optimizer.safetensors"));
    // held-out (here: the training set) assistant loss before vs after, from the metrics
    std::string metrics = read_file(d + "/sft/metrics.jsonl");
    auto first_val = metrics.find("\"val_loss\":"), last_val = metrics.rfind("\"val_loss\":");
    REQUIRE(first_val != std::string::npos);
    double before = atof(metrics.c_str() + first_val + 11), after = atof(metrics.c_str() + last_val + 11);
    CHECK(after < 0.5 * before);
    // eval: the memorised replies come back exactly
    r = run_cmd(deepseek_bin() + " eval --device cpu --model " + d + "/sft/final --data " + d + "/sft.jsonl --skip-bad --max-new-tokens 16 --json " + d + "/eval.json");
    INFO(r.out);
    REQUIRE(r.rc == 0);
    CHECK(r.out.find("exact_match: ") != std::string::npos);
    CHECK(r.out.find("repetition_ratio: ") != std::string::npos);
    double em = atof(r.out.c_str() + r.out.find("exact_match: ") + 13);
    CHECK(em >= 0.75);
    // dpo: prefer the concise reply over a repetitive one
    std::string prefs =
        "{\"prompt\": \"What is 12 + 7?\", \"chosen\": \"The answer is 19.\", \"rejected\": \"The answer is 19. The answer is 19.\"}\n"
        "{\"prompt\": \"Sort the list: 5 2 8\", \"chosen\": \"The answer is 2 5 8.\", \"rejected\": \"The answer is 5 2 8.\"}\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"What is 2 + 7?\"}, {\"role\": \"assistant\", \"content\": \"The answer is 9.\"}, {\"role\": \"user\", \"content\": \"Reverse the list: 1 2 3\"}], \"chosen\": \"The answer is 3 2 1.\", \"rejected\": \"The answer is 3 2 1. The answer is 3 2 1.\"}\n";
    write_text(d + "/prefs.jsonl", prefs);
    r = run_cmd(deepseek_bin() + " dpo --model " + d + "/sft/final --data " + d + "/prefs.jsonl --val " + d + "/prefs.jsonl --out " + d + "/dpo"
                " --epochs 10 --batch 3 --lr 1e-3 --warmup 1 --log-every 100 --save-every 0 --threads 2 --device cpu");
    INFO(r.out);
    REQUIRE(r.rc == 0);
    auto at = r.out.rfind("held-out after epoch");
    REQUIRE(at != std::string::npos);
    auto acc = r.out.find("reward accuracy ", at);
    CHECK(atof(r.out.c_str() + acc + 16) == 1.0);
    r = run_cmd(deepseek_bin() + " eval --device cpu --model " + d + "/dpo/final --ref " + d + "/sft/final --pairs " + d + "/prefs.jsonl");
    INFO(r.out);
    REQUIRE(r.rc == 0);
    CHECK(atof(r.out.c_str() + r.out.find("reward_accuracy: ") + 17) == 1.0);
    CHECK(atof(r.out.c_str() + r.out.find("reward_margin: ") + 15) > 0.0);
    write_text(d + "/val.txt", "User: What is 12 + 7?\n\nAssistant: The answer is 19.\n");
    r = run_cmd(deepseek_bin() + " eval --device cpu --model " + d + "/dpo/final --text " + d + "/val.txt");
    REQUIRE(r.rc == 0);
    CHECK(atof(r.out.c_str() + r.out.find("bits_per_byte: ") + 15) > 0.0);
}

TEST_CASE("sft --resume from a checkpoint ends with the same weights, bit for bit, as the uninterrupted run") {
    std::string d = tiny_base("resume");
    write_text(d + "/sft.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"What is 12 + 7?\"}, {\"role\": \"assistant\", \"content\": \"The answer is 19.\"}]}\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Sort the list: 5 2 8\"}, {\"role\": \"assistant\", \"content\": \"The answer is 2 5 8.\"}]}\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Reverse the list: 1 2 3\"}, {\"role\": \"assistant\", \"content\": \"The answer is 3 2 1.\"}]}\n");
    auto r = run_cmd(deepseek_bin() + " sft --model " + d + "/base --data " + d + "/sft.jsonl --out " + d + "/run"
                     " --epochs 3 --batch 2 --lr 1e-2 --save-every 3 --keep 5 --threads 2 --device cpu");
    INFO(r.out);
    REQUIRE(r.rc == 0);
    REQUIRE(dir_exists(d + "/run/step_000003"));
    std::string full = read_file(d + "/run/final/model.safetensors");
    // resume from the middle of epoch 2 (step 3 of 6): same data order, schedule and AdamW state
    r = run_cmd(deepseek_bin() + " sft --resume " + d + "/run/step_000003 --threads 1 --device cpu");
    INFO(r.out);
    REQUIRE(r.rc == 0);
    CHECK(r.out.find("resuming") != std::string::npos);
    CHECK(read_file(d + "/run/final/model.safetensors") == full);
    r = run_cmd(deepseek_bin() + " dpo --resume " + d + "/run/step_000003");
    CHECK(r.rc == 1);
    CHECK(r.out.find("is not a checkpoint of a `deepseek dpo` run") != std::string::npos);
}
