// The unigram baseline: how well a model that ignores context predicts the validation tokens.
#pragma once

#include <vector>

#include "data/indexed_dataset.h"

namespace moetrain::data {

// log p(t) for t in [0, vocab_size) under the add-one-smoothed unigram model of train's tokens:
// p(t) = (count_train(t) + 1) / (N_train + vocab_size). Throws if a token id is outside the vocabulary.
std::vector<double> unigram_log_probs(const IndexedDataset& train, int64_t vocab_size);

// exp(mean NLL) of valid's tokens under that model.
// Throws if a token id falls outside [0, vocab_size) or valid has no tokens.
double unigram_perplexity(const IndexedDataset& train, const IndexedDataset& valid, int64_t vocab_size);

}  // namespace moetrain::data
