// The study report's figures, written to OUT/figures/ (SVG, svg.h): per-variant estimates with their 95%
// intervals, paired differences with the baseline, validation-loss and batch-MaxVio curves (mean over
// seeds, intervals at each evaluation), and per-variant expert load and domain heatmaps (first seed).
#pragma once

#include <string>
#include <vector>

#include "trainer/ablation/results.h"
#include "trainer/ablation/study.h"

namespace moetrain::trainer::ablation {

// Writes `text` to `path`; throws naming the path when it cannot.
void write_file(const std::string& path, const std::string& text);

// Writes the study-wide figures (val_ppl, val_ppl_vs_baseline, val_max_vio, val_loss, max_vio .svg).
void write_study_figures(const std::vector<VariantResult>& results, const std::string& baseline,
                         const std::string& out_dir);

// Writes load_NAME.svg and domains_NAME.svg from a run's last evaluation and returns the report's
// Markdown for them; empty when the run logged no domain counts.
std::string write_expert_figures(const std::string& name, const std::string& run_dir,
                                 const std::string& out_dir);

}  // namespace moetrain::trainer::ablation
