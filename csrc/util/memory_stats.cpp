#include "csrc/util/memory_stats.h"

#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

#if __has_include(<c10/cuda/CUDACachingAllocator.h>) && __has_include(<cuda_runtime_api.h>)
#include <c10/cuda/CUDACachingAllocator.h>
#define MOETRAIN_MEMORY_STATS_CUDA 1
#endif

namespace moetrain::util {
namespace {

std::atomic<int64_t> cpu_allocated{0};
std::atomic<int64_t> cpu_peak{0};

void raise_peak(int64_t now) {
  int64_t seen = cpu_peak.load(std::memory_order_relaxed);
  while (now > seen && !cpu_peak.compare_exchange_weak(seen, now, std::memory_order_relaxed)) {
  }
}

// Blocks keep the base allocator's pointer as their context (raw_allocate() requires data == context, and
// oneDNN's bf16 kernels use it); the size of each live block is kept beside, keyed by its address.
class CountingCpuAllocator final : public c10::Allocator {
 public:
  CountingCpuAllocator(c10::Allocator* base, c10::DeleterFnPtr base_delete) : base_(base) {
    base_delete_ = base_delete;
  }

  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner = base_->allocate(n);
    void* data = inner.get();
    const c10::Device device = inner.device();
    inner.release_context();  // freed by free_block through the base allocator's raw deleter
    const auto bytes = static_cast<int64_t>(n);
    if (data) {
      std::lock_guard<std::mutex> lock(sizes_mutex_);
      sizes_[data] = bytes;
    }
    raise_peak(cpu_allocated.fetch_add(bytes, std::memory_order_relaxed) + bytes);
    return {data, data, &free_block, device};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &free_block; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }

 private:
  static void free_block(void* data) {
    if (!data) return;
    int64_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(sizes_mutex_);
      auto it = sizes_.find(data);
      if (it != sizes_.end()) bytes = it->second, sizes_.erase(it);
    }
    cpu_allocated.fetch_sub(bytes, std::memory_order_relaxed);
    base_delete_(data);
  }
  c10::Allocator* base_;
  static inline c10::DeleterFnPtr base_delete_ = nullptr;
  static inline std::mutex sizes_mutex_;
  static inline std::unordered_map<void*, int64_t> sizes_;
};

bool tracking = false;

}  // namespace

void track_cpu_memory() {
  if (tracking) return;
  const char* env = std::getenv("MOETRAIN_COUNT_CPU_MEMORY");
  if (env && std::string(env) == "0") return;
  c10::Allocator* base = c10::GetCPUAllocator();
  if (!base->raw_deleter()) return;  // blocks that cannot be freed by address: not counted
  static CountingCpuAllocator counting(base, base->raw_deleter());  // lives for the process
  c10::SetCPUAllocator(&counting, /*priority=*/1);
  tracking = c10::GetCPUAllocator() == &counting;
}

bool tracking_cpu_memory() { return tracking; }

MemoryStats memory_stats(const c10::Device& device) {
#ifdef MOETRAIN_MEMORY_STATS_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    const auto& all = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)];
    return {all.current, all.peak};
  }
#endif
  if (!device.is_cpu()) return {};
  return {cpu_allocated.load(std::memory_order_relaxed), cpu_peak.load(std::memory_order_relaxed)};
}

void reset_memory_peak(const c10::Device& device) {
#ifdef MOETRAIN_MEMORY_STATS_CUDA
  if (device.is_cuda()) {
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
    return;
  }
#endif
  if (device.is_cpu())
    cpu_peak.store(cpu_allocated.load(std::memory_order_relaxed), std::memory_order_relaxed);
}

}  // namespace moetrain::util
