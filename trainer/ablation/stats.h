// Small-sample statistics for ablation studies (no torch): mean, sample standard deviation, Student t
// quantiles and 95% t-intervals, of single samples and of paired differences.
#pragma once

#include <vector>

namespace moetrain::trainer::stats {

// Two-sided 95% t-interval of a mean. With n < 2 the standard deviation and interval are NaN (one
// run gives no estimate of its own spread).
struct Interval {
  int n = 0;
  double mean = 0, std = 0;  // std: sample standard deviation (divisor n - 1)
  double lo = 0, hi = 0;     // mean ± t(0.975, n-1) · std / √n
  // True when the interval excludes 0 (only meaningful for differences; false when n < 2).
  bool excludes_zero() const { return n >= 2 && (lo > 0 || hi < 0); }
};

// Regularised incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1.
double incomplete_beta(double a, double b, double x);

// P(T <= t) for Student's t with `df` > 0 degrees of freedom.
double t_cdf(double t, double df);

// The p-quantile of Student's t with `df` > 0 degrees of freedom, 0 < p < 1 (to ~1e-10 relative).
double t_quantile(double p, double df);

// Mean, sample standard deviation and 95% t-interval of `xs` (NaN entries are an error: throws).
Interval interval95(const std::vector<double>& xs);

// The interval of the differences a[i] - b[i] (same length, paired by index: same seed).
Interval paired95(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace moetrain::trainer::stats
