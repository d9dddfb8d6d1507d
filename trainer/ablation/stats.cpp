#include "trainer/ablation/stats.h"

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace moetrain::trainer::stats {
namespace {

// Continued fraction of I_x(a, b) (modified Lentz), valid for x < (a + 1) / (a + b + 2).
double beta_fraction(double a, double b, double x) {
  const double tiny = 1e-300;
  double c = 1, d = 1 - (a + b) * x / (a + 1);
  d = 1 / (std::fabs(d) < tiny ? tiny : d);
  double h = d;
  for (int m = 1; m <= 500; ++m) {
    for (int half = 0; half < 2; ++half) {
      const double num = half == 0 ? m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
                                   : -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1));
      d = 1 + num * d, c = 1 + num / c;
      d = 1 / (std::fabs(d) < tiny ? tiny : d), c = std::fabs(c) < tiny ? tiny : c;
      h *= d * c;
      if (half == 1 && std::fabs(d * c - 1) < 1e-15) return h;
    }
  }
  return h;
}

}  // namespace

double incomplete_beta(double a, double b, double x) {
  if (!(a > 0 && b > 0 && x >= 0 && x <= 1))
    throw std::invalid_argument("incomplete_beta: a, b > 0, 0 <= x <= 1");
  if (x == 0 || x == 1) return x;
  const double front = std::exp(std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) +
                                b * std::log1p(-x));
  if (x < (a + 1) / (a + b + 2)) return front * beta_fraction(a, b, x) / a;
  return 1 - front * beta_fraction(b, a, 1 - x) / b;  // the symmetry I_x(a,b) = 1 - I_{1-x}(b,a)
}

double t_cdf(double t, double df) {
  if (!(df > 0)) throw std::invalid_argument("t_cdf: degrees of freedom must be > 0");
  const double tail = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t));  // P(T > |t|)
  return t >= 0 ? 1 - tail : tail;
}

double t_quantile(double p, double df) {
  if (!(p > 0 && p < 1)) throw std::invalid_argument("t_quantile: p must be in (0, 1)");
  if (p < 0.5) return -t_quantile(1 - p, df);
  double lo = 0, hi = 1;
  while (t_cdf(hi, df) < p) hi *= 2;  // the cdf is increasing: bracket, then bisect
  for (int i = 0; i < 200 && hi - lo > 1e-12 * hi; ++i) {
    const double mid = 0.5 * (lo + hi);
    (t_cdf(mid, df) < p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

Interval interval95(const std::vector<double>& xs) {
  Interval out;
  out.n = static_cast<int>(xs.size());
  if (xs.empty()) {
    out.mean = out.std = out.lo = out.hi = std::numeric_limits<double>::quiet_NaN();
    return out;
  }
  double sum = 0;
  for (double x : xs) {
    if (std::isnan(x)) throw std::invalid_argument("interval95: a value is NaN (a run without that metric)");
    sum += x;
  }
  out.mean = sum / out.n;
  if (out.n < 2) {
    out.std = out.lo = out.hi = std::numeric_limits<double>::quiet_NaN();
    return out;
  }
  double ss = 0;
  for (double x : xs) ss += (x - out.mean) * (x - out.mean);
  out.std = std::sqrt(ss / (out.n - 1));
  const double half = t_quantile(0.975, out.n - 1) * out.std / std::sqrt(static_cast<double>(out.n));
  out.lo = out.mean - half, out.hi = out.mean + half;
  return out;
}

Interval paired95(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size())
    throw std::invalid_argument("paired95: " + std::to_string(a.size()) + " values against " +
                                std::to_string(b.size()) + "; pairs need the same seeds on both sides");
  std::vector<double> d;
  for (size_t i = 0; i < a.size(); ++i) d.push_back(a[i] - b[i]);
  return interval95(d);
}

}  // namespace moetrain::trainer::stats
