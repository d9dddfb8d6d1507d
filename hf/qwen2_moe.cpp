#include "hf/qwen2_moe.h"

#include "hf/export_rules.h"
#include "hf/weights.h"

namespace moetrain::hf {
namespace {

using config::RoutingConfig;
using nlohmann::json;

constexpr int64_t kEmptySharedHidden = 8;  // size of the all-zero shared expert of a recipe without one

int64_t shared_hidden(const model::TransformerImpl& model) {
  return model.options().moe.shared_hidden > 0 ? model.options().moe.shared_hidden : kEmptySharedHidden;
}

// Gates renormalised to sum to 1 (norm_topk_prob): TOPK_THEN_SOFTMAX always, SOFTMAX_THEN_TOPK when asked.
bool normalised(const config::RoutingConfig& r) {
  return r.topk_order() == RoutingConfig::TOPK_THEN_SOFTMAX || r.normalize_gates();
}

}  // namespace

std::vector<std::string> qwen2_moe_export_problems(const config::Recipe& recipe, const model::TransformerImpl& model) {
  return routing_problems(recipe, model, "Qwen2-MoE");
}

json qwen2_moe_config(const config::Recipe& recipe, const model::TransformerImpl& model, const SpecialTokens& special) {
  const auto& m = recipe.model();
  auto id = [](int64_t v) { return v >= 0 ? json(v) : json(nullptr); };
  return {
      {"architectures", {"Qwen2MoeForCausalLM"}},
      {"model_type", "qwen2_moe"},
      {"vocab_size", m.vocab_size()},
      {"hidden_size", m.d_model()},
      {"intermediate_size", m.ffn_hidden()},  // dense layers
      {"moe_intermediate_size", m.moe_ffn_hidden()},
      {"shared_expert_intermediate_size", shared_hidden(model)},
      {"num_hidden_layers", m.num_layers()},
      {"num_attention_heads", m.num_heads()},
      {"num_key_value_heads", m.num_heads()},
      {"hidden_act", "silu"},
      {"max_position_embeddings", recipe.data().seq_len()},
      {"initializer_range", m.init_std()},
      {"rms_norm_eps", m.norm_eps()},
      {"tie_word_embeddings", m.tie_embeddings()},
      {"rope_theta", m.rope_theta()},
      {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", m.rope_theta()}}},
      {"use_sliding_window", false},
      {"sliding_window", nullptr},
      {"max_window_layers", m.num_layers()},
      {"layer_types", std::vector<std::string>(static_cast<size_t>(m.num_layers()), "full_attention")},
      {"attention_dropout", 0.0},
      {"qkv_bias", true},
      {"decoder_sparse_step", 1},
      {"mlp_only_layers", dense_layers(model)},
      {"num_experts", m.num_experts()},
      {"num_experts_per_tok", m.top_k()},
      {"norm_topk_prob", normalised(recipe.routing())},
      {"output_router_logits", false},
      {"router_aux_loss_coef", recipe.routing().aux_loss_coeff()},
      {"use_cache", true},
      {"bos_token_id", id(special.bos)},
      {"eos_token_id", id(special.eos)},
      {"pad_token_id", id(special.pad)},
      {"dtype", "float32"},
      {"torch_dtype", "float32"},
  };
}

io::NamedTensors qwen2_moe_tensors(const model::TransformerImpl& model) {
  const auto& o = model.options();
  require_one_process(model, "qwen2_moe_tensors");
  const int64_t D = o.d_model;
  io::NamedTensors out;
  out.emplace_back("model.embed_tokens.weight", parameter(model, "embed.weight"));
  for (int64_t l = 0; l < o.num_layers; ++l) {
    const std::string ours = "layers." + std::to_string(l) + ".", hf = "model.layers." + std::to_string(l) + ".";
    append_attention(out, model, l, /*qkv_bias=*/true);
    if (!o.is_moe.at(l)) {  // dense SwiGLU: nn.Linear weights map one to one
      out.emplace_back(hf + "mlp.gate_proj.weight", parameter(model, ours + "mlp.w1.weight"));
      out.emplace_back(hf + "mlp.up_proj.weight", parameter(model, ours + "mlp.w3.weight"));
      out.emplace_back(hf + "mlp.down_proj.weight", parameter(model, ours + "mlp.w2.weight"));
      continue;
    }
    out.emplace_back(hf + "mlp.gate.weight", parameter(model, ours + "moe.router.weight"));
    const ExpertWeights w = expert_weights(model, l);  // LoRA adapters merged beforehand (merge_adapters)
    for (int64_t e = 0; e < w.w1_EDF.size(0); ++e) {
      const std::string ex = hf + "mlp.experts." + std::to_string(e) + ".";
      out.emplace_back(ex + "gate_proj.weight", w.w1_EDF[e].t().contiguous());
      out.emplace_back(ex + "up_proj.weight", w.w3_EDF[e].t().contiguous());
      out.emplace_back(ex + "down_proj.weight", w.w2_EFD[e].t().contiguous());
    }
    const std::string sh = hf + "mlp.shared_expert.";
    if (o.moe.shared_hidden > 0) {
      out.emplace_back(sh + "gate_proj.weight", parameter(model, ours + "moe.shared.w1.weight"));
      out.emplace_back(sh + "up_proj.weight", parameter(model, ours + "moe.shared.w3.weight"));
      out.emplace_back(sh + "down_proj.weight", parameter(model, ours + "moe.shared.w2.weight") * 2);  // × sigmoid(0) = 1/2
    } else {
      out.emplace_back(sh + "gate_proj.weight", torch::zeros({kEmptySharedHidden, D}));
      out.emplace_back(sh + "up_proj.weight", torch::zeros({kEmptySharedHidden, D}));
      out.emplace_back(sh + "down_proj.weight", torch::zeros({D, kEmptySharedHidden}));
    }
    out.emplace_back(hf + "mlp.shared_expert_gate.weight", torch::zeros({1, D}));
  }
  out.emplace_back("model.norm.weight", parameter(model, "norm.weight"));
  if (!o.tie_embeddings) out.emplace_back("lm_head.weight", parameter(model, "lm_head.weight"));
  return out;
}

}  // namespace moetrain::hf
