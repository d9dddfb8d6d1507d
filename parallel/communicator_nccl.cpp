#include "parallel/communicator_nccl.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstring>
#include <thread>

namespace moetrain::parallel {
namespace {

ncclDataType_t nccl_type(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return ncclFloat32;
    case torch::kFloat64: return ncclFloat64;
    case torch::kBFloat16: return ncclBfloat16;
    case torch::kFloat16: return ncclFloat16;
    case torch::kInt64: return ncclInt64;
    case torch::kInt32: return ncclInt32;
    case torch::kUInt8:
    case torch::kBool: return ncclUint8;
    default:
      throw CommError("NCCL communicator: unsupported dtype " + std::string(c10::toString(t.scalar_type())));
  }
}

}  // namespace

std::unique_ptr<NcclCommunicator> NcclCommunicator::create(Communicator& bootstrap, int device,
                                                           std::chrono::seconds timeout) {
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  ncclUniqueId id;
  if (bootstrap.rank() == 0 && ncclGetUniqueId(&id) != ncclSuccess) {
    throw CommError("rank 0: ncclGetUniqueId failed; check NCCL and the GPU driver");
  }
  auto bytes = torch::zeros({static_cast<int64_t>(sizeof(id))}, torch::kUInt8);
  if (bootstrap.rank() == 0) std::memcpy(bytes.data_ptr(), &id, sizeof(id));
  bootstrap.broadcast(bytes, 0);
  std::memcpy(&id, bytes.data_ptr(), sizeof(id));
  ncclComm_t comm;
  const ncclResult_t rc = ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank());
  if (rc != ncclSuccess) {
    throw CommError("rank " + std::to_string(bootstrap.rank()) +
                    " of group world: ncclCommInitRank failed: " + ncclGetErrorString(rc));
  }
  std::vector<int> world_ranks(bootstrap.size());
  for (int r = 0; r < bootstrap.size(); ++r) world_ranks[r] = r;
  return std::make_unique<NcclCommunicator>(comm, "world", device, timeout, world_ranks);
}

NcclCommunicator::NcclCommunicator(ncclComm_t comm, std::string name, int device,
                                   std::chrono::seconds timeout, std::vector<int> world_ranks)
    : comm_(comm), name_(std::move(name)), device_(device), timeout_(timeout) {
  ncclCommUserRank(comm_, &rank_);
  ncclCommCount(comm_, &size_);
  identity_ = {name_, "nccl", std::move(world_ranks)};
}

Watchdog::Wait NcclCommunicator::watched(const char* op, int64_t bytes) {
  return watchdog().enter(identity_, sequence_++, op, bytes);
}

NcclCommunicator::~NcclCommunicator() {
  if (aborted_) return;
  ncclCommDestroy(comm_);
}

void NcclCommunicator::check(ncclResult_t rc, const char* op) {
  if (rc == ncclSuccess || rc == ncclInProgress) return;
  ncclCommAbort(comm_);
  aborted_ = true;
  throw CommError("rank " + std::to_string(rank_) + " of group " + name_ + ": NCCL " + op +
                  " failed: " + ncclGetErrorString(rc) + " (" + ncclGetLastError(comm_) + ")");
}

void NcclCommunicator::wait(const char* op, Watchdog::Wait& watch) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_)).stream();
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  while (true) {
    watch.tick();
    const cudaError_t done = cudaStreamQuery(stream);
    if (done == cudaSuccess) return;
    if (done != cudaErrorNotReady) {
      throw CommError("rank " + std::to_string(rank_) + " of group " + name_ + ": CUDA error after " + op +
                      ": " + cudaGetErrorString(done));
    }
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm_, &async);
    check(async, op);
    if (std::chrono::steady_clock::now() > deadline) {
      ncclCommAbort(comm_);
      aborted_ = true;
      throw CommError("rank " + std::to_string(rank_) + " of group " + name_ + ": NCCL " + op +
                      " timed out after " + std::to_string(timeout_.count()) +
                      " s; a peer has probably failed");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

void NcclCommunicator::all_reduce_sum(torch::Tensor& t) {
  TORCH_CHECK(t.is_cuda() && t.is_contiguous(), "NCCL all_reduce_sum needs a contiguous CUDA tensor");
  auto stream = c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
  auto watch = watched("all_reduce_sum", static_cast<int64_t>(t.nbytes()));
  check(ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), nccl_type(t), ncclSum, comm_, stream),
        "AllReduce");
  wait("AllReduce", watch);
}

void NcclCommunicator::broadcast(torch::Tensor& t, int root) {
  TORCH_CHECK(t.is_cuda() && t.is_contiguous(), "NCCL broadcast needs a contiguous CUDA tensor");
  auto stream = c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
  auto watch = watched("broadcast", static_cast<int64_t>(t.nbytes()));
  check(ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(), nccl_type(t), root, comm_, stream), "Broadcast");
  wait("Broadcast", watch);
}

torch::Tensor NcclCommunicator::all_to_all_v(const torch::Tensor& send, const std::vector<int64_t>& send_counts,
                                             const std::vector<int64_t>& recv_counts) {
  TORCH_CHECK(send.is_cuda(), "NCCL all_to_all_v needs a CUDA tensor");
  auto in = send.contiguous();
  int64_t row = 1;
  for (int64_t d = 1; d < in.dim(); ++d) row *= in.size(d);
  int64_t recv_rows = 0;
  for (int64_t c : recv_counts) recv_rows += c;
  auto shape = in.sizes().vec();
  shape[0] = recv_rows;
  auto out = torch::empty(shape, in.options());
  auto stream = c10::cuda::getCurrentCUDAStream(in.device().index()).stream();
  const auto type = nccl_type(in);
  const size_t elem = in.element_size();
  auto* src = static_cast<char*>(in.data_ptr());
  auto* dst = static_cast<char*>(out.data_ptr());
  // Grouped point-to-point sends and receives: one all-to-all-v (Note: NCCL has no alltoallv).
  auto watch = watched("all_to_all_v", static_cast<int64_t>(in.nbytes()));
  check(ncclGroupStart(), "GroupStart");
  int64_t s_off = 0, r_off = 0;
  for (int r = 0; r < size_; ++r) {
    const size_t sn = send_counts[r] * row, rn = recv_counts[r] * row;
    if (sn) check(ncclSend(src + s_off * elem, sn, type, r, comm_, stream), "Send");
    if (rn) check(ncclRecv(dst + r_off * elem, rn, type, r, comm_, stream), "Recv");
    if (r != rank_) a2a_bytes_ += static_cast<int64_t>(sn * elem);
    s_off += sn, r_off += rn;
  }
  check(ncclGroupEnd(), "GroupEnd");
  wait("AllToAllV", watch);
  return out;
}

// NCCL sees only this rank's tensor: dim 0 and divisibility are checked here; shapes are not exchanged
// between ranks (that would cost a host round trip per call), so a rank passing another shape shows
// as a timeout or wrong rows, not as this error.
void NcclCommunicator::check_rows(const char* op, const torch::Tensor& t, bool divisible_rows) const {
  if (!t.is_cuda()) fail(op, "needs a CUDA tensor, got one on " + t.device().str());
  if (t.dim() == 0) fail(op, "needs rows along dim 0, got a 0-dim tensor");
  if (divisible_rows && t.size(0) % size_ != 0) {
    fail(op, "dim 0 (" + std::to_string(t.size(0)) + " rows) of shape " + c10::str(t.sizes()) +
                 " is not divisible by the group size " + std::to_string(size_));
  }
}

torch::Tensor NcclCommunicator::all_gather_rows(const torch::Tensor& rows) {
  check_rows("all_gather_rows", rows, /*divisible_rows=*/false);
  auto in = rows.contiguous();
  auto shape = in.sizes().vec();
  shape[0] *= size_;
  auto out = torch::empty(shape, in.options());  // (size·n, ...)
  auto stream = c10::cuda::getCurrentCUDAStream(in.device().index()).stream();
  auto watch = watched("all_gather_rows", static_cast<int64_t>(in.nbytes()));
  check(ncclAllGather(in.data_ptr(), out.data_ptr(), in.numel(), nccl_type(in), comm_, stream), "AllGather");
  wait("AllGather", watch);
  all_gather_bytes_ += (size_ - 1) * static_cast<int64_t>(in.nbytes());
  return out;
}

torch::Tensor NcclCommunicator::reduce_scatter_rows_sum(const torch::Tensor& t) {
  check_rows("reduce_scatter_rows_sum", t, /*divisible_rows=*/true);
  auto in = t.contiguous();
  auto shape = in.sizes().vec();
  shape[0] /= size_;
  auto out = torch::empty(shape, in.options());  // (n, ...)
  auto stream = c10::cuda::getCurrentCUDAStream(in.device().index()).stream();
  auto watch = watched("reduce_scatter_rows_sum", static_cast<int64_t>(in.nbytes()));
  check(ncclReduceScatter(in.data_ptr(), out.data_ptr(), out.numel(), nccl_type(in), ncclSum, comm_, stream),
        "ReduceScatter");
  wait("ReduceScatter", watch);
  reduce_scatter_bytes_ += (size_ - 1) * static_cast<int64_t>(out.nbytes());
  return out;
}

void NcclCommunicator::barrier() {
  auto one = torch::ones({1}, torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA, device_));
  all_reduce_sum(one);
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key, const std::string& name) {
  ncclComm_t sub;
  check(ncclCommSplit(comm_, color, key, &sub, nullptr), "CommSplit");
  // The new group's members by their world ranks (for the watchdog): an all-gather over the new group of
  // each member's world rank, which this group knows.
  auto mine = torch::full({1}, identity_.world_ranks[rank_],
                          torch::TensorOptions().dtype(torch::kInt32).device(torch::kCUDA, device_));
  auto group = std::make_unique<NcclCommunicator>(sub, name, device_, timeout_, std::vector<int>{});
  auto all = group->all_gather_rows(mine).to(torch::kCPU);
  group->identity_.world_ranks.assign(all.data_ptr<int32_t>(), all.data_ptr<int32_t>() + all.numel());
  return group;
}

}  // namespace moetrain::parallel
