#include "csrc/moe/dispatch.h"

namespace moetrain::moe {

DispatchRows dispatch_rows(const torch::Tensor& kept_TE, int64_t pad_capacity) {
  const int64_t E = kept_TE.size(1);
  auto pairs = kept_TE.t().nonzero();  // (P, 2) [expert, token], sorted by expert then token
  auto expert_of_pair = pairs.select(1, 0), token_of_pair = pairs.select(1, 1);
  DispatchRows rows;
  rows.tokens_per_expert_E = torch::bincount(expert_of_pair, /*weights=*/{}, E);
  if (pad_capacity <= 0) {
    rows.token_N = token_of_pair, rows.expert_N = expert_of_pair;
    rows.valid_N = torch::ones_like(token_of_pair, torch::kBool);
    return rows;
  }
  TORCH_INTERNAL_ASSERT(rows.tokens_per_expert_E.max().item<int64_t>() <= pad_capacity, "capacity must be applied before padding");
  const int64_t slots = E * pad_capacity;
  auto first_of_expert = rows.tokens_per_expert_E.cumsum(0) - rows.tokens_per_expert_E;
  auto rank = torch::arange(pairs.size(0), pairs.options()) - first_of_expert.index_select(0, expert_of_pair);
  auto slot = expert_of_pair * pad_capacity + rank;
  rows.token_N = torch::zeros({slots}, pairs.options()).index_put_({slot}, token_of_pair);
  rows.valid_N = torch::zeros({slots}, pairs.options().dtype(torch::kBool)).index_put_({slot}, torch::ones_like(slot, torch::kBool));
  rows.expert_N = torch::arange(E, pairs.options()).repeat_interleave(pad_capacity);
  rows.tokens_per_expert_E = torch::full({E}, pad_capacity, pairs.options());
  return rows;
}

torch::Tensor combine_rows(const torch::Tensor& rows_ND, const DispatchRows& rows, const torch::Tensor& gates_TE) {
  auto gate_N = gates_TE.index({rows.token_N, rows.expert_N}) * rows.valid_N;
  auto weighted_ND = rows_ND * gate_N.to(rows_ND.scalar_type()).unsqueeze(-1);
  return torch::zeros({gates_TE.size(0), rows_ND.size(1)}, rows_ND.options()).index_add(0, rows.token_N, weighted_ND);
}

Dispatched LocalDispatcher::dispatch(const torch::Tensor& x_TD, const torch::Tensor& kept_TE, int64_t pad_capacity) {
  rows_ = dispatch_rows(kept_TE, pad_capacity);
  return {x_TD.index_select(0, rows_.token_N), rows_.tokens_per_expert_E};
}

torch::Tensor LocalDispatcher::combine(const torch::Tensor& expert_out_ND, const torch::Tensor& gates_TE) {
  return combine_rows(expert_out_ND, rows_, gates_TE);
}

}  // namespace moetrain::moe
