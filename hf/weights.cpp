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
  const std::string prefix = "layers." + std::to_string(layer) + ".moe.experts.";
  const auto params = model.named_parameters();
  for (const char* w : {"w1", "w3", "w2"}) {
    const torch::Tensor* b = params.find(prefix + w + "_lora_b");
    if (b && b->abs().max().item<double>() != 0) {
      throw std::logic_error(prefix + w + " has an unmerged LoRA adapter; call hf::merge_adapters first");
    }
  }
  return {parameter(model, prefix + "w1"), parameter(model, prefix + "w3"), parameter(model, prefix + "w2")};
}

bool merge_adapters(model::TransformerImpl& model) {
  if (model.options().moe.lora.rank <= 0) return false;
  for (auto& layer : model.moe_layers()) layer->experts->merge_adapters();
  return true;
}

}  // namespace moetrain::hf
