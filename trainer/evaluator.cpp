#include "trainer/evaluator.h"

#include <cmath>

#include "csrc/util/fault_injection.h"

namespace moetrain::trainer {

EvalResult evaluate(model::TransformerImpl& model, const EvalWindows& data, int64_t micro_batch_size) {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  EvalResult result;
  double total_loss = 0;
  int64_t total_tokens = 0;
  int64_t windows_before = 0;  // windows of the earlier domains: each window's index keys RANDOM routing
  for (size_t d = 0; d < data.domains.size(); ++d) {
    const torch::Tensor& w = data.windows[d];
    double domain_loss = 0;
    int64_t domain_tokens = 0;
    std::vector<torch::Tensor> domain_load;
    for (int64_t begin = 0; begin < w.size(0); begin += micro_batch_size) {
      auto batch = w.narrow(0, begin, std::min(micro_batch_size, w.size(0) - begin));
      auto inputs = batch.narrow(1, 0, batch.size(1) - 1);
      auto targets = batch.narrow(1, 1, batch.size(1) - 1);
      model.set_first_sample(windows_before + begin);
      auto out = model.forward(inputs);
      auto& logits = out.logits;
      for (size_t l = 0; l < out.moe_measures.size(); ++l) {
        const auto& c = out.moe_measures[l].tokens_per_expert_E;
        if (domain_load.size() <= l) domain_load.push_back(torch::zeros_like(c));
        domain_load[l] += c;
      }
      domain_loss += model.token_losses(logits, targets).sum().item<double>();
      domain_tokens += targets.numel();
      util::inject_fault(util::FaultPoint::kEvaluation);  // after the first batch: partway through
    }
    if (domain_tokens > 0) result.domain_loss.emplace_back(data.domains[d], domain_loss / domain_tokens);
    for (size_t l = 0; l < domain_load.size(); ++l) {
      if (result.expert_load.size() <= l) result.expert_load.push_back(torch::zeros_like(domain_load[l]));
      result.expert_load[l] += domain_load[l];
    }
    result.domain_expert_load.push_back(std::move(domain_load));
    total_loss += domain_loss;
    total_tokens += domain_tokens;
    windows_before += w.size(0);
  }
  model.train(was_training);
  result.loss = total_tokens ? total_loss / total_tokens : NAN;
  result.ppl = std::exp(result.loss);
  return result;
}

}  // namespace moetrain::trainer
