#include "csrc/util/memory_stats.h"

#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

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

// Each block is the base allocator's DataPtr plus its size, freed through our deleter, which counts it out.
struct CountedBlock {
  c10::DataPtr inner;
  int64_t bytes;
};

class CountingCpuAllocator final : public c10::Allocator {
 public:
  explicit CountingCpuAllocator(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner = base_->allocate(n);
    void* data = inner.get();
    const c10::Device device = inner.device();
    const auto bytes = static_cast<int64_t>(n);
    raise_peak(cpu_allocated.fetch_add(bytes, std::memory_order_relaxed) + bytes);
    return {data, new CountedBlock{std::move(inner), bytes}, &free_block, device};
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }

 private:
  static void free_block(void* context) {
    auto* block = static_cast<CountedBlock*>(context);
    cpu_allocated.fetch_sub(block->bytes, std::memory_order_relaxed);
    delete block;  // frees the memory through the base allocator's deleter
  }
  c10::Allocator* base_;
};

bool tracking = false;

}  // namespace

void track_cpu_memory() {
  if (tracking) return;
  const char* env = std::getenv("MOETRAIN_COUNT_CPU_MEMORY");
  if (env && std::string(env) == "0") return;
  static CountingCpuAllocator counting(c10::GetCPUAllocator());  // lives for the process
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
