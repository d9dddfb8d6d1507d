#include "trainer/data_feed.h"

#include "csrc/util/fault_injection.h"
#include "data/domains.h"
#include "data/indexed_dataset.h"
#include "data/sampler.h"
#include "data/unigram.h"

namespace moetrain::trainer {
namespace {

void check_vocab(const data::IndexedDataset& ds, const std::string& prefix, int64_t vocab_size) {
  const int64_t max_id = ds.max_token_id();
  if (max_id >= vocab_size) {
    throw std::runtime_error(prefix + ": token id " + std::to_string(max_id) +
                             " does not fit model.vocab_size = " + std::to_string(vocab_size) +
                             "; set model.vocab_size to at least " + std::to_string(max_id + 1) +
                             " (the tokenizer's vocabulary size)");
  }
}

}  // namespace

TrainingData::TrainingData(const std::string& prefix, int64_t seq_len, uint64_t seed, int64_t vocab_size)
    : dataset_(std::make_unique<data::IndexedDataset>(data::IndexedDataset::open(prefix))), seq_len_(seq_len) {
  check_vocab(*dataset_, prefix, vocab_size);
  sampler_ = std::make_unique<data::SequenceSampler>(*dataset_, seq_len, seed);
}

TrainingData::~TrainingData() = default;

torch::Tensor TrainingData::batch(int64_t first, int64_t count) const {
  auto out = torch::empty({count, seq_len_ + 1}, torch::kInt64);
  for (int64_t i = 0; i < count; ++i) {
    if (i == count / 2) util::inject_fault(util::FaultPoint::kDataRead);
    sampler_->sample(first + i, out[i].data_ptr<int64_t>());
  }
  return out;
}

int64_t TrainingData::num_tokens() const { return dataset_->num_tokens(); }

EvalWindows load_eval_windows(const std::string& prefix, int64_t seq_len, int64_t max_per_domain,
                              int64_t vocab_size) {
  auto ds = data::IndexedDataset::open(prefix);
  check_vocab(ds, prefix, vocab_size);
  const data::EvalSequences seqs = data::eval_sequences(ds, data::read_domains(prefix, ds), seq_len,
                                                        max_per_domain);
  EvalWindows out;
  for (size_t d = 0; d < seqs.domains.size(); ++d) {
    const int64_t n = seqs.counts[d];
    if (n == 0) continue;
    out.domains.push_back(seqs.domains[d]);
    out.windows.push_back(
        torch::from_blob(const_cast<int64_t*>(seqs.tokens[d].data()), {n, seq_len + 1}, torch::kInt64).clone());
  }
  return out;
}

double unigram_baseline(const std::string& train_prefix, const EvalWindows& eval, int64_t vocab_size) {
  const std::vector<double> log_p = data::unigram_log_probs(data::IndexedDataset::open(train_prefix),
                                                            vocab_size);
  double nll = 0;
  int64_t tokens = 0;
  for (const auto& w : eval.windows) {
    auto targets = w.narrow(1, 1, w.size(1) - 1).contiguous();  // the tokens val_loss predicts
    const int64_t* t = targets.data_ptr<int64_t>();
    for (int64_t i = 0; i < targets.numel(); ++i) nll -= log_p.at(t[i]);
    tokens += targets.numel();
  }
  if (tokens == 0) throw std::runtime_error("no validation windows to evaluate the unigram baseline on");
  return std::exp(nll / static_cast<double>(tokens));
}

}  // namespace moetrain::trainer
