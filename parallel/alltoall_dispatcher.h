// Expert-parallel token dispatcher: experts are sharded over the EP group (rank r holds global
// experts [r·E_l, (r+1)·E_l)). Phases, communication only in the ones that say so:
//   dispatch: preprocess (pairs by global expert, hence by destination rank)
//             → exchange_counts (all-to-all of per-expert counts; dropless and capped only)
//             → read_counts (the one host read: the send and receive counts, which all-to-all-v needs
//               on the host; dropless and capped only)
//             → dispatch_all_to_all (rows to the ranks that own their experts)
//             → sort_by_local_expert (received [source][expert] blocks → [expert][source])
//   combine:  unsort → combine_all_to_all (reverse exchange) → gate-weighted sum into token order.
// Dropless: bytes on the wire are exactly the routed rows that leave this rank. Padded (capacity):
// every (rank, expert) block has `capacity` rows, the counts need no exchange, and nothing is read on
// the host (docs/routing.md, "Host reads").
#pragma once

#include "csrc/moe/dispatch.h"
#include "parallel/communicator.h"

namespace moetrain::parallel {

class AllToAllDispatcher : public moe::TokenDispatcher {
 public:
  AllToAllDispatcher(Communicator& ep_group, int64_t num_experts);
  moe::Dispatched dispatch(const torch::Tensor& x_TD, const torch::Tensor& kept_TE,
                           const moe::RowLayout& layout) override;
  torch::Tensor combine(const torch::Tensor& expert_out_ND, const torch::Tensor& gates_TE) override;

 private:
  Communicator& ep_;
  int64_t num_experts_, local_experts_;
  // State of the latest dispatch.
  moe::DispatchRows rows_;                      // rows this rank sent, in send order
  std::vector<int64_t> send_rows_, recv_rows_;  // per EP rank
  torch::Tensor sort_order_;                    // expert-major position → received row
};

}  // namespace moetrain::parallel
