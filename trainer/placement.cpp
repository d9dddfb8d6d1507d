#include "trainer/placement.h"

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/cuda.h>

#include <cstdio>
#include <cstdlib>
#include <set>
#include <stdexcept>

#if __has_include(<ATen/cuda/CUDAContext.h>) && __has_include(<cuda_runtime_api.h>)
#include <ATen/cuda/CUDAContext.h>
#define MOETRAIN_PLACEMENT_CUDA 1
#endif

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

std::string device_identity(const torch::Device& device) {
  if (!device.is_cuda()) return "cpu";
#ifdef MOETRAIN_PLACEMENT_CUDA
  const auto* prop = at::cuda::getDeviceProperties(device.index() < 0 ? 0 : device.index());
  const auto* b = reinterpret_cast<const unsigned char*>(prop->uuid.bytes);
  bool any = false;
  for (int i = 0; i < 16; ++i) any = any || b[i] != 0;
  char text[64];
  if (any) {
    std::snprintf(text, sizeof text,
                  "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                  b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  } else {
    std::snprintf(text, sizeof text, "pci-%04x:%02x:%02x", prop->pciDomainID, prop->pciBusID,
                  prop->pciDeviceID);
  }
  return text;
#else
  return device.str();  // no CUDA headers in this build: no tensor can be on a GPU
#endif
}

bool local_ranks_share_a_gpu(const std::vector<std::string>& bound) {
  std::set<std::string> seen;
  for (const auto& entry : bound) {
    if (entry == "cpu" || (entry.size() > 4 && entry.compare(entry.size() - 4, 4, " cpu") == 0)) continue;
    if (!seen.insert(entry).second) return true;
  }
  return false;
}

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
