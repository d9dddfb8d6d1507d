// A ring of the last collectives this process entered: written to RUN_DIR/flight_recorder/rank<N>.json
// when a collective times out (parallel/watchdog.h, docs/reliability.md), so that a user can line up the
// ranks' records and see which one fell behind.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace moetrain::parallel {

struct CollectiveRecord {
  int64_t sequence = 0;        // index of the collective in its group: the same on every member
  std::string group, backend;  // "ep", "mpi"
  std::string op;              // "all_reduce_sum", "all_to_all_v", ...
  int64_t bytes = 0;           // this rank's payload (send buffer)
  int64_t step = 0;            // util::run_position() when it began
  std::string phase;
  double start_s = 0, end_s = -1;  // wall clock, seconds since the epoch; end_s < 0 while in flight
};

class FlightRecorder {
 public:
  explicit FlightRecorder(size_t capacity = 64);
  // Records a collective that begins; returns its number, for finish().
  int64_t begin(CollectiveRecord record);
  // Marks collective `number` complete, if it is still in the ring.
  void finish(int64_t number, double end_s);
  std::vector<CollectiveRecord> records() const;  // oldest first, at most capacity
  nlohmann::json to_json() const;                 // the records as an array of objects

 private:
  mutable std::mutex mutex_;  // finish() may come from the device-side monitor's thread
  std::vector<CollectiveRecord> ring_;
  int64_t count_ = 0;  // collectives begun; the next goes to ring_[count_ % capacity]
};

}  // namespace moetrain::parallel
