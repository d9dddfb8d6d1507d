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

AllToAllDispatcher::AllToAllDispatcher(Communicator& ep_group, int64_t num_experts)
    : ep_(ep_group), num_experts_(num_experts), local_experts_(num_experts / ep_group.size()) {}

moe::Dispatched AllToAllDispatcher::dispatch(const torch::Tensor& x_TD, const torch::Tensor& kept_TE,
                                             const moe::RowLayout& layout) {
  const int64_t P = ep_.size(), El = local_experts_;
  // preprocess: rows grouped by global expert (so by destination rank), tokens in order within each.
  rows_ = moe::dispatch_rows(kept_TE, layout);
  torch::Tensor recv_counts_PEl;  // rows arriving from each source rank for each local expert (device)
  if (layout.kind == moe::RowLayout::Kind::kPadded) {
    recv_counts_PEl = torch::full({P, El}, layout.capacity, rows_.tokens_per_expert_E.options());
    send_rows_.assign(P, El * layout.capacity);
    recv_rows_ = send_rows_;
  } else {
    const auto send_counts_PEl = rows_.tokens_per_expert_E.view({P, El});
    // exchange_counts: rank r receives, from every source, the counts for r's local experts.
    recv_counts_PEl = ep_.all_to_all_v(send_counts_PEl.contiguous(), std::vector<int64_t>(P, 1),
                                       std::vector<int64_t>(P, 1))
                          .view({P, El});
    // read_counts: all-to-all-v takes its row counts on the host; one read brings both matrices.
    const auto counts_2PEl = util::read_to_host(torch::stack({send_counts_PEl, recv_counts_PEl}),
                                                "all-to-all count matrix");
    send_rows_ = row_sums(counts_2PEl[0]);
    recv_rows_ = row_sums(counts_2PEl[1]);
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
