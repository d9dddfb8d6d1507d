#include "trainer/ablation/results.h"

#include <stdexcept>

namespace moetrain::trainer::ablation {

void compute_statistics(std::vector<VariantResult>& variants, const std::string& baseline) {
  const VariantResult* base = nullptr;
  for (const auto& v : variants)
    if (v.name == baseline) base = &v;
  if (!base) throw std::runtime_error("baseline \"" + baseline + "\" is not among the variants");
  for (auto& v : variants) {
    if (v.runs.empty()) throw std::runtime_error("variant " + v.name + " has no finished run");
    std::map<std::string, std::vector<double>> samples;
    for (const auto& [key, value] : v.runs.front().values) {
      std::vector<double> xs;
      for (const auto& run : v.runs)
        if (auto it = run.values.find(key); it != run.values.end()) xs.push_back(it->second);
      if (xs.size() == v.runs.size()) samples[key] = xs;
    }
    for (const auto& [key, xs] : samples) v.stats[key] = stats::interval95(xs);
    if (&v == base) continue;
    if (v.seeds != base->seeds)
      throw std::runtime_error("variant " + v.name + " and the baseline " + baseline +
                               " have different seeds; paired differences need the same seeds");
    for (const auto& [key, xs] : samples) {
      std::vector<double> ys;
      for (const auto& run : base->runs)
        if (auto it = run.values.find(key); it != run.values.end()) ys.push_back(it->second);
      if (ys.size() == xs.size()) v.vs_baseline[key] = stats::paired95(xs, ys);
    }
  }
}

std::vector<VariantResult> study_results(const Study& study, const std::vector<Run>& runs) {
  std::vector<VariantResult> out;
  for (const auto& variant : study.variants) out.push_back({variant.name, {}, {}, {}, {}});
  for (const auto& run : runs) {
    out[run.variant].seeds.push_back(run.seed);
    out[run.variant].runs.push_back(read_run_metrics(run.dir));
  }
  compute_statistics(out, study.baseline);
  return out;
}

std::string verdict(const stats::Interval& d, const std::string& baseline) {
  const std::string n = "n=" + std::to_string(d.n);
  if (d.n < 2) return "one seed: no interval";
  if (!d.excludes_zero()) return "no difference resolved at " + n;
  return std::string(d.mean < 0 ? "lower" : "higher") + " than " + baseline + " (95% interval excludes 0, " +
         n + ")";
}

}  // namespace moetrain::trainer::ablation
