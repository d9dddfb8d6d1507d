// Communicator over NCCL for tensors on this rank's GPU (one GPU per local rank). Owns the ncclComm_t
// (aborted if an operation failed, destroyed otherwise). Operations run on the current CUDA stream and
// are waited for under the collective watchdog (parallel/watchdog.h): past parallel.timeout_s it reports
// the group, operation, step and late peers and ends the process; an NCCL asynchronous error aborts the
// communicator and throws CommError naming rank, group and operation. `timeout` is a last deadline
// (abort + CommError) for a process whose watchdog has none.
// Built when CMake finds CUDA and NCCL (MOETRAIN_WITH_NCCL).
#pragma once

#include <nccl.h>

#include <chrono>

#include "parallel/communicator.h"
#include "parallel/watchdog.h"

namespace moetrain::parallel {

class NcclCommunicator : public Communicator {
 public:
  // Collective over `bootstrap` (MPI or store): rank 0 creates the NCCL unique id and broadcasts it.
  static std::unique_ptr<NcclCommunicator> create(Communicator& bootstrap, int device,
                                                  std::chrono::seconds timeout = std::chrono::seconds(600));
  // `world_ranks`: the members' world ranks, by rank in `comm`.
  NcclCommunicator(ncclComm_t comm, std::string name, int device, std::chrono::seconds timeout,
                   std::vector<int> world_ranks);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  void all_reduce_sum(torch::Tensor& t) override;
  void broadcast(torch::Tensor& t, int root) override;
  torch::Tensor all_to_all_v(const torch::Tensor& send, const std::vector<int64_t>& send_counts,
                             const std::vector<int64_t>& recv_counts) override;
  torch::Tensor all_gather_rows(const torch::Tensor& rows) override;
  torch::Tensor reduce_scatter_rows_sum(const torch::Tensor& t) override;
  void barrier() override;
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override;

 private:
  void check(ncclResult_t rc, const char* op);
  Watchdog::Wait watched(const char* op, int64_t bytes);  // announces this group's next operation
  void wait(const char* op, Watchdog::Wait& watch);  // stream done, or async error / deadline → abort + CommError
  void check_rows(const char* op, const torch::Tensor& t, bool divisible_rows) const;  // local checks only
  ncclComm_t comm_;
  std::string name_;
  int device_, rank_ = 0, size_ = 1;
  std::chrono::seconds timeout_;
  bool aborted_ = false;
  GroupIdentity identity_;
  int64_t sequence_ = 0;
};

}  // namespace moetrain::parallel
