// Communicator over NCCL for tensors on this rank's GPU (one GPU per local rank). Built when CMake finds
// CUDA and NCCL (MOETRAIN_WITH_NCCL).
//
// Nothing here blocks the host on the network (ProcessGroupNCCL's model):
// - Every operation is enqueued on the communicator's own stream, after an event recorded on the caller's
//   current (compute) stream, and records an end event. A blocking-style call (all_reduce_sum,
//   all_to_all_v, ...) then makes the current stream wait on the end event (cudaStreamWaitEvent) and
//   returns at once: later kernels are ordered after the collective, the host is not. all_reduce_sum_async
//   returns a Work whose wait() does that stream wait, so compute enqueued before wait() overlaps it.
// - The enqueued operation goes to the process's WorkMonitor (parallel/work_monitor.h), which holds its
//   tensors until the end event and watches NCCL's asynchronous error and parallel.timeout_s from its own
//   thread: a lost peer aborts the communicators and ends the process with the watchdog's exit code, or
//   (an NCCL error) makes this communicator's next call throw CommError naming rank, group and operation.
// - Communicators are created non-blocking (ncclConfig_t.blocking = 0): ncclCommInitRankConfig and
//   ncclCommSplit return at once and are completed by polling under the collective watchdog, so a peer
//   that never joins ends the job at parallel.timeout_s with the usual report instead of hanging it.
// - barrier() and the world ranks gathered by split() are the only host waits.
#pragma once

#include <c10/cuda/CUDAStream.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>

#include "parallel/communicator.h"
#include "parallel/watchdog.h"

namespace moetrain::parallel {

class NcclCommunicator : public Communicator {
 public:
  // Collective over `bootstrap` (MPI or store): rank 0 creates the NCCL unique id and broadcasts it.
  // `timeout` is the monitor's deadline where parallel.timeout_s sets none.
  static std::unique_ptr<NcclCommunicator> create(Communicator& bootstrap, int device,
                                                  std::chrono::seconds timeout = std::chrono::seconds(600));
  // `comm` fully initialised (not in progress). `world_ranks`: the members' world ranks, by rank in `comm`.
  NcclCommunicator(ncclComm_t comm, std::string name, int device, std::chrono::seconds timeout,
                   std::vector<int> world_ranks);
  ~NcclCommunicator() override;  // waits for its enqueued operations (or aborts, after a failure)
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  void all_reduce_sum(torch::Tensor& t) override;
  std::unique_ptr<Work> all_reduce_sum_async(torch::Tensor& t) override;
  void broadcast(torch::Tensor& t, int root) override;
  torch::Tensor all_to_all_v(const torch::Tensor& send, const std::vector<int64_t>& send_counts,
                             const std::vector<int64_t>& recv_counts) override;
  torch::Tensor all_gather_rows(const torch::Tensor& rows) override;
  torch::Tensor reduce_scatter_rows_sum(const torch::Tensor& t) override;
  void barrier() override;
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override;

 private:
  // Enqueues `launch(stream)` on this communicator's stream after the current stream's work so far, keeps
  // `tensors` alive until it ends, hands it to the monitor and returns the Work (wait(): the current stream
  // waits for it). `op` names it in errors and the flight record; `bytes` is this rank's payload.
  std::unique_ptr<Work> enqueue(const char* op, int64_t bytes, std::vector<torch::Tensor> tensors,
                                const std::function<void(cudaStream_t)>& launch);
  void check(ncclResult_t rc, const char* op);  // ncclInProgress is settled; an error aborts + CommError
  void settle(ncclComm_t comm, const char* op, Watchdog::Wait& watch);  // until not ncclInProgress
  void throw_if_failed(const char* op) const;  // an asynchronous error the monitor saw: CommError
  void abort();                                // once; from any thread
  void check_rows(const char* op, const torch::Tensor& t, bool divisible_rows) const;  // local checks only
  ncclComm_t comm_;
  std::string name_;
  int device_, rank_ = 0, size_ = 1;
  std::chrono::seconds timeout_;
  c10::cuda::CUDAStream stream_;  // this communicator's own stream
  std::atomic<bool> aborted_{false};
  GroupIdentity identity_;
  int64_t sequence_ = 0;
};

}  // namespace moetrain::parallel
