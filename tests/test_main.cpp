// The test runner: doctest, closing with the line "N passed, N failed[, N skipped]" (test cases).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>  // doctest::Context, IReporter, REGISTER_LISTENER
#include <cstdio>             // printf
#include "test_util.h"        // g_tests_skipped, the helpers every test file shares
#include "../deepseek.h"      // g_die_throws

int g_tests_skipped = 0;

namespace {
int g_cases_total = 0, g_cases_failed = 0;
// A listener records the counts; main() prints the closing line after doctest's own summary.
struct CountingListener : doctest::IReporter {
    CountingListener(const doctest::ContextOptions&) {}
    void report_query(const doctest::QueryData&) override {}
    void test_run_start() override {}
    void test_run_end(const doctest::TestRunStats& s) override {
        g_cases_total = (int)s.numTestCasesPassingFilters;
        g_cases_failed = (int)s.numTestCasesFailed;
    }
    void test_case_start(const doctest::TestCaseData&) override {}
    void test_case_reenter(const doctest::TestCaseData&) override {}
    void test_case_end(const doctest::CurrentTestCaseStats&) override {}
    void test_case_exception(const doctest::TestCaseException&) override {}
    void subcase_start(const doctest::SubcaseSignature&) override {}
    void subcase_end() override {}
    void log_assert(const doctest::AssertData&) override {}
    void log_message(const doctest::MessageData&) override {}
    void test_case_skipped(const doctest::TestCaseData&) override {}
};
}  // namespace
REGISTER_LISTENER("counting", 1, CountingListener);

int main(int argc, char** argv) {
    g_die_throws = true;  // die() throws DeepseekError, so tests can check error paths in-process
    doctest::Context ctx(argc, argv);
    int rc = ctx.run();
    if (ctx.shouldExit()) return rc;
    // a test case that only reported "skipped" still counts as run; list them apart
    int passed = g_cases_total - g_cases_failed - g_tests_skipped;
    if (g_tests_skipped > 0)
        printf("%d passed, %d failed, %d skipped\n", passed, g_cases_failed, g_tests_skipped);
    else
        printf("%d passed, %d failed\n", passed, g_cases_failed);
    return rc;
}
