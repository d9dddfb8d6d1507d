#include "parallel/alltoall_dispatcher.h"

#include "csrc/layers/precision.h"
#include "csrc/util/fault_injection.h"
#include "csrc/util/host_sync.h"
#include "parallel/collectives.h"

namespace moetrain::parallel {
namespace {

// Received rows come in blocks (source s, local expert e), source-major, block_rows_PEl rows each
// (int64 (P, El), on the device); `rows` = their sum, known on the host. Returns, for each position in
// expert-major order ([e][s] blocks, each block's rows in order), the received row that goes there.
// Built on the device: no host read.
torch::Tensor expert_major_order(const torch::Tensor& block_rows_PEl, int64_t rows) {
  const int64_t P = block_rows_PEl.size(0), El = block_rows_PEl.size(1);
  auto block_N = torch::repeat_interleave(torch::arange(P * El, block_rows_PEl.options()),
                                          block_rows_PEl.reshape({-1}),
                                          /*dim=*/0, /*output_size=*/rows);  // source-major block of each row
  auto expert_major_block_N = block_N.remainder(El) * P + block_N.div(El, "floor");
  return std::get<1>(expert_major_block_N.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
}

std::vector<int64_t> row_sums(const torch::Tensor& counts_PEl) {  // host (P, El) → rows per rank
  auto sums = counts_PEl.sum(1).contiguous();
  return {sums.data_ptr<int64_t>(), sums.data_ptr<int64_t>() + sums.numel()};
}

}  // namespace

AllToAllDispatcher::AllToAllDispatcher(Communicator& ep_group, Communicator* expert_tp_group,
                                       int64_t num_experts)
    : ep_(ep_group),
      etp_(expert_tp_group && expert_tp_group->size() > 1 ? expert_tp_group : nullptr),
      num_experts_(num_experts),
      local_experts_(num_experts / ep_group.size()) {}

moe::Dispatched AllToAllDispatcher::dispatch(const torch::Tensor& x_TD, const torch::Tensor& kept_TE,
                                             const moe::RowLayout& layout) {
  const int64_t P = ep_.size(), El = local_experts_, Q = etp_ ? etp_->size() : 1;
  // preprocess: rows grouped by global expert (so by destination rank), tokens in order within each.
  rows_ = moe::dispatch_rows(kept_TE, layout);
  torch::Tensor recv_counts_PEl;  // rows arriving from each source rank for each local expert (device)
  torch::Tensor peer_counts_QEl;  // under expert tensor parallelism: each peer's rows per local expert
  if (layout.kind == moe::RowLayout::Kind::kPadded) {
    recv_counts_PEl = torch::full({P, El}, layout.capacity, rows_.tokens_per_expert_E.options());
    send_rows_.assign(P, El * layout.capacity);
    recv_rows_ = send_rows_;
    peer_counts_QEl = torch::full({Q, El}, P * layout.capacity, recv_counts_PEl.options());
    peer_rows_.assign(Q, P * El * layout.capacity);
  } else {
    const auto send_counts_PEl = rows_.tokens_per_expert_E.view({P, El});
    // exchange_counts: rank r receives, from every source, the counts for r's local experts.
    recv_counts_PEl = ep_.all_to_all_v(send_counts_PEl.contiguous(), std::vector<int64_t>(P, 1),
                                       std::vector<int64_t>(P, 1))
                          .view({P, El});
    if (etp_) peer_counts_QEl = etp_->all_gather_rows(recv_counts_PEl.sum(0).view({1, El}));
    // read_counts: all-to-all-v takes its row counts on the host; one read brings every count matrix.
    std::vector<torch::Tensor> counts = {send_counts_PEl.reshape({-1}), recv_counts_PEl.reshape({-1})};
    if (etp_) counts.push_back(peer_counts_QEl.reshape({-1}));
    const auto host = util::read_to_host(torch::cat(counts), "all-to-all count matrix");
    send_rows_ = row_sums(host.narrow(0, 0, P * El).view({P, El}));
    recv_rows_ = row_sums(host.narrow(0, P * El, P * El).view({P, El}));
    if (etp_) peer_rows_ = row_sums(host.narrow(0, 2 * P * El, Q * El).view({Q, El}));
    int64_t sent = 0;
    for (int64_t n : send_rows_) sent += n;
    rows_ = moe::first_rows(rows_, sent);  // capped: the unused tail stays home
  }

  // dispatch_all_to_all (after the count exchange: the peers are inside the all-to-all). Under mixed
  // precision the rows travel in the compute dtype the experts cast them to anyway: half the bytes, the
  // same values both ways (the gradient comes back in the compute dtype, and widens to fp32 here, before
  // the rows of a token are summed by index_select's backward).
  util::inject_fault(util::FaultPoint::kAllToAll);
  auto send = x_TD.index_select(0, rows_.token_N);
  if (const auto dtype = layers::compute_dtype_for(send.device().type())) send = send.to(*dtype);
  auto received = all_to_all_v_autograd(ep_, send, send_rows_, recv_rows_);

  // sort_by_local_expert
  sort_order_ = expert_major_order(recv_counts_PEl, received.size(0));
  moe::Dispatched mine{received.index_select(0, sort_order_), recv_counts_PEl.sum(0)};
  return etp_ ? gather_over_expert_tp(mine, peer_counts_QEl, peer_rows_) : mine;
}

moe::Dispatched AllToAllDispatcher::gather_over_expert_tp(const moe::Dispatched& mine,
                                                          const torch::Tensor& counts_QEl,
                                                          std::vector<int64_t> peer_rows) {
  const int64_t Q = etp_->size(), n = mine.tokens_ND.size(0);
  int64_t rows = 0;
  for (int64_t r : peer_rows) rows += r;
  // Each peer receives this rank's rows (the backward sums the Q gradients of every row).
  auto gathered = all_to_all_v_autograd(*etp_, mine.tokens_ND.repeat({Q, 1}), std::vector<int64_t>(Q, n),
                                        std::move(peer_rows));
  peer_order_ = expert_major_order(counts_QEl, rows);
  return {gathered.index_select(0, peer_order_), counts_QEl.sum(0)};
}

torch::Tensor AllToAllDispatcher::scatter_over_expert_tp(const torch::Tensor& expert_out_ND) {
  const int64_t Q = etp_->size(), n = peer_rows_[etp_->rank()];
  auto unsorted = torch::zeros_like(expert_out_ND).index_copy(0, peer_order_, expert_out_ND);
  // Every peer's partial sums of this rank's rows: Q blocks of n rows, summed in fp32 in rank order.
  auto partials = all_to_all_v_autograd(*etp_, unsorted, peer_rows_, std::vector<int64_t>(Q, n));
  return partials.view({Q, n, expert_out_ND.size(1)}).to(torch::kFloat32).sum(0).to(expert_out_ND.scalar_type());
}

torch::Tensor AllToAllDispatcher::combine(const torch::Tensor& expert_out_ND, const torch::Tensor& gates_TE) {
  const auto out_ND = etp_ ? scatter_over_expert_tp(expert_out_ND) : expert_out_ND;
  // unsort: expert-major → source-major order, as received.
  auto unsorted = torch::zeros_like(out_ND).index_copy(0, sort_order_, out_ND);
  // combine_all_to_all: rows return to the ranks that sent them, in their send order.
  auto back = all_to_all_v_autograd(ep_, unsorted, recv_rows_, send_rows_);
  return moe::combine_rows(back, rows_, gates_TE);
}

}  // namespace moetrain::parallel
