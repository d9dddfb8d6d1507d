// Writes TensorBoard scalar summaries: one events.out.tfevents.* file of TFRecord-framed Event protos
// (uint64 length, masked CRC32C of the length, payload, masked CRC32C of the payload).
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace moetrain::trainer {

class EventWriter {
 public:
  // Creates DIR/events.out.tfevents.<unix seconds>.<host> and writes the file_version record.
  explicit EventWriter(const std::string& dir);
  void scalars(int64_t step, const std::vector<std::pair<std::string, double>>& values);
  // Marks a restart at `step`: TensorBoard forgets the events of steps >= step read before it.
  void session_start(int64_t step);
  void flush() { out_.flush(); }
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& payload);
  std::string path_;
  std::ofstream out_;
};

// CRC-32C (Castagnoli), as TFRecord uses; exposed for tests.
uint32_t crc32c(const void* data, size_t size);
uint32_t masked_crc32c(const void* data, size_t size);

}  // namespace moetrain::trainer
