// The study report: OUT/report.md (tables, paired comparisons with the baseline, conclusions worded no
// stronger than the intervals), OUT/report.json (every run's numbers and every statistic) and the SVG
// figures in OUT/figures/ (figures.h). Every number comes from the runs' metrics files.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/ablation/results.h"
#include "trainer/ablation/study.h"

namespace moetrain::trainer::ablation {

// report.json: {"command", "study", "baseline", "seeds", "variants": [{"name", "runs": [{"seed", "dir",
// "steps", "values": {metric: value}}], "stats": {metric: {"n", "mean", "std", "lo", "hi"}},
// "vs_baseline": {metric: {"n", "mean", "std", "lo", "hi", "significant"}}}]} (NaN as null).
nlohmann::json report_json(const Study& study, const std::vector<VariantResult>& results,
                           const std::vector<Run>& runs, const std::string& command);

// report.md's text; `figures` is the Markdown of the per-variant expert figures.
std::string report_markdown(const Study& study, const std::vector<VariantResult>& results,
                            const std::string& command, const std::string& figures);

// Writes OUT/report.md, OUT/report.json and OUT/figures/; throws naming a file it cannot write.
void write_report(const Study& study, const std::vector<VariantResult>& results, const std::vector<Run>& runs,
                  const std::string& out_dir, const std::string& command);

}  // namespace moetrain::trainer::ablation
