#include "data/sampler.h"

#include <algorithm>
#include <map>
#include <stdexcept>

namespace moetrain::data {
namespace {

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Unbiased draw in [0, bound), bound > 0: rejects the top partial block of 2^64, then takes the remainder.
uint64_t bounded(uint64_t& state, uint64_t bound) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
  uint64_t r;
  do r = splitmix64(state);
  while (r >= limit);
  return r % bound;
}

// Start state of epoch `epoch`'s shuffle: both inputs pass through splitmix64, so nearby seeds or epochs
// give unrelated streams (a plain seed * k + epoch would make seed s + 1 replay seed s shifted by one draw).
uint64_t epoch_state(uint64_t seed, uint64_t epoch) {
  uint64_t s = seed;
  uint64_t e = splitmix64(s) ^ epoch;
  return splitmix64(e);
}

}  // namespace

SequenceSampler::SequenceSampler(const IndexedDataset& dataset, int64_t seq_len, uint64_t seed)
    : dataset_(dataset), seq_len_(seq_len), chunks_(0), seed_(seed) {
  if (seq_len < 1)
    throw std::runtime_error("data.seq_len is " + std::to_string(seq_len) + "; it must be at least 1");
  if (dataset.num_tokens() < seq_len + 1) {
    throw std::runtime_error(dataset.prefix() + ": " + std::to_string(dataset.num_tokens()) +
                             " tokens, fewer than one sequence of data.seq_len + 1 = " +
                             std::to_string(seq_len + 1) + "; use more data or a smaller data.seq_len");
  }
  chunks_ = (dataset.num_tokens() - 1) / seq_len;
}

int64_t SequenceSampler::chunk_at(int64_t position) const {
  if (position < 0)
    throw std::out_of_range("SequenceSampler: position " + std::to_string(position) + " is negative");
  const int64_t epoch = position / chunks_;
  if (epoch != cached_epoch_) {
    perm_.resize(chunks_);
    for (int64_t i = 0; i < chunks_; ++i) perm_[i] = i;
    uint64_t state = epoch_state(seed_, static_cast<uint64_t>(epoch));
    for (int64_t i = chunks_ - 1; i > 0; --i)
      std::swap(perm_[i], perm_[bounded(state, static_cast<uint64_t>(i) + 1)]);
    cached_epoch_ = epoch;
  }
  return perm_[position % chunks_];
}

void SequenceSampler::sample(int64_t position, int64_t* out) const {
  dataset_.read_tokens(chunk_at(position) * seq_len_, seq_len_ + 1, out);
}

EvalSequences eval_sequences(const IndexedDataset& dataset, const std::vector<std::string>& domain_per_document,
                             int64_t seq_len, int64_t max_per_domain) {
  if (seq_len < 1)
    throw std::runtime_error("data.seq_len is " + std::to_string(seq_len) + "; it must be at least 1");
  if (static_cast<int64_t>(domain_per_document.size()) != dataset.num_documents()) {
    throw std::runtime_error(dataset.prefix() + ": " + std::to_string(domain_per_document.size()) +
                             " domain names for " + std::to_string(dataset.num_documents()) +
                             " documents; pass read_domains(prefix, dataset)");
  }
  std::map<std::string, std::vector<int64_t>> streams;
  std::vector<int64_t> buf;
  for (int64_t doc = 0; doc < dataset.num_documents(); ++doc) {
    auto& stream = streams[domain_per_document.at(doc)];
    if (static_cast<int64_t>(stream.size()) >= max_per_domain * seq_len + 1) continue;
    const auto [first, length] = dataset.document_range(doc);
    buf.resize(length);
    dataset.read_tokens(first, length, buf.data());
    stream.insert(stream.end(), buf.begin(), buf.end());
  }
  EvalSequences out;
  for (auto& [domain, stream] : streams) {
    const int64_t n = std::min<int64_t>(max_per_domain, (static_cast<int64_t>(stream.size()) - 1) / seq_len);
    std::vector<int64_t> windows;
    for (int64_t w = 0; w < std::max<int64_t>(n, 0); ++w) {
      windows.insert(windows.end(), stream.begin() + w * seq_len, stream.begin() + w * seq_len + seq_len + 1);
    }
    out.domains.push_back(domain);
    out.counts.push_back(std::max<int64_t>(n, 0));
    out.tokens.push_back(std::move(windows));
  }
  return out;
}

}  // namespace moetrain::data
