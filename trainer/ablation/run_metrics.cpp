#include "trainer/ablation/run_metrics.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <stdexcept>

namespace moetrain::trainer::ablation {

using nlohmann::json;

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": missing; did the run finish? (rerun moe-ablate to resume it)");
  std::vector<json> rows;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    try {
      rows.push_back(json::parse(line));
    } catch (const json::parse_error& e) {
      throw std::runtime_error(path + ":" + std::to_string(n) + ": not valid JSON (" + e.what() + ")");
    }
  }
  return rows;
}

namespace {
constexpr double kMissing = std::numeric_limits<double>::quiet_NaN();  // a double: value() returns its type
}  // namespace

RunMetrics read_run_metrics(const std::string& run_dir) {
  const std::string path = run_dir + "/metrics.jsonl";
  std::map<int64_t, json> by_step;  // a replayed step's later row replaces the earlier one
  for (auto& row : read_jsonl(path)) {
    if (!row.contains("step") || !row["step"].is_number_integer())
      throw std::runtime_error(path + ": a row without an integer \"step\"; the file is not moe-train's");
    const int64_t step = row["step"].get<int64_t>();
    by_step[step] = std::move(row);
  }
  if (by_step.empty()) throw std::runtime_error(path + ": empty; the run has not trained yet");
  RunMetrics m;
  m.steps = by_step.rbegin()->first;
  const size_t last_quarter_from = by_step.size() - (by_step.size() + 3) / 4;
  double vio_sum = 0, dropped = 0, tps = 0;
  size_t i = 0, vio_n = 0;
  for (const auto& [step, row] : by_step) {
    const double vio = row.value("max_vio", kMissing);
    m.batch_max_vio.emplace_back(step, vio);
    if (i++ >= last_quarter_from) vio_sum += vio, ++vio_n;
    dropped += row.value("dropped_frac", kMissing), tps += row.value("tokens_per_s", kMissing);
    if (!row.contains("val_loss")) continue;
    m.val_loss.emplace_back(step, row["val_loss"].get<double>());
    for (const auto& [key, value] : row.items())  // the last evaluation's values replace earlier ones
      if (key.rfind("val_", 0) == 0 && key.rfind("val_max_vio/", 0) != 0 && key.rfind("val_loss/", 0) != 0)
        m.values[key] = value.get<double>();
  }
  const double n = static_cast<double>(by_step.size());
  const std::pair<const char*, double> means[] = {{"batch_max_vio", vio_sum / vio_n},
                                                  {"dropped_frac", dropped / n},
                                                  {"tokens_per_s", tps / n}};
  for (const auto& [key, v] : means)
    if (!std::isnan(v)) m.values[key] = v;
  return m;
}

std::map<std::string, std::map<std::string, std::vector<double>>> last_domain_load(const std::string& run_dir) {
  const auto rows = read_jsonl(run_dir + "/expert_domains.jsonl");
  std::map<std::string, std::map<std::string, std::vector<double>>> out;
  if (rows.empty()) return out;
  const int64_t last = rows.back()["step"].get<int64_t>();
  for (const auto& r : rows) {
    if (r["step"].get<int64_t>() != last) continue;
    out[r["layer"].get<std::string>()][r["domain"].get<std::string>()] = r["tokens_per_expert"]
                                                                             .get<std::vector<double>>();
  }
  return out;
}

}  // namespace moetrain::trainer::ablation
