// The safetensors format (Hugging Face): u64 little-endian header length N, N bytes of JSON
//   {"<name>": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ..., "__metadata__": {...}}
// padded with spaces to 8 bytes, then the raw little-endian tensor bytes (offsets relative to them).
// Used for checkpoint shards and for Hugging Face export/import.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace moetrain::io {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// The file's bytes for `tensors` (CPU; F32, F16, BF16, I64, I32, U8, BOOL), stored in the given order.
std::string encode_safetensors(const NamedTensors& tensors,
                               const std::map<std::string, std::string>& metadata = {});

// Writes `bytes` to `path` and fsyncs the file; throws naming the path (and the errno text) on failure.
void write_file_synced(const std::string& path, const std::string& bytes);

// The same file as write_file_synced(path, encode_safetensors(tensors, metadata)), streamed: the header,
// then one tensor at a time, so no copy of the whole file is ever in memory. `floats_as`: floating-point
// tensors are stored in this dtype, each converted as it is written (integer and byte tensors as they are).
// Returns the file's size in bytes.
int64_t write_safetensors_synced(const std::string& path, const NamedTensors& tensors,
                                 const std::map<std::string, std::string>& metadata = {},
                                 std::optional<torch::ScalarType> floats_as = std::nullopt);

// A tensor named, shaped and typed up front and materialised only when it is written, so a file of any
// size is written holding one tensor at a time (moe-import never builds the model it converts).
struct LazyTensor {
  std::string name;
  std::vector<int64_t> shape;
  torch::ScalarType dtype = torch::kFloat32;
  std::function<torch::Tensor()> read;  // must return `shape` (checked) in any dtype (converted)
};

// write_safetensors_synced for lazy tensors: each `read` is called once, in order, as its bytes are written.
int64_t write_safetensors_synced(const std::string& path, const std::vector<LazyTensor>& tensors,
                                 const std::map<std::string, std::string>& metadata = {},
                                 std::optional<torch::ScalarType> floats_as = std::nullopt);

// A safetensors file read with pread: the constructor reads and validates the header against the file size
// (offsets inside the data, byte counts equal to shape × dtype size) and throws naming the file; get() and
// get_rows() read only the bytes of what they return, so a process holds in memory only what it asked for
// (the kernel's page cache is not the process's resident memory).
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
  // Rows [first, first + count) of dim 0 of the tensor (a tensor of at least one dimension): shape
  // (count, rest of the shape). Reads only those bytes. Throws naming the file and tensor when out of range.
  torch::Tensor get_rows(const std::string& name, int64_t first, int64_t count) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Entry {
    torch::ScalarType dtype;
    std::vector<int64_t> shape;
    size_t begin = 0, end = 0;
    size_t order = 0;
  };
  const Entry& entry(const std::string& name) const;
  void read_header();  // fills size_, data_start_, entries_ and metadata_; throws naming the file
  void read_at(size_t offset, size_t bytes, void* out) const;  // exactly `bytes` at file offset `offset`
  std::string path_;
  int fd_ = -1;
  size_t size_ = 0;
  size_t data_start_ = 0;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace moetrain::io
