// One communication group: the operations moetrain needs, over one backend (MPI or the TCP store on
// CPU, NCCL on GPU). Contract: every rank of the group calls the same operations in the same order
// with matching shapes. Every call is checked; a failure throws CommError naming the rank, the group
// and the operation. The MPI backend takes tensors on any device (CUDA tensors are staged through host
// memory); the store backend takes CPU tensors; NCCL takes CUDA tensors on its device.
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

// A collective started and not yet waited for (Communicator::all_reduce_sum_async). wait() returns once the
// result is in the tensor given at the start, polling under the watchdog as a blocking call does (a hang
// ends at parallel.timeout_s); completed() tells without waiting. The tensor stays alive and untouched until
// wait() returns. A Work destroyed unwaited waits first (errors then are reported, not thrown).
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
  virtual bool completed() = 0;
};

// The Work of a collective that already ran (backends without non-blocking collectives).
class CompletedWork : public Work {
 public:
  void wait() override {}
  bool completed() override { return true; }
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const std::string& name() const = 0;  // "world", "dp", "tp", "ep", "expert_tp", "expert_dp"

  virtual void all_reduce_sum(torch::Tensor& t) = 0;  // in place
  // all_reduce_sum started without waiting, where the backend can (MPI); other backends run it now and
  // return a CompletedWork. Several may be in flight at once; every rank starts them in the same order.
  virtual std::unique_ptr<Work> all_reduce_sum_async(torch::Tensor& t) {
    all_reduce_sum(t);
    return std::make_unique<CompletedWork>();
  }
  virtual void broadcast(torch::Tensor& t, int root) = 0;
  // Row blocks: send_counts[r] rows of `send` go to rank r; recv_counts[r] rows arrive from rank r,
  // in rank order. Rows are send.size(0) entries of send[0].numel() elements.
  virtual torch::Tensor all_to_all_v(const torch::Tensor& send, const std::vector<int64_t>& send_counts,
                                     const std::vector<int64_t>& recv_counts) = 0;
  // All-gather: every rank passes rows (n, ...) of the same shape and dtype; returns (size()·n, ...),
  // rank r's rows at [r·n, (r+1)·n). Each rank sends its n rows to the size()−1 others.
  virtual torch::Tensor all_gather_rows(const torch::Tensor& rows) = 0;
  // Reduce-scatter: every rank passes t (size()·n, ...) of the same shape and dtype; returns (n, ...),
  // the sum over ranks of their row block rank(), t[rank()·n, (rank()+1)·n). Each rank sends the
  // size()−1 blocks of the others: (size()−1)/size() of t.
  virtual torch::Tensor reduce_scatter_rows_sum(const torch::Tensor& t) = 0;
  virtual void barrier() = 0;
  // Ranks with the same color form a group, ordered by key. Called by every rank of this group.
  virtual std::unique_ptr<Communicator> split(int color, int key, const std::string& name) = 0;

  // Bytes of this rank's data addressed to other ranks since construction, per operation: what the
  // other ranks receive from it (the send buffer's own block excluded), in the dtype they travel in.
  // All backends count the same.
  int64_t all_to_all_bytes_sent() const { return a2a_bytes_; }
  int64_t all_gather_bytes_sent() const { return all_gather_bytes_; }          // (size()−1)·bytes(rows)
  int64_t reduce_scatter_bytes_sent() const { return reduce_scatter_bytes_; }  // (size()−1)/size()·bytes(t)

 protected:
  // "rank R of group G: op: what", thrown as CommError.
  [[noreturn]] void fail(const std::string& op, const std::string& what) const;
  // For all_gather_rows and reduce_scatter_rows_sum: the ranks exchange dtype and shape (one small
  // all_reduce_sum of host int64) and every rank throws the same CommError if they differ, or if t
  // has no dim 0 (or, with divisible_rows, a dim 0 that size() does not divide). No rank is left
  // waiting in the collective. Backends whose all_reduce_sum takes host tensors call it.
  void agree_on_rows(const std::string& op, const torch::Tensor& t, bool divisible_rows);

  int64_t a2a_bytes_ = 0, all_gather_bytes_ = 0, reduce_scatter_bytes_ = 0;
};

}  // namespace moetrain::parallel
