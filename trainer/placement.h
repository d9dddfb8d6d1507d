// Where this process computes (train.device) and how deterministically (train.deterministic).
//
// Each process binds one GPU: local rank mod (GPUs it can see), so that with one process per GPU every
// process has its own, and with more processes than GPUs (the parity checks on one GPU) they share.
// CUDA_VISIBLE_DEVICES applies as usual: "GPUs it can see" is torch's device count.
#pragma once

#include <torch/torch.h>

#include <string>

#include "csrc/config/recipe.pb.h"

namespace moetrain::trainer {

struct Placement {
  torch::Device device{torch::kCPU};
  int local_rank = 0, local_world_size = 1;
  int visible_gpus = 0;
  bool shares_gpu = false;  // more processes on this node than visible GPUs: some share this one
  // "cpu" or "cuda:1 (local rank 1 of 8, 8 GPUs visible)".
  std::string describe() const;
};

// Pure: decides from the setting, the launcher's local rank and the visible GPU count. Throws
// std::invalid_argument naming train.device, the value and the fix (CUDA with no GPU visible).
Placement resolve_placement(config::TrainConfig::Device setting, int local_rank, int local_world_size,
                            int visible_gpus);

// torch's CUDA device count: 0 without a driver, a GPU or a CUDA build of torch.
int visible_gpu_count();

// Makes placement.device this process's current CUDA device (nothing on the CPU). Call it before any
// CUDA work, so that NCCL, cuBLAS handles and the caching allocator live on the bound GPU.
void bind_device(const Placement& placement);

// train.deterministic: torch's deterministic algorithms (index_add and the other ops the expert
// combine uses then run without floating-point atomics on CUDA), cuDNN deterministic and not
// benchmarking, and CUBLAS_WORKSPACE_CONFIG=:4096:8 unless the user set it (cuBLAS reads it when its
// first handle is made: call this before the model moves to the GPU). Nothing to do when `on` is false.
void set_deterministic(bool on);

}  // namespace moetrain::trainer
