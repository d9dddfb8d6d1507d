// What the ablation report reads from one run directory: RUN/metrics.jsonl (and expert_domains.jsonl).
// A resumed run appends the steps it replays after its checkpoint again; the later row of a step wins.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace moetrain::trainer::ablation {

// One run's numbers, keyed as in the report and report.json:
//   val_loss, val_ppl, val_max_vio   at the last evaluation (val_max_vio: MaxVio_global, the mean over
//                                    MoE layers of each layer's MaxVio on the whole validation set)
//   val_ppl/<domain>                 per-domain validation perplexity at the last evaluation
//   batch_max_vio                    training MaxVio of each step's batch, mean over the last quarter of
//                                    the steps (the last ceil(N/4) of the N steps logged)
//   dropped_frac, tokens_per_s       mean over every step logged
// A value the run's files do not have is absent from `values`.
struct RunMetrics {
  int64_t steps = 0;  // the last step logged
  std::map<std::string, double> values;
  std::vector<std::pair<double, double>> val_loss;       // (step, val_loss) at each evaluation
  std::vector<std::pair<double, double>> batch_max_vio;  // (step, max_vio) of every step
};

// Reads RUN/metrics.jsonl; throws naming the file when it is missing, empty or not JSON lines.
RunMetrics read_run_metrics(const std::string& run_dir);

// The rows of a JSON-lines file; throws naming the file (and line) when missing or malformed.
std::vector<nlohmann::json> read_jsonl(const std::string& path);

// The last evaluation's routed pairs on the validation set: layer -> domain -> count per expert, from
// RUN/expert_domains.jsonl (empty when the run logged none).
std::map<std::string, std::map<std::string, std::vector<double>>> last_domain_load(const std::string& run_dir);

}  // namespace moetrain::trainer::ablation
