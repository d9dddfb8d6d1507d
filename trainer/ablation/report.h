// The ablation report: reads each variant's run directory (metrics.jsonl, expert_load.jsonl,
// expert_domains.jsonl) and writes OUT/report.md with SVG figures in OUT/figures/. Every number in
// the report comes from those files.
#pragma once

#include <string>
#include <vector>

namespace moetrain::trainer {

struct VariantSummary {
  std::string name;
  double val_loss = 0, val_ppl = 0, val_max_vio = 0;  // last evaluation
  double mean_max_vio = 0;                            // batch MaxVio, mean over steps
  double dropped_frac = 0;                            // mean over steps
  double tokens_per_s = 0;                            // mean over steps
  int64_t dead_experts = 0;                           // (layer, expert) pairs with no validation tokens
  int64_t steps = 0;
};

// Summary of one run directory; throws naming the file when a metrics file is missing or malformed.
VariantSummary summarize_run(const std::string& name, const std::string& run_dir);

// Writes OUT/report.md and OUT/figures/*.svg for the variants (name, run directory); `command` is
// recorded in the report.
std::vector<VariantSummary> write_report(const std::vector<std::pair<std::string, std::string>>& variants,
                                         const std::string& out_dir, const std::string& command);

}  // namespace moetrain::trainer
