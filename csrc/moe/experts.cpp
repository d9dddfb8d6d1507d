#include "csrc/moe/experts.h"

#include "csrc/layers/recompute.h"

#include "csrc/layers/precision.h"

#include <tuple>

namespace moetrain::moe {

GroupedExpertsImpl::GroupedExpertsImpl(int64_t num_experts, int64_t d_model, int64_t hidden,
                                       const ExpertLoraOptions& lora)
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
// y + scale·(x·A)·B when the projection has an adapter, else y.
torch::Tensor add_adapter(torch::Tensor y, const torch::Tensor& x, const torch::Tensor& a,
                          const torch::Tensor& b, const torch::Tensor& offsets, double scale) {
  if (a.defined()) y = y + at::_grouped_mm(at::_grouped_mm(x, a, offsets), b, offsets) * scale;
  return y;
}
}  // namespace

torch::Tensor grouped_swiglu(const ExpertOperands& o, const torch::Tensor& offsets, double s,
                             bool recompute_activation) {
  auto gate_NF = add_adapter(at::_grouped_mm(o.x_ND, o.w1_EDF, offsets), o.x_ND, o.w1_a, o.w1_b, offsets, s);
  auto up_NF = add_adapter(at::_grouped_mm(o.x_ND, o.w3_EDF, offsets), o.x_ND, o.w3_a, o.w3_b, offsets, s);
  // _grouped_mm's backward needs a dense incoming gradient: the product below always provides one.
  auto act = [](const std::vector<torch::Tensor>& in) { return std::vector{torch::silu(in[0]) * in[1]}; };
  const bool recompute = recompute_activation && layers::can_recompute() &&
                         (gate_NF.requires_grad() || up_NF.requires_grad());
  if (!recompute) {
    auto h_NF = act({gate_NF, up_NF})[0];
    return add_adapter(at::_grouped_mm(h_NF, o.w2_EFD, offsets), h_NF, o.w2_a, o.w2_b, offsets, s);
  }
  layers::RecomputeWithoutOutput activation;
  auto h_NF = activation.run(act, {gate_NF, up_NF})[0];
  auto y_ND = add_adapter(at::_grouped_mm(h_NF, o.w2_EFD, offsets), h_NF, o.w2_a, o.w2_b, offsets, s);
  activation.discard_outputs(y_ND);  // the down projection has saved h: free it until its backward
  return y_ND;
}

ExpertOperands mask_empty_experts(ExpertOperands o, const torch::Tensor& tokens_per_expert_El) {
  const auto has_tokens_E11 = (tokens_per_expert_El > 0).view({-1, 1, 1});
  auto mask = [&](torch::Tensor& w) {
    if (w.defined() && w.requires_grad()) w = torch::where(has_tokens_E11, w, torch::zeros({}, w.options()));
  };
  for (auto* w : {&o.w1_EDF, &o.w3_EDF, &o.w2_EFD, &o.w1_a, &o.w1_b, &o.w3_a, &o.w3_b, &o.w2_a, &o.w2_b})
    mask(*w);
  return o;
}

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

ExpertOperands GroupedExpertsImpl::operands(const torch::Tensor& tokens_ND,
                                            std::optional<torch::ScalarType> dtype) const {
  auto c = [&](const torch::Tensor& t) { return dtype && t.defined() ? weight_casts_.get(t, *dtype) : t; };
  ExpertOperands o;
  o.x_ND = dtype ? tokens_ND.to(*dtype) : tokens_ND;  // tokens change every call: cast, never cached
  o.w1_EDF = c(w1_EDF), o.w3_EDF = c(w3_EDF);
  o.w2_EFD = c(w2_EFD);
  o.w1_a = c(w1_lora_a), o.w1_b = c(w1_lora_b), o.w3_a = c(w3_lora_a), o.w3_b = c(w3_lora_b);
  o.w2_a = c(w2_lora_a), o.w2_b = c(w2_lora_b);
  return o;
}

torch::Tensor GroupedExpertsImpl::forward(const torch::Tensor& tokens_ND,
                                          const torch::Tensor& tokens_per_expert_El) {
  auto offsets = tokens_per_expert_El.cumsum(0).to(torch::kInt32);
  const double s = lora_.rank > 0 ? lora_.scale() : 0.0;
  // _grouped_mm is not an autocast operation: under mixed precision cast every operand to the compute
  // dtype here. The result stays in the compute dtype (half the bytes of an expert-parallel return
  // trip): combine_rows widens it to fp32 inside its gate product, so the combine accumulates in fp32.
  const auto dtype = layers::compute_dtype_for(tokens_ND.device().type());
  // The empty experts' gradients are masked to 0 (an empty CUTLASS group leaves them uninitialised).
  return grouped_swiglu(mask_empty_experts(operands(tokens_ND, dtype), tokens_per_expert_El), offsets, s,
                        recompute_activation && is_training());
}

}  // namespace moetrain::moe
