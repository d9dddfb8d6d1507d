// Turns token shards into tensors for the trainer: training batches from the deterministic sampler and
// the fixed validation windows per domain. Token ids are checked against the model's vocabulary.
#pragma once

#include <memory>
#include <string>

#include "trainer/evaluator.h"

namespace moetrain::data {
class IndexedDataset;
class SequenceSampler;
}  // namespace moetrain::data

namespace moetrain::trainer {

class TrainingData {
 public:
  TrainingData(const std::string& prefix, int64_t seq_len, uint64_t seed, int64_t vocab_size);
  ~TrainingData();
  // Sequences at global sampler positions [first, first + count): int64 (count, seq_len + 1).
  torch::Tensor batch(int64_t first, int64_t count) const;
  int64_t num_tokens() const;

 private:
  std::unique_ptr<data::IndexedDataset> dataset_;
  std::unique_ptr<data::SequenceSampler> sampler_;
  int64_t seq_len_;
};

EvalWindows load_eval_windows(const std::string& prefix, int64_t seq_len, int64_t max_per_domain,
                              int64_t vocab_size);

// Perplexity, under the add-one-smoothed unigram model of the training tokens, of exactly the tokens
// val_ppl is measured on (the targets of every evaluation window): the two numbers compare like with like.
double unigram_baseline(const std::string& train_prefix, const EvalWindows& eval, int64_t vocab_size);

}  // namespace moetrain::trainer
