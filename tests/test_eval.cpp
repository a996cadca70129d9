// Multiple-choice evaluation (eval --task): tokens and log-likelihoods against transformers' fixture
// (tests/reference/fixtures_eval.py, lm-evaluation-harness's tokenisation restated there), acc and acc_norm from
// the fixture's numbers, --limit, --skip-bad, the progress lines. Bad task lines are rows of tests/test_inputs.cpp.
#include <doctest/doctest.h>  // TEST_CASE, CHECK, REQUIRE
#include <cmath>              // fabs
#include <memory>             // std::unique_ptr
#include <nlohmann/json.hpp>  // nlohmann::json: the fixture, eval's --json
#include "../deepseek.h"      // mc_read_jsonl, tokenizer_load
#include "test_util.h"        // run_cmd, deepseek_bin, tmp_dir

using json = nlohmann::json;
static const std::string TASK = "tests/fixtures/eval/task.jsonl";
static const std::string MODELS = "tests/fixtures/infer/";

static json eval_fixture() { return json::parse(read_file("tests/fixtures/eval/loglikelihoods.json")); }
static std::string eval_task_cmd(const std::string& model, const std::string& task, const std::string& extra) {
    return deepseek_bin() + " eval --device cpu --threads 2 --model " + MODELS + model + " --task " + task + " " + extra;
}

TEST_CASE("task tokens are lm-evaluation-harness's: trailing whitespace moves, whole[len(ctx):], BOS for no context") {
    json fx = eval_fixture();
    std::unique_ptr<Tokenizer, void (*)(Tokenizer*)> tok(tokenizer_load(MODELS + "tokenizer.json"), tokenizer_free);
    for (std::string name : {"gen_gqa", "gen_mha"}) {
        const json& m = fx["models"][name];
        std::vector<McItem> items = mc_read_jsonl(TASK, tok.get(), m["max_length"].get<int>(), false, nullptr);
        REQUIRE(items.size() == m["items"].size());
        int compared = 0;
        for (size_t i = 0; i < items.size(); i++) {
            const json& want = m["items"][i];
            INFO(name << " line " << items[i].line);
            CHECK(items[i].line == want["line"].get<int>());
            CHECK(items[i].label == want["label"].get<int>());
            REQUIRE(items[i].choices.size() == want["continuation_ids"].size());
            for (size_t k = 0; k < items[i].choices.size(); k++) {
                CHECK(items[i].context_ids == want["context_ids"][k].get<std::vector<int>>());
                CHECK(items[i].continuation_ids[k] == want["continuation_ids"][k].get<std::vector<int>>());
                CHECK(items[i].chars[k] == want["chars"][k].get<int>());
                compared++;
            }
        }
        MESSAGE(name << ": " << compared << " choices tokenised as the fixture");
    }
}

TEST_CASE("task log-likelihoods equal transformers' within 1e-4; acc and acc_norm are the fixture's (GQA and MHA)") {
    json fx = eval_fixture();
    std::string d = tmp_dir("eval_task");
    for (std::string name : {"gen_gqa", "gen_mha"}) {
        const json& m = fx["models"][name];
        CmdResult r = run_cmd("(" + eval_task_cmd(name, TASK, "--json " + d + "/" + name + ".json") + " 2>/dev/null)");
        INFO(r.out);
        REQUIRE(r.rc == 0);
        json got = json::parse(read_file(d + "/" + name + ".json"));
        REQUIRE(got["item_results"].size() == m["items"].size());
        double worst = 0;
        int right = 0, right_norm = 0;
        for (size_t i = 0; i < m["items"].size(); i++) {
            const json &g = got["item_results"][i], &w = m["items"][i];
            INFO(name << " line " << w["line"]);
            CHECK(g["line"] == w["line"]);
            REQUIRE(g["loglikelihoods"].size() == w["loglikelihoods"].size());
            for (size_t k = 0; k < w["loglikelihoods"].size(); k++) {
                worst = std::max(worst, fabs(g["loglikelihoods"][k].get<double>() - w["loglikelihoods"][k].get<double>()));
                CHECK(g["tokens"][k].get<size_t>() == w["continuation_ids"][k].size());
                CHECK(g["chars"][k] == w["chars"][k]);
            }
            // predictions: the fixture's argmaxes (its best two are at least 1e-3 apart, far beyond the 1e-4 above)
            CHECK(g["pred"] == w["pred"]);
            CHECK(g["pred_norm"] == w["pred_norm"]);
            right += w["pred"] == w["label"];
            right_norm += w["pred_norm"] == w["label"];
        }
        MESSAGE(name << ": max |ours - transformers| over every choice's log-likelihood: " << worst);
        CHECK(worst < 1e-4);
        // acc, acc_norm: the fixture's, which also equal the share of its own predictions that hit the label
        double n = (double)m["items"].size();
        CHECK(fabs(m["acc"].get<double>() - right / n) < 1e-12);
        CHECK(fabs(m["acc_norm"].get<double>() - right_norm / n) < 1e-12);
        CHECK(fabs(got["acc"].get<double>() - m["acc"].get<double>()) < 1e-12);
        CHECK(fabs(got["acc_norm"].get<double>() - m["acc_norm"].get<double>()) < 1e-12);
        CHECK(got["items"].get<size_t>() == m["items"].size());
        char want[128];
        snprintf(want, sizeof want, "items: %zu\nacc: %.4f\nacc_norm: %.4f\n", m["items"].size(),
                 m["acc"].get<double>(), m["acc_norm"].get<double>());
        CHECK(r.out.find(want) != std::string::npos);
    }
}

TEST_CASE("task --limit N scores the first N items, --skip-bad skips bad lines and counts them, progress on stderr") {
    std::string d = tmp_dir("eval_task_flags");
    std::vector<std::string> lines;
    std::string text = read_file(TASK);
    for (size_t a = 0, b; a < text.size(); a = b + 1) {
        b = text.find('\n', a);
        if (b == std::string::npos) b = text.size();
        if (b > a) lines.push_back(text.substr(a, b - a));
    }
    REQUIRE(lines.size() >= 6);
    // bad lines between the good ones: they are skipped, and the good ones keep their line numbers
    std::string mixed = lines[0] + "\n{\"context\": \"x\", \"choices\": [\"a\"], \"label\": 0}\n" + lines[1] + "\nnot json\n" +
                        lines[2] + "\n";
    write_file_atomic(d + "/mixed.jsonl", mixed);
    CmdResult r = run_cmd("(" + eval_task_cmd("gen_gqa", d + "/mixed.jsonl", "") + " 2>/dev/null)");
    CHECK(r.rc == 1);   // without --skip-bad the first bad line stops it
    r = run_cmd(eval_task_cmd("gen_gqa", d + "/mixed.jsonl", "--skip-bad --json " + d + "/mixed.json"));
    INFO(r.out);
    REQUIRE(r.rc == 0);
    CHECK(r.out.find("mixed.jsonl:2: \"choices\" holds 1 choice (at least 2) (skipped)") != std::string::npos);
    CHECK(r.out.find("mixed.jsonl:4: invalid JSON") != std::string::npos);
    CHECK(r.out.find("skipped 2 bad lines") != std::string::npos);
    CHECK(r.out.find("items: 3\n") != std::string::npos);
    json got = json::parse(read_file(d + "/mixed.json"));
    REQUIRE(got["item_results"].size() == 3);
    CHECK(got["item_results"][0]["line"] == 1);
    CHECK(got["item_results"][1]["line"] == 3);
    CHECK(got["item_results"][2]["line"] == 5);
    // the same items score the same wherever they stand in the file
    json fx = eval_fixture()["models"]["gen_gqa"]["items"];
    for (int i = 0; i < 3; i++)
        for (size_t k = 0; k < fx[i]["loglikelihoods"].size(); k++)
            CHECK(fabs(got["item_results"][i]["loglikelihoods"][k].get<double>() - fx[i]["loglikelihoods"][k].get<double>()) < 1e-4);
    // --limit
    r = run_cmd("(" + eval_task_cmd("gen_gqa", TASK, "--limit 4 --json " + d + "/limit.json") + " 2>/dev/null)");
    REQUIRE(r.rc == 0);
    CHECK(r.out.find("items: 4\n") != std::string::npos);
    CHECK(json::parse(read_file(d + "/limit.json"))["item_results"].size() == 4);
    // progress every 100 items, on stderr (stdout keeps the results alone)
    std::string many;
    for (int i = 0; i < 120; i++) many += lines[i % 4] + "\n";
    write_file_atomic(d + "/many.jsonl", many);
    CmdResult err = run_cmd("(" + eval_task_cmd("gen_gqa", d + "/many.jsonl", "") + " 2>&1 >/dev/null)");
    CHECK(err.rc == 0);
    CHECK(err.out.find("eval: 100/120 items, acc ") != std::string::npos);
    CmdResult out = run_cmd("(" + eval_task_cmd("gen_gqa", d + "/many.jsonl", "") + " 2>/dev/null)");
    CHECK(out.out.find("eval: 100/120") == std::string::npos);
    CHECK(out.out.find("items: 120\n") != std::string::npos);
}

TEST_CASE("the committed synthetic task reads whole: every line an item with 4 choices and a label among them") {
    std::unique_ptr<Tokenizer, void (*)(Tokenizer*)> tok(tokenizer_load(MODELS + "tokenizer.json"), tokenizer_free);
    int skipped = -1;
    std::vector<McItem> items = mc_read_jsonl("data/tasks/synthetic_mc.jsonl", tok.get(), 160, false, &skipped);
    CHECK(skipped == 0);
    CHECK(items.size() >= 20);
    std::vector<int> per_label(4, 0);
    for (const McItem& it : items) {
        CHECK(it.choices.size() == 4);
        if (it.label >= 0 && it.label < 4) per_label[it.label]++;
    }
    // the labels are spread over the positions, so a model that always picks one position scores about 25%
    for (int c : per_label) CHECK(c == (int)items.size() / 4);
}
