#include "trainer/ablation/figures.h"

#include <cmath>
#include <fstream>
#include <map>
#include <stdexcept>

#include "trainer/ablation/svg.h"

namespace moetrain::trainer::ablation {
namespace {

// A layer's routed counts per expert, summed over the domains.
std::vector<double> expert_totals(const std::map<std::string, std::vector<double>>& per_domain) {
  std::vector<double> total;
  for (const auto& [domain, counts] : per_domain) {
    total.resize(counts.size(), 0.0);
    for (size_t e = 0; e < counts.size(); ++e) total[e] += counts[e];
  }
  return total;
}

// Each count's share of their sum (all 0 when the sum is).
std::vector<double> shares(const std::vector<double>& counts) {
  double sum = 0;
  for (double c : counts) sum += c;
  std::vector<double> share;
  for (double c : counts) share.push_back(sum > 0 ? c / sum : 0);
  return share;
}

// Per variant, the metric's mean and interval (`differences`: the paired differences with the baseline,
// the baseline itself left out).
std::vector<svg::Estimate> estimates(const std::vector<VariantResult>& results, const std::string& key,
                                     bool differences) {
  std::vector<svg::Estimate> out;
  for (const auto& v : results) {
    const auto& table = differences ? v.vs_baseline : v.stats;
    if (auto it = table.find(key); it != table.end())
      out.push_back({v.name, it->second.mean, it->second.lo, it->second.hi});
  }
  return out;
}

// A curve per variant: at each step every seed logged, the mean over seeds and its 95% interval.
// `curve` picks a run's (step, value) points; `window` > 1 first averages each run's points in windows
// of that many (the batch MaxVio, one point per step, is too noisy to read raw).
template <class Curve>
std::vector<svg::Series> mean_curves(const std::vector<VariantResult>& results, Curve curve, size_t window) {
  std::vector<svg::Series> out;
  for (const auto& v : results) {
    std::map<double, std::vector<double>> at_step;
    for (const auto& run : v.runs) {
      const auto& points = curve(run);
      for (size_t i = 0; i + window <= points.size(); i += window) {
        double sum = 0;
        for (size_t j = i; j < i + window; ++j) sum += points[j].second;
        if (!std::isnan(sum))
          at_step[points[i + window - 1].first].push_back(sum / window);  // NaN: not logged
      }
    }
    svg::Series s{v.name, {}, {}};
    for (const auto& [step, ys] : at_step) {
      if (ys.size() != v.runs.size()) continue;  // a step not every seed reached
      const stats::Interval i = stats::interval95(ys);
      s.points.emplace_back(step, i.mean), s.bars.emplace_back(i.lo, i.hi);
    }
    out.push_back(s);
  }
  return out;
}

}  // namespace

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  if (!(out << text)) throw std::runtime_error(path + ": cannot write; check the output directory");
}

void write_study_figures(const std::vector<VariantResult>& results, const std::string& baseline,
                         const std::string& out_dir) {
  const std::string dir = out_dir + "/figures/";
  write_file(dir + "val_ppl.svg", svg::interval_chart("Validation perplexity: mean over seeds, 95% t-interval",
                                                      "val ppl", estimates(results, "val_ppl", false), NAN));
  write_file(dir + "val_ppl_vs_baseline.svg",
             svg::interval_chart("Validation perplexity minus " + baseline +
                                     "'s, paired by seed (95% t-interval)",
                                 "difference in val ppl", estimates(results, "val_ppl", true), 0));
  write_file(dir + "val_max_vio.svg",
             svg::interval_chart("MaxVio_global on validation: mean over seeds, 95% t-interval",
                                 "MaxVio_global", estimates(results, "val_max_vio", false), NAN));
  write_file(dir + "val_loss.svg",
             svg::line_chart("Validation loss (mean over seeds, 95% t-interval)", "step", "val_loss",
                             mean_curves(
                                 results, [](const RunMetrics& r) { return r.val_loss; }, 1)));
  write_file(dir + "max_vio.svg",
             svg::line_chart("Batch MaxVio (mean of 10 steps, mean over seeds, 95% t-interval)", "step",
                             "MaxVio",
                             mean_curves(
                                 results, [](const RunMetrics& r) { return r.batch_max_vio; }, 10)));
}

std::string write_expert_figures(const std::string& name, const std::string& run_dir,
                                 const std::string& out_dir) {
  const auto load = last_domain_load(run_dir);
  if (load.empty()) return {};
  std::vector<std::string> layers, experts, domains;
  std::vector<std::vector<double>> layer_share, domain_share;
  for (const auto& [layer, per_domain] : load)
    layers.push_back(layer), layer_share.push_back(shares(expert_totals(per_domain)));
  for (size_t e = 0; e < layer_share.front().size(); ++e) experts.push_back(std::to_string(e));
  const auto& last_layer = load.rbegin()->second;
  for (const auto& [domain, counts] : last_layer)
    domains.push_back(domain), domain_share.push_back(shares(counts));
  write_file(out_dir + "/figures/load_" + name + ".svg",
             svg::heatmap(name + ": share of validation tokens per expert, by layer", layers, experts,
                          layer_share));
  write_file(out_dir + "/figures/domains_" + name + ".svg",
             svg::heatmap(name + ": " + load.rbegin()->first + ", share of each domain's tokens per expert",
                          domains, experts, domain_share));
  return "### " + name + "\n\n![expert load](figures/load_" + name +
         ".svg)\n![specialisation](figures/domains_" + name + ".svg)\n\n";
}

}  // namespace moetrain::trainer::ablation
