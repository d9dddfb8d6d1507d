// The study statistics and report from hand-made run metrics: per-variant intervals, paired
// differences with the baseline, and the words the report uses for them.
#include "trainer/ablation/report.h"

#include <gtest/gtest.h>

namespace moetrain::trainer::ablation {
namespace {

RunMetrics run(double ppl, double vio) {
  RunMetrics m;
  m.steps = 10;
  m.values = {{"val_ppl", ppl}, {"val_max_vio", vio}, {"val_ppl/en", ppl + 1}};
  return m;
}

// Baseline {10, 12, 15}; "better" is lower by {1.0, 1.1, 0.9} seed by seed; "same" by {1, -1, 0}.
std::vector<VariantResult> three_variants() {
  const std::vector<uint64_t> seeds = {1, 2, 3};
  std::vector<VariantResult> v = {{"base", seeds, {run(10, 0.5), run(12, 0.5), run(15, 0.5)}, {}, {}},
                                  {"better", seeds, {run(9, 0.1), run(10.9, 0.2), run(14.1, 0.3)}, {}, {}},
                                  {"same", seeds, {run(9, 0.5), run(13, 0.5), run(15, 0.5)}, {}, {}}};
  compute_statistics(v, "base");
  return v;
}

TEST(Report, PairedDifferencesAgainstTheBaseline) {
  const auto v = three_variants();
  EXPECT_TRUE(v[0].vs_baseline.empty());
  const stats::Interval d = v[1].vs_baseline.at("val_ppl");  // {-1.0, -1.1, -0.9}: mean -1, std 0.1
  EXPECT_NEAR(d.mean, -1, 1e-12);
  EXPECT_NEAR(d.std, 0.1, 1e-12);
  EXPECT_NEAR(d.hi, -1 + 0.2484138, 1e-6);
  EXPECT_TRUE(d.excludes_zero());
  EXPECT_NEAR(v[1].stats.at("val_ppl/en").mean, 34.0 / 3 + 1, 1e-12);
  const stats::Interval same = v[2].vs_baseline.at("val_ppl");  // {-1, 1, 0}: mean 0, std 1
  EXPECT_NEAR(same.std, 1, 1e-12);
  EXPECT_FALSE(same.excludes_zero());
  EXPECT_EQ(verdict(d, "base"), "lower than base (95% interval excludes 0, n=3)");
  EXPECT_EQ(verdict(same, "base"), "no difference resolved at n=3");
  EXPECT_EQ(verdict(stats::interval95({2}), "base"), "one seed: no interval");
}

TEST(Report, DifferentSeedsCannotBePaired) {
  std::vector<VariantResult> v = {{"base", {1, 2}, {run(1, 0), run(2, 0)}, {}, {}},
                                  {"other", {1, 3}, {run(1, 0), run(2, 0)}, {}, {}}};
  EXPECT_THROW(compute_statistics(v, "base"), std::runtime_error);
  EXPECT_THROW(compute_statistics(v, "missing"), std::runtime_error);
}

TEST(Report, MarkdownMarksResolvedDifferencesAndWordsTheRest) {
  const auto v = three_variants();
  Study study;
  study.source = "s.textproto", study.baseline = "base", study.seeds = {1, 2, 3};
  const std::string md = report_markdown(study, v, "moe-ablate s.textproto", "");
  // better: -1.00 [-1.25, -0.75] in bold and starred; its MaxVio_global {-0.4, -0.3, -0.2} too.
  EXPECT_NE(md.find("| better | **-1.00 [-1.25, -0.75]** * | **-0.300 [-0.548, -0.052]** * |"), std::string::npos)
      << md;
  EXPECT_NE(md.find("| same | 0.00 [-2.48, 2.48] |"), std::string::npos) << md;
  EXPECT_NE(md.find("- **val ppl**: lower than `base`: `better`. no difference resolved at n=3: `same`."),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| base | 10 | 12.33 ± 2.52 ["), std::string::npos) << md;
  const auto json = report_json(study, v, {}, "cmd");
  EXPECT_EQ(json["variants"][1]["vs_baseline"]["val_ppl"]["significant"], true);
  EXPECT_EQ(json["variants"][2]["vs_baseline"]["val_ppl"]["significant"], false);
}

}  // namespace
}  // namespace moetrain::trainer::ablation
