// Held-out evaluation: loss and perplexity over fixed validation windows, per data domain and in total.
#pragma once

#include <string>
#include <vector>

#include "csrc/model/transformer.h"

namespace moetrain::trainer {

struct EvalWindows {
  std::vector<std::string> domains;
  std::vector<torch::Tensor> windows;  // per domain: int64 (n_d, seq_len + 1)
};

struct EvalResult {
  double loss = 0;  // mean token cross-entropy over every window of every domain
  double ppl = 0;
  std::vector<std::pair<std::string, double>> domain_loss;
  // Routed tokens per expert over the whole validation set: [MoE layer] → int64 (E), and per domain
  // [domain][MoE layer] → int64 (E) (for MaxVio_global and specialisation analysis).
  std::vector<torch::Tensor> expert_load;
  std::vector<std::vector<torch::Tensor>> domain_expert_load;
};

// Runs in evaluation mode (no jitter, evaluation capacity) and restores the previous mode.
EvalResult evaluate(model::TransformerImpl& model, const EvalWindows& data, int64_t micro_batch_size);

}  // namespace moetrain::trainer
