// Megatron-LM indexed dataset (MMIDIDX version 1): PREFIX.idx (index) + PREFIX.bin (raw tokens).
//
// .idx layout, little-endian:
//   magic "MMIDIDX\0\0" (9 bytes) | uint64 version = 1 | uint8 dtype code |
//   uint64 sequence_count | uint64 document_count |
//   int32 sequence_lengths[sequence_count] | int64 sequence_pointers[sequence_count] (byte offsets in .bin) |
//   int64 document_indices[document_count]  (0, then the end of each document counted in sequences)
// dtype codes: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16.
// We write one sequence per document; files from Megatron's tools (several sequences per document)
// read the same way. Training sees the concatenation of all sequences as one flat token stream.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace moetrain::data {

enum class TokenDtype : uint8_t {
  kUInt8 = 1,
  kInt8 = 2,
  kInt16 = 3,
  kInt32 = 4,
  kInt64 = 5,
  kFloat64 = 6,
  kFloat32 = 7,
  kUInt16 = 8
};

// Megatron's rule: uint16 when the vocabulary fits (< 65500), else int32.
TokenDtype dtype_for_vocab(int64_t vocab_size);

// Writes PREFIX.bin and PREFIX.idx under temporary names and renames them into place in finish(), so a
// crash never leaves a half-written dataset.
class IndexedDatasetWriter {
 public:
  IndexedDatasetWriter(std::string prefix, int64_t vocab_size);
  ~IndexedDatasetWriter();
  IndexedDatasetWriter(const IndexedDatasetWriter&) = delete;
  IndexedDatasetWriter& operator=(const IndexedDatasetWriter&) = delete;

  void add_document(const std::vector<int32_t>& tokens);  // ids must be in [0, vocab_size)
  void finish();
  int64_t num_documents() const { return static_cast<int64_t>(lengths_.size()); }

 private:
  std::string prefix_;
  int64_t vocab_size_;
  TokenDtype dtype_;
  std::FILE* bin_ = nullptr;
  std::vector<int32_t> lengths_;
  bool finished_ = false;
};

// Read-only, memory-mapped view of a dataset; validates the index against both file sizes on open.
class IndexedDataset {
 public:
  static IndexedDataset open(const std::string& prefix);  // throws std::runtime_error with the fix
  IndexedDataset(IndexedDataset&& other) noexcept;
  IndexedDataset& operator=(IndexedDataset&&) = delete;
  IndexedDataset(const IndexedDataset&) = delete;
  ~IndexedDataset();

  const std::string& prefix() const { return prefix_; }
  TokenDtype dtype() const { return dtype_; }
  int64_t num_sequences() const { return static_cast<int64_t>(lengths_.size()); }
  int64_t num_documents() const { return static_cast<int64_t>(doc_index_.size()) - 1; }
  int64_t num_tokens() const { return num_tokens_; }
  // Token range [first, first + length) of document `doc` in the flat stream.
  std::pair<int64_t, int64_t> document_range(int64_t doc) const;
  // Copies tokens [first, first + count) of the flat stream into out (bounds-checked: std::out_of_range).
  // Float datasets must hold integer values: anything else throws std::runtime_error naming the token.
  void read_tokens(int64_t first, int64_t count, int64_t* out) const;
  int64_t max_token_id() const;

 private:
  IndexedDataset() = default;
  std::string prefix_;
  TokenDtype dtype_ = TokenDtype::kUInt16;
  size_t item_size_ = 2;
  std::vector<int32_t> lengths_;
  std::vector<int64_t> first_token_;  // flat-stream index of each sequence's first token
  std::vector<int64_t> doc_index_;
  int64_t num_tokens_ = 0;
  void* bin_map_ = nullptr;
  size_t bin_size_ = 0;
};

}  // namespace moetrain::data
