#include "trainer/metrics.h"

#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace moetrain::trainer {

double StepRecord::get(const std::string& name) const {
  for (const auto& [k, v] : scalars)
    if (k == name) return v;
  throw std::out_of_range("metric " + name + " not recorded at step " + std::to_string(step));
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

void drop_lines_after_step(const std::string& jsonl_path, int64_t step) {
  std::ifstream in(jsonl_path);
  if (!in) return;
  std::vector<std::string> kept;
  bool dropped = false;
  for (std::string line; std::getline(in, line);) {
    long long s = 0;
    if (std::sscanf(line.c_str(), "{\"step\": %lld", &s) == 1 && s > step) {
      dropped = true;
      continue;
    }
    kept.push_back(line);
  }
  in.close();
  if (!dropped) return;
  const std::string tmp = jsonl_path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    for (const auto& line : kept) out << line << "\n";
    if (!out) throw std::runtime_error(tmp + ": cannot write; check the run directory is writable");
  }
  if (std::rename(tmp.c_str(), jsonl_path.c_str()) != 0)
    throw std::runtime_error(jsonl_path + ": cannot replace");
}

MetricsSink::MetricsSink(const std::string& run_dir, bool tensorboard, int64_t resumed_step) {
  const std::string path = run_dir + "/metrics.jsonl";
  jsonl_.open(path, std::ios::app);
  if (!jsonl_)
    throw std::runtime_error(path + ": cannot open for writing; check the run directory is writable");
  if (tensorboard) {
    events_ = std::make_unique<EventWriter>(run_dir);
    if (resumed_step >= 0) {
      events_->session_start(resumed_step + 1);
      events_->flush();
    }
  }
}

void MetricsSink::write(const StepRecord& record) {
  jsonl_ << "{\"step\": " << record.step;
  for (const auto& [name, value] : record.scalars) jsonl_ << ", \"" << name << "\": " << json_number(value);
  jsonl_ << "}\n";
  jsonl_.flush();
  if (events_) {
    events_->scalars(record.step, record.scalars);
    if (!record.tensorboard_only.empty()) events_->scalars(record.step, record.tensorboard_only);
    events_->flush();
  }
}

namespace {

std::string json_ints(const torch::Tensor& t) {
  auto c = t.to(torch::kCPU).to(torch::kInt64).contiguous();
  std::string out = "[";
  for (int64_t i = 0; i < c.numel(); ++i) out += (i ? ", " : "") + std::to_string(c.data_ptr<int64_t>()[i]);
  return out + "]";
}

}  // namespace

ExpertLoadLog::ExpertLoadLog(const std::string& run_dir) {
  load_.open(run_dir + "/expert_load.jsonl", std::ios::app);
  domains_.open(run_dir + "/expert_domains.jsonl", std::ios::app);
  if (!load_ || !domains_)
    throw std::runtime_error(run_dir + ": cannot open expert load logs; check the run directory is writable");
}

void ExpertLoadLog::write_load(int64_t step, const std::vector<std::string>& layers,
                               const std::vector<torch::Tensor>& load) {
  load_ << "{\"step\": " << step << ", \"tokens_per_expert\": {";
  for (size_t l = 0; l < load.size(); ++l)
    load_ << (l ? ", " : "") << "\"" << layers[l] << "\": " << json_ints(load[l]);
  load_ << "}}\n";
  load_.flush();
}

void ExpertLoadLog::write_domains(int64_t step, const std::vector<std::string>& layers,
                                  const std::vector<std::string>& domains,
                                  const std::vector<std::vector<torch::Tensor>>& load_per_domain) {
  for (size_t d = 0; d < load_per_domain.size(); ++d) {
    for (size_t l = 0; l < load_per_domain[d].size(); ++l) {
      domains_ << "{\"step\": " << step << ", \"layer\": \"" << layers[l] << "\", \"domain\": \""
               << domains[d] << "\", \"tokens_per_expert\": " << json_ints(load_per_domain[d][l]) << "}\n";
    }
  }
  domains_.flush();
}

}  // namespace moetrain::trainer
