#include "hf/weights.h"

#include <stdexcept>

namespace moetrain::hf {

torch::Tensor parameter(const model::TransformerImpl& model, const std::string& name) {
  const auto params = model.named_parameters();
  const torch::Tensor* t = params.find(name);
  if (!t) throw std::logic_error("moetrain model has no parameter " + name + " (a bug in hf/)");
  return t->detach();
}

ExpertWeights expert_weights(const model::TransformerImpl& model, int64_t layer) {
  torch::NoGradGuard no_grad;
  const std::string prefix = "layers." + std::to_string(layer) + ".moe.experts.";
  const auto params = model.named_parameters();
  const double scale = model.options().moe.lora.rank > 0 ? model.options().moe.lora.scale() : 0.0;
  auto merged = [&](const std::string& w) {
    torch::Tensor out = parameter(model, prefix + w);
    const torch::Tensor* a = params.find(prefix + w + "_lora_a");
    const torch::Tensor* b = params.find(prefix + w + "_lora_b");
    if (a && b) out = out + torch::bmm(*a, *b) * scale;  // (E, in, rank)·(E, rank, out)
    return out.detach();
  };
  return {merged("w1"), merged("w3"), merged("w2")};
}

bool has_adapters(const model::TransformerImpl& model) {
  for (const auto& p : model.named_parameters())
    if (p.key().find("_lora_") != std::string::npos) return true;
  return false;
}

}  // namespace moetrain::hf
