#include "csrc/util/host_sync.h"

#include <algorithm>
#include <mutex>

// CUDA's sync debug mode is a c10_cuda setting; without the CUDA headers no tensor can be on a GPU here
// that needs it lifted (a torch without CUDA, or a build machine without the toolkit).
#if __has_include(<c10/cuda/CUDAFunctions.h>) && __has_include(<cuda_runtime_api.h>)
#include <c10/cuda/CUDAFunctions.h>
#define MOETRAIN_HOST_SYNC_CUDA 1
#endif

namespace moetrain::util {
namespace {

std::mutex counters_mutex;
std::vector<std::vector<std::string>*> active_counters;  // the names_ of every live HostReadCount

#ifdef MOETRAIN_HOST_SYNC_CUDA
// Lifts CUDA's sync debug mode for one sanctioned read, and restores it.
class SanctionedSync {
 public:
  explicit SanctionedSync(bool on_cuda) : on_(on_cuda) {
    if (!on_) return;
    saved_ = c10::cuda::warning_state().get_sync_debug_mode();
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
  }
  ~SanctionedSync() {
    if (on_) c10::cuda::warning_state().set_sync_debug_mode(saved_);
  }

 private:
  bool on_;
  c10::cuda::SyncDebugMode saved_ = c10::cuda::SyncDebugMode::L_DISABLED;
};
#endif

}  // namespace

torch::Tensor read_to_host(const torch::Tensor& t, const char* what) {
  {
    std::lock_guard<std::mutex> lock(counters_mutex);
    for (auto* names : active_counters) names->emplace_back(what);
  }
#ifdef MOETRAIN_HOST_SYNC_CUDA
  SanctionedSync sanctioned(t.is_cuda());
#endif
  return t.to(torch::kCPU).contiguous();
}

HostReadCount::HostReadCount() {
  std::lock_guard<std::mutex> lock(counters_mutex);
  active_counters.push_back(&names_);
}

HostReadCount::~HostReadCount() {
  std::lock_guard<std::mutex> lock(counters_mutex);
  active_counters.erase(std::find(active_counters.begin(), active_counters.end(), &names_));
}

int64_t HostReadCount::reads() const {
  std::lock_guard<std::mutex> lock(counters_mutex);
  return static_cast<int64_t>(names_.size());
}

std::vector<std::string> HostReadCount::names() const {
  std::lock_guard<std::mutex> lock(counters_mutex);
  return names_;
}

}  // namespace moetrain::util
