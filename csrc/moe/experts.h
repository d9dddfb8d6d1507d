// All local experts computed together: grouped SwiGLU over tokens already grouped by expert.
#pragma once

#include <torch/torch.h>

namespace moetrain::moe {

// Weights are stored per expert as (E, in, out) so each group is a plain x·W. One grouped GEMM per
// projection (at::_grouped_mm, offsets = cumulative tokens per expert): no loop over experts.
class GroupedExpertsImpl : public torch::nn::Module {
 public:
  GroupedExpertsImpl(int64_t num_experts, int64_t d_model, int64_t hidden);
  // tokens_ND grouped by expert; tokens_per_expert_E int64 summing to N. Returns (N, D).
  torch::Tensor forward(const torch::Tensor& tokens_ND, const torch::Tensor& tokens_per_expert_E);

  torch::Tensor w1_EDF;  // gate projection
  torch::Tensor w3_EDF;  // up projection
  torch::Tensor w2_EFD;  // down projection
};
TORCH_MODULE(GroupedExperts);

}  // namespace moetrain::moe
