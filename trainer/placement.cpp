#include "trainer/placement.h"

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/cuda.h>

#include <cstdlib>
#include <stdexcept>

namespace moetrain::trainer {

std::string Placement::describe() const {
  if (!device.is_cuda()) return "cpu";
  return device.str() + " (local rank " + std::to_string(local_rank) + " of " +
         std::to_string(local_world_size) + ", " + std::to_string(visible_gpus) +
         (visible_gpus == 1 ? " GPU" : " GPUs") + " visible" + (shares_gpu ? "; processes share GPUs" : "") +
         ")";
}

Placement resolve_placement(config::TrainConfig::Device setting, int local_rank, int local_world_size,
                            int visible_gpus) {
  if (local_rank < 0 || local_world_size < 1 || local_rank >= local_world_size) {
    throw std::invalid_argument("local rank " + std::to_string(local_rank) + " of " +
                                std::to_string(local_world_size) +
                                " processes on this node is inconsistent; check the launcher's LOCAL_RANK / "
                                "OMPI_COMM_WORLD_LOCAL_RANK / SLURM_LOCALID");
  }
  Placement p;
  p.local_rank = local_rank, p.local_world_size = local_world_size, p.visible_gpus = visible_gpus;
  if (setting == config::TrainConfig::CPU || (setting == config::TrainConfig::AUTO && visible_gpus == 0))
    return p;
  if (visible_gpus == 0) {
    throw std::invalid_argument(
        "train.device = CUDA, but this process sees no GPU (torch's CUDA device count is 0: no NVIDIA driver, no GPU, "
        "or CUDA_VISIBLE_DEVICES hides them); set train.device = AUTO or CPU to train on the CPU");
  }
  p.device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank % visible_gpus));
  p.shares_gpu = local_world_size > visible_gpus;
  return p;
}

int visible_gpu_count() { return static_cast<int>(torch::cuda::device_count()); }

void bind_device(const Placement& placement) {
  if (!placement.device.is_cuda()) return;
  c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->setDevice(placement.device);
}

void set_deterministic(bool on) {
  if (!on) return;
  setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);
  at::globalContext().setDeterministicAlgorithms(true, /*warn_only=*/false);
  at::globalContext().setDeterministicCuDNN(true);
  at::globalContext().setBenchmarkCuDNN(false);
}

}  // namespace moetrain::trainer
