#include "csrc/moe/experts.h"

namespace moetrain::moe {

GroupedExpertsImpl::GroupedExpertsImpl(int64_t num_experts, int64_t d_model, int64_t hidden) {
  w1_EDF = register_parameter("w1", torch::empty({num_experts, d_model, hidden}));
  w3_EDF = register_parameter("w3", torch::empty({num_experts, d_model, hidden}));
  w2_EFD = register_parameter("w2", torch::empty({num_experts, hidden, d_model}));
}

torch::Tensor GroupedExpertsImpl::forward(const torch::Tensor& tokens_ND, const torch::Tensor& tokens_per_expert_E) {
  auto offsets = tokens_per_expert_E.cumsum(0).to(torch::kInt32);
  auto gate_NF = at::_grouped_mm(tokens_ND, w1_EDF, offsets);
  auto up_NF = at::_grouped_mm(tokens_ND, w3_EDF, offsets);
  // _grouped_mm's backward needs a dense incoming gradient: the product below always provides one.
  return at::_grouped_mm(torch::silu(gate_NF) * up_NF, w2_EFD, offsets);
}

}  // namespace moetrain::moe
