// The thread that watches collectives enqueued on a device stream (ProcessGroupNCCL's watchdog model).
//
// A stream-ordered backend (NCCL) never blocks the host on a collective: it enqueues the operation on its
// own stream, orders it against the compute stream with events, and hands the monitor a PendingWork. The
// monitor's thread polls every pending work: done() (the end event), error() (the transport's asynchronous
// error) and the deadline (parallel.timeout_s from the moment it was enqueued). While a work is pending the
// monitor holds its tensors, so the caching allocator cannot hand their memory to anyone else while the
// device still reads or writes it; when done() turns true they are released and the work's watchdog Wait
// ends (its flight record is completed and its time in flight tallied, parallel/comm_clock.h).
//
// On an error or a passed deadline the monitor aborts the transport of every pending work (so kernels
// spinning on a lost peer return) and calls the failure handler with the work and why. The default handler
// prints the collective, its group, step and waiting time, writes the flight record and ends the process
// with kCollectiveTimeoutExitCode, as the watchdog does for host-side waits (parallel/watchdog.h); an
// asynchronous error (not a timeout) is also kept, and the owning communicator throws it on its next call.
//
// Every method is thread-safe. The host-side logic is device-free: done/error/abort are plain functions,
// so the CPU tests drive it with flags (tests/unit/parallel/work_monitor_test.cpp).
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "parallel/watchdog.h"

namespace moetrain::parallel {

struct PendingWork {
  const void* owner = nullptr;         // the communicator: drain(owner) waits for its works
  std::string group, op;               // "dp", "all_reduce_sum_async": for the failure report
  int64_t sequence = 0, step = 0;      // the collective's number in its group; the step it began in
  std::function<bool()> done;          // true once the device finished it (cudaEventQuery of its end event)
  std::function<std::string()> error;  // non-empty: the transport failed (ncclCommGetAsyncError), and why
  std::function<void()> abort;         // ends the transport so its kernels return (ncclCommAbort); once
  std::vector<torch::Tensor> keep_alive;  // released once done()
  std::optional<Watchdog::Wait> wait;     // ends once done() (flight record, time in flight)
};

// Why a work failed: kTimeout (its deadline passed) or kError (error() was non-empty).
struct WorkFailure {
  enum class Kind { kTimeout, kError };
  Kind kind = Kind::kTimeout;
  std::string group, op, what;  // what: the transport's message, or "no completion after 600.0 s"
  int64_t sequence = 0, step = 0;
  double waited_s = 0;
  std::string describe() const;  // "all_reduce_sum_async in group dp, collective #41 of the group, at step 3: ..."
};

class WorkMonitor {
 public:
  using FailureHandler = std::function<void(const WorkFailure&)>;
  // timeout_s ≤ 0: no deadline (errors are still caught). poll: how often the thread looks.
  explicit WorkMonitor(double timeout_s, FailureHandler on_failure = {},
                       std::chrono::microseconds poll = std::chrono::microseconds(500));
  ~WorkMonitor();  // stops the thread; works still pending are released without waiting
  WorkMonitor(const WorkMonitor&) = delete;
  WorkMonitor& operator=(const WorkMonitor&) = delete;

  void add(PendingWork work);
  size_t pending() const;
  // Blocks until none of `owner`'s works is pending (a communicator calls it before it is destroyed).
  // Returns false if a failure ended them instead.
  bool drain(const void* owner);
  // The first asynchronous error of one of `owner`'s works, if any (the communicator throws it).
  std::optional<WorkFailure> failure_of(const void* owner) const;
  void set_timeout_s(double timeout_s);

  // The default handler: prints the failure to stderr, writes the watchdog's flight record and ends the
  // process with kCollectiveTimeoutExitCode.
  static void report_and_exit(const WorkFailure& failure);

 private:
  void run();
  bool poll_once();  // one pass over the pending works; false once stopped

  FailureHandler on_failure_;
  std::chrono::microseconds poll_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  struct Entry {
    PendingWork work;
    std::chrono::steady_clock::time_point enqueued;
  };
  std::list<Entry> pending_;
  std::vector<std::pair<const void*, WorkFailure>> failures_;
  double timeout_s_;
  bool stop_ = false;
  std::thread thread_;
};

// The process's monitor, created on first use with parallel.timeout_s from the watchdog's settings.
WorkMonitor& work_monitor();

}  // namespace moetrain::parallel
