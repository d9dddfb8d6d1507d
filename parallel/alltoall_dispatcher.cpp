#include "parallel/alltoall_dispatcher.h"

#include "parallel/collectives.h"

namespace moetrain::parallel {

AllToAllDispatcher::AllToAllDispatcher(Communicator& ep_group, int64_t num_experts)
    : ep_(ep_group), num_experts_(num_experts), local_experts_(num_experts / ep_group.size()) {}

moe::Dispatched AllToAllDispatcher::dispatch(const torch::Tensor& x_TD, const torch::Tensor& kept_TE, int64_t pad_capacity) {
  const int64_t P = ep_.size(), El = local_experts_, E = num_experts_;
  // preprocess: rows grouped by global expert (so by destination rank), tokens in order within each.
  auto pairs = kept_TE.t().nonzero();
  auto expert_of_pair = pairs.select(1, 0), token_of_pair = pairs.select(1, 1);
  auto counts_E = torch::bincount(expert_of_pair, /*weights=*/{}, E);
  torch::Tensor recv_counts_PEl;  // rows arriving from each source rank for each local expert
  if (pad_capacity > 0) {
    const int64_t slots = E * pad_capacity;
    auto first = counts_E.cumsum(0) - counts_E;
    auto slot = expert_of_pair * pad_capacity + (torch::arange(pairs.size(0), pairs.options()) - first.index_select(0, expert_of_pair));
    row_token_ = torch::zeros({slots}, pairs.options()).index_put_({slot}, token_of_pair);
    row_valid_ = torch::zeros({slots}, pairs.options().dtype(torch::kBool)).index_put_({slot}, torch::ones_like(slot, torch::kBool));
    row_expert_ = torch::arange(E, pairs.options()).repeat_interleave(pad_capacity);
    recv_counts_PEl = torch::full({P, El}, pad_capacity, torch::kInt64);
    counts_E = torch::full({E}, pad_capacity, torch::kInt64);
  } else {
    row_token_ = token_of_pair, row_expert_ = expert_of_pair;
    row_valid_ = torch::ones_like(token_of_pair, torch::kBool);
    // exchange_counts: rank r receives, from every source, the counts for r's local experts.
    recv_counts_PEl = ep_.all_to_all_v(counts_E.view({P, El}).contiguous(), std::vector<int64_t>(P, 1),
                                       std::vector<int64_t>(P, 1)).view({P, El});
  }
  auto send_rows = counts_E.view({P, El}).sum(1), recv_rows = recv_counts_PEl.sum(1);
  send_rows_.assign(send_rows.data_ptr<int64_t>(), send_rows.data_ptr<int64_t>() + P);
  recv_rows_.assign(recv_rows.data_ptr<int64_t>(), recv_rows.data_ptr<int64_t>() + P);

  // dispatch_all_to_all
  auto received = all_to_all_v_autograd(ep_, x_TD.index_select(0, row_token_), send_rows_, recv_rows_);

  // sort_by_local_expert: block (source s, expert e) starts at offset[s][e] in the received rows.
  auto block_sizes = recv_counts_PEl.reshape({-1});
  auto block_start = block_sizes.cumsum(0) - block_sizes;  // source-major
  std::vector<torch::Tensor> order;
  auto starts = block_start.view({P, El});
  for (int64_t e = 0; e < El; ++e) {
    for (int64_t s = 0; s < P; ++s) {
      const int64_t n = recv_counts_PEl[s][e].item<int64_t>();
      if (n > 0) order.push_back(torch::arange(starts[s][e].item<int64_t>(), starts[s][e].item<int64_t>() + n, torch::kInt64));
    }
  }
  sort_order_ = order.empty() ? torch::zeros({0}, torch::kInt64) : torch::cat(order);
  return {received.index_select(0, sort_order_), recv_counts_PEl.sum(0)};
}

torch::Tensor AllToAllDispatcher::combine(const torch::Tensor& expert_out_ND, const torch::Tensor& gates_TE) {
  const int64_t T = gates_TE.size(0);
  // unsort: expert-major → source-major order, as received.
  auto unsorted = torch::zeros_like(expert_out_ND).index_copy(0, sort_order_, expert_out_ND);
  // combine_all_to_all: rows return to the ranks that sent them, in their send order.
  auto back = all_to_all_v_autograd(ep_, unsorted, recv_rows_, send_rows_);
  auto gate_N = gates_TE.index({row_token_, row_expert_}) * row_valid_;
  auto weighted = back * gate_N.to(back.scalar_type()).unsqueeze(-1);
  return torch::zeros({T, back.size(1)}, back.options()).index_add(0, row_token_, weighted);
}

}  // namespace moetrain::parallel
