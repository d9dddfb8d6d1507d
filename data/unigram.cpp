#include "data/unigram.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

namespace moetrain::data {
namespace {

std::vector<int64_t> counts(const IndexedDataset& ds, int64_t vocab_size) {
  std::vector<int64_t> c(vocab_size, 0), buf(1 << 16);
  for (int64_t first = 0; first < ds.num_tokens(); first += static_cast<int64_t>(buf.size())) {
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(buf.size()), ds.num_tokens() - first);
    ds.read_tokens(first, n, buf.data());
    for (int64_t i = 0; i < n; ++i) {
      if (buf[i] < 0 || buf[i] >= vocab_size) {
        throw std::runtime_error(ds.prefix() + ": token id " + std::to_string(buf[i]) +
                                 " outside vocabulary size " + std::to_string(vocab_size) +
                                 "; pass the tokenizer's vocabulary size");
      }
      ++c[buf[i]];
    }
  }
  return c;
}

}  // namespace

std::vector<double> unigram_log_probs(const IndexedDataset& train, int64_t vocab_size) {
  if (vocab_size < 1)
    throw std::runtime_error("vocabulary size " + std::to_string(vocab_size) + " must be at least 1");
  const std::vector<int64_t> c = counts(train, vocab_size);
  const double denom = static_cast<double>(train.num_tokens() + vocab_size);
  std::vector<double> log_p(vocab_size);
  for (int64_t t = 0; t < vocab_size; ++t) log_p[t] = std::log((c[t] + 1) / denom);
  return log_p;
}

double unigram_perplexity(const IndexedDataset& train, const IndexedDataset& valid, int64_t vocab_size) {
  const std::vector<double> log_p = unigram_log_probs(train, vocab_size);
  if (valid.num_tokens() == 0) {
    throw std::runtime_error(
        valid.prefix() + ": no tokens to evaluate the unigram baseline on; encode a non-empty validation split");
  }
  const std::vector<int64_t> valid_counts = counts(valid, vocab_size);
  double nll = 0;
  for (int64_t t = 0; t < vocab_size; ++t) {
    if (valid_counts[t]) nll -= valid_counts[t] * log_p[t];
  }
  return std::exp(nll / static_cast<double>(valid.num_tokens()));
}

}  // namespace moetrain::data
