#include "csrc/io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <tuple>

namespace moetrain::io {
namespace {

using nlohmann::json;

const std::vector<std::pair<torch::ScalarType, std::string>>& dtype_names() {
  static const std::vector<std::pair<torch::ScalarType, std::string>> names{
      {torch::kFloat32, "F32"}, {torch::kFloat16, "F16"}, {torch::kBFloat16, "BF16"},
      {torch::kFloat64, "F64"}, {torch::kInt64, "I64"},   {torch::kInt32, "I32"},
      {torch::kUInt8, "U8"},    {torch::kBool, "BOOL"}};
  return names;
}

// The integers >= 0 of a JSON array (shape, data_offsets); nullopt for anything else (a float or a
// negative value would otherwise be converted, not refused).
std::optional<std::vector<uint64_t>> counts(const json& array) {
  if (!array.is_array()) return std::nullopt;
  std::vector<uint64_t> out;
  for (const auto& v : array) {
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0)) return std::nullopt;
    out.push_back(v.get<uint64_t>());
  }
  return out;
}

std::string dtype_name(torch::ScalarType t) {
  for (const auto& [type, name] : dtype_names())
    if (type == t) return name;
  throw std::invalid_argument(std::string("safetensors: unsupported dtype ") + c10::toString(t));
}

// The header text (length prefix included) for tensors stored as `entries` (name, shape, stored dtype).
std::string header_bytes(const std::vector<std::tuple<std::string, std::vector<int64_t>, torch::ScalarType>>& entries,
                         const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  for (const auto& [name, shape, dtype] : entries) {
    if (header.contains(name))
      throw std::invalid_argument("safetensors: tensor name " + name + " appears twice");
    size_t numel = 1;
    for (const int64_t d : shape) numel *= static_cast<size_t>(d);
    const size_t bytes = numel * c10::elementSize(dtype);
    header[name] = {{"dtype", dtype_name(dtype)}, {"shape", shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + text;
}

template <class DtypeOf>
std::string header_bytes(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata,
                         DtypeOf dtype_of) {
  std::vector<std::tuple<std::string, std::vector<int64_t>, torch::ScalarType>> entries;
  for (const auto& [name, t] : tensors) entries.emplace_back(name, t.sizes().vec(), dtype_of(t));
  return header_bytes(entries, metadata);
}

void write_all(int fd, const std::string& path, const char* data, size_t size) {
  size_t done = 0;
  while (done < size) {
    const ssize_t w = ::write(fd, data + done, size - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      const std::string why = std::strerror(errno);
      ::close(fd);
      throw std::runtime_error(path + ": write failed (" + why + "); is the disk full?");
    }
    done += static_cast<size_t>(w);
  }
}

[[noreturn]] void invalid(const std::string& path, const std::string& why) {
  throw std::runtime_error(path + ": not a valid safetensors file: " + why);
}

// One tensor's entry of a header.
struct TensorEntry {
  torch::ScalarType dtype;
  std::vector<int64_t> shape;
  size_t begin = 0, end = 0;  // data_offsets, from the end of the header
};

// The entry `name` of the header of `path`, {"dtype", "shape", "data_offsets"}, checked: a known dtype,
// shape and offsets integers >= 0, offsets inside the `data_bytes` after the header, and a byte count that
// matches the shape (computed without overflow: a huge shape must not wrap around to the stored size).
// A missing or mistyped field throws nlohmann::json::exception.
TensorEntry parse_entry(const std::string& path, const std::string& name, const json& value, size_t data_bytes) {
  TensorEntry e;
  const std::string dtype = value.at("dtype").get<std::string>();
  bool known = false;
  for (const auto& [type, type_name] : dtype_names())
    if (type_name == dtype) e.dtype = type, known = true;
  if (!known) invalid(path, "tensor " + name + " has unsupported dtype " + dtype);
  const auto shape = counts(value.at("shape")), offsets = counts(value.at("data_offsets"));
  if (!shape)
    invalid(path, "tensor " + name + " has shape " + value.at("shape").dump().substr(0, 80) +
                      ": must be integers >= 0");
  if (!offsets || offsets->size() != 2 || (*offsets)[0] > (*offsets)[1] || (*offsets)[1] > data_bytes) {
    invalid(path, "tensor " + name + " has data_offsets outside the file (truncated?)");
  }
  e.begin = (*offsets)[0], e.end = (*offsets)[1];
  uint64_t bytes = c10::elementSize(e.dtype);
  for (uint64_t d : *shape) {
    if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        __builtin_mul_overflow(bytes, d, &bytes)) {
      invalid(path, "tensor " + name + " has a shape too large for any file");
    }
    e.shape.push_back(static_cast<int64_t>(d));
  }
  if (bytes != e.end - e.begin)
    invalid(path, "tensor " + name + " byte count does not match its shape and dtype");
  return e;
}

}  // namespace

std::string encode_safetensors(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata) {
  std::string out = header_bytes(tensors, metadata, [](const torch::Tensor& t) { return t.scalar_type(); });
  for (const auto& item : tensors) {
    auto c = item.second.detach().to(torch::kCPU).contiguous();
    out.append(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  }
  return out;
}

int64_t write_safetensors_synced(const std::string& path, const std::vector<LazyTensor>& tensors,
                                 const std::map<std::string, std::string>& metadata,
                                 std::optional<torch::ScalarType> floats_as) {
  auto stored = [&](torch::ScalarType t) { return floats_as && at::isFloatingType(t) ? *floats_as : t; };
  std::vector<std::tuple<std::string, std::vector<int64_t>, torch::ScalarType>> entries;
  for (const auto& t : tensors) entries.emplace_back(t.name, t.shape, stored(t.dtype));
  const std::string header = header_bytes(entries, metadata);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw std::runtime_error(path + ": cannot create (" + std::strerror(errno) + ")");
  write_all(fd, path, header.data(), header.size());
  int64_t bytes = static_cast<int64_t>(header.size());
  for (const auto& t : tensors) {  // one materialised tensor in memory at a time
    torch::Tensor c;
    try {
      c = t.read();
    } catch (...) {
      ::close(fd);
      throw;
    }
    if (c.sizes().vec() != t.shape) {
      ::close(fd);
      throw std::logic_error("safetensors: " + t.name +
                             " was declared with another shape than its reader returned");
    }
    c = c.detach().to(torch::kCPU).to(stored(t.dtype)).contiguous();
    const size_t n = c.numel() * c.element_size();
    write_all(fd, path, static_cast<const char*>(c.data_ptr()), n);
    bytes += static_cast<int64_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0)
    throw std::runtime_error(path + ": fsync failed (" + std::strerror(errno) + ")");
  return bytes;
}

int64_t write_safetensors_synced(const std::string& path, const NamedTensors& tensors,
                                 const std::map<std::string, std::string>& metadata,
                                 std::optional<torch::ScalarType> floats_as) {
  std::vector<LazyTensor> lazy;
  lazy.reserve(tensors.size());
  for (const auto& item : tensors) {
    const torch::Tensor& t = item.second;  // the caller's tensors outlive the call
    lazy.push_back({item.first, t.sizes().vec(), t.scalar_type(), [&t] { return t; }});
  }
  return write_safetensors_synced(path, lazy, metadata, floats_as);
}

void write_file_synced(const std::string& path, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw std::runtime_error(path + ": cannot create (" + std::strerror(errno) + ")");
  write_all(fd, path, bytes.data(), bytes.size());
  if (::fsync(fd) != 0 || ::close(fd) != 0)
    throw std::runtime_error(path + ": fsync failed (" + std::strerror(errno) + ")");
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw std::runtime_error(path + ": cannot open (" + std::strerror(errno) + ")");
  try {
    read_header();
  } catch (...) {  // the destructor does not run when the constructor throws
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

void SafetensorsFile::read_header() {
  const std::string& path = path_;
  auto fail = [&](const std::string& why) { invalid(path, why); };
  struct stat st {};
  ::fstat(fd_, &st);
  size_ = static_cast<size_t>(st.st_size);
  if (size_ < 8) {
    throw std::runtime_error(path + ": " + std::to_string(size_) +
                             " bytes is too short for a safetensors file (truncated?)");
  }
  unsigned char prefix[8];
  read_at(0, 8, prefix);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | prefix[i];
  if (n > size_ - 8)
    fail("header length " + std::to_string(n) + " exceeds the file size " + std::to_string(size_));
  data_start_ = 8 + n;
  std::string header_text(n, '\0');
  read_at(8, n, header_text.data());
  json header;
  try {
    header = json::parse(header_text);
  } catch (const std::exception& e) {
    fail(std::string("header is not JSON: ") + e.what());
  }
  if (!header.is_object()) fail("header is not a JSON object");
  size_t order = 0;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) fail("__metadata__ is not a JSON object of strings");
      for (auto m = it->begin(); m != it->end(); ++m)
        if (m->is_string()) metadata_[m.key()] = m->get<std::string>();
      continue;
    }
    try {
      TensorEntry e = parse_entry(path, it.key(), *it, size_ - data_start_);
      entries_[it.key()] = {e.dtype, std::move(e.shape), e.begin, e.end, order++};
    } catch (const nlohmann::json::exception& ex) {
      fail("tensor " + it.key() + ": " + ex.what());
    }
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0) ::close(fd_);
}

void SafetensorsFile::read_at(size_t offset, size_t bytes, void* out) const {
  auto* dst = static_cast<char*>(out);
  size_t done = 0;
  while (done < bytes) {
    const ssize_t r = ::pread(fd_, dst + done, bytes - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      throw std::runtime_error(path_ + ": read failed at byte " + std::to_string(offset + done) + " (" +
                               (r < 0 ? std::strerror(errno) : "unexpected end of file") +
                               "); was it changed while reading?");
    }
    done += static_cast<size_t>(r);
  }
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out(entries_.size());
  for (const auto& [name, e] : entries_) out[e.order] = name;
  return out;
}

const SafetensorsFile::Entry& SafetensorsFile::entry(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw std::runtime_error(path_ + ": has no tensor " + name);
  return it->second;
}

std::vector<int64_t> SafetensorsFile::shape(const std::string& name) const { return entry(name).shape; }

torch::Tensor SafetensorsFile::get(const std::string& name) const {
  const Entry& e = entry(name);
  auto out = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype));
  if (e.end > e.begin) read_at(data_start_ + e.begin, e.end - e.begin, out.data_ptr());
  return out;
}

torch::Tensor SafetensorsFile::get_rows(const std::string& name, int64_t first, int64_t count) const {
  const Entry& e = entry(name);
  if (e.shape.empty() || first < 0 || count < 0 || first + count > e.shape[0]) {
    throw std::out_of_range(path_ + ": rows [" + std::to_string(first) + ", " +
                            std::to_string(first + count) + ") of " + name + " are outside its " +
                            std::to_string(e.shape.empty() ? 0 : e.shape[0]) + " rows");
  }
  std::vector<int64_t> shape = e.shape;
  shape[0] = count;
  auto out = torch::empty(shape, torch::TensorOptions().dtype(e.dtype));
  const size_t row_bytes = e.shape[0] == 0 ? 0 : (e.end - e.begin) / static_cast<size_t>(e.shape[0]);
  if (row_bytes * count > 0)
    read_at(data_start_ + e.begin + row_bytes * first, row_bytes * count, out.data_ptr());
  return out;
}

}  // namespace moetrain::io
