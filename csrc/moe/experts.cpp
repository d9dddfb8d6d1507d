#include "csrc/moe/experts.h"

#include <tuple>

namespace moetrain::moe {

GroupedExpertsImpl::GroupedExpertsImpl(int64_t num_experts, int64_t d_model, int64_t hidden, const ExpertLoraOptions& lora)
    : lora_(lora) {
  w1_EDF = register_parameter("w1", torch::empty({num_experts, d_model, hidden}));
  w3_EDF = register_parameter("w3", torch::empty({num_experts, d_model, hidden}));
  w2_EFD = register_parameter("w2", torch::empty({num_experts, hidden, d_model}));
  if (lora.rank > 0) {
    auto adapter = [&](bool on, const char* name, int64_t in, int64_t out, torch::Tensor& a, torch::Tensor& b) {
      if (!on) return;
      a = register_parameter(std::string(name) + "_lora_a", torch::empty({num_experts, in, lora.rank}));
      b = register_parameter(std::string(name) + "_lora_b", torch::zeros({num_experts, lora.rank, out}));
    };
    adapter(lora.gate, "w1", d_model, hidden, w1_lora_a, w1_lora_b);
    adapter(lora.up, "w3", d_model, hidden, w3_lora_a, w3_lora_b);
    adapter(lora.down, "w2", hidden, d_model, w2_lora_a, w2_lora_b);
  }
}

namespace {
// x·W, plus scale·(x·A)·B when the projection has an adapter.
torch::Tensor project(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& a, const torch::Tensor& b,
                      const torch::Tensor& offsets, double scale) {
  auto y = at::_grouped_mm(x, w, offsets);
  if (a.defined()) y = y + at::_grouped_mm(at::_grouped_mm(x, a, offsets), b, offsets) * scale;
  return y;
}
}  // namespace

void GroupedExpertsImpl::merge_adapters() {
  torch::NoGradGuard no_grad;
  const double s = lora_.rank > 0 ? lora_.scale() : 0.0;
  for (auto [w, a, b] : {std::tie(w1_EDF, w1_lora_a, w1_lora_b), std::tie(w3_EDF, w3_lora_a, w3_lora_b),
                         std::tie(w2_EFD, w2_lora_a, w2_lora_b)}) {
    if (!a.defined()) continue;
    w.add_(torch::bmm(a, b), s);  // (E, in, rank)·(E, rank, out)
    b.zero_();
  }
}

torch::Tensor GroupedExpertsImpl::forward(const torch::Tensor& tokens_ND, const torch::Tensor& tokens_per_expert_E) {
  auto offsets = tokens_per_expert_E.cumsum(0).to(torch::kInt32);
  const double s = lora_.rank > 0 ? lora_.scale() : 0.0;
  auto gate_NF = project(tokens_ND, w1_EDF, w1_lora_a, w1_lora_b, offsets, s);
  auto up_NF = project(tokens_ND, w3_EDF, w3_lora_a, w3_lora_b, offsets, s);
  // _grouped_mm's backward needs a dense incoming gradient: the product below always provides one.
  return project(torch::silu(gate_NF) * up_NF, w2_EFD, w2_lora_a, w2_lora_b, offsets, s);
}

}  // namespace moetrain::moe
