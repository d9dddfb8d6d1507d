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

void append_attention(io::NamedTensors& out, const model::TransformerImpl& model, int64_t layer, bool qkv_bias) {
  const int64_t D = model.options().d_model;
  const std::string ours = "layers." + std::to_string(layer) + ".", hf = "model.layers." + std::to_string(layer) + ".";
  const auto params = model.named_parameters();
  for (const char* b : {"attn.qkv_lora_b", "attn.out_lora_b"}) {
    const torch::Tensor* t = params.find(ours + b);
    if (t && t->abs().max().item<double>() != 0) throw std::logic_error(ours + b + " is an unmerged LoRA adapter; call hf::merge_adapters first");
  }
  out.emplace_back(hf + "input_layernorm.weight", parameter(model, ours + "attn_norm.weight"));
  const auto qkv = parameter(model, ours + "attn.wqkv.weight");  // (3D, D) = [q; k; v]
  const char* names[] = {"q_proj", "k_proj", "v_proj"};
  for (int i = 0; i < 3; ++i) {
    out.emplace_back(hf + "self_attn." + names[i] + ".weight", qkv.narrow(0, i * D, D).contiguous());
    if (qkv_bias) out.emplace_back(hf + "self_attn." + names[i] + ".bias", torch::zeros({D}));
  }
  out.emplace_back(hf + "self_attn.o_proj.weight", parameter(model, ours + "attn.wo.weight"));
  out.emplace_back(hf + "post_attention_layernorm.weight", parameter(model, ours + "ffn_norm.weight"));
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
