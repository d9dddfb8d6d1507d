// Per-step metrics: RUN_DIR/metrics.jsonl (one JSON object per line), the TensorBoard event file,
// and the console progress line.
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "trainer/tensorboard/event_writer.h"

namespace moetrain::trainer {

// An ordered list of named scalars for one step; "step" is always the first key. `tensorboard_only`
// holds detail too wide for metrics.jsonl (one scalar per expert), written to TensorBoard alone.
struct StepRecord {
  int64_t step = 0;
  std::vector<std::pair<std::string, double>> scalars;
  std::vector<std::pair<std::string, double>> tensorboard_only;
  void add(const std::string& name, double value) { scalars.emplace_back(name, value); }
  void add_tensorboard_only(const std::string& name, double value) {
    tensorboard_only.emplace_back(name, value);
  }
  double get(const std::string& name) const;  // throws if absent
};

class MetricsSink {
 public:
  // Appends to RUN_DIR/metrics.jsonl (a resumed run continues the file); TensorBoard is optional.
  // A run resumed from the checkpoint of step `resumed_step` (>= 0) tells TensorBoard to forget
  // what an earlier process logged after that step.
  MetricsSink(const std::string& run_dir, bool tensorboard, int64_t resumed_step = -1);
  void write(const StepRecord& record);

 private:
  std::ofstream jsonl_;
  std::unique_ptr<EventWriter> events_;
};

// Expert load detail, one JSON object per line, easy to plot:
//   RUN_DIR/expert_load.jsonl     {"step": s, "tokens_per_expert": {"layer0": [c_0, ..., c_E-1], ...}}
//                                 routed pairs of the step's whole batch, before capacity
//   RUN_DIR/expert_domains.jsonl  {"step": s, "layer": "layer0", "domain": "en", "tokens_per_expert": [...]}
//                                 routed pairs on the validation set, per data domain (eval steps)
class ExpertLoadLog {
 public:
  explicit ExpertLoadLog(const std::string& run_dir);
  void write_load(int64_t step, const std::vector<std::string>& layers, const std::vector<torch::Tensor>& load);
  void write_domains(int64_t step, const std::vector<std::string>& layers,
                     const std::vector<std::string>& domains,
                     const std::vector<std::vector<torch::Tensor>>& load_per_domain);

 private:
  std::ofstream load_, domains_;
};

// A run resumed from the checkpoint of step `step` forgets what it logged after it (the steps it will
// redo, e.g. after a crash between checkpoints): lines of the JSONL file with a larger "step" are dropped.
void drop_lines_after_step(const std::string& jsonl_path, int64_t step);

// Formats a JSON number the way metrics.jsonl stores it (round-trip precision; NaN/Inf as null).
std::string json_number(double v);

}  // namespace moetrain::trainer
