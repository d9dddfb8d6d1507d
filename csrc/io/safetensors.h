// The safetensors format (Hugging Face): u64 little-endian header length N, N bytes of JSON
//   {"<name>": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ..., "__metadata__": {...}}
// padded with spaces to 8 bytes, then the raw little-endian tensor bytes (offsets relative to them).
// Used for checkpoint shards and for Hugging Face export/import.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace moetrain::io {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// The file's bytes for `tensors` (CPU; F32, F16, BF16, I64, I32, U8, BOOL), stored in the given order.
std::string encode_safetensors(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata = {});

// Writes `bytes` to `path` and fsyncs the file; throws naming the path (and the errno text) on failure.
void write_file_synced(const std::string& path, const std::string& bytes);

// A memory-mapped safetensors file. The constructor validates the header against the file size
// (offsets inside the data, byte counts equal to shape × dtype size) and throws naming the file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // in file order
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  std::vector<int64_t> shape(const std::string& name) const;
  // A copy of the tensor (owns its memory).
  torch::Tensor get(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Entry {
    torch::ScalarType dtype;
    std::vector<int64_t> shape;
    size_t begin = 0, end = 0;
    size_t order = 0;
  };
  const Entry& entry(const std::string& name) const;
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  size_t data_start_ = 0;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace moetrain::io
