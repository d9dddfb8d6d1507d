// The unigram baseline: how well a model that ignores context predicts the validation tokens.
#pragma once

#include "data/indexed_dataset.h"

namespace moetrain::data {

// exp(mean NLL) of valid's tokens under p(t) = (count_train(t) + 1) / (N_train + vocab_size).
// Throws if a token id falls outside [0, vocab_size) or valid has no tokens.
double unigram_perplexity(const IndexedDataset& train, const IndexedDataset& valid, int64_t vocab_size);

}  // namespace moetrain::data
