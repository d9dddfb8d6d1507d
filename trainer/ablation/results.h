// A study's results: each variant's runs (one per seed) and their statistics, as report.md and
// report.json show them.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "trainer/ablation/run_metrics.h"
#include "trainer/ablation/stats.h"
#include "trainer/ablation/study.h"

namespace moetrain::trainer::ablation {

struct VariantResult {
  std::string name;
  std::vector<uint64_t> seeds;   // the study's seeds, in its order
  std::vector<RunMetrics> runs;  // one per seed, same order
  // Per metric key of RunMetrics::values: mean, std and 95% t-interval over the seeds (metrics a run
  // lacks are left out for every run of the variant).
  std::map<std::string, stats::Interval> stats;
  // Paired differences, this variant minus the baseline, seed by seed (same seeds, so same
  // initialisation and data order); empty for the baseline itself.
  std::map<std::string, stats::Interval> vs_baseline;
};

// Statistics of variants whose `runs` are filled in: fills `stats` and `vs_baseline` (against the
// variant named `baseline`, which must be one of them).
void compute_statistics(std::vector<VariantResult>& variants, const std::string& baseline);

// Reads every run of the study (plan_runs' order) and computes the statistics.
std::vector<VariantResult> study_results(const Study& study, const std::vector<Run>& runs);

// Words for a paired difference of a metric where lower is better, no stronger than the interval:
// "lower than BASELINE (95% interval excludes 0, n=3)", "no difference resolved at n=3", or "one
// seed: no interval" when n < 2.
std::string verdict(const stats::Interval& difference, const std::string& baseline);

}  // namespace moetrain::trainer::ablation
