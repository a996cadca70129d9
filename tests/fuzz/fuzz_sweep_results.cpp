// libFuzzer target: a sweep's results file (sweep_read_results, JSONL) and the fits on what it holds (sweep_fit, a
// few bootstrap resamples). Any input must read or fail with a DeepseekError. What reads holds only the three
// studies and positive, finite numbers; every IsoFLOP minimum keeps C = M_opt·D_opt; a bootstrap interval, when
// there is one, is ordered.
#include "fuzz_util.h"
#include <cmath>   // std::isfinite, std::fabs

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::string path = fuzz::scratch() + "/results.jsonl";
    fuzz::write_bytes(path, data, size);
    std::vector<SweepResult> r;
    try {
        r = sweep_read_results(path);
    } catch (const DeepseekError&) {
        return 0;
    }
    for (const SweepResult& x : r) {
        if (x.study != "hparams" && x.study != "isoflop" && x.study != "check") fuzz::fail("study '%s' was read", x.study.c_str());
        for (double v : {x.compute, x.batch_tokens, x.learning_rate, x.flops_per_token, x.tokens, x.val_bpb})
            if (!(v > 0) || !std::isfinite(v)) fuzz::fail("line %d: a required number %g was read", x.line, v);
    }
    SweepFits f = sweep_fit(r, 8, 1);
    for (const IsoflopMin& m : f.minima)
        if (std::isfinite(m.m_opt) && std::isfinite(m.d_opt) && m.compute < 1e300 &&
            std::fabs(m.m_opt * m.d_opt / m.compute - 1) > 1e-6)
            fuzz::fail("isoflop minimum at C %g: M_opt·D_opt = %g", m.compute, m.m_opt * m.d_opt);
    for (const PowerLaw* p : {&f.batch, &f.lr, &f.model, &f.data, &f.model_6n, &f.loss})
        if (std::isfinite(p->exp_lo) && std::isfinite(p->exp_hi) && p->exp_lo > p->exp_hi)
            fuzz::fail("an interval [%g, %g] is out of order", p->exp_lo, p->exp_hi);
    return 0;
}
