#include "data/indexed_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace moetrain::data {
namespace {

// The value of type T stored at p (unaligned, native byte order).
template <typename T>
T load_as(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
const char* kRemake = "re-create it with moe-data encode (or Megatron's preprocess_data.py)";

size_t dtype_size(uint8_t code) {
  switch (code) {
    case 1:
    case 2: return 1;
    case 3:
    case 8: return 2;
    case 4:
    case 7: return 4;
    case 5:
    case 6: return 8;
    default: return 0;
  }
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(path + ": " + what + "; " + kRemake);
}

template <typename T>
void put(std::ofstream& out, const T& v) {
  out.write(reinterpret_cast<const char*>(&v), sizeof(T));
}

// A token stored as a float (dtype codes 6, 7): an integer value, converted exactly; anything else (NaN,
// infinity, a fraction, beyond int64) is not a token id and an error.
int64_t float_token(double v, const std::string& prefix, int64_t index) {
  if (!(std::fabs(v) < 9.2e18) || v != std::floor(v)) {
    fail(prefix + ".bin",
         "token " + std::to_string(index) + " is " + std::to_string(v) + ", not an integer token id");
  }
  return static_cast<int64_t>(v);
}

// Megatron's .idx header: magic (9 bytes), version (u64), dtype code (u8), sequences (u64), documents (u64).
constexpr size_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;

struct IndexHeader {
  uint8_t code;         // token dtype code (dtype_size)
  uint64_t seqs, docs;  // entries of the sizes and pointers arrays, and of the document index
};

// The whole of the index file `idx_path`.
std::vector<char> read_index_file(const std::string& idx_path) {
  std::ifstream idx(idx_path, std::ios::binary);
  if (!idx)
    throw std::runtime_error(idx_path +
                             ": cannot open; check data prefixes point at PREFIX of PREFIX.idx/PREFIX.bin");
  return std::vector<char>((std::istreambuf_iterator<char>(idx)), std::istreambuf_iterator<char>());
}

// The header of the index `raw`, checked: magic, version 1, a known dtype, and arrays that fit the file.
IndexHeader check_header(const std::vector<char>& raw, const std::string& idx_path) {
  if (raw.size() < kHeaderBytes) {
    fail(idx_path, "truncated header (" + std::to_string(raw.size()) + " bytes, need " +
                       std::to_string(kHeaderBytes) + ")");
  }
  if (std::memcmp(raw.data(), kMagic, 9) != 0) {
    std::string found;
    for (int i = 0; i < 7; ++i) found += std::isprint(static_cast<unsigned char>(raw[i])) ? raw[i] : '?';
    fail(idx_path, "bad magic '" + found + "' (expected Megatron indexed dataset 'MMIDIDX')");
  }
  auto read_u64 = [&](size_t off) {
    uint64_t v;
    std::memcpy(&v, raw.data() + off, 8);
    return v;
  };
  const uint64_t version = read_u64(9);
  if (version != 1) fail(idx_path, "unsupported version " + std::to_string(version) + " (expected 1)");
  const uint8_t code = static_cast<uint8_t>(raw[17]);
  if (dtype_size(code) == 0)
    fail(idx_path, "unknown dtype code " + std::to_string(code) + " (expected 1..8)");
  const uint64_t seqs = read_u64(18), docs = read_u64(26);
  const size_t need = kHeaderBytes + seqs * 4 + seqs * 8 + docs * 8;
  if (seqs > raw.size() || docs > raw.size() || raw.size() < need) {
    fail(idx_path, "truncated index: " + std::to_string(seqs) + " sequences and " + std::to_string(docs) +
                       " document entries need " + std::to_string(need) + " bytes, file has " +
                       std::to_string(raw.size()));
  }
  return {code, seqs, docs};
}

// `count` elements of an index array at byte `offset` of `raw` (an empty one has no storage: memcpy must
// not see its null pointer).
template <typename T>
void read_array(const std::vector<char>& raw, std::vector<T>& out, size_t count, size_t offset) {
  out.resize(count);
  if (count > 0) std::memcpy(out.data(), raw.data() + offset, count * sizeof(out[0]));
}

// The size of the token file `bin_path`: a whole number of tokens of item_size bytes.
size_t bin_file_size(const std::string& bin_path, const std::string& idx_path, size_t item_size) {
  struct stat st {};
  if (::stat(bin_path.c_str(), &st) != 0)
    throw std::runtime_error(bin_path + ": cannot open; the .bin file belongs next to " + idx_path);
  const size_t size = static_cast<size_t>(st.st_size);
  if (size % item_size != 0) {
    fail(bin_path,
         "size " + std::to_string(size) + " is not a multiple of the token size " + std::to_string(item_size));
  }
  return size;
}

// Each sequence's first token in the flat stream (`first`), checking that the pointers (bytes) run on
// from 0 without gaps; returns the bytes all sequences take.
int64_t sequence_starts(const std::vector<int32_t>& lengths, const std::vector<int64_t>& pointers,
                        size_t item_size, const std::string& idx_path, std::vector<int64_t>& first) {
  int64_t expected = 0;
  first.resize(lengths.size());
  for (size_t i = 0; i < lengths.size(); ++i) {
    if (lengths[i] < 0 || pointers[i] != expected) {
      fail(idx_path, "sequence " + std::to_string(i) + " has pointer " + std::to_string(pointers[i]) +
                         " and length " + std::to_string(lengths[i]) + " (expected pointer " +
                         std::to_string(expected) + ")");
    }
    first[i] = expected / static_cast<int64_t>(item_size);
    expected += static_cast<int64_t>(lengths[i]) * static_cast<int64_t>(item_size);
  }
  return expected;
}

// The document index runs from 0 to the sequence count `seqs` and never decreases.
void check_doc_index(const std::vector<int64_t>& doc_index, uint64_t seqs, const std::string& idx_path) {
  if (doc_index.empty() || doc_index.front() != 0 || doc_index.back() != static_cast<int64_t>(seqs)) {
    fail(idx_path, "document index must run from 0 to the sequence count " + std::to_string(seqs));
  }
  for (size_t d = 1; d < doc_index.size(); ++d) {
    if (doc_index[d] < doc_index[d - 1])
      fail(idx_path, "document index decreases at entry " + std::to_string(d));
  }
}

// `size` bytes of `path` mapped read-only; null when empty.
void* map_readonly(const std::string& path, size_t size) {
  if (size == 0) return nullptr;
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error(path + ": cannot open for reading");
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) throw std::runtime_error(path + ": mmap failed");
  return map;
}

}  // namespace

TokenDtype dtype_for_vocab(int64_t vocab_size) {
  return vocab_size < 65500 ? TokenDtype::kUInt16 : TokenDtype::kInt32;
}

IndexedDatasetWriter::IndexedDatasetWriter(std::string prefix, int64_t vocab_size)
    : prefix_(std::move(prefix)), vocab_size_(vocab_size), dtype_(dtype_for_vocab(vocab_size)) {
  bin_ = std::fopen((prefix_ + ".bin.tmp").c_str(), "wb");
  if (!bin_)
    throw std::runtime_error(prefix_ + ".bin: cannot create; check the output directory exists and is writable");
}

IndexedDatasetWriter::~IndexedDatasetWriter() {
  if (bin_) std::fclose(bin_);
  if (!finished_) std::remove((prefix_ + ".bin.tmp").c_str());
}

void IndexedDatasetWriter::add_document(const std::vector<int32_t>& tokens) {
  if (finished_) throw std::logic_error("IndexedDatasetWriter: add_document after finish");
  for (int32_t t : tokens) {
    if (t < 0 || t >= vocab_size_) {
      throw std::runtime_error(prefix_ + ": token id " + std::to_string(t) + " outside the vocabulary [0, " +
                               std::to_string(vocab_size_) + "); pass the tokenizer's vocabulary size");
    }
  }
  size_t written = 0;  // an empty document writes nothing (fwrite must not see an empty vector's null pointer)
  if (tokens.empty()) {
  } else if (dtype_ == TokenDtype::kUInt16) {
    std::vector<uint16_t> narrow(tokens.begin(), tokens.end());
    written = std::fwrite(narrow.data(), sizeof(uint16_t), narrow.size(), bin_);
  } else {
    written = std::fwrite(tokens.data(), sizeof(int32_t), tokens.size(), bin_);
  }
  if (written != tokens.size()) throw std::runtime_error(prefix_ + ".bin: write failed; is the disk full?");
  lengths_.push_back(static_cast<int32_t>(tokens.size()));
}

void IndexedDatasetWriter::finish() {
  if (finished_) throw std::logic_error("IndexedDatasetWriter: finish called twice");
  if (std::fflush(bin_) != 0 || std::fclose(bin_) != 0) {
    bin_ = nullptr;
    throw std::runtime_error(prefix_ + ".bin: write failed; is the disk full?");
  }
  bin_ = nullptr;
  const uint64_t n = lengths_.size();
  const int64_t item = dtype_ == TokenDtype::kUInt16 ? 2 : 4;
  {
    std::ofstream idx(prefix_ + ".idx.tmp", std::ios::binary | std::ios::trunc);
    idx.write(kMagic, sizeof(kMagic));
    put<uint64_t>(idx, 1);
    put<uint8_t>(idx, static_cast<uint8_t>(dtype_));
    put<uint64_t>(idx, n);
    put<uint64_t>(idx, n + 1);
    idx.write(reinterpret_cast<const char*>(lengths_.data()),
              static_cast<std::streamsize>(n * sizeof(int32_t)));
    int64_t pointer = 0;
    for (int32_t len : lengths_) put<int64_t>(idx, pointer), pointer += len * item;
    for (uint64_t d = 0; d <= n; ++d) put<int64_t>(idx, static_cast<int64_t>(d));
    if (!idx.flush()) {
      idx.close();
      std::remove((prefix_ + ".idx.tmp").c_str());
      throw std::runtime_error(prefix_ + ".idx: write failed; is the disk full?");
    }
  }
  std::filesystem::rename(prefix_ + ".bin.tmp", prefix_ + ".bin");
  std::filesystem::rename(prefix_ + ".idx.tmp", prefix_ + ".idx");
  finished_ = true;
}

IndexedDataset IndexedDataset::open(const std::string& prefix) {
  const std::string idx_path = prefix + ".idx", bin_path = prefix + ".bin";
  const std::vector<char> raw = read_index_file(idx_path);
  const IndexHeader h = check_header(raw, idx_path);

  IndexedDataset ds;
  ds.prefix_ = prefix;
  ds.dtype_ = static_cast<TokenDtype>(h.code);
  ds.item_size_ = dtype_size(h.code);
  // The arrays: sizes (i32), pointers (i64 bytes into .bin), document index (i64 sequence numbers).
  read_array(raw, ds.lengths_, h.seqs, kHeaderBytes);
  std::vector<int64_t> pointers;
  read_array(raw, pointers, h.seqs, kHeaderBytes + h.seqs * 4);
  read_array(raw, ds.doc_index_, h.docs, kHeaderBytes + h.seqs * 12);

  ds.bin_size_ = bin_file_size(bin_path, idx_path, ds.item_size_);
  const int64_t expected = sequence_starts(ds.lengths_, pointers, ds.item_size_, idx_path, ds.first_token_);
  if (static_cast<size_t>(expected) > ds.bin_size_) {
    fail(bin_path, "truncated: the index needs " + std::to_string(expected) + " bytes, file has " +
                       std::to_string(ds.bin_size_));
  }
  ds.num_tokens_ = expected / static_cast<int64_t>(ds.item_size_);
  check_doc_index(ds.doc_index_, h.seqs, idx_path);
  ds.bin_map_ = map_readonly(bin_path, ds.bin_size_);
  return ds;
}

IndexedDataset::IndexedDataset(IndexedDataset&& o) noexcept
    : prefix_(std::move(o.prefix_)),
      dtype_(o.dtype_),
      item_size_(o.item_size_),
      lengths_(std::move(o.lengths_)),
      first_token_(std::move(o.first_token_)),
      doc_index_(std::move(o.doc_index_)),
      num_tokens_(o.num_tokens_),
      bin_map_(o.bin_map_),
      bin_size_(o.bin_size_) {
  o.bin_map_ = nullptr;
}

IndexedDataset::~IndexedDataset() {
  if (bin_map_) ::munmap(bin_map_, bin_size_);
}

std::pair<int64_t, int64_t> IndexedDataset::document_range(int64_t doc) const {
  if (doc < 0 || doc >= num_documents())
    throw std::out_of_range(prefix_ + ": document " + std::to_string(doc) + " out of range");
  const int64_t first_seq = doc_index_[doc], end_seq = doc_index_[doc + 1];
  if (first_seq == end_seq) return {first_seq < num_sequences() ? first_token_[first_seq] : num_tokens_, 0};
  const int64_t first = first_token_[first_seq];
  const int64_t end = end_seq < num_sequences() ? first_token_[end_seq] : num_tokens_;
  return {first, end - first};
}

void IndexedDataset::read_tokens(int64_t first, int64_t count, int64_t* out) const {
  if (first < 0 || count < 0 || first + count > num_tokens_) {
    throw std::out_of_range(prefix_ + ": tokens [" + std::to_string(first) + ", " +
                            std::to_string(first + count) + ") outside the " + std::to_string(num_tokens_) +
                            "-token stream");
  }
  const auto* base = static_cast<const unsigned char*>(bin_map_);
  for (int64_t i = 0; i < count; ++i) {
    const unsigned char* p = base + (first + i) * item_size_;
    switch (dtype_) {
      case TokenDtype::kUInt8: out[i] = *p; break;
      case TokenDtype::kInt8: out[i] = *reinterpret_cast<const int8_t*>(p); break;
      case TokenDtype::kInt16: out[i] = load_as<int16_t>(p); break;
      case TokenDtype::kUInt16: out[i] = load_as<uint16_t>(p); break;
      case TokenDtype::kInt32: out[i] = load_as<int32_t>(p); break;
      case TokenDtype::kInt64: out[i] = load_as<int64_t>(p); break;
      case TokenDtype::kFloat32: out[i] = float_token(load_as<float>(p), prefix_, first + i); break;
      case TokenDtype::kFloat64: out[i] = float_token(load_as<double>(p), prefix_, first + i); break;
    }
  }
}

int64_t IndexedDataset::max_token_id() const {
  int64_t best = -1;
  std::vector<int64_t> buf(1 << 16);
  for (int64_t first = 0; first < num_tokens_; first += static_cast<int64_t>(buf.size())) {
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(buf.size()), num_tokens_ - first);
    read_tokens(first, n, buf.data());
    for (int64_t i = 0; i < n; ++i) best = std::max(best, buf[i]);
  }
  return best;
}

}  // namespace moetrain::data
