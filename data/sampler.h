// Deterministic sampling of fixed-length training sequences, and the fixed validation windows.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/indexed_dataset.h"

namespace moetrain::data {

// The flat token stream is cut into n = (num_tokens − 1) / seq_len chunks; chunk c holds tokens
// [c·seq_len, c·seq_len + seq_len + 1) (inputs and shifted targets). Global position p maps to epoch
// p / n and chunk perm_epoch[p mod n], where perm_epoch is a Fisher–Yates shuffle (i = n−1 … 1 swaps
// with an unbiased draw in [0, i]) driven by splitmix64 started at splitmix64(splitmix64(seed) ^ epoch).
// Same (seed, position) → same tokens on every platform, so a resumed run continues exactly; each epoch
// visits every chunk once. Caches one epoch's permutation: not safe to share between threads.
class SequenceSampler {
 public:
  // Keeps a reference to `dataset`, which must outlive the sampler. Throws if seq_len < 1 or the dataset
  // holds fewer than seq_len + 1 tokens.
  SequenceSampler(const IndexedDataset& dataset, int64_t seq_len, uint64_t seed);
  void sample(int64_t position, int64_t* out /* seq_len + 1 */) const;
  int64_t chunks_per_epoch() const { return chunks_; }
  int64_t chunk_at(int64_t position) const;  // the chunk index `sample` reads for this position

 private:
  const IndexedDataset& dataset_;
  int64_t seq_len_, chunks_;
  uint64_t seed_;
  mutable int64_t cached_epoch_ = -1;
  mutable std::vector<int64_t> perm_;
};

// Validation windows per domain: each domain's documents concatenated in order, cut into
// non-overlapping windows of seq_len + 1 tokens (stride seq_len), at most max_per_domain per domain.
struct EvalSequences {
  std::vector<std::string> domains;          // sorted by name
  std::vector<int64_t> counts;               // windows per domain
  std::vector<std::vector<int64_t>> tokens;  // per domain: counts[d] × (seq_len + 1), row-major
};
EvalSequences eval_sequences(const IndexedDataset& dataset, const std::vector<std::string>& domain_per_document,
                             int64_t seq_len, int64_t max_per_domain);

}  // namespace moetrain::data
