// One communication group: the operations moetrain needs, over one backend (MPI on CPU; NCCL on GPU
// belongs here too). Contract: every rank of the group calls the same operations in the same order
// with matching shapes. Every call is checked; a failure throws CommError naming the rank, the group
// and the operation. Tensors are contiguous CPU tensors for the MPI backend.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace moetrain::parallel {

struct CommError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const std::string& name() const = 0;  // "world", "dp", "ep", "expert_dp", "tp"

  virtual void all_reduce_sum(torch::Tensor& t) = 0;  // in place
  virtual void broadcast(torch::Tensor& t, int root) = 0;
  // Row blocks: send_counts[r] rows of `send` go to rank r; recv_counts[r] rows arrive from rank r,
  // in rank order. Rows are send.size(0) entries of send[0].numel() elements.
  virtual torch::Tensor all_to_all_v(const torch::Tensor& send, const std::vector<int64_t>& send_counts,
                                     const std::vector<int64_t>& recv_counts) = 0;
  virtual void barrier() = 0;
  // Ranks with the same color form a group, ordered by key. Called by every rank of this group.
  virtual std::unique_ptr<Communicator> split(int color, int key, const std::string& name) = 0;
  // Bytes this communicator sent to other ranks through all_to_all_v since construction.
  int64_t all_to_all_bytes_sent() const { return a2a_bytes_; }

 protected:
  int64_t a2a_bytes_ = 0;
};

}  // namespace moetrain::parallel
