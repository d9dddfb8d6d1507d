// Communicator over a key-value store (LibTorch's c10d TCPStore): the CPU backend for launches without
// MPI, such as torchrun. Every rank puts its bytes under a key and reads the others'; reductions add
// the ranks' contributions in rank order, so every rank gets bitwise the same result. Traffic goes
// through the store's server, which suits tests and small CPU runs; GPU runs use NCCL (bootstrapped
// through the same store). Keys of an operation are deleted by the last rank to read them. An
// all-gather puts each rank's rows into the store once (the server hands them to the size()−1
// others); a reduce-scatter puts each of the size()−1 foreign row blocks under its reader's key.
// Waits for a peer's key poll the store under the collective watchdog (parallel/watchdog.h), which ends
// the process after parallel.timeout_s; the world communicator gives the watchdog its alarm channel
// (report keys in the store). Keys live under moetrain/<restart>/ (TORCHELASTIC_RESTART_COUNT), so a
// group that torchrun restarts never reads what the failed one left in the agent's store.
#pragma once

#include <torch/csrc/distributed/c10d/Store.hpp>

#include "parallel/communicator.h"
#include "parallel/watchdog.h"

namespace moetrain::parallel {

class StoreCommunicator : public Communicator {
 public:
  // Connects to (or, on rank 0 when the launcher does not host one, serves) the TCPStore at
  // host:port. torchrun's agent hosts it when TORCHELASTIC_USE_AGENT_STORE=True. The store's own
  // timeout is the watchdog's plus a minute, so the watchdog reports first.
  static std::unique_ptr<StoreCommunicator> world(const std::string& host, int port, int rank, int size,
                                                  bool serve);
  StoreCommunicator(c10::intrusive_ptr<c10d::Store> store, std::string prefix, std::string name, int rank,
                    std::vector<int> members);

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(members_.size()); }
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
  std::string next_op(const char* op);                    // key prefix of this group's next operation
  Watchdog::Wait watched(const char* op, int64_t bytes);  // announces this group's next operation
  std::vector<uint8_t> get(const std::string& key, Watchdog::Wait& wait);  // waits for the key, watched
  void release(const std::string& op, const std::vector<std::string>& keys);
  template <typename Fn>
  auto guarded(const char* op, Fn fn) -> decltype(fn());

  c10::intrusive_ptr<c10d::Store> store_;
  std::string prefix_, name_;
  int rank_;
  std::vector<int> members_;  // world ranks of this group, by group rank
  GroupIdentity identity_;
  int64_t sequence_ = 0;
};

}  // namespace moetrain::parallel
