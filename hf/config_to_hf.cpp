// Export, config side: what a family cannot compute of a recipe, and the config.json it is written with.
#include <cstring>

#include "hf/export_rules.h"
#include "hf/family_spec.h"

namespace moetrain::hf {
namespace {

using config::ModelConfig;
using config::RoutingConfig;
using nlohmann::json;

bool normalised(const RoutingConfig& r) {
  return r.topk_order() == RoutingConfig::TOPK_THEN_SOFTMAX || r.normalize_gates();
}

int64_t kv_heads_of(const ModelConfig& m) { return m.num_kv_heads() > 0 ? m.num_kv_heads() : m.num_heads(); }
int64_t head_dim_of(const ModelConfig& m) {
  return m.head_dim() > 0 ? m.head_dim() : m.d_model() / m.num_heads();
}

const Restriction* restriction_of(const FamilySpec& s, Restriction::Kind kind) {
  for (const auto& r : s.restrictions)
    if (r.kind == kind) return &r;
  return nullptr;
}

std::string qk_norm_text(ModelConfig::QkNorm n) {
  return n == ModelConfig::PER_HEAD     ? "PER_HEAD (RMSNorm over each head's head_dim)"
         : n == ModelConfig::FULL_WIDTH ? "FULL_WIDTH (RMSNorm over the whole q and k projections)"
                                        : "NO_QK_NORM (no norm on queries and keys)";
}

// The layer structure: dense layers, shared experts, gate renormalisation.
void add_block_problems(const FamilySpec& s, const config::Recipe& recipe,
                        const model::TransformerImpl& model, std::vector<std::string>& out) {
  const auto& m = recipe.model();
  const auto& r = recipe.routing();
  const std::string title = s.names.title;
  if (const auto dense = dense_layers(model); !dense.empty() && s.dense_layers == DenseLayers::kNone) {
    out.push_back(moe_layers_field(m) +
                  (dense.size() == 1 ? ": layer " + join(dense) + " is a dense SwiGLU layer"
                                     : ": layers " + join(dense) + " are dense SwiGLU layers") +
                  "; " + title +
                  " has a routed MoE block in every layer (model.moe_layer_freq 1, or "
                  "every layer listed in model.moe_layers)");
  }
  if (m.num_shared_experts() > 0 && !s.shared_expert.size_key) {
    out.push_back("model.num_shared_experts = " + std::to_string(m.num_shared_experts()) + ": " + title +
                  " has no shared (always-on) experts; it supports 0");
  }
  if (!s.norm_topk_key && r.score_function() == RoutingConfig::SOFTMAX &&
      r.topk_order() == RoutingConfig::SOFTMAX_THEN_TOPK && !r.normalize_gates()) {
    out.push_back("routing.normalize_gates = false: " + title +
                  " renormalises the k selected probabilities to sum to 1 "
                  "(normalize_gates true; topk_order TOPK_THEN_SOFTMAX computes the same gates)");
  }
}

// The attention: q/k norm, biases, head size.
void add_attention_problems(const FamilySpec& s, const ModelConfig& m, std::vector<std::string>& out) {
  const std::string title = s.names.title;
  if (m.qk_norm() != s.qk_norm) {
    out.push_back("model.qk_norm = " + ModelConfig::QkNorm_Name(m.qk_norm()) + ": " + title +
                  "'s attention has " + qk_norm_text(s.qk_norm));
  }
  if (m.qkv_bias() && !s.qkv_bias_key) {
    out.push_back("model.qkv_bias = true: " + title +
                  "'s q/k/v projections have no biases (Qwen2-MoE has them)");
  }
  const Restriction* head = restriction_of(s, Restriction::kHeadSizeFromHidden);
  if (head && m.num_heads() > 0 && head_dim_of(m) * m.num_heads() != m.d_model()) {
    out.push_back(
        "model.head_dim = " + std::to_string(m.head_dim()) + ": " + title + "'s " + head->why +
        ", so its head size must be d_model / num_heads = " + std::to_string(m.d_model() / m.num_heads()));
  }
}

// What every family writes.
json common_config(const FamilySpec& s, const config::Recipe& recipe, const SpecialTokens& special,
                   torch::ScalarType dtype) {
  const auto& m = recipe.model();
  auto id = [](int64_t v) { return v >= 0 ? json(v) : json(nullptr); };
  const std::string dtype_name = dtype == torch::kBFloat16 ? "bfloat16" : "float32";
  return {
      {"architectures", {s.names.architecture}},
      {"model_type", s.names.model_type},
      {"vocab_size", m.vocab_size()},
      {"hidden_size", m.d_model()},
      {"num_hidden_layers", m.num_layers()},
      {"num_attention_heads", m.num_heads()},
      {"num_key_value_heads", kv_heads_of(m)},
      {"head_dim", head_dim_of(m)},
      {"hidden_act", "silu"},
      {"max_position_embeddings", recipe.data().seq_len()},  // the context the model was trained on
      {"initializer_range", m.init_std()},
      {"rms_norm_eps", m.norm_eps()},
      {"tie_word_embeddings", m.tie_embeddings()},
      // transformers 5 reads rope_parameters, 4.x reads rope_theta; both are written.
      {"rope_theta", m.rope_theta()},
      {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", m.rope_theta()}}},
      {"attention_dropout", 0.0},
      {"num_experts_per_tok", m.top_k()},
      {"output_router_logits", false},
      {"router_aux_loss_coef", recipe.routing().aux_loss_coeff()},
      {"use_cache", true},
      {"bos_token_id", id(special.bos)},
      {"eos_token_id", id(special.eos)},
      {"pad_token_id", id(special.pad)},
      {"dtype", dtype_name},        // transformers 5
      {"torch_dtype", dtype_name},  // transformers 4.x
  };
}

// A restriction's neutral value; null json for one that writes nothing.
json neutral_value(const Restriction& r, int64_t num_layers) {
  switch (r.kind) {
    case Restriction::kNull: return nullptr;
    case Restriction::kFalse: return false;
    case Restriction::kZero: return 0.0;
    case Restriction::kLayerCount: return num_layers;
    case Restriction::kFullAttention:
      return std::vector<std::string>(static_cast<size_t>(num_layers), "full_attention");
    case Restriction::kHeadSizeFromHidden: break;
  }
  return nullptr;
}

}  // namespace

std::vector<std::string> export_problems(const FamilySpec& s, const config::Recipe& recipe,
                                         const model::TransformerImpl& model) {
  std::vector<std::string> out;
  add_block_problems(s, recipe, model, out);
  add_attention_problems(s, recipe.model(), out);
  for (auto& p : routing_problems(recipe, model, s.names.title)) out.push_back(std::move(p));
  return out;
}

json export_config(const FamilySpec& s, const config::Recipe& recipe, const model::TransformerImpl& model,
                   const SpecialTokens& special, torch::ScalarType dtype) {
  const auto& m = recipe.model();
  json c = common_config(s, recipe, special, dtype);
  c[s.moe_ffn_key] = m.moe_ffn_hidden();
  if (std::strcmp(s.moe_ffn_key, "intermediate_size") != 0)
    c["intermediate_size"] = m.ffn_hidden();  // dense layers
  c[s.experts_key] = m.num_experts();
  if (s.norm_topk_key) c[s.norm_topk_key] = normalised(recipe.routing());
  if (s.dense_layers == DenseLayers::kQwenSparseStep) {
    c["decoder_sparse_step"] = 1;
    c["mlp_only_layers"] = dense_layers(model);
  }
  if (s.shared_expert.size_key) {
    const int64_t shared = model.options().moe.shared_hidden;
    c[s.shared_expert.size_key] = shared > 0 ? shared : s.shared_expert.empty_size;
  }
  if (s.qkv_bias_key) c[s.qkv_bias_key] = true;
  for (const auto& r : s.restrictions)
    if (r.kind != Restriction::kHeadSizeFromHidden) c[r.key] = neutral_value(r, m.num_layers());
  return c;
}

}  // namespace moetrain::hf
