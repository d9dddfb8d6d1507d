// Communicator over an MPI communicator (Open MPI). Owns the MPI_Comm (freed on destruction, except
// MPI_COMM_WORLD). Errors return to us (MPI_ERRORS_RETURN) and become CommError.
// Collectives are non-blocking MPI operations (MPI_Iallreduce, MPI_Ialltoallv, ...) completed by polling
// MPI_Test under the collective watchdog (parallel/watchdog.h): a blocking MPI call cannot time out, a
// polled one can. The world communicator also gives the watchdog its alarm channel (a duplicate of
// MPI_COMM_WORLD carrying the ranks' reports).
// Tensors may live on any device: every operation runs on host memory, and a CUDA tensor is copied to
// the host, communicated, and its result copied back to its device (this is how several ranks that
// share one GPU communicate: NCCL refuses two ranks on one GPU). bf16 and fp16 are moved bit for bit
// and summed in fp32. Contiguous CPU tensors are used in place, without a copy.
#pragma once

#include <mpi.h>

#include "parallel/communicator.h"
#include "parallel/watchdog.h"

namespace moetrain::parallel {

// The MPI thread level moe-train initialises MPI with: calls may come from more than one thread, never at
// once (autograd's device thread runs a collective's backward while the main thread waits in backward()).
inline constexpr int kMpiThreadLevel = MPI_THREAD_SERIALIZED;

class MpiCommunicator : public Communicator {
 public:
  // Initialises MPI if needed (finalised at exit) with kMpiThreadLevel, or checks the level of an MPI
  // already initialised (CommError below it), and wraps MPI_COMM_WORLD.
  static std::unique_ptr<MpiCommunicator> world();
  MpiCommunicator(MPI_Comm comm, std::string name, bool owned);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  void all_reduce_sum(torch::Tensor& t) override;
  std::unique_ptr<Work> all_reduce_sum_async(torch::Tensor& t) override;  // MPI_Iallreduce, waited by the Work
  void broadcast(torch::Tensor& t, int root) override;
  torch::Tensor all_to_all_v(const torch::Tensor& send, const std::vector<int64_t>& send_counts,
                             const std::vector<int64_t>& recv_counts) override;
  torch::Tensor all_gather_rows(const torch::Tensor& rows) override;
  torch::Tensor reduce_scatter_rows_sum(const torch::Tensor& t) override;
  void barrier() override;
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override;

 private:
  friend class MpiWork;
  void check(int rc, const char* op) const;
  int count(int64_t elements, const char* op) const;      // MPI's int count, or CommError
  Watchdog::Wait watched(const char* op, int64_t bytes);  // announces the next collective of this group
  void complete(MPI_Request& request, Watchdog::Wait& wait, const char* op) const;  // polls it to completion
  MPI_Comm comm_;
  std::string name_;
  GroupIdentity identity_;
  int64_t sequence_ = 0;  // collectives of this group so far
  bool owned_;
  int rank_ = 0, size_ = 1;
};

// Takes every process of the job down (MPI_Abort on the world) with `code`: used when this rank failed
// and its peers may be blocked in a collective with it.
[[noreturn]] void abort_job(int code);

}  // namespace moetrain::parallel
