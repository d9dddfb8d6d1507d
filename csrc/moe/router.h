// The router: which experts each token uses, with which gate (definitions: docs/routing.md).
// Shapes: T tokens in the routing group, D d_model, E experts, k experts per token.
#pragma once

#include <torch/torch.h>

#include "csrc/config/recipe.pb.h"

namespace moetrain::moe {

struct RouterOptions {
  int64_t d_model = 0, num_experts = 0, top_k = 0;
  config::RoutingConfig routing;  // defaults filled in
};

struct Routing {
  torch::Tensor logits_TE;  // fp32 router logits
  torch::Tensor probs_TE;   // fp32 P of the balancing losses: softmax, or sigmoid normalised over experts
  torch::Tensor routed_TE;  // bool: the router's choice before capacity (aux losses and load measures)
  torch::Tensor kept_TE;    // bool: the pairs that are computed (after capacity)
  torch::Tensor gates_TE;   // fp32 gate of each kept pair, 0 elsewhere (differentiable)
  int64_t capacity = 0;     // per expert, 0 = dropless
  // Kept pairs, known on the host without reading the routing: exact when dropless (T·k for top-k, E·c
  // for expert choice), an upper bound with a capacity (min(T·k, E·capacity)). Sizes the dispatch.
  int64_t max_kept = 0;
};

// capacity = max(ceil(factor · T · k / E), min_capacity); 0 when factor is 0 (dropless).
int64_t expert_capacity(double factor, int64_t tokens, int64_t top_k, int64_t num_experts, int64_t min_capacity);

// Keeps at most `capacity` routed pairs per expert: those with the highest `priority_TE` (for the
// probs policy the pair's final gate, for the position policy minus the token index).
torch::Tensor apply_capacity(const torch::Tensor& routed_TE, const torch::Tensor& priority_TE, int64_t capacity);

class RouterImpl : public torch::nn::Module {
 public:
  explicit RouterImpl(const RouterOptions& options);
  // x_TD: router input; token_ids_T: int64 ids (used by HASH routing only, may be undefined otherwise).
  Routing forward(const torch::Tensor& x_TD, const torch::Tensor& token_ids_T = {});

  torch::Tensor weight;       // (E, D) fp32, trained
  torch::Tensor expert_bias;  // (E) fp32 buffer: selection bias of aux-loss-free balancing (not trained)
  const RouterOptions& options() const { return options_; }

 private:
  torch::Tensor select_topk(const torch::Tensor& logits_TE, const torch::Tensor& scores_TE) const;
  RouterOptions options_;
};
TORCH_MODULE(Router);

}  // namespace moetrain::moe
