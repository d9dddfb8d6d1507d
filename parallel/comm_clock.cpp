#include "parallel/comm_clock.h"

namespace moetrain::parallel {

void CommClock::add(const std::string& group, const std::string& op, double seconds, int64_t bytes,
                    int64_t host_waits) {
  auto ends_with = [&](const std::string& tail) {
    return op.size() > tail.size() && op.compare(op.size() - tail.size(), tail.size(), tail) == 0;
  };
  const bool overlapped = ends_with("_async") || ends_with("/on_stream");
  if (host_waits < 0) host_waits = overlapped ? 0 : 1;
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& t : tallies_) {
    if (t.group == group && t.op == op) {
      ++t.calls, t.seconds += seconds, t.bytes += bytes, t.host_waits += host_waits;
      return;
    }
  }
  tallies_.push_back({group, op, 1, seconds, bytes, overlapped, host_waits});
}

std::vector<CommTally> CommClock::take() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<CommTally> out;
  out.swap(tallies_);
  return out;
}

CommClock& comm_clock() {
  static CommClock clock;
  return clock;
}

}  // namespace moetrain::parallel
