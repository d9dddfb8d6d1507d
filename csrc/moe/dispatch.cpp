#include "csrc/moe/dispatch.h"

namespace moetrain::moe {

DispatchRows dispatch_rows(const torch::Tensor& kept_TE, const RowLayout& layout) {
  const int64_t T = kept_TE.size(0), E = kept_TE.size(1), n = layout.rows;
  const auto i64 = kept_TE.options().dtype(torch::kInt64);
  const auto kept_ET = kept_TE.t().contiguous();  // bool (E, T): pairs in (expert, token) order
  const auto ones_ET = kept_ET.to(torch::kInt64);
  DispatchRows rows;
  rows.tokens_per_expert_E = ones_ET.sum(1);
  // Row of every kept pair; the pairs not kept all go to a spare row n, cut off below.
  torch::Tensor row_ET;
  if (layout.kind == RowLayout::Kind::kPadded) {
    at::_assert_async(rows.tokens_per_expert_E.max() <= layout.capacity,
                      "capacity must be applied before padding");
    row_ET = torch::arange(E, i64).unsqueeze(1) * layout.capacity + ones_ET.cumsum(1) - 1;
  } else {
    at::_assert_async(rows.tokens_per_expert_E.sum() <= n, "the row layout must hold every kept pair");
    row_ET = ones_ET.view({-1}).cumsum(0).view({E, T}) - 1;
  }
  row_ET = torch::where(kept_ET, row_ET.clamp_max(n), n).view({-1});
  auto pair_N = torch::zeros({n + 1}, i64).scatter_(0, row_ET, torch::arange(E * T, i64)).narrow(0, 0, n);  // e·T + t
  rows.valid_N = torch::zeros({n + 1}, kept_TE.options()).scatter_(0, row_ET, kept_ET.view({-1})).narrow(0, 0, n);
  rows.expert_N = pair_N.div(T, "floor");
  rows.token_N = pair_N - rows.expert_N * T;
  if (layout.kind == RowLayout::Kind::kPadded)
    rows.tokens_per_expert_E = torch::full({E}, layout.capacity, i64);
  rows.unused_tail = layout.kind == RowLayout::Kind::kCapped;
  return rows;
}

DispatchRows first_rows(const DispatchRows& rows, int64_t n) {
  DispatchRows first = rows;
  first.token_N = rows.token_N.narrow(0, 0, n);
  first.expert_N = rows.expert_N.narrow(0, 0, n);
  first.valid_N = rows.valid_N.narrow(0, 0, n);
  first.unused_tail = false;
  return first;
}

torch::Tensor combine_rows(const torch::Tensor& rows_ND, const DispatchRows& rows,
                           const torch::Tensor& gates_TE) {
  const int64_t E = gates_TE.size(1);
  auto gate_N = gates_TE.reshape({-1}).index_select(0, rows.token_N * E + rows.expert_N) * rows.valid_N;
  // Unused rows were never computed: gate 0 times an undefined value may still be NaN, so mask them.
  auto out_ND = rows.unused_tail ? torch::where(rows.valid_N.unsqueeze(-1), rows_ND, 0) : rows_ND;
  // Rows in a narrower dtype than the gates (bf16 expert outputs) are widened inside this product, exactly
  // as a cast before it would (and its backward rounds the rows' gradient back to theirs): the weighted
  // rows and their sum are in the gates' dtype.
  auto weighted_ND = out_ND * gate_N.unsqueeze(-1);
  return torch::zeros({gates_TE.size(0), rows_ND.size(1)}, weighted_ND.options())
      .index_add(0, rows.token_N, weighted_ND);
}

Dispatched LocalDispatcher::dispatch(const torch::Tensor& x_TD, const torch::Tensor& kept_TE,
                                     const RowLayout& layout) {
  rows_ = dispatch_rows(kept_TE, layout);
  auto tokens_ND = x_TD.index_select(0, rows_.token_N);
  // The experts' input gradient of unused rows is undefined too: keep it out of x's gradient.
  if (rows_.unused_tail) tokens_ND = torch::where(rows_.valid_N.unsqueeze(-1), tokens_ND, 0);
  return {tokens_ND, rows_.tokens_per_expert_E};
}

torch::Tensor LocalDispatcher::combine(const torch::Tensor& expert_out_ND, const torch::Tensor& gates_TE) {
  return combine_rows(expert_out_ND, rows_, gates_TE);
}

}  // namespace moetrain::moe
