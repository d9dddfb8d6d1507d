#include "csrc/moe/dispatch.h"

namespace moetrain::moe {

Dispatched LocalDispatcher::dispatch(const torch::Tensor& x_TD, const torch::Tensor& expert_idx_TK) {
  const int64_t k = expert_idx_TK.size(1);
  auto expert_of_pair = expert_idx_TK.reshape({-1});  // (T·k)
  sorted_pair_N_ = std::get<1>(expert_of_pair.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  inverse_order_N_ = torch::empty_like(sorted_pair_N_);
  inverse_order_N_.index_put_({sorted_pair_N_}, torch::arange(sorted_pair_N_.size(0), sorted_pair_N_.options()));
  auto token_of_pair = torch::div(sorted_pair_N_, k, "floor");
  Dispatched out;
  out.tokens_ND = x_TD.index_select(0, token_of_pair);
  out.tokens_per_expert_El = torch::bincount(expert_of_pair, /*weights=*/{}, num_experts_);
  return out;
}

torch::Tensor LocalDispatcher::combine(const torch::Tensor& expert_out_ND, const torch::Tensor& gates_TK) {
  const int64_t T = gates_TK.size(0), k = gates_TK.size(1), D = expert_out_ND.size(1);
  auto pairs_TKD = expert_out_ND.index_select(0, inverse_order_N_).view({T, k, D});
  auto weighted = pairs_TKD * gates_TK.to(expert_out_ND.scalar_type()).unsqueeze(-1);
  return weighted.sum(1);  // sum over the k choices in a fixed order: deterministic on every device
}

}  // namespace moetrain::moe
