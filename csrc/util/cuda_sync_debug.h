// CUDA's synchronisation debug mode for steady-state training steps (launch/gpu-check.sh, docs/gpu.md).
//
// c10 has the mode (c10::cuda::warning_state().set_sync_debug_mode) but reads no environment variable for
// it; Python sets it with torch.cuda.set_sync_debug_mode. moetrain reads two variables:
//   MOETRAIN_CUDA_SYNC_DEBUG        off (default, also when unset or empty) | warn | error
//   MOETRAIN_CUDA_SYNC_DEBUG_AFTER  steps that run without it first (default 2: allocator warm-up, the
//                                   first step's one-off reads), then every step runs under the mode
// In "error" mode any operation that makes the host wait for the GPU (item(), a copy to the host, nonzero
// and other value-dependent shapes, a blocking synchronize) throws, except the reads made through
// util::read_to_host (csrc/util/host_sync.h), which lift the mode for themselves. Evaluation,
// checkpointing and logging read the device on purpose: run them inside a SyncDebugPause.
//
// Built without the CUDA headers (no toolkit on the build machine) the mode can only be "off": asking
// for warn or error then is an error naming this, so a check cannot pass by silently doing nothing.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace moetrain::util {

enum class SyncDebugMode { kOff, kWarn, kError };

struct SyncDebugSettings {
  SyncDebugMode mode = SyncDebugMode::kOff;
  int64_t after_steps = 2;
};

// Parses the two variables through `getenv_fn` (std::getenv by default); throws std::invalid_argument
// naming the variable and its value when one is malformed.
SyncDebugSettings sync_debug_from_env(const std::function<const char*(const char*)>& getenv_fn);
SyncDebugSettings sync_debug_from_env();

const char* to_string(SyncDebugMode mode);

// True when this build can set CUDA's mode (compiled with the CUDA headers).
bool cuda_sync_debug_supported();

// Sets c10's process-wide mode. Throws std::runtime_error for warn or error without CUDA support.
void set_cuda_sync_debug(SyncDebugMode mode);
SyncDebugMode cuda_sync_debug();

// The trainer's switch: construct once before the first step (only when the model is on CUDA), call
// step_begins(steps_done) before each training step. From step `after_steps` on the mode is set, and one
// line goes to stderr when it first is ("moetrain: CUDA sync debug mode error from step N"), which
// launch/gpu-check.sh looks for to know that the trainer honours the variable. The destructor turns it
// off.
class SteadyStateSyncDebug {
 public:
  explicit SteadyStateSyncDebug(SyncDebugSettings settings = sync_debug_from_env());
  ~SteadyStateSyncDebug();
  SteadyStateSyncDebug(const SteadyStateSyncDebug&) = delete;
  SteadyStateSyncDebug& operator=(const SteadyStateSyncDebug&) = delete;

  void step_begins(int64_t steps_done);
  bool active() const { return active_; }

 private:
  SyncDebugSettings settings_;
  bool active_ = false;
  bool announced_ = false;
};

// Turns the mode off for a scope (evaluation, checkpoint saves, metric logging) and restores it.
class SyncDebugPause {
 public:
  SyncDebugPause();
  ~SyncDebugPause();
  SyncDebugPause(const SyncDebugPause&) = delete;
  SyncDebugPause& operator=(const SyncDebugPause&) = delete;

 private:
  SyncDebugMode saved_;
};

// Counts CUDA's sync debug warnings (mode warn: c10 warns "called a synchronizing CUDA operation" at every
// synchronisation) raised by this thread, and by the backward passes it runs (the autograd engine replays
// its device threads' warnings on the thread that called backward), between construction and destruction.
// Other warnings go on to the handler that was installed before. The fp32 checks count their syncs this
// way (torch's grouped-GEMM fallback: one per grouped GEMM), where "error" would stop at the first.
class SyncWarningCount {
 public:
  SyncWarningCount();
  ~SyncWarningCount();
  SyncWarningCount(const SyncWarningCount&) = delete;
  SyncWarningCount& operator=(const SyncWarningCount&) = delete;

  int64_t count() const;

 private:
  struct Handler;
  std::unique_ptr<Handler> handler_;
};

// True when `message` is c10's sync debug warning.
bool is_sync_debug_warning(const std::string& message);

}  // namespace moetrain::util
