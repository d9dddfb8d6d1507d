// Fuzz target: the Megatron indexed dataset reader (data/indexed_dataset.*). Input: a 2-byte
// little-endian length n, then n bytes of PREFIX.idx, then the rest as PREFIX.bin.
// Contract: open() validates the index against both files or throws std::runtime_error; after a
// successful open every document range and every token of the stream can be read.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "data/indexed_dataset.h"
#include "tests/fuzz/fuzz_input.h"

using moetrain::data::IndexedDataset;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const size_t idx_size = std::min<size_t>(data[0] | (data[1] << 8), size - 2);
  moetrain::fuzz::write_scratch("data.idx", data + 2, idx_size);
  const std::string bin = moetrain::fuzz::write_scratch("data.bin", data + 2 + idx_size, size - 2 - idx_size);
  const std::string prefix = bin.substr(0, bin.size() - 4);
  try {
    IndexedDataset ds = IndexedDataset::open(prefix);
    for (int64_t d = 0; d < ds.num_documents(); ++d) {
      const auto [first, length] = ds.document_range(d);
      if (first < 0 || length < 0 || first + length > ds.num_tokens()) __builtin_trap();
    }
    std::vector<int64_t> tokens(static_cast<size_t>(ds.num_tokens()));
    ds.read_tokens(0, ds.num_tokens(), tokens.data());
    ds.max_token_id();
  } catch (const std::runtime_error&) {
  }
  return 0;
}
