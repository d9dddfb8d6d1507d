#include "parallel/flight_recorder.h"

namespace moetrain::parallel {

FlightRecorder::FlightRecorder(size_t capacity) : ring_(capacity) {}

int64_t FlightRecorder::begin(CollectiveRecord record) {
  std::lock_guard<std::mutex> lock(mutex_);
  ring_[static_cast<size_t>(count_ % static_cast<int64_t>(ring_.size()))] = std::move(record);
  return count_++;
}

void FlightRecorder::finish(int64_t number, double end_s) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (number < count_ - static_cast<int64_t>(ring_.size()) || number >= count_)
    return;  // overwritten, or never begun
  ring_[static_cast<size_t>(number % static_cast<int64_t>(ring_.size()))].end_s = end_s;
}

std::vector<CollectiveRecord> FlightRecorder::records() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<CollectiveRecord> out;
  const int64_t n = static_cast<int64_t>(ring_.size());
  for (int64_t i = std::max<int64_t>(0, count_ - n); i < count_; ++i)
    out.push_back(ring_[static_cast<size_t>(i % n)]);
  return out;
}

nlohmann::json FlightRecorder::to_json() const {
  auto out = nlohmann::json::array();
  for (const auto& r : records()) {
    out.push_back({{"sequence", r.sequence},
                   {"group", r.group},
                   {"backend", r.backend},
                   {"op", r.op},
                   {"bytes", r.bytes},
                   {"step", r.step},
                   {"phase", r.phase},
                   {"start_s", r.start_s},
                   {"end_s", r.end_s < 0 ? nlohmann::json(nullptr) : nlohmann::json(r.end_s)}});
  }
  return out;
}

}  // namespace moetrain::parallel
