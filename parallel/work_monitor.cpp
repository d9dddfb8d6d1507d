#include "parallel/work_monitor.h"

#include <cstdio>

namespace moetrain::parallel {
namespace {

using Clock = std::chrono::steady_clock;

std::string tenths(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f", s);
  return buf;
}

// The default handler: a timeout ends the process (the watchdog's exit code, its flight record); an
// asynchronous error is printed and left to the owning communicator, which throws it on its next call.
void default_failure_handler(const WorkFailure& failure) {
  if (failure.kind == WorkFailure::Kind::kTimeout) WorkMonitor::report_and_exit(failure);
  std::fprintf(stderr, "moe-train: rank %d: %s\n", watchdog().settings().world_rank,
               failure.describe().c_str());
}

}  // namespace

std::string WorkFailure::describe() const {
  return op + " in group " + group + ", collective #" + std::to_string(sequence) + " of the group, at step " +
         std::to_string(step) + ": " + what;
}

WorkMonitor::WorkMonitor(double timeout_s, FailureHandler on_failure, std::chrono::microseconds poll)
    : on_failure_(on_failure ? std::move(on_failure) : FailureHandler(default_failure_handler)),
      poll_(poll),
      timeout_s_(timeout_s) {
  thread_ = std::thread([this] { run(); });
}

WorkMonitor::~WorkMonitor() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

void WorkMonitor::add(PendingWork work) {
  std::lock_guard<std::mutex> lock(mutex_);
  pending_.push_back({std::move(work), Clock::now()});
}

size_t WorkMonitor::pending() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return pending_.size();
}

void WorkMonitor::set_timeout_s(double timeout_s) {
  std::lock_guard<std::mutex> lock(mutex_);
  timeout_s_ = timeout_s;
}

bool WorkMonitor::drain(const void* owner) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] {
    for (const auto& e : pending_)
      if (e.work.owner == owner) return stop_;
    return true;
  });
  for (const auto& [o, f] : failures_)
    if (o == owner) return false;
  return true;
}

std::optional<WorkFailure> WorkMonitor::failure_of(const void* owner) const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& [o, f] : failures_)
    if (o == owner) return f;
  return std::nullopt;
}

void WorkMonitor::run() {
  while (poll_once()) {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait_for(lock, poll_, [&] { return stop_; });
  }
}

bool WorkMonitor::poll_once() {
  std::list<Entry> finished;  // destroyed after the lock is released: tensors freed, Waits ended
  std::optional<WorkFailure> failure;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stop_) return false;
    const auto now = Clock::now();
    for (auto it = pending_.begin(); it != pending_.end() && !failure;) {
      PendingWork& w = it->work;
      if (w.done && w.done()) {
        auto next = std::next(it);
        finished.splice(finished.end(), pending_, it);
        it = next;
        continue;
      }
      const double waited = std::chrono::duration<double>(now - it->enqueued).count();
      const std::string error = w.error ? w.error() : std::string();
      if (!error.empty() || (timeout_s_ > 0 && waited >= timeout_s_)) {
        WorkFailure f;
        f.kind = error.empty() ? WorkFailure::Kind::kTimeout : WorkFailure::Kind::kError;
        f.group = w.group, f.op = w.op, f.sequence = w.sequence, f.step = w.step, f.waited_s = waited;
        f.what = error.empty()
                     ? "no completion after " + tenths(waited) +
                           " s (parallel.timeout_s = " + tenths(timeout_s_) + "); a peer has probably failed"
                     : error;
        failures_.emplace_back(w.owner, f);
        failure = f;
      }
      ++it;
    }
    if (failure) {
      // Abort every transport with pending work: kernels waiting on a lost peer return, and nothing
      // enqueued behind them runs. The works are dropped; their owners throw the failure.
      for (auto& e : pending_) {
        if (e.work.abort) e.work.abort();
        if (e.work.wait) e.work.wait->abandon();  // never completed: the flight record shows it in flight
        if (e.work.owner != nullptr) {
          bool known = false;
          for (const auto& [o, f] : failures_) known = known || o == e.work.owner;
          if (!known) failures_.emplace_back(e.work.owner, *failure);
        }
      }
      finished.splice(finished.end(), pending_);
    }
  }
  if (failure) on_failure_(*failure);  // the default handler of a timeout does not return
  if (!finished.empty()) changed_.notify_all();
  finished.clear();
  return true;
}

void WorkMonitor::report_and_exit(const WorkFailure& failure) {
  watchdog().expire_detached("collective on the device timed out: " + failure.describe());
}

WorkMonitor& work_monitor() {
  // Never destroyed: its thread may outlive static destruction, and pending works are drained by their
  // communicators before they go.
  static WorkMonitor* monitor = new WorkMonitor(watchdog().settings().timeout_s);
  return *monitor;
}

}  // namespace moetrain::parallel
