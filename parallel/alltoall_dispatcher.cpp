#include "parallel/alltoall_dispatcher.h"

#include "parallel/collectives.h"

namespace moetrain::parallel {

AllToAllDispatcher::AllToAllDispatcher(Communicator& ep_group, int64_t num_experts)
    : ep_(ep_group), num_experts_(num_experts), local_experts_(num_experts / ep_group.size()) {}

moe::Dispatched AllToAllDispatcher::dispatch(const torch::Tensor& x_TD, const torch::Tensor& kept_TE, int64_t pad_capacity) {
  const int64_t P = ep_.size(), El = local_experts_;
  // preprocess: rows grouped by global expert (so by destination rank), tokens in order within each.
  rows_ = moe::dispatch_rows(kept_TE, pad_capacity);
  const auto& counts_E = rows_.tokens_per_expert_E;
  torch::Tensor recv_counts_PEl;  // rows arriving from each source rank for each local expert
  if (pad_capacity > 0) {
    recv_counts_PEl = torch::full({P, El}, pad_capacity, torch::kInt64);
  } else {
    // exchange_counts: rank r receives, from every source, the counts for r's local experts.
    recv_counts_PEl = ep_.all_to_all_v(counts_E.view({P, El}).contiguous(), std::vector<int64_t>(P, 1),
                                       std::vector<int64_t>(P, 1)).view({P, El});
  }
  auto send_rows = counts_E.view({P, El}).sum(1), recv_rows = recv_counts_PEl.sum(1);
  send_rows_.assign(send_rows.data_ptr<int64_t>(), send_rows.data_ptr<int64_t>() + P);
  recv_rows_.assign(recv_rows.data_ptr<int64_t>(), recv_rows.data_ptr<int64_t>() + P);

  // dispatch_all_to_all
  auto received = all_to_all_v_autograd(ep_, x_TD.index_select(0, rows_.token_N), send_rows_, recv_rows_);

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
  // unsort: expert-major → source-major order, as received.
  auto unsorted = torch::zeros_like(expert_out_ND).index_copy(0, sort_order_, expert_out_ND);
  // combine_all_to_all: rows return to the ranks that sent them, in their send order.
  auto back = all_to_all_v_autograd(ep_, unsorted, recv_rows_, send_rows_);
  return moe::combine_rows(back, rows_, gates_TE);
}

}  // namespace moetrain::parallel
