// Where this process computes (train.device) and how deterministically (train.deterministic).
//
// Each process binds one GPU: local rank mod (GPUs it can see), so that with one process per GPU every
// process has its own, and with more processes than GPUs (the parity checks on one GPU) they share.
// CUDA_VISIBLE_DEVICES applies as usual: "GPUs it can see" is torch's device count.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "csrc/config/recipe.pb.h"

namespace moetrain::trainer {

struct Placement {
  torch::Device device{torch::kCPU};
  int local_rank = 0, local_world_size = 1;
  int visible_gpus = 0;
  // Some processes of this node compute on the same GPU. resolve_placement's first guess is "more
  // processes on this node than visible GPUs"; moe-train settles it with the GPUs the local ranks
  // actually bind (local_ranks_share_a_gpu), since each rank may see other GPUs (CUDA_VISIBLE_DEVICES
  // set per rank, as Slurm's --gpus-per-task does: every rank sees one GPU, its own).
  bool shares_gpu = false;
  // "cpu" or "cuda:1 (local rank 1 of 8, 8 GPUs visible)".
  std::string describe() const;
};

// Pure: decides from the setting, the launcher's local rank and the visible GPU count. Throws
// std::invalid_argument naming train.device, the value and the fix (CUDA with no GPU visible).
Placement resolve_placement(config::TrainConfig::Device setting, int local_rank, int local_world_size,
                            int visible_gpus);

// torch's CUDA device count: 0 without a driver, a GPU or a CUDA build of torch.
int visible_gpu_count();

// What identifies the GPU `device` is across processes: "GPU-" and its UUID as nvidia-smi writes it
// (from cudaDeviceProp::uuid), else its PCI bus id; "cpu" for the CPU.
std::string device_identity(const torch::Device& device);

// Pure: whether two processes of one node compute on the same GPU. `bound` holds one entry per process
// of the job, "<host name> <device_identity>" of the device it bound; entries of CPU processes ("... cpu")
// never share. Two equal GPU entries (same host, same GPU) share.
bool local_ranks_share_a_gpu(const std::vector<std::string>& bound);

// Makes placement.device this process's current CUDA device (nothing on the CPU). Call it before any
// CUDA work, so that NCCL, cuBLAS handles and the caching allocator live on the bound GPU.
void bind_device(const Placement& placement);

// train.deterministic: torch's deterministic algorithms (index_add and the other ops the expert
// combine uses then run without floating-point atomics on CUDA), cuDNN deterministic and not
// benchmarking, and CUBLAS_WORKSPACE_CONFIG=:4096:8 unless the user set it (cuBLAS reads it when its
// first handle is made: call this before the model moves to the GPU). Nothing to do when `on` is false.
void set_deterministic(bool on);

}  // namespace moetrain::trainer
