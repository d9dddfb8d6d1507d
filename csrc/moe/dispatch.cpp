#include "csrc/moe/dispatch.h"

namespace moetrain::moe {

Dispatched LocalDispatcher::dispatch(const torch::Tensor& x_TD, const torch::Tensor& kept_TE, int64_t pad_capacity) {
  auto pairs = kept_TE.t().nonzero();  // (P, 2) [expert, token], sorted by expert then token
  auto expert_of_pair = pairs.select(1, 0), token_of_pair = pairs.select(1, 1);
  auto counts = torch::bincount(expert_of_pair, /*weights=*/{}, num_experts_);
  if (pad_capacity > 0) {
    TORCH_INTERNAL_ASSERT(counts.max().item<int64_t>() <= pad_capacity, "capacity must be applied before padding");
    const int64_t slots = num_experts_ * pad_capacity;
    auto first_of_expert = counts.cumsum(0) - counts;
    auto rank = torch::arange(pairs.size(0), pairs.options().dtype(torch::kInt64)) - first_of_expert.index_select(0, expert_of_pair);
    auto slot = expert_of_pair * pad_capacity + rank;
    row_token_N_ = torch::zeros({slots}, pairs.options()).index_put_({slot}, token_of_pair);
    row_valid_N_ = torch::zeros({slots}, pairs.options().dtype(torch::kBool)).index_put_({slot}, torch::ones_like(slot, torch::kBool));
    row_expert_N_ = torch::arange(num_experts_, pairs.options()).repeat_interleave(pad_capacity);
    counts = torch::full({num_experts_}, pad_capacity, pairs.options());
  } else {
    row_token_N_ = token_of_pair;
    row_expert_N_ = expert_of_pair;
    row_valid_N_ = torch::ones_like(token_of_pair, torch::kBool);
  }
  return {x_TD.index_select(0, row_token_N_), counts};
}

torch::Tensor LocalDispatcher::combine(const torch::Tensor& expert_out_ND, const torch::Tensor& gates_TE) {
  const int64_t T = gates_TE.size(0);
  auto gate_N = gates_TE.index({row_token_N_, row_expert_N_}) * row_valid_N_;
  auto weighted_ND = expert_out_ND * gate_N.to(expert_out_ND.scalar_type()).unsqueeze(-1);
  return torch::zeros({T, expert_out_ND.size(1)}, expert_out_ND.options()).index_add(0, row_token_N_, weighted_ND);
}

}  // namespace moetrain::moe
