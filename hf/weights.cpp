#include "hf/weights.h"

#include <stdexcept>

namespace moetrain::hf {

torch::Tensor parameter(const model::TransformerImpl& model, const std::string& name) {
  const auto params = model.named_parameters();
  const torch::Tensor* t = params.find(name);
  if (!t) throw std::logic_error("moetrain model has no parameter " + name + " (a bug in hf/)");
  return t->detach();
}

void require_one_process(const model::TransformerImpl& model, const std::string& who) {
  const auto& o = model.options();
  if (o.tp_size != 1 || (o.moe.local_experts != 0 && o.moe.local_experts != o.moe.num_experts)) {
    throw std::logic_error(who + " needs a one-process model (tp 1, all experts local)");
  }
}

torch::Tensor fuse_qkv(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t heads,
                       int64_t kv_heads) {
  const int64_t G = heads / kv_heads, cols = q.dim() == 2 ? q.size(1) : 1, Dh = q.size(0) / heads;
  auto slots = q.reshape({kv_heads, G, Dh, cols}).transpose(0, 1).reshape({G * kv_heads * Dh, cols});
  auto fused = torch::cat({slots, k.reshape({kv_heads * Dh, cols}), v.reshape({kv_heads * Dh, cols})}, 0);
  return (q.dim() == 2 ? fused : fused.reshape({-1})).contiguous();
}

QkvParts split_qkv(const torch::Tensor& fused, int64_t heads, int64_t kv_heads) {
  const int64_t G = heads / kv_heads, cols = fused.dim() == 2 ? fused.size(1) : 1;
  const int64_t Dh = fused.size(0) / ((G + 2) * kv_heads);
  auto f = fused.reshape({G + 2, kv_heads, Dh, cols});
  auto shape = [&](const torch::Tensor& t, int64_t rows) {
    return (fused.dim() == 2 ? t.reshape({rows, cols}) : t.reshape({rows})).contiguous();
  };
  return {shape(f.narrow(0, 0, G).transpose(0, 1), heads * Dh), shape(f[G], kv_heads * Dh),
          shape(f[G + 1], kv_heads * Dh)};
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
  const auto& o = model.options();
  if (o.moe.lora.rank <= 0 && o.attn_lora.rank <= 0) return false;
  if (o.moe.lora.rank > 0) {
    for (auto& layer : model.moe_layers()) layer->experts->merge_adapters();
  }
  if (o.attn_lora.rank > 0) {
    for (const auto& layer : *model.layers) layer->as<model::BlockImpl>()->attn->merge_adapters();
  }
  return true;
}

}  // namespace moetrain::hf
