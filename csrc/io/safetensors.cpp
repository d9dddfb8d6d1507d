#include "csrc/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace moetrain::io {
namespace {

using nlohmann::json;

const std::vector<std::pair<torch::ScalarType, std::string>>& dtype_names() {
  static const std::vector<std::pair<torch::ScalarType, std::string>> names{
      {torch::kFloat32, "F32"}, {torch::kFloat16, "F16"}, {torch::kBFloat16, "BF16"}, {torch::kFloat64, "F64"},
      {torch::kInt64, "I64"},   {torch::kInt32, "I32"},   {torch::kUInt8, "U8"},      {torch::kBool, "BOOL"}};
  return names;
}

std::string dtype_name(torch::ScalarType t) {
  for (const auto& [type, name] : dtype_names())
    if (type == t) return name;
  throw std::invalid_argument(std::string("safetensors: unsupported dtype ") + c10::toString(t));
}

}  // namespace

std::string encode_safetensors(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> contiguous;
  size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (header.contains(name)) throw std::invalid_argument("safetensors: tensor name " + name + " appears twice");
    auto c = t.detach().to(torch::kCPU).contiguous();
    const size_t bytes = c.numel() * c.element_size();
    header[name] = {{"dtype", dtype_name(c.scalar_type())}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(c);
  }
  std::string text = header.dump();
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out += text;
  out.reserve(out.size() + offset);
  for (const auto& c : contiguous) out.append(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  return out;
}

void write_file_synced(const std::string& path, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw std::runtime_error(path + ": cannot create (" + std::strerror(errno) + ")");
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      const std::string why = std::strerror(errno);
      ::close(fd);
      throw std::runtime_error(path + ": write failed (" + why + "); is the disk full?");
    }
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) throw std::runtime_error(path + ": fsync failed (" + std::strerror(errno) + ")");
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error(path + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st {};
  ::fstat(fd, &st);
  size_ = static_cast<size_t>(st.st_size);
  if (size_ < 8) {
    ::close(fd);
    throw std::runtime_error(path + ": " + std::to_string(size_) + " bytes is too short for a safetensors file (truncated?)");
  }
  map_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw std::runtime_error(path + ": cannot map (" + std::strerror(errno) + ")");
  }
  const auto* bytes = static_cast<const unsigned char*>(map_);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  auto fail = [&](const std::string& why) {
    ::munmap(map_, size_);
    map_ = nullptr;
    throw std::runtime_error(path + ": not a valid safetensors file: " + why);
  };
  if (n > size_ - 8) fail("header length " + std::to_string(n) + " exceeds the file size " + std::to_string(size_));
  data_start_ = 8 + n;
  json header;
  try {
    header = json::parse(std::string(reinterpret_cast<const char*>(bytes) + 8, n));
  } catch (const std::exception& e) {
    fail(std::string("header is not JSON: ") + e.what());
  }
  if (!header.is_object()) fail("header is not a JSON object");
  size_t order = 0;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      for (auto m = it->begin(); m != it->end(); ++m)
        if (m->is_string()) metadata_[m.key()] = m->get<std::string>();
      continue;
    }
    try {
      Entry e;
      const std::string dtype = it->at("dtype").get<std::string>();
      bool known = false;
      for (const auto& [type, name] : dtype_names())
        if (name == dtype) e.dtype = type, known = true;
      if (!known) fail("tensor " + it.key() + " has unsupported dtype " + dtype);
      e.shape = it->at("shape").get<std::vector<int64_t>>();
      const auto offsets = it->at("data_offsets").get<std::vector<size_t>>();
      if (offsets.size() != 2 || offsets[0] > offsets[1] || offsets[1] > size_ - data_start_) {
        fail("tensor " + it.key() + " has data_offsets outside the file (truncated?)");
      }
      e.begin = offsets[0], e.end = offsets[1];
      int64_t numel = 1;
      for (auto d : e.shape) numel *= d;
      if (static_cast<size_t>(numel) * c10::elementSize(e.dtype) != e.end - e.begin) {
        fail("tensor " + it.key() + " byte count does not match its shape and dtype");
      }
      e.order = order++;
      entries_[it.key()] = e;
    } catch (const nlohmann::json::exception& ex) {
      fail("tensor " + it.key() + ": " + ex.what());
    }
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, size_);
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
  if (e.end > e.begin) std::memcpy(out.data_ptr(), static_cast<const char*>(map_) + data_start_ + e.begin, e.end - e.begin);
  return out;
}

}  // namespace moetrain::io
