#include "csrc/moe/experts.h"

#include "csrc/model/precision.h"

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
  // _grouped_mm is not an autocast operation: under mixed precision cast every operand to the compute
  // dtype here (the cast's backward returns fp32 gradients to the fp32 master weights), and return the
  // result in the input's dtype, so the gate-weighted combine accumulates in fp32.
  const auto dtype = model::compute_dtype_for(tokens_ND.device().type());
  auto c = [&](const torch::Tensor& t) { return dtype && t.defined() ? t.to(*dtype) : t; };
  auto x = c(tokens_ND);
  auto gate_NF = project(x, c(w1_EDF), c(w1_lora_a), c(w1_lora_b), offsets, s);
  auto up_NF = project(x, c(w3_EDF), c(w3_lora_a), c(w3_lora_b), offsets, s);
  // _grouped_mm's backward needs a dense incoming gradient: the product below always provides one.
  auto y = project(torch::silu(gate_NF) * up_NF, c(w2_EFD), c(w2_lora_a), c(w2_lora_b), offsets, s);
  return y.to(tokens_ND.scalar_type());
}

}  // namespace moetrain::moe
