// The data plane and the control plane of every communication group (docs/parallelism.md).
//
// Tensors on the device move over the data plane (NCCL on GPUs); everything the host holds (agreement,
// metrics, counts read for logging, checkpoint reports) over the host backend (MPI or the TCP store).
// TwoPlaneCommunicator routes each operation by where its tensor lives, so the rest of moetrain calls one
// Communicator per group and never chooses a backend itself.
#pragma once

#include <memory>
#include <string>

#include "csrc/config/recipe.pb.h"
#include "parallel/communicator.h"

namespace moetrain::parallel {

enum class DataPlane { kHost, kNccl };

// Whether this build has the NCCL backend (CMake found CUDA and NCCL).
bool nccl_built();

// Pure: parallel.data_plane against the resolved device. AUTO: NCCL when the ranks compute on their own
// GPUs of a build with NCCL, else HOST. NCCL without a GPU, with GPUs shared between ranks (NCCL
// refuses two ranks on one GPU) or without NCCL in the build is an std::invalid_argument naming the
// field, the reason and the fix.
DataPlane resolve_data_plane(config::ParallelConfig::DataPlane setting, bool on_cuda, bool shares_gpu,
                             bool with_nccl);
const char* data_plane_name(DataPlane plane);  // "host" or "nccl"

// Routes tensors on `data_device` to `data`, every other tensor and barriers to `host`. Both groups have
// the same ranks in the same order. Every rank passes tensors on the same kind of device for the same
// operation (all ranks of a run compute on the same kind of device).
class TwoPlaneCommunicator : public Communicator {
 public:
  TwoPlaneCommunicator(std::unique_ptr<Communicator> host, std::unique_ptr<Communicator> data,
                       torch::Device data_device);

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  const std::string& name() const override { return host_->name(); }
  void all_reduce_sum(torch::Tensor& t) override { plane(t).all_reduce_sum(t); }
  std::unique_ptr<Work> all_reduce_sum_async(torch::Tensor& t) override {
    return plane(t).all_reduce_sum_async(t);
  }
  void broadcast(torch::Tensor& t, int root) override { plane(t).broadcast(t, root); }
  torch::Tensor all_to_all_v(const torch::Tensor& send, const std::vector<int64_t>& send_counts,
                             const std::vector<int64_t>& recv_counts) override;
  torch::Tensor all_gather_rows(const torch::Tensor& rows) override;
  torch::Tensor reduce_scatter_rows_sum(const torch::Tensor& t) override;
  void barrier() override { host_->barrier(); }
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override;

  Communicator& host() { return *host_; }
  Communicator& data() { return *data_; }

 private:
  Communicator& plane(const torch::Tensor& t) { return t.device() == data_device_ ? *data_ : *host_; }
  // Runs op(plane) and adds the plane's byte counters' growth to this communicator's.
  template <typename Op>
  torch::Tensor counted(Communicator& plane, Op&& op);
  std::unique_ptr<Communicator> host_, data_;
  torch::Device data_device_;
};

// Gives the host world communicator its data plane: `host_world` itself for HOST; for NCCL a
// TwoPlaneCommunicator whose NCCL communicator on `cuda_device` is created over host_world (collective).
std::unique_ptr<Communicator> with_data_plane(std::unique_ptr<Communicator> host_world, DataPlane plane,
                                              const torch::Device& cuda_device);

}  // namespace moetrain::parallel
