#include "parallel/data_plane.h"

#include <stdexcept>

#ifdef MOETRAIN_WITH_NCCL
#include "parallel/communicator_nccl.h"
#include "parallel/watchdog.h"
#endif

namespace moetrain::parallel {

bool nccl_built() {
#ifdef MOETRAIN_WITH_NCCL
  return true;
#else
  return false;
#endif
}

DataPlane resolve_data_plane(config::ParallelConfig::DataPlane setting, bool on_cuda, bool shares_gpu,
                             bool with_nccl) {
  if (setting == config::ParallelConfig::HOST) return DataPlane::kHost;
  if (setting == config::ParallelConfig::AUTO)
    return on_cuda && !shares_gpu && with_nccl ? DataPlane::kNccl : DataPlane::kHost;
  if (!on_cuda) {
    throw std::invalid_argument(
        "parallel.data_plane = NCCL needs the model on GPUs, but train.device resolved to the CPU; "
        "set parallel.data_plane = AUTO or HOST, or train on GPUs");
  }
  if (shares_gpu) {
    throw std::invalid_argument(
        "parallel.data_plane = NCCL: this node runs more processes than it has visible GPUs, and "
        "NCCL refuses two ranks on one GPU; launch one process per GPU, or set "
        "parallel.data_plane = HOST (tensors staged through host memory) to share GPUs");
  }
  if (!with_nccl) {
    throw std::invalid_argument(
        "parallel.data_plane = NCCL, but this build has no NCCL (CMake found no CUDA toolkit or "
        "NCCL); rebuild on a machine with both, or set parallel.data_plane = AUTO or HOST");
  }
  return DataPlane::kNccl;
}

const char* data_plane_name(DataPlane plane) { return plane == DataPlane::kNccl ? "nccl" : "host"; }

TwoPlaneCommunicator::TwoPlaneCommunicator(std::unique_ptr<Communicator> host,
                                           std::unique_ptr<Communicator> data, torch::Device data_device)
    : host_(std::move(host)), data_(std::move(data)), data_device_(data_device) {
  if (host_->size() != data_->size() || host_->rank() != data_->rank()) {
    throw CommError("group " + host_->name() + ": the data plane (rank " + std::to_string(data_->rank()) +
                    " of " + std::to_string(data_->size()) + ") does not match the host plane (rank " +
                    std::to_string(host_->rank()) + " of " + std::to_string(host_->size()) + ")");
  }
}

// The byte counters of this communicator are the sums over its two planes.
template <typename Op>
torch::Tensor TwoPlaneCommunicator::counted(Communicator& p, Op&& op) {
  const int64_t a = p.all_to_all_bytes_sent(), g = p.all_gather_bytes_sent(), s = p.reduce_scatter_bytes_sent();
  auto out = op(p);
  a2a_bytes_ += p.all_to_all_bytes_sent() - a;
  all_gather_bytes_ += p.all_gather_bytes_sent() - g;
  reduce_scatter_bytes_ += p.reduce_scatter_bytes_sent() - s;
  return out;
}

torch::Tensor TwoPlaneCommunicator::all_to_all_v(const torch::Tensor& send,
                                                 const std::vector<int64_t>& send_counts,
                                                 const std::vector<int64_t>& recv_counts) {
  return counted(plane(send), [&](Communicator& p) { return p.all_to_all_v(send, send_counts, recv_counts); });
}

torch::Tensor TwoPlaneCommunicator::all_gather_rows(const torch::Tensor& rows) {
  return counted(plane(rows), [&](Communicator& p) { return p.all_gather_rows(rows); });
}

torch::Tensor TwoPlaneCommunicator::reduce_scatter_rows_sum(const torch::Tensor& t) {
  return counted(plane(t), [&](Communicator& p) { return p.reduce_scatter_rows_sum(t); });
}

std::unique_ptr<Communicator> TwoPlaneCommunicator::split(int color, int key, const std::string& name) {
  auto host = host_->split(color, key, name);
  auto data = data_->split(color, key, name);
  return std::make_unique<TwoPlaneCommunicator>(std::move(host), std::move(data), data_device_);
}

std::unique_ptr<Communicator> with_data_plane(std::unique_ptr<Communicator> host_world, DataPlane plane,
                                              const torch::Device& cuda_device) {
  if (plane == DataPlane::kHost) return host_world;
#ifdef MOETRAIN_WITH_NCCL
  // NCCL's own last deadline lies a minute past the watchdog's (parallel.timeout_s), which reports first.
  const double watched = watchdog().settings().timeout_s;
  const auto last_deadline = std::chrono::seconds(watched > 0 ? static_cast<int64_t>(watched) + 60 : 600);
  std::unique_ptr<Communicator> nccl = NcclCommunicator::create(*host_world, cuda_device.index(),
                                                                last_deadline);
  return std::make_unique<TwoPlaneCommunicator>(std::move(host_world), std::move(nccl), cuda_device);
#else
  (void)cuda_device;
  throw std::invalid_argument("parallel.data_plane = NCCL, but this build has no NCCL");
#endif
}

}  // namespace moetrain::parallel
