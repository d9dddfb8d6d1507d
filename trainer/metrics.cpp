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

MetricsSink::MetricsSink(const std::string& run_dir, bool tensorboard) {
  const std::string path = run_dir + "/metrics.jsonl";
  jsonl_.open(path, std::ios::app);
  if (!jsonl_) throw std::runtime_error(path + ": cannot open for writing; check the run directory is writable");
  if (tensorboard) events_ = std::make_unique<EventWriter>(run_dir);
}

void MetricsSink::write(const StepRecord& record) {
  jsonl_ << "{\"step\": " << record.step;
  for (const auto& [name, value] : record.scalars) jsonl_ << ", \"" << name << "\": " << json_number(value);
  jsonl_ << "}\n";
  jsonl_.flush();
  if (events_) {
    events_->scalars(record.step, record.scalars);
    events_->flush();
  }
}

}  // namespace moetrain::trainer
