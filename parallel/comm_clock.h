// Time and bytes of the collectives this process entered, by group and operation, since the last take():
// the per-step communication figures of metrics.jsonl (`comm`, docs/training.md). Every backend's
// collectives pass through Watchdog::enter, whose Wait adds its time here when it ends.
//
// What the seconds mean: on the host backends (MPI, the store) a collective returns when its data has
// arrived, so its time is the transfer plus the wait for the slowest peer to join. On NCCL it is the time
// the host spent enqueueing it, and its time on the device stream, from enqueue to its end event, is
// tallied apart as "OP/on_stream" (overlapped: the host did not wait). A collective started without waiting (an op named "..._async") is tallied
// twice: its time in flight, from start to end, which overlaps other work (`overlapped`), and under
// "OP/wait" the time the host blocked in Work::wait for it. Thread-safe (autograd may run collectives from
// its device threads).
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace moetrain::parallel {

struct CommTally {
  std::string group;  // "ep", "dp", "expert_dp", "tp", "world"
  std::string op;     // "all_to_all_v", "all_reduce_sum", ...
  int64_t calls = 0;
  double seconds = 0;
  int64_t bytes = 0;        // the operation's payload as the watchdog records it (this rank's send buffer)
  bool overlapped = false;  // time in flight of an asynchronous collective: not time the host waited
  int64_t host_waits = 0;   // calls in which the host waited for the peers (0 for enqueues and flights)
};

class CommClock {
 public:
  // host_waits: how many host waits the call was (-1: 0 for an overlapped op, "..._async" or
  // "/on_stream", else 1; a stream-ordered enqueue passes 0).
  void add(const std::string& group, const std::string& op, double seconds, int64_t bytes,
           int64_t host_waits = -1);
  // The tallies since the last take(), in order of first use; starts over.
  std::vector<CommTally> take();

 private:
  std::mutex mutex_;
  std::vector<CommTally> tallies_;
};

CommClock& comm_clock();  // this process's

}  // namespace moetrain::parallel
