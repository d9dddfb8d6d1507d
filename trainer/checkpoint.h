// Single-process checkpoints of a training run, committed atomically:
//   RUN_DIR/checkpoints/step_NNNNNNNN/{model.pt, optimizer.pt, state.pt}   and   RUN_DIR/checkpoints/latest
// Files are written into a temporary directory and fsynced; the directory is renamed into place and
// fsynced; only then is `latest` replaced (by rename). A crash at any point leaves the previous
// checkpoint and pointer intact. The newest `keep_last` checkpoints are kept.
#pragma once

#include <optional>
#include <string>

#include "csrc/model/transformer.h"

namespace moetrain::trainer {

// Everything besides weights and optimizer moments that a run needs to continue exactly.
struct TrainState {
  int64_t step = 0;              // optimizer steps completed
  int64_t samples_consumed = 0;  // global sampler position
  int64_t tokens = 0;            // training tokens seen
};

class Checkpointer {
 public:
  // `model_signature` is the text of the recipe's model section: a resume into a different model is refused.
  Checkpointer(std::string run_dir, int64_t keep_last, std::string model_signature);

  // Returns the committed directory.
  std::string save(const TrainState& state, model::TransformerImpl& model, torch::optim::Optimizer& optimizer);

  // The committed checkpoint `latest` points to, if any.
  std::optional<std::string> latest() const;

  // Restores weights, buffers (expert biases), optimizer state and the CPU RNG; returns the train state.
  // Balancing accumulators need no saving: they are empty at every step boundary, where saves happen.
  TrainState load(const std::string& dir, model::TransformerImpl& model, torch::optim::Optimizer& optimizer);

 private:
  std::string root_;
  int64_t keep_last_;
  std::string model_signature_;
};

}  // namespace moetrain::trainer
