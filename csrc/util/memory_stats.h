// Bytes held by tensors, now and at the peak since the last reset: on a GPU the CUDA caching allocator's
// own counts (torch.cuda.memory_allocated / max_memory_allocated); on the CPU a counting wrapper around
// LibTorch's CPU allocator, installed by track_cpu_memory(). Tensor memory only: not the allocator's cache,
// the CUDA context, oneDNN's scratch or the process's code. moe-train reports both per step
// (mem_allocated_mib at the step's start, mem_peak_mib during it) and moe-plan's estimates are checked
// against them (docs/memory.md).
#pragma once

#include <c10/core/Device.h>

#include <cstdint>

namespace moetrain::util {

struct MemoryStats {
  int64_t allocated = 0;  // bytes held now
  int64_t peak = 0;       // most bytes held at once since the last reset_memory_peak()
};

// Wraps the CPU allocator so that CPU tensors are counted from now on (tensors made before are not).
// Idempotent; call it first in main, before any tensor exists. MOETRAIN_COUNT_CPU_MEMORY=0 turns it off.
void track_cpu_memory();
bool tracking_cpu_memory();

// The counts of `device`'s allocator: the counting CPU allocator (zeros unless tracked) or the CUDA
// caching allocator of that GPU.
MemoryStats memory_stats(const c10::Device& device);
// Starts a new peak at the current allocation.
void reset_memory_peak(const c10::Device& device);

}  // namespace moetrain::util
