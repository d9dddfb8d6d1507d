// The study statistics against values computed by hand or read from a printed t table.
#include "trainer/ablation/stats.h"

#include <gtest/gtest.h>

#include <cmath>

namespace moetrain::trainer::stats {
namespace {

TEST(Stats, TCdfHasClosedFormsAtOneAndTwoDegreesOfFreedom) {
  EXPECT_DOUBLE_EQ(t_cdf(0, 5), 0.5);
  for (double t : {-3.0, -0.5, 0.7, 2.0, 10.0}) {
    EXPECT_NEAR(t_cdf(t, 1), 0.5 + std::atan(t) / M_PI, 1e-12) << t;             // Cauchy
    EXPECT_NEAR(t_cdf(t, 2), 0.5 + t / (2 * std::sqrt(2 + t * t)), 1e-12) << t;  // df = 2
  }
}

TEST(Stats, TQuantilesMatchTheTable) {
  // Two-sided 95% critical values t(0.975, df), e.g. NIST/SEMATECH e-Handbook table 1.3.6.7.2.
  const std::pair<double, double> table[] = {{1, 12.706204736}, {2, 4.302652730}, {3, 3.182446305},
                                             {4, 2.776445105},  {9, 2.262157163}, {29, 2.045229642}};
  for (const auto& [df, t] : table) EXPECT_NEAR(t_quantile(0.975, df), t, 1e-8) << "df " << df;
  EXPECT_NEAR(t_quantile(0.025, 3), -3.182446305, 1e-8);
  EXPECT_NEAR(t_quantile(0.975, 1e6), 1.959965, 1e-5);  // tends to the normal quantile
}

TEST(Stats, IntervalOfThreeValues) {
  // {1, 2, 3}: mean 2, std 1, half-width 4.302652730 / sqrt(3) = 2.484138.
  const Interval i = interval95({1, 2, 3});
  EXPECT_EQ(i.n, 3);
  EXPECT_DOUBLE_EQ(i.mean, 2);
  EXPECT_NEAR(i.std, 1, 1e-15);
  EXPECT_NEAR(i.lo, 2 - 2.4841377, 1e-6);
  EXPECT_NEAR(i.hi, 2 + 2.4841377, 1e-6);
  EXPECT_FALSE(i.excludes_zero());
}

TEST(Stats, OneValueHasNoSpread) {
  const Interval i = interval95({7.5});
  EXPECT_EQ(i.n, 1);
  EXPECT_DOUBLE_EQ(i.mean, 7.5);
  EXPECT_TRUE(std::isnan(i.std) && std::isnan(i.lo) && std::isnan(i.hi));
  EXPECT_FALSE(i.excludes_zero());
}

TEST(Stats, PairedDifferencesResolveWhatUnpairedIntervalsDoNot) {
  // Seeds move both variants together; the differences {1.0, 1.1, 0.9}: mean 1, std 0.1,
  // half-width 4.302652730 * 0.1 / sqrt(3) = 0.2484138.
  const std::vector<double> a = {11.0, 13.1, 15.9}, b = {10, 12, 15};
  const Interval d = paired95(a, b);
  EXPECT_NEAR(d.mean, 1, 1e-12);
  EXPECT_NEAR(d.std, 0.1, 1e-12);
  EXPECT_NEAR(d.lo, 1 - 0.2484138, 1e-6);
  EXPECT_NEAR(d.hi, 1 + 0.2484138, 1e-6);
  EXPECT_TRUE(d.excludes_zero());
  EXPECT_FALSE(interval95(a).lo > interval95(b).hi);  // the per-variant intervals overlap
  EXPECT_THROW(paired95({1, 2}, {1}), std::invalid_argument);
  EXPECT_THROW(interval95({1, NAN}), std::invalid_argument);
}

}  // namespace
}  // namespace moetrain::trainer::stats
