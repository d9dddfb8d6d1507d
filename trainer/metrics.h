// Per-step metrics: RUN_DIR/metrics.jsonl (one JSON object per line), the TensorBoard event file,
// and the console progress line.
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trainer/tensorboard/event_writer.h"

namespace moetrain::trainer {

// An ordered list of named scalars for one step; "step" is always the first key.
struct StepRecord {
  int64_t step = 0;
  std::vector<std::pair<std::string, double>> scalars;
  void add(const std::string& name, double value) { scalars.emplace_back(name, value); }
  double get(const std::string& name) const;  // throws if absent
};

class MetricsSink {
 public:
  // Appends to RUN_DIR/metrics.jsonl (a resumed run continues the file); TensorBoard is optional.
  MetricsSink(const std::string& run_dir, bool tensorboard);
  void write(const StepRecord& record);

 private:
  std::ofstream jsonl_;
  std::unique_ptr<EventWriter> events_;
};

// Formats a JSON number the way metrics.jsonl stores it (round-trip precision; NaN/Inf as null).
std::string json_number(double v);

}  // namespace moetrain::trainer
