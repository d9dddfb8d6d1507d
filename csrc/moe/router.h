// Top-k softmax router and the Switch-style auxiliary loss (definitions: docs/routing.md).
// Shapes: T tokens in the routing group, D d_model, E experts, k experts per token.
#pragma once

#include <torch/torch.h>

namespace moetrain::moe {

struct RouterOutput {
  torch::Tensor probs_TE;        // fp32 softmax over all experts (the P of the aux loss)
  torch::Tensor expert_idx_TK;   // int64 selected experts, best first
  torch::Tensor gates_TK;        // fp32 selected probabilities renormalised to sum to 1 per token
  torch::Tensor routing_map_TE;  // fp32 0/1, 1 where the token selected the expert
};

// logits = x·Wrᵀ in fp32 whatever the compute dtype; softmax; top-k; renormalised gates.
// Renormalising the top-k softmax probabilities equals a softmax over the k selected logits.
class TopKRouterImpl : public torch::nn::Module {
 public:
  TopKRouterImpl(int64_t d_model, int64_t num_experts, int64_t top_k);
  RouterOutput forward(const torch::Tensor& x_TD);

  torch::Tensor weight;  // (E, D), fp32
  int64_t num_experts() const { return num_experts_; }
  int64_t top_k() const { return top_k_; }

 private:
  int64_t num_experts_, top_k_;
};
TORCH_MODULE(TopKRouter);

// Switch/GShard auxiliary loss generalised to top-k (Megatron-Core's normalisation):
//   f_i = tokens routed to i / (T·k),  P_i = mean over tokens of p_i,  L = E · Σ_i f_i · P_i.
// Returns L without its coefficient; a uniform router gives exactly 1. Gradient flows through P only.
torch::Tensor switch_aux_loss(const torch::Tensor& probs_TE, const torch::Tensor& routing_map_TE, int64_t top_k);

}  // namespace moetrain::moe
