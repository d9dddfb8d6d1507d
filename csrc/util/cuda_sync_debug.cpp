#include "csrc/util/cuda_sync_debug.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

// The same guard as host_sync.cpp: c10_cuda's header and the CUDA runtime's headers are both needed.
#if __has_include(<c10/cuda/CUDAFunctions.h>) && __has_include(<cuda_runtime_api.h>)
#include <c10/cuda/CUDAFunctions.h>
#define MOETRAIN_SYNC_DEBUG_CUDA 1
#endif

namespace moetrain::util {

SyncDebugSettings sync_debug_from_env(const std::function<const char*(const char*)>& getenv_fn) {
  SyncDebugSettings s;
  if (const char* raw = getenv_fn("MOETRAIN_CUDA_SYNC_DEBUG")) {
    const std::string v = raw;
    if (v.empty() || v == "off" || v == "0") s.mode = SyncDebugMode::kOff;
    else if (v == "warn") s.mode = SyncDebugMode::kWarn;
    else if (v == "error") s.mode = SyncDebugMode::kError;
    else throw std::invalid_argument("MOETRAIN_CUDA_SYNC_DEBUG=\"" + v + "\": must be off, warn or error");
  }
  if (const char* raw = getenv_fn("MOETRAIN_CUDA_SYNC_DEBUG_AFTER")) {
    char* end = nullptr;
    const long long n = std::strtoll(raw, &end, 10);
    if (*raw == '\0' || *end != '\0' || n < 0) {
      throw std::invalid_argument(std::string("MOETRAIN_CUDA_SYNC_DEBUG_AFTER=\"") + raw +
                                  "\": must be a non-negative number of steps");
    }
    s.after_steps = n;
  }
  return s;
}

SyncDebugSettings sync_debug_from_env() {
  return sync_debug_from_env([](const char* name) { return std::getenv(name); });
}

const char* to_string(SyncDebugMode mode) {
  switch (mode) {
    case SyncDebugMode::kWarn: return "warn";
    case SyncDebugMode::kError: return "error";
    default: return "off";
  }
}

bool cuda_sync_debug_supported() {
#ifdef MOETRAIN_SYNC_DEBUG_CUDA
  return true;
#else
  return false;
#endif
}

void set_cuda_sync_debug(SyncDebugMode mode) {
#ifdef MOETRAIN_SYNC_DEBUG_CUDA
  const auto level = mode == SyncDebugMode::kError  ? c10::cuda::SyncDebugMode::L_ERROR
                     : mode == SyncDebugMode::kWarn ? c10::cuda::SyncDebugMode::L_WARN
                                                    : c10::cuda::SyncDebugMode::L_DISABLED;
  c10::cuda::warning_state().set_sync_debug_mode(level);
#else
  if (mode != SyncDebugMode::kOff) {
    throw std::runtime_error(std::string("CUDA sync debug mode ") + to_string(mode) +
                             ": this build has no CUDA headers (configured without the CUDA toolkit)");
  }
#endif
}

SyncDebugMode cuda_sync_debug() {
#ifdef MOETRAIN_SYNC_DEBUG_CUDA
  switch (c10::cuda::warning_state().get_sync_debug_mode()) {
    case c10::cuda::SyncDebugMode::L_ERROR: return SyncDebugMode::kError;
    case c10::cuda::SyncDebugMode::L_WARN: return SyncDebugMode::kWarn;
    default: return SyncDebugMode::kOff;
  }
#else
  return SyncDebugMode::kOff;
#endif
}

SteadyStateSyncDebug::SteadyStateSyncDebug(SyncDebugSettings settings) : settings_(settings) {
  if (settings_.mode != SyncDebugMode::kOff && !cuda_sync_debug_supported())
    set_cuda_sync_debug(settings_.mode);
}

SteadyStateSyncDebug::~SteadyStateSyncDebug() {
  if (active_) set_cuda_sync_debug(SyncDebugMode::kOff);
}

void SteadyStateSyncDebug::step_begins(int64_t steps_done) {
  if (settings_.mode == SyncDebugMode::kOff || active_ || steps_done < settings_.after_steps) return;
  set_cuda_sync_debug(settings_.mode);
  active_ = true;
  if (!announced_) {
    std::fprintf(stderr, "moetrain: CUDA sync debug mode %s from step %lld\n", to_string(settings_.mode),
                 static_cast<long long>(steps_done + 1));
    announced_ = true;
  }
}

SyncDebugPause::SyncDebugPause() : saved_(cuda_sync_debug()) {
  if (saved_ != SyncDebugMode::kOff) set_cuda_sync_debug(SyncDebugMode::kOff);
}

SyncDebugPause::~SyncDebugPause() {
  if (saved_ != SyncDebugMode::kOff) set_cuda_sync_debug(saved_);
}

bool is_sync_debug_warning(const std::string& message) {
  return message.find("called a synchronizing CUDA operation") != std::string::npos;
}

struct SyncWarningCount::Handler : c10::WarningHandler {
  c10::WarningHandler* previous = c10::WarningUtils::get_warning_handler();
  std::atomic<int64_t> count{0};
  void process(const c10::Warning& warning) override {
    if (is_sync_debug_warning(warning.msg())) ++count;
    else previous->process(warning);
  }
};

SyncWarningCount::SyncWarningCount() : handler_(std::make_unique<Handler>()) {
  c10::WarningUtils::set_warning_handler(handler_.get());
}

SyncWarningCount::~SyncWarningCount() { c10::WarningUtils::set_warning_handler(handler_->previous); }

int64_t SyncWarningCount::count() const { return handler_->count.load(); }

}  // namespace moetrain::util
