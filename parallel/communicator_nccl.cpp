#include "parallel/communicator_nccl.h"

#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <cstring>
#include <thread>

#include "csrc/util/run_position.h"
#include "parallel/comm_clock.h"
#include "parallel/work_monitor.h"

namespace moetrain::parallel {
namespace {

using Clock = std::chrono::steady_clock;

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

void cuda_check(cudaError_t rc, const std::string& what) {
  if (rc != cudaSuccess) throw CommError("CUDA error in " + what + ": " + cudaGetErrorString(rc));
}

// A CUDA event without timing, destroyed with its last owner (the Work and the monitor's PendingWork).
using Event = std::shared_ptr<CUevent_st>;
Event make_event() {
  cudaEvent_t e = nullptr;
  cuda_check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  return Event(e, [](cudaEvent_t ev) { cudaEventDestroy(ev); });
}

ncclConfig_t non_blocking() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  return config;
}

// Polls a non-blocking communicator until its pending call (init, split, an enqueue) is through, ticking
// the watchdog (peer reports, parallel.timeout_s) and bounded by `deadline` where the watchdog has none.
// Returns the final state: ncclSuccess, or the error.
ncclResult_t settle_state(ncclComm_t comm, Watchdog::Wait& watch, Clock::time_point deadline) {
  while (true) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t rc = ncclCommGetAsyncError(comm, &state);
    if (rc != ncclSuccess) return rc;
    if (state != ncclInProgress) return state;
    if (Clock::now() > deadline) return ncclInProgress;
    watch.tick();
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

// A collective enqueued on the communicator's stream. wait(): the caller's current stream waits for its end
// event (no host wait); completed(): the event has been reached.
class NcclWork : public Work {
 public:
  NcclWork(Event end, int device) : end_(std::move(end)), device_(device) {}
  void wait() override {
    const auto current = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_));
    cuda_check(cudaStreamWaitEvent(current.stream(), end_.get(), 0), "cudaStreamWaitEvent");
  }
  bool completed() override { return cudaEventQuery(end_.get()) == cudaSuccess; }

 private:
  Event end_;
  int device_;
};

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

  std::vector<int> world_ranks(bootstrap.size());
  for (int r = 0; r < bootstrap.size(); ++r) world_ranks[r] = r;
  const double watched_s = watchdog().settings().timeout_s;
  work_monitor().set_timeout_s(watched_s > 0 ? watched_s : static_cast<double>(timeout.count()));
  // Initialised non-blocking, under the watchdog: a peer that never joins ends the job at parallel.timeout_s.
  const GroupIdentity joining{"world", "nccl", world_ranks};
  auto watch = watchdog().enter(joining, 0, "comm_init", 0);
  ncclConfig_t config = non_blocking();
  ncclComm_t comm = nullptr;
  ncclResult_t rc = ncclCommInitRankConfig(&comm, bootstrap.size(), id, bootstrap.rank(), &config);
  if (rc == ncclSuccess || rc == ncclInProgress) rc = settle_state(comm, watch, Clock::now() + timeout);
  if (rc != ncclSuccess) {
    if (comm != nullptr) ncclCommAbort(comm);
    throw CommError("rank " + std::to_string(bootstrap.rank()) + " of group world: ncclCommInitRank " +
                    (rc == ncclInProgress ? "did not complete within " + std::to_string(timeout.count()) + " s"
                                          : std::string("failed: ") + ncclGetErrorString(rc)));
  }
  return std::make_unique<NcclCommunicator>(comm, "world", device, timeout, world_ranks);
}

NcclCommunicator::NcclCommunicator(ncclComm_t comm, std::string name, int device,
                                   std::chrono::seconds timeout, std::vector<int> world_ranks)
    : comm_(comm),
      name_(std::move(name)),
      device_(device),
      timeout_(timeout),
      stream_(c10::cuda::getStreamFromPool(/*isHighPriority=*/true, static_cast<c10::DeviceIndex>(device))) {
  ncclCommUserRank(comm_, &rank_);
  ncclCommCount(comm_, &size_);
  identity_ = {name_, "nccl", std::move(world_ranks)};
  sequence_ = 1;  // 0 was its creation
}

NcclCommunicator::~NcclCommunicator() {
  const bool clean = work_monitor().drain(this);
  if (aborted_ || !clean) return;
  // Non-blocking teardown: finalize (flushes outstanding work), poll, destroy; abort if it does not end.
  const auto deadline = Clock::now() + timeout_;
  ncclResult_t state = ncclCommFinalize(comm_);
  while (state == ncclInProgress && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::microseconds(50));
    if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) break;
  }
  if (state == ncclSuccess) {
    ncclCommDestroy(comm_);
  } else {
    abort();
  }
}

void NcclCommunicator::abort() {
  if (aborted_.exchange(true)) return;
  ncclCommAbort(comm_);
}

void NcclCommunicator::throw_if_failed(const char* op) const {
  if (const auto failure = work_monitor().failure_of(this)) {
    throw CommError("rank " + std::to_string(rank_) + " of group " + name_ + ": NCCL " + op +
                    " refused: an earlier collective failed: " + failure->describe());
  }
  if (aborted_) {
    throw CommError("rank " + std::to_string(rank_) + " of group " + name_ + ": NCCL " + op +
                    " refused: the communicator was aborted after an earlier failure");
  }
}

void NcclCommunicator::settle(ncclComm_t comm, const char* op, Watchdog::Wait& watch) {
  const ncclResult_t state = settle_state(comm, watch, Clock::now() + timeout_);
  if (state == ncclSuccess) return;
  if (state == ncclInProgress) {
    abort();
    throw CommError("rank " + std::to_string(rank_) + " of group " + name_ + ": NCCL " + op +
                    " did not complete within " + std::to_string(timeout_.count()) +
                    " s; a peer has probably failed");
  }
  check(state, op);
}

void NcclCommunicator::check(ncclResult_t rc, const char* op) {
  if (rc == ncclSuccess || rc == ncclInProgress) return;
  const std::string last = aborted_ ? "" : ncclGetLastError(comm_);
  abort();
  throw CommError("rank " + std::to_string(rank_) + " of group " + name_ + ": NCCL " + op +
                  " failed: " + ncclGetErrorString(rc) + " (" + last + ")");
}

std::unique_ptr<Work> NcclCommunicator::enqueue(const char* op, int64_t bytes,
                                                std::vector<torch::Tensor> tensors,
                                                const std::function<void(cudaStream_t)>& launch) {
  throw_if_failed(op);
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  const auto start = Clock::now();
  // After the compute stream's work so far: the inputs are written, the outputs allocated.
  const Event ready = make_event();
  const auto compute = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_));
  cuda_check(cudaEventRecord(ready.get(), compute.stream()), std::string("NCCL ") + op);
  cuda_check(cudaStreamWaitEvent(stream_.stream(), ready.get(), 0), std::string("NCCL ") + op);
  const int64_t sequence = sequence_++;
  auto watch = watchdog().enter(identity_, sequence, op, bytes);
  launch(stream_.stream());
  settle(comm_, op, watch);  // a non-blocking communicator may still be enqueueing
  Event end = make_event();
  cuda_check(cudaEventRecord(end.get(), stream_.stream()), std::string("NCCL ") + op);
  comm_clock().add(name_, op, std::chrono::duration<double>(Clock::now() - start).count(), bytes,
                   /*host_waits=*/0);
  watch.mark_on_stream();

  PendingWork pending;
  pending.owner = this;
  pending.group = name_;
  pending.op = op;
  pending.sequence = sequence;
  pending.step = util::run_position().step;
  pending.done = [end] { return cudaEventQuery(end.get()) == cudaSuccess; };
  pending.error = [this, end]() -> std::string {
    if (aborted_) return "the communicator was aborted";
    ncclResult_t state = ncclSuccess;
    ncclCommGetAsyncError(comm_, &state);
    if (state != ncclSuccess && state != ncclInProgress)
      return std::string("NCCL error: ") + ncclGetErrorString(state) + " (" + ncclGetLastError(comm_) + ")";
    const cudaError_t q = cudaEventQuery(end.get());
    if (q != cudaSuccess && q != cudaErrorNotReady)
      return std::string("CUDA error: ") + cudaGetErrorString(q);
    return "";
  };
  pending.abort = [this] { abort(); };
  pending.keep_alive = std::move(tensors);
  pending.wait.emplace(std::move(watch));
  work_monitor().add(std::move(pending));
  return std::make_unique<NcclWork>(std::move(end), device_);
}

void NcclCommunicator::all_reduce_sum(torch::Tensor& t) { all_reduce_sum_async(t)->wait(); }

std::unique_ptr<Work> NcclCommunicator::all_reduce_sum_async(torch::Tensor& t) {
  if (!t.is_cuda() || !t.is_contiguous()) fail("all_reduce_sum", "needs a contiguous CUDA tensor");
  return enqueue("all_reduce_sum_async", static_cast<int64_t>(t.nbytes()), {t}, [&](cudaStream_t stream) {
    check(ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), nccl_type(t), ncclSum, comm_, stream),
          "AllReduce");
  });
}

void NcclCommunicator::broadcast(torch::Tensor& t, int root) {
  if (!t.is_cuda() || !t.is_contiguous()) fail("broadcast", "needs a contiguous CUDA tensor");
  enqueue("broadcast", static_cast<int64_t>(t.nbytes()), {t}, [&](cudaStream_t stream) {
    check(ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(), nccl_type(t), root, comm_, stream), "Broadcast");
  })->wait();
}

torch::Tensor NcclCommunicator::all_to_all_v(const torch::Tensor& send, const std::vector<int64_t>& send_counts,
                                             const std::vector<int64_t>& recv_counts) {
  if (!send.is_cuda()) fail("all_to_all_v", "needs a CUDA tensor, got one on " + send.device().str());
  if (static_cast<int>(send_counts.size()) != size_ || static_cast<int>(recv_counts.size()) != size_)
    fail("all_to_all_v", "needs one send and one receive count per rank");
  auto in = send.contiguous();
  int64_t row = 1;
  for (int64_t d = 1; d < in.dim(); ++d) row *= in.size(d);
  int64_t recv_rows = 0;
  for (int64_t c : recv_counts) recv_rows += c;
  auto shape = in.sizes().vec();
  shape[0] = recv_rows;
  auto out = torch::empty(shape, in.options());
  const auto type = nccl_type(in);
  const size_t elem = in.element_size();
  // Grouped point-to-point sends and receives: one all-to-all-v (NCCL has no alltoallv).
  enqueue("all_to_all_v", static_cast<int64_t>(in.nbytes()), {in, out}, [&](cudaStream_t stream) {
    auto* src = static_cast<char*>(in.data_ptr());
    auto* dst = static_cast<char*>(out.data_ptr());
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
  })->wait();
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
  enqueue("all_gather_rows", static_cast<int64_t>(in.nbytes()), {in, out}, [&](cudaStream_t stream) {
    check(ncclAllGather(in.data_ptr(), out.data_ptr(), in.numel(), nccl_type(in), comm_, stream), "AllGather");
  })->wait();
  all_gather_bytes_ += (size_ - 1) * static_cast<int64_t>(in.nbytes());
  return out;
}

torch::Tensor NcclCommunicator::reduce_scatter_rows_sum(const torch::Tensor& t) {
  check_rows("reduce_scatter_rows_sum", t, /*divisible_rows=*/true);
  auto in = t.contiguous();
  auto shape = in.sizes().vec();
  shape[0] /= size_;
  auto out = torch::empty(shape, in.options());  // (n, ...)
  enqueue("reduce_scatter_rows_sum", static_cast<int64_t>(in.nbytes()), {in, out}, [&](cudaStream_t stream) {
    check(ncclReduceScatter(in.data_ptr(), out.data_ptr(), out.numel(), nccl_type(in), ncclSum, comm_, stream),
          "ReduceScatter");
  })->wait();
  reduce_scatter_bytes_ += (size_ - 1) * static_cast<int64_t>(out.nbytes());
  return out;
}

// The one host wait of this backend: returns once every rank's all-reduce has completed on the device.
void NcclCommunicator::barrier() {
  const auto start = Clock::now();
  auto one = torch::ones({1}, torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA, device_));
  auto work = all_reduce_sum_async(one);
  while (!work->completed()) {  // the monitor bounds it (parallel.timeout_s) and reports a failure
    throw_if_failed("barrier");
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  work->wait();
  comm_clock().add(name_, "barrier/wait", std::chrono::duration<double>(Clock::now() - start).count(), 0, 1);
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key, const std::string& name) {
  throw_if_failed("split");
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
  ncclComm_t sub = nullptr;
  {
    auto watch = watchdog().enter(identity_, sequence_++, "comm_split", 0);
    ncclConfig_t config = non_blocking();
    check(ncclCommSplit(comm_, color, key, &sub, &config), "CommSplit");
    settle(comm_, "CommSplit", watch);
    if (sub != nullptr) settle(sub, "CommSplit", watch);
  }
  if (sub == nullptr) fail("split", "NCCL returned no communicator for color " + std::to_string(color));
  // The new group's members by their world ranks (for the watchdog): an all-gather over the new group of
  // each member's world rank, which this group knows. A host wait, once per group at setup.
  auto mine = torch::full({1}, identity_.world_ranks[rank_],
                          torch::TensorOptions().dtype(torch::kInt32).device(torch::kCUDA, device_));
  auto group = std::make_unique<NcclCommunicator>(sub, name, device_, timeout_, std::vector<int>{});
  auto all = group->all_gather_rows(mine).to(torch::kCPU);
  group->identity_.world_ranks.assign(all.data_ptr<int32_t>(), all.data_ptr<int32_t>() + all.numel());
  return group;
}

}  // namespace moetrain::parallel
