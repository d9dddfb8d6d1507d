// Turns the loop's outcomes into what people read: the console progress line, metrics.jsonl and
// TensorBoard (MetricsSink), expert_load.jsonl and expert_domains.jsonl (ExpertLoadLog). Only the rank
// that writes logs has the files; every rank builds the same records.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "trainer/evaluator.h"
#include "trainer/metrics.h"
#include "trainer/train_step.h"

namespace moetrain::trainer {

std::string human_count(double v);           // 1.23M, 4.5k
std::string human_duration(double seconds);  // 1h05m, 3m07s

class StepReporter {
 public:
  // layer_names: "layer<i>" of each MoE layer by transformer layer index. writes_logs: rank 0, which opens
  // the files in run_dir; resumed_step >= 0 when the run resumed from that step's checkpoint.
  // redraw: the progress line is redrawn in place (progress_line.h), else printed as whole lines.
  StepReporter(std::vector<std::string> layer_names, bool writes_logs, const std::string& run_dir,
               bool tensorboard, int64_t resumed_step, bool redraw);

  // The step's record: losses, routing measures per layer and their means, lr, gradient norm, throughput.
  // Writes the step's expert load (expert_load.jsonl).
  StepRecord record(const StepOutcome& outcome);
  // The progress line: `whole_line` ends it with a newline (logging.log_interval); otherwise it is only
  // drawn when redrawing in place. eta_s: estimated seconds to the end of the run.
  void print_progress(const StepRecord& record, const StepOutcome& outcome, int64_t steps, double eta_s,
                      bool whole_line) const;
  // Adds a validation result to `record`, writes the per-domain expert load and prints the eval line.
  void add_evaluation(StepRecord& record, const EvalResult& eval, const std::vector<std::string>& domains);
  void write(const StepRecord& record);  // metrics.jsonl and TensorBoard
  // Starts a message on a line of its own (after a redrawn progress line).
  const char* line_break() const { return redraw_ ? "\n" : ""; }

 private:
  void add_moe_measures(StepRecord& record, const std::vector<LayerStepMeasures>& moe, int64_t micro_batches);
  static void add_communication(StepRecord& record, const std::vector<parallel::CommTally>& comm);

  std::vector<std::string> layer_names_;
  bool redraw_;
  std::unique_ptr<MetricsSink> metrics_;  // null on ranks that write no logs
  std::unique_ptr<ExpertLoadLog> expert_log_;
};

}  // namespace moetrain::trainer
