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
//
// Expert tensor parallelism (an expert_tp group of Q > 1 ranks, each holding 1/Q of every local expert's
// hidden dimension), as Megatron-Core's all-to-all dispatcher does it:
//   dispatch: … → gather_over_expert_tp (every rank of the group gets the rows of all Q, all-to-all-v of
//             its own rows to each peer; their counts are gathered before the one host read)
//             → sort_by_local_expert again ([q][e] blocks → [e][q]): each expert computes on all Q ranks' rows
//   combine:  unsort → scatter_over_expert_tp (each rank's rows return to it from all Q, whose partial
//             down projections it sums in fp32, in rank order) → the expert-parallel combine above.
#pragma once

#include "csrc/moe/dispatch.h"
#include "parallel/communicator.h"

namespace moetrain::parallel {

class AllToAllDispatcher : public moe::TokenDispatcher {
 public:
  // expert_tp_group: null or of size 1 without expert tensor parallelism.
  AllToAllDispatcher(Communicator& ep_group, Communicator* expert_tp_group, int64_t num_experts);
  moe::Dispatched dispatch(const torch::Tensor& x_TD, const torch::Tensor& kept_TE,
                           const moe::RowLayout& layout) override;
  torch::Tensor combine(const torch::Tensor& expert_out_ND, const torch::Tensor& gates_TE) override;

 private:
  // The rows from every expert-tensor peer, expert-major; counts_QEl: (Q, El) rows of each peer per local
  // expert, on the device; peer_rows: their sums on the host.
  moe::Dispatched gather_over_expert_tp(const moe::Dispatched& mine, const torch::Tensor& counts_QEl,
                                        std::vector<int64_t> peer_rows);
  torch::Tensor scatter_over_expert_tp(const torch::Tensor& expert_out_ND);

  Communicator& ep_;
  Communicator* etp_;  // null without expert tensor parallelism
  int64_t num_experts_, local_experts_;
  // State of the latest dispatch.
  moe::DispatchRows rows_;                      // rows this rank sent, in send order
  std::vector<int64_t> send_rows_, recv_rows_;  // per EP rank
  torch::Tensor sort_order_;                    // expert-major position → received row
  std::vector<int64_t> peer_rows_;  // per expert-tp rank: its rows after the expert-parallel exchange
  torch::Tensor peer_order_;        // expert-major position → gathered row
};

}  // namespace moetrain::parallel
