#include "hf/families.h"

#include <set>
#include <stdexcept>

#include "csrc/config/recipe_loader.h"
#include "hf/export_rules.h"
#include "hf/weights.h"

namespace moetrain::hf {
namespace {

using config::ModelConfig;
using config::RoutingConfig;
using nlohmann::json;

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + ")";
}

constexpr int64_t kEmptySharedHidden = 8;  // size of the all-zero shared expert of a Qwen2-MoE export without one

// What each family's modules hold.
bool has_dense_layers(Family f) { return f == Family::kQwen2Moe || f == Family::kQwen3Moe; }
bool has_shared_expert(Family f) { return f == Family::kQwen2Moe; }
ModelConfig::QkNorm qk_norm_of(Family f) {
  return f == Family::kQwen3Moe ? ModelConfig::PER_HEAD : f == Family::kOlmoe ? ModelConfig::FULL_WIDTH : ModelConfig::NO_QK_NORM;
}
std::string moe_prefix(Family f) { return f == Family::kMixtral ? "block_sparse_moe." : "mlp."; }
struct ExpertNames {
  const char *gate, *up, *down;
};
ExpertNames expert_names(Family f) {
  if (f == Family::kMixtral) return {"w1", "w3", "w2"};
  return {"gate_proj", "up_proj", "down_proj"};
}

bool normalised(const RoutingConfig& r) {
  return r.topk_order() == RoutingConfig::TOPK_THEN_SOFTMAX || r.normalize_gates();
}

int64_t kv_heads_of(const ModelConfig& m) { return m.num_kv_heads() > 0 ? m.num_kv_heads() : m.num_heads(); }
int64_t head_dim_of(const ModelConfig& m) { return m.head_dim() > 0 ? m.head_dim() : m.d_model() / m.num_heads(); }

}  // namespace

const FamilyInfo& info(Family f) {
  static const FamilyInfo infos[] = {{"mixtral", "Mixtral", "MixtralForCausalLM", "mixtral"},
                                     {"qwen2_moe", "Qwen2-MoE", "Qwen2MoeForCausalLM", "qwen2_moe"},
                                     {"qwen3_moe", "Qwen3-MoE", "Qwen3MoeForCausalLM", "qwen3_moe"},
                                     {"olmoe", "OLMoE", "OlmoeForCausalLM", "olmoe"}};
  return infos[static_cast<int>(f)];
}

const std::vector<Family>& all_families() {
  static const std::vector<Family> all{Family::kMixtral, Family::kQwen2Moe, Family::kQwen3Moe, Family::kOlmoe};
  return all;
}

std::optional<Family> family_named(const std::string& model_type) {
  for (Family f : all_families())
    if (model_type == info(f).model_type) return f;
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------------------
// Export

std::vector<std::string> export_problems(Family f, const config::Recipe& recipe, const model::TransformerImpl& model) {
  const auto& m = recipe.model();
  const auto& r = recipe.routing();
  const std::string title = info(f).title;
  std::vector<std::string> out;
  if (const auto dense = dense_layers(model); !dense.empty() && !has_dense_layers(f)) {
    out.push_back(moe_layers_field(m) + (dense.size() == 1 ? ": layer " + join(dense) + " is a dense SwiGLU layer"
                                                             : ": layers " + join(dense) + " are dense SwiGLU layers") +
                  "; " + title + " has a routed MoE block in every layer (model.moe_layer_freq 1, or "
                  "every layer listed in model.moe_layers)");
  }
  if (m.num_shared_experts() > 0 && !has_shared_expert(f)) {
    out.push_back("model.num_shared_experts = " + std::to_string(m.num_shared_experts()) + ": " + title +
                  " has no shared (always-on) experts; it supports 0");
  }
  if (f == Family::kMixtral && r.score_function() == RoutingConfig::SOFTMAX &&
      r.topk_order() == RoutingConfig::SOFTMAX_THEN_TOPK && !r.normalize_gates()) {
    out.push_back("routing.normalize_gates = false: Mixtral renormalises the k selected probabilities to sum to 1 "
                  "(normalize_gates true; topk_order TOPK_THEN_SOFTMAX computes the same gates)");
  }
  if (m.qk_norm() != qk_norm_of(f)) {
    const std::string want = qk_norm_of(f) == ModelConfig::PER_HEAD     ? "PER_HEAD (RMSNorm over each head's head_dim)"
                             : qk_norm_of(f) == ModelConfig::FULL_WIDTH ? "FULL_WIDTH (RMSNorm over the whole q and k projections)"
                                                                        : "NO_QK_NORM (no norm on queries and keys)";
    out.push_back("model.qk_norm = " + ModelConfig::QkNorm_Name(m.qk_norm()) + ": " + title + "'s attention has " + want);
  }
  if (m.qkv_bias() && f != Family::kQwen2Moe) {
    out.push_back("model.qkv_bias = true: " + title + "'s q/k/v projections have no biases (Qwen2-MoE has them)");
  }
  if (f == Family::kOlmoe && m.num_heads() > 0 && head_dim_of(m) * m.num_heads() != m.d_model()) {
    out.push_back("model.head_dim = " + std::to_string(m.head_dim()) + ": OLMoE's q/k norms are sized from hidden_size, so "
                  "its head size must be d_model / num_heads = " + std::to_string(m.d_model() / m.num_heads()));
  }
  for (auto& p : routing_problems(recipe, model, title)) out.push_back(std::move(p));
  return out;
}

Family auto_family(const config::Recipe& recipe, const model::TransformerImpl& model) {
  if (recipe.model().qk_norm() == ModelConfig::PER_HEAD) return Family::kQwen3Moe;
  if (recipe.model().qk_norm() == ModelConfig::FULL_WIDTH) return Family::kOlmoe;
  return export_problems(Family::kMixtral, recipe, model).empty() ? Family::kMixtral : Family::kQwen2Moe;
}

json export_config(Family f, const config::Recipe& recipe, const model::TransformerImpl& model, const SpecialTokens& special,
                   torch::ScalarType dtype) {
  const auto& m = recipe.model();
  auto id = [](int64_t v) { return v >= 0 ? json(v) : json(nullptr); };
  const std::string dtype_name = dtype == torch::kBFloat16 ? "bfloat16" : "float32";
  json c = {
      {"architectures", {info(f).architecture}},
      {"model_type", info(f).model_type},
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
  switch (f) {
    case Family::kMixtral:
      c["intermediate_size"] = m.moe_ffn_hidden();
      c["num_local_experts"] = m.num_experts();
      c["sliding_window"] = nullptr;
      c["router_jitter_noise"] = 0.0;
      break;
    case Family::kOlmoe:
      c["intermediate_size"] = m.moe_ffn_hidden();
      c["num_experts"] = m.num_experts();
      c["norm_topk_prob"] = normalised(recipe.routing());
      c["clip_qkv"] = nullptr;
      c["attention_bias"] = false;
      break;
    case Family::kQwen2Moe:
    case Family::kQwen3Moe:
      c["intermediate_size"] = m.ffn_hidden();  // dense layers
      c["moe_intermediate_size"] = m.moe_ffn_hidden();
      c["num_experts"] = m.num_experts();
      c["norm_topk_prob"] = normalised(recipe.routing());
      c["decoder_sparse_step"] = 1;
      c["mlp_only_layers"] = dense_layers(model);
      c["use_sliding_window"] = false;
      c["sliding_window"] = nullptr;
      c["max_window_layers"] = m.num_layers();
      if (f == Family::kQwen2Moe) {
        const int64_t shared = model.options().moe.shared_hidden;
        c["shared_expert_intermediate_size"] = shared > 0 ? shared : kEmptySharedHidden;
        c["qkv_bias"] = true;
        c["layer_types"] = std::vector<std::string>(static_cast<size_t>(m.num_layers()), "full_attention");
      } else {
        c["attention_bias"] = false;
      }
      break;
  }
  return c;
}

io::NamedTensors export_tensors(Family f, const model::TransformerImpl& model) {
  const auto& o = model.options();
  require_one_process(model, "export_tensors");
  const int64_t D = o.d_model;
  const auto params = model.named_parameters();
  io::NamedTensors out;
  out.emplace_back("model.embed_tokens.weight", parameter(model, "embed.weight"));
  for (int64_t l = 0; l < o.num_layers; ++l) {
    const std::string ours = "layers." + std::to_string(l) + ".", hf = "model.layers." + std::to_string(l) + ".";
    for (const char* b : {"attn.qkv_lora_b", "attn.out_lora_b"}) {
      const torch::Tensor* t = params.find(ours + b);
      if (t && t->abs().max().item<double>() != 0) throw std::logic_error(ours + b + " is an unmerged LoRA adapter; call hf::merge_adapters first");
    }
    out.emplace_back(hf + "input_layernorm.weight", parameter(model, ours + "attn_norm.weight"));
    const auto qkv = split_qkv(parameter(model, ours + "attn.wqkv.weight"), o.num_heads, o.attention().kv_heads());
    out.emplace_back(hf + "self_attn.q_proj.weight", qkv.q);
    out.emplace_back(hf + "self_attn.k_proj.weight", qkv.k);
    out.emplace_back(hf + "self_attn.v_proj.weight", qkv.v);
    if (f == Family::kQwen2Moe) {  // Qwen2-MoE always has the biases: the model's, or zeros
      const torch::Tensor* bias = params.find(ours + "attn.wqkv.bias");
      const auto b = bias ? split_qkv(bias->detach(), o.num_heads, o.attention().kv_heads())
                          : QkvParts{torch::zeros({qkv.q.size(0)}), torch::zeros({qkv.k.size(0)}), torch::zeros({qkv.v.size(0)})};
      out.emplace_back(hf + "self_attn.q_proj.bias", b.q);
      out.emplace_back(hf + "self_attn.k_proj.bias", b.k);
      out.emplace_back(hf + "self_attn.v_proj.bias", b.v);
    }
    if (qk_norm_of(f) != ModelConfig::NO_QK_NORM) {
      out.emplace_back(hf + "self_attn.q_norm.weight", parameter(model, ours + "attn.q_norm.weight"));
      out.emplace_back(hf + "self_attn.k_norm.weight", parameter(model, ours + "attn.k_norm.weight"));
    }
    out.emplace_back(hf + "self_attn.o_proj.weight", parameter(model, ours + "attn.wo.weight"));
    out.emplace_back(hf + "post_attention_layernorm.weight", parameter(model, ours + "ffn_norm.weight"));
    if (!o.is_moe.at(l)) {  // dense SwiGLU: nn.Linear weights map one to one
      out.emplace_back(hf + "mlp.gate_proj.weight", parameter(model, ours + "mlp.w1.weight"));
      out.emplace_back(hf + "mlp.up_proj.weight", parameter(model, ours + "mlp.w3.weight"));
      out.emplace_back(hf + "mlp.down_proj.weight", parameter(model, ours + "mlp.w2.weight"));
      continue;
    }
    const std::string moe = hf + moe_prefix(f);
    out.emplace_back(moe + "gate.weight", parameter(model, ours + "moe.router.weight"));
    // Ours: x·W with W (E, in, out); Hugging Face's nn.Linear: x·Wᵀ with W (out, in).
    const ExpertWeights w = expert_weights(model, l);  // LoRA adapters merged beforehand (merge_adapters)
    const ExpertNames n = expert_names(f);
    for (int64_t e = 0; e < w.w1_EDF.size(0); ++e) {
      const std::string ex = moe + "experts." + std::to_string(e) + ".";
      out.emplace_back(ex + n.gate + ".weight", w.w1_EDF[e].t().contiguous());
      out.emplace_back(ex + n.up + ".weight", w.w3_EDF[e].t().contiguous());
      out.emplace_back(ex + n.down + ".weight", w.w2_EFD[e].t().contiguous());
    }
    if (f == Family::kQwen2Moe) {
      const std::string sh = moe + "shared_expert.";
      if (o.moe.shared_hidden > 0) {
        const bool gated = o.moe.shared_gate;
        out.emplace_back(sh + "gate_proj.weight", parameter(model, ours + "moe.shared.w1.weight"));
        out.emplace_back(sh + "up_proj.weight", parameter(model, ours + "moe.shared.w3.weight"));
        // Ungated: sigmoid(0) = 1/2 times a doubled down projection, both powers of two, so exact.
        const auto down = parameter(model, ours + "moe.shared.w2.weight");
        out.emplace_back(sh + "down_proj.weight", gated ? down : down * 2);
        out.emplace_back(moe + "shared_expert_gate.weight", gated ? parameter(model, ours + "moe.shared_gate.weight") : torch::zeros({1, D}));
      } else {
        out.emplace_back(sh + "gate_proj.weight", torch::zeros({kEmptySharedHidden, D}));
        out.emplace_back(sh + "up_proj.weight", torch::zeros({kEmptySharedHidden, D}));
        out.emplace_back(sh + "down_proj.weight", torch::zeros({D, kEmptySharedHidden}));
        out.emplace_back(moe + "shared_expert_gate.weight", torch::zeros({1, D}));
      }
    }
  }
  out.emplace_back("model.norm.weight", parameter(model, "norm.weight"));
  if (!o.tie_embeddings) out.emplace_back("lm_head.weight", parameter(model, "lm_head.weight"));
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Import

namespace {

// Reads config.json fields with the family's defaults for absent ones, and collects every problem.
struct ConfigReader {
  const json& c;
  std::vector<std::string> problems;

  bool has(const std::string& key) const { return c.contains(key) && !c[key].is_null(); }
  // A size or count: an integer in [0, most] (the arithmetic on sizes below then cannot overflow, and
  // a layer count cannot make a list of billions).
  int64_t integer(const std::string& key, int64_t fallback, int64_t most = (int64_t{1} << 31) - 1) {
    if (!has(key)) return fallback;
    const json& v = c[key];
    if (!v.is_number_integer() || (v.is_number_unsigned() ? v.get<uint64_t>() > static_cast<uint64_t>(most)
                                                          : v.get<int64_t>() < 0 || v.get<int64_t>() > most)) {
      problems.push_back(key + " = " + v.dump() + ": must be an integer from 0 to " + std::to_string(most));
      return fallback;
    }
    return v.get<int64_t>();
  }
  // A string field (model_type, hidden_act, rope_type, _name_or_path) of `obj`.
  std::string text(const json& obj, const std::string& key, const std::string& fallback, const std::string& shown) {
    if (!obj.contains(key) || obj[key].is_null()) return fallback;
    if (!obj[key].is_string()) {
      problems.push_back(shown + " = " + obj[key].dump() + ": must be a string");
      return fallback;
    }
    return obj[key].get<std::string>();
  }
  double real(const json& obj, const std::string& key, double fallback, const std::string& shown) {
    if (!obj.contains(key) || obj[key].is_null()) return fallback;
    if (!obj[key].is_number()) {
      problems.push_back(shown + " = " + obj[key].dump() + ": must be a number");
      return fallback;
    }
    return obj[key].get<double>();
  }
  bool boolean(const std::string& key, bool fallback) {
    if (!has(key)) return fallback;
    if (!c[key].is_boolean()) {
      problems.push_back(key + " = " + c[key].dump() + ": must be true or false");
      return fallback;
    }
    return c[key].get<bool>();
  }
  // A field moetrain does not compute unless it has its neutral value.
  void refuse_unless(bool neutral, const std::string& key, const std::string& why) {
    if (!neutral) problems.push_back(key + " = " + c[key].dump() + ": " + why);
  }
};

}  // namespace

ImportedConfig recipe_from_hf_config(const json& c, const std::string& source) {
  if (!c.is_object()) throw std::runtime_error(source + ": not a JSON object; expected a Hugging Face config.json");
  if (c.contains("model_type") && !c["model_type"].is_string()) {
    throw std::runtime_error(source + ": model_type = " + c["model_type"].dump() +
                             ": must be a string naming the model family (\"mixtral\", \"qwen2_moe\", \"qwen3_moe\", \"olmoe\")");
  }
  const std::string model_type = c.value("model_type", std::string());
  const auto family = family_named(model_type);
  if (!family) {
    throw std::runtime_error(source + ": model_type = \"" + model_type +
                             "\"; moe-import reads mixtral (MixtralForCausalLM), qwen2_moe (Qwen2MoeForCausalLM), "
                             "qwen3_moe (Qwen3MoeForCausalLM) and olmoe (OlmoeForCausalLM)");
  }
  const Family f = *family;
  const bool mixtral = f == Family::kMixtral, qwen2 = f == Family::kQwen2Moe, qwen3 = f == Family::kQwen3Moe;
  ConfigReader in{c, {}};
  // Defaults: transformers' config classes (what from_pretrained assumes for an absent field).
  const int64_t vocab = in.integer("vocab_size", mixtral ? 32000 : f == Family::kOlmoe ? 50304 : 151936);
  const int64_t hidden = in.integer("hidden_size", mixtral ? 4096 : 2048);
  const int64_t layers = in.integer("num_hidden_layers", mixtral ? 32 : qwen2 || qwen3 ? 24 : 16, 1 << 16);
  const int64_t heads = in.integer("num_attention_heads", mixtral || qwen3 ? 32 : 16);
  const int64_t kv_heads = in.integer("num_key_value_heads", mixtral ? 8 : qwen3 ? 4 : heads);
  const int64_t head_dim = in.integer("head_dim", heads > 0 ? hidden / heads : 0);
  const int64_t ffn = in.integer("intermediate_size", mixtral ? 14336 : qwen2 ? 5632 : qwen3 ? 6144 : 2048);
  const int64_t moe_ffn = mixtral || f == Family::kOlmoe ? ffn : in.integer("moe_intermediate_size", qwen2 ? 1408 : 768);
  // transformers 5 may save Qwen3-MoE's expert count as num_local_experts (its attribute map's name).
  const int64_t experts = mixtral ? in.integer("num_local_experts", 8)
                                  : in.integer("num_experts", in.integer("num_local_experts", qwen2 ? 60 : qwen3 ? 128 : 64));
  const int64_t top_k = in.integer("num_experts_per_tok", mixtral ? 2 : qwen2 ? 4 : 8);
  const int64_t shared_ffn = qwen2 ? in.integer("shared_expert_intermediate_size", 5632) : 0;
  const bool norm_topk = mixtral || in.boolean("norm_topk_prob", false);
  const double eps = in.real(c, "rms_norm_eps", mixtral || f == Family::kOlmoe ? 1e-5 : 1e-6, "rms_norm_eps");
  const double init_std = in.real(c, "initializer_range", 0.02, "initializer_range");
  double theta = in.real(c, "rope_theta", mixtral ? 1e6 : 10000.0, "rope_theta");
  if (c.contains("rope_parameters") && c["rope_parameters"].is_object()) {
    const json& rp = c["rope_parameters"];
    theta = in.real(rp, "rope_theta", theta, "rope_parameters.rope_theta");
    const std::string type = in.text(rp, "rope_type", "default", "rope_parameters.rope_type");
    if (type != "default") {
      in.problems.push_back("rope_parameters.rope_type = \"" + type + "\": moetrain's rotary embedding is the plain "
                            "(\"default\") RoPE; scaled variants are not supported");
    }
  }
  if (in.has("rope_scaling")) {  // transformers 4.x
    in.problems.push_back("rope_scaling = " + c["rope_scaling"].dump() + ": moetrain's rotary embedding is the plain RoPE "
                          "(rope_scaling null)");
  }
  if (heads > 0 && kv_heads > 0 && heads % kv_heads != 0) {
    in.problems.push_back("num_key_value_heads = " + std::to_string(kv_heads) + ": must divide num_attention_heads = " +
                          std::to_string(heads));
  }
  const std::string act = in.text(c, "hidden_act", "silu", "hidden_act");
  if (act != "silu") in.problems.push_back("hidden_act = \"" + act + "\": moetrain's experts are SwiGLU (\"silu\")");
  // Attention moetrain does not compute: windows, clipping, an output bias.
  if (mixtral) {
    in.refuse_unless(!in.has("sliding_window"), "sliding_window", "moetrain's attention is full causal attention (sliding_window null)");
  } else if (qwen2 || qwen3) {
    in.refuse_unless(!in.boolean("use_sliding_window", false), "use_sliding_window",
                     "moetrain's attention is full causal attention (use_sliding_window false)");
  }
  if (qwen2 && c.contains("layer_types") && c["layer_types"].is_array()) {
    for (const auto& t : c["layer_types"])
      if (t != "full_attention") {
        in.problems.push_back("layer_types = " + c["layer_types"].dump() + ": moetrain's attention is full causal "
                              "attention in every layer (\"full_attention\")");
        break;
      }
  }
  if (f == Family::kOlmoe) {
    in.refuse_unless(!in.has("clip_qkv"), "clip_qkv", "moetrain does not clamp q, k and v (clip_qkv null)");
    if (heads > 0 && head_dim * heads != hidden) {
      in.problems.push_back("head_dim = " + std::to_string(head_dim) + ": OLMoE's q/k norms are sized from hidden_size, "
                            "so its head size is hidden_size / num_attention_heads = " + std::to_string(hidden / heads));
    }
  }
  if (qwen3 || f == Family::kOlmoe) {
    in.refuse_unless(!in.boolean("attention_bias", false), "attention_bias",
                     "moetrain's attention has no o_proj bias (and q/k/v biases only as Qwen2-MoE's qkv_bias)");
  }
  const bool qkv_bias = qwen2 && in.boolean("qkv_bias", true);
  // Which layers are MoE: Qwen's mlp_only_layers and decoder_sparse_step; Mixtral and OLMoE: all.
  std::vector<int64_t> moe_layers;
  if (qwen2 || qwen3) {
    const int64_t step = in.integer("decoder_sparse_step", 1);
    if (step < 1) in.problems.push_back("decoder_sparse_step = " + std::to_string(step) + ": must be at least 1");
    std::set<int64_t> dense;
    if (in.has("mlp_only_layers")) {
      if (!c["mlp_only_layers"].is_array()) {
        in.problems.push_back("mlp_only_layers = " + c["mlp_only_layers"].dump() + ": must be a list of layer indices");
      } else {
        for (const auto& l : c["mlp_only_layers"]) {
          if (l.is_number_integer()) dense.insert(l.get<int64_t>());
          else in.problems.push_back("mlp_only_layers = " + c["mlp_only_layers"].dump() + ": must be a list of layer indices");
        }
      }
    }
    for (int64_t l = 0; l < layers && step >= 1; ++l)
      if (!dense.count(l) && experts > 0 && (l + 1) % step == 0) moe_layers.push_back(l);
  } else {
    for (int64_t l = 0; l < layers; ++l) moe_layers.push_back(l);
  }
  bool tie = in.boolean("tie_word_embeddings", false);
  const std::string name = in.text(c, "_name_or_path", std::string("imported-") + info(f).model_type, "_name_or_path");
  if (!in.problems.empty()) {
    std::string text = source + ": this " + info(f).title + " model cannot be imported:";
    for (const auto& p : in.problems) text += "\n  " + p;
    throw std::runtime_error(text);
  }

  config::Recipe recipe;
  recipe.set_name(name);
  auto* m = recipe.mutable_model();
  m->set_vocab_size(vocab);
  m->set_d_model(hidden);
  m->set_num_layers(layers);
  m->set_num_heads(heads);
  m->set_num_kv_heads(kv_heads == heads ? 0 : kv_heads);
  m->set_head_dim(heads > 0 && head_dim * heads == hidden ? 0 : head_dim);
  m->set_qk_norm(qk_norm_of(f));
  m->set_qkv_bias(qkv_bias);
  m->set_ffn_hidden(ffn);  // dense layers (Mixtral, OLMoE: none; kept equal to the experts' size)
  m->set_num_experts(experts);
  m->set_top_k(top_k);
  m->set_moe_ffn_hidden(moe_ffn);
  if (static_cast<int64_t>(moe_layers.size()) == layers) {
    m->set_moe_layer_freq(1);
  } else if (moe_layers.empty()) {
    m->set_moe_layer_freq(0);
  } else {
    for (int64_t l : moe_layers) m->add_moe_layers(l);
  }
  m->set_num_shared_experts(qwen2 ? 1 : 0);
  m->set_shared_expert_ffn_hidden(qwen2 ? shared_ffn : 0);
  m->set_shared_expert_gate(qwen2);
  m->set_rope_theta(theta);
  m->set_norm_eps(eps);
  m->set_init_std(init_std);
  m->set_tie_embeddings(tie);
  // The families' routing: softmax over all experts (fp32), top-k, renormalised when norm_topk_prob
  // (Mixtral: always); dropless; no selection bias.
  auto* r = recipe.mutable_routing();
  r->set_router_type(RoutingConfig::TOPK);
  r->set_score_function(RoutingConfig::SOFTMAX);
  r->set_topk_order(RoutingConfig::SOFTMAX_THEN_TOPK);
  r->set_normalize_gates(norm_topk);
  r->set_gate_scale(1.0);
  r->set_num_groups(0);
  r->set_bias_update_rate(0);
  r->set_capacity_factor(0);
  r->set_eval_capacity_factor(0);
  config::fill_defaults(recipe);

  // moetrain's own rules (sizes divisible by 8, ...), checked on a copy whose required
  // data.train_prefix is filled in: the returned recipe leaves the data section to the user.
  config::Recipe probe = recipe;
  probe.mutable_data()->set_train_prefix("<data of the fine-tuning run>");
  try {
    config::validate_recipe(probe, source);
  } catch (const config::RecipeError& e) {
    throw std::runtime_error(std::string(e.what()) +
                             "\n(from " + source + ": model.vocab_size = vocab_size, model.d_model = hidden_size, "
                             "model.num_layers = num_hidden_layers, model.num_heads = num_attention_heads, "
                             "model.num_kv_heads = num_key_value_heads, model.head_dim = head_dim, model.moe_ffn_hidden = " +
                             (mixtral || f == Family::kOlmoe ? "intermediate_size" : "moe_intermediate_size") +
                             ", model.num_experts = " + (mixtral ? "num_local_experts" : "num_experts") +
                             ", model.top_k = num_experts_per_tok)");
  }
  return {f, recipe};
}

ImportPlan import_plan(Family f, const HfWeights& w, const model::TransformerOptions& o) {
  const std::string title = info(f).title;
  const int64_t V = o.vocab_size, D = o.d_model, E = o.moe.num_experts, F = o.moe.expert_hidden;
  const int64_t H = o.num_heads, Hkv = o.attention().kv_heads(), Dh = o.attention().head_size();
  std::set<std::string> used;
  // Checks now that `name` exists with `shape` (so a bad directory fails before anything is written);
  // returns the name for the reader to fetch later.
  auto need = [&](const std::string& name, const std::vector<int64_t>& shape) {
    if (!w.contains(name)) {
      throw std::runtime_error(w.dir() + " has no tensor " + name + "; it is not a complete " + title + " checkpoint");
    }
    if (w.shape(name) != shape) {
      throw std::runtime_error(w.dir() + "/" + w.file_of(name) + ": " + name + " has shape " + shape_text(w.shape(name)) +
                               ", config.json implies " + shape_text(shape) + "; the weights belong to another config");
    }
    used.insert(name);
    return name;
  };
  const HfWeights* weights = &w;  // the readers run later (the plan must not outlive `w`)
  auto get = [weights](const std::string& name) { return weights->get(name).to(torch::kFloat32); };
  ImportPlan plan;
  auto add = [&](const std::string& ours, std::vector<int64_t> shape, std::function<torch::Tensor()> read) {
    plan.parameters.push_back({ours, std::move(shape), torch::kFloat32, std::move(read)});
  };
  auto copy = [&](const std::string& ours, const std::string& hf, const std::vector<int64_t>& shape) {
    add(ours, shape, [get, name = need(hf, shape)] { return get(name); });
  };

  const std::string embed = need("model.embed_tokens.weight", {V, D});
  add("embed.weight", {V, D}, [get, embed] { return get(embed); });
  for (int64_t l = 0; l < o.num_layers; ++l) {
    const std::string ours = "layers." + std::to_string(l) + ".", hf = "model.layers." + std::to_string(l) + ".";
    const std::string at = hf + "self_attn.";
    copy(ours + "attn_norm.weight", hf + "input_layernorm.weight", {D});
    {
      const std::string q = need(at + "q_proj.weight", {H * Dh, D}), k = need(at + "k_proj.weight", {Hkv * Dh, D}),
                        v = need(at + "v_proj.weight", {Hkv * Dh, D});
      add(ours + "attn.wqkv.weight", {(H + 2 * Hkv) * Dh, D}, [get, q, k, v, H, Hkv] { return fuse_qkv(get(q), get(k), get(v), H, Hkv); });
    }
    if (o.qkv_bias) {
      const std::string q = need(at + "q_proj.bias", {H * Dh}), k = need(at + "k_proj.bias", {Hkv * Dh}),
                        v = need(at + "v_proj.bias", {Hkv * Dh});
      add(ours + "attn.wqkv.bias", {(H + 2 * Hkv) * Dh}, [get, q, k, v, H, Hkv] { return fuse_qkv(get(q), get(k), get(v), H, Hkv); });
    }
    if (o.qk_norm == model::QkNorm::kPerHead) {
      copy(ours + "attn.q_norm.weight", at + "q_norm.weight", {Dh});
      copy(ours + "attn.k_norm.weight", at + "k_norm.weight", {Dh});
    } else if (o.qk_norm == model::QkNorm::kFullWidth) {
      copy(ours + "attn.q_norm.weight", at + "q_norm.weight", {H * Dh});
      copy(ours + "attn.k_norm.weight", at + "k_norm.weight", {Hkv * Dh});
    }
    copy(ours + "attn.wo.weight", at + "o_proj.weight", {D, H * Dh});
    copy(ours + "ffn_norm.weight", hf + "post_attention_layernorm.weight", {D});
    if (!o.is_moe.at(l)) {
      const int64_t Fd = o.ffn_hidden;
      copy(ours + "mlp.w1.weight", hf + "mlp.gate_proj.weight", {Fd, D});
      copy(ours + "mlp.w3.weight", hf + "mlp.up_proj.weight", {Fd, D});
      copy(ours + "mlp.w2.weight", hf + "mlp.down_proj.weight", {D, Fd});
      continue;
    }
    // Mixtral: block_sparse_moe.* (transformers 4.x and the Hub), mlp.* when transformers 5 saved it fused.
    const std::string moe = w.contains(hf + moe_prefix(f) + "gate.weight") ? hf + moe_prefix(f) : hf + "mlp.";
    copy(ours + "moe.router.weight", moe + "gate.weight", {E, D});
    plan.buffers.push_back({ours + "moe.router.expert_bias", {E}, torch::kFloat32, [E] { return torch::zeros({E}); }});
    const ExpertNames n = expert_names(f);
    // ours: w1, w3 (E, D, F), w2 (E, F, D); one layer's experts are read at a time.
    if (w.contains(moe + "experts.0." + n.gate + ".weight")) {
      std::vector<std::string> g, u, d;
      for (int64_t e = 0; e < E; ++e) {
        const std::string ex = moe + "experts." + std::to_string(e) + ".";
        g.push_back(need(ex + n.gate + ".weight", {F, D}));
        u.push_back(need(ex + n.up + ".weight", {F, D}));
        d.push_back(need(ex + n.down + ".weight", {D, F}));
      }
      auto stacked = [get](std::vector<std::string> names) {
        return [get, names = std::move(names)] {
          std::vector<torch::Tensor> parts;
          for (const auto& name : names) parts.push_back(get(name).t());
          return torch::stack(parts).contiguous();
        };
      };
      add(ours + "moe.experts.w1", {E, D, F}, stacked(g));
      add(ours + "moe.experts.w3", {E, D, F}, stacked(u));
      add(ours + "moe.experts.w2", {E, F, D}, stacked(d));
    } else if (w.contains(moe + "experts.gate_up_proj")) {
      const std::string gate_up = need(moe + "experts.gate_up_proj", {E, 2 * F, D});  // per expert [gate; up] rows
      const std::string down = need(moe + "experts.down_proj", {E, D, F});
      add(ours + "moe.experts.w1", {E, D, F}, [get, gate_up, F] { return get(gate_up).narrow(1, 0, F).transpose(1, 2).contiguous(); });
      add(ours + "moe.experts.w3", {E, D, F}, [get, gate_up, F] { return get(gate_up).narrow(1, F, F).transpose(1, 2).contiguous(); });
      add(ours + "moe.experts.w2", {E, F, D}, [get, down] { return get(down).transpose(1, 2).contiguous(); });
    } else {
      throw std::runtime_error(w.dir() + " has neither " + moe + "experts.0." + n.gate + ".weight (per-expert layout) nor " +
                               moe + "experts.gate_up_proj (transformers 5 fused layout) for layer " + std::to_string(l));
    }
    if (f == Family::kQwen2Moe) {
      const int64_t Fs = o.moe.shared_hidden;
      copy(ours + "moe.shared.w1.weight", moe + "shared_expert.gate_proj.weight", {Fs, D});
      copy(ours + "moe.shared.w3.weight", moe + "shared_expert.up_proj.weight", {Fs, D});
      copy(ours + "moe.shared.w2.weight", moe + "shared_expert.down_proj.weight", {D, Fs});
      copy(ours + "moe.shared_gate.weight", moe + "shared_expert_gate.weight", {1, D});
    }
  }
  copy("norm.weight", "model.norm.weight", {D});
  if (!o.tie_embeddings) {
    copy("lm_head.weight", "lm_head.weight", {V, D});
  } else if (w.contains("lm_head.weight")) {  // some writers store the tied copy anyway
    if (!torch::equal(get(need("lm_head.weight", {V, D})), get(embed))) {
      throw std::runtime_error(w.dir() + ": config.json says tie_word_embeddings true, but lm_head.weight differs from "
                               "model.embed_tokens.weight; set tie_word_embeddings false in config.json");
    }
  }

  std::vector<std::string> unused;
  for (const auto& name : w.names()) {
    const std::string cache = "rotary_emb.inv_freq";  // a non-persistent buffer some old checkpoints hold
    const bool rotary_cache = name.size() >= cache.size() && name.compare(name.size() - cache.size(), cache.size(), cache) == 0;
    if (!used.count(name) && !rotary_cache) unused.push_back(name);
  }
  if (!unused.empty()) {
    std::string list;
    for (size_t i = 0; i < unused.size() && i < 5; ++i) list += (i ? ", " : "") + unused[i];
    if (unused.size() > 5) list += ", ... (" + std::to_string(unused.size()) + " in all)";
    throw std::runtime_error(w.dir() + " holds tensors a " + title + " model of its config.json does not have: " + list +
                             "; it is not a plain " + info(f).architecture +
                             " checkpoint (adapters or extra heads are not imported)");
  }
  return plan;
}

void load_hf_tensors(Family f, const HfWeights& w, model::TransformerImpl& model) {
  const ImportPlan plan = import_plan(f, w, model.options());
  torch::NoGradGuard no_grad;
  auto params = model.named_parameters();
  auto buffers = model.named_buffers();
  std::set<std::string> filled;
  auto fill = [&](const io::LazyTensor& t, torch::OrderedDict<std::string, torch::Tensor>& where) {
    torch::Tensor* p = where.find(t.name);
    if (!p || p->sizes().vec() != t.shape) {
      throw std::logic_error("the import plan's " + t.name + " " + shape_text(t.shape) +
                             (p ? " has another shape than the model's " + shape_text(p->sizes().vec()) : " is not in the model") +
                             " (a bug in hf/families.cpp)");
    }
    p->copy_(t.read());
    filled.insert(t.name);
  };
  for (const auto& t : plan.parameters) fill(t, params);
  for (const auto& t : plan.buffers) fill(t, buffers);
  for (const auto& item : params) {
    if (!filled.count(item.key())) throw std::logic_error("the import plan misses " + item.key() + " (a bug in hf/families.cpp)");
  }
}

}  // namespace moetrain::hf
