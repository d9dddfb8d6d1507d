// Import, config side: a family's config.json -> moetrain's recipe (model and routing sections).
#include <cstring>
#include <set>
#include <stdexcept>

#include "csrc/config/recipe_loader.h"
#include "hf/family_spec.h"

namespace moetrain::hf {
namespace {

using config::RoutingConfig;
using nlohmann::json;

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
  std::string text(const json& obj, const std::string& key, const std::string& fallback,
                   const std::string& shown) {
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

// What config.json says (the family's defaults for what it leaves out), in moetrain's terms.
struct HfModel {
  int64_t vocab = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
  int64_t ffn = 0, moe_ffn = 0, experts = 0, top_k = 0, shared_ffn = 0;
  bool norm_topk = false, qkv_bias = false, tie = false;
  double eps = 0, init_std = 0, theta = 0;
  std::vector<int64_t> moe_layers;
  std::string name;
};

bool same(const char* a, const char* b) { return std::strcmp(a, b) == 0; }

// Sizes and counts, in the order their problems are reported.
void read_sizes(const FamilySpec& s, ConfigReader& in, HfModel& h) {
  const ConfigDefaults& d = s.defaults;
  h.vocab = in.integer("vocab_size", d.vocab_size);
  h.hidden = in.integer("hidden_size", d.hidden_size);
  h.layers = in.integer("num_hidden_layers", d.num_hidden_layers, 1 << 16);
  h.heads = in.integer("num_attention_heads", d.num_attention_heads);
  h.kv_heads = in.integer("num_key_value_heads", d.num_key_value_heads >= 0 ? d.num_key_value_heads : h.heads);
  h.head_dim = in.integer("head_dim", h.heads > 0 ? h.hidden / h.heads : 0);
  h.ffn = in.integer("intermediate_size", d.intermediate_size);
  h.moe_ffn = same(s.moe_ffn_key, "intermediate_size") ? h.ffn
                                                       : in.integer(s.moe_ffn_key, d.moe_intermediate_size);
  h.experts = s.experts_alias ? in.integer(s.experts_key, in.integer(s.experts_alias, d.num_experts))
                              : in.integer(s.experts_key, d.num_experts);
  h.top_k = in.integer("num_experts_per_tok", d.num_experts_per_tok);
  h.shared_ffn = s.shared_expert.size_key
                     ? in.integer(s.shared_expert.size_key, d.shared_expert_intermediate_size)
                     : 0;
  h.norm_topk = !s.norm_topk_key || in.boolean(s.norm_topk_key, false);
  h.eps = in.real(in.c, "rms_norm_eps", d.rms_norm_eps, "rms_norm_eps");
  h.init_std = in.real(in.c, "initializer_range", 0.02, "initializer_range");
}

// RoPE: plain (default type) only; transformers 5's rope_parameters win over 4.x's rope_theta.
void read_rope(const FamilySpec& s, ConfigReader& in, HfModel& h) {
  const json& c = in.c;
  h.theta = in.real(c, "rope_theta", s.defaults.rope_theta, "rope_theta");
  if (c.contains("rope_parameters") && c["rope_parameters"].is_object()) {
    const json& rp = c["rope_parameters"];
    h.theta = in.real(rp, "rope_theta", h.theta, "rope_parameters.rope_theta");
    const std::string type = in.text(rp, "rope_type", "default", "rope_parameters.rope_type");
    if (type != "default") {
      in.problems.push_back("rope_parameters.rope_type = \"" + type +
                            "\": moetrain's rotary embedding is the plain "
                            "(\"default\") RoPE; scaled variants are not supported");
    }
  }
  if (in.has("rope_scaling")) {  // transformers 4.x
    in.problems.push_back("rope_scaling = " + c["rope_scaling"].dump() +
                          ": moetrain's rotary embedding is the plain RoPE "
                          "(rope_scaling null)");
  }
}

// One restriction of the family (family_spec.h): a problem unless the config has its neutral form.
void check(const FamilySpec& s, const Restriction& r, ConfigReader& in, const HfModel& h) {
  const json& c = in.c;
  if (!r.why) return;
  switch (r.kind) {
    case Restriction::kNull: in.refuse_unless(!in.has(r.key), r.key, r.why); break;
    case Restriction::kFalse: in.refuse_unless(!in.boolean(r.key, false), r.key, r.why); break;
    case Restriction::kFullAttention:
      if (!c.contains(r.key) || !c[r.key].is_array()) break;
      for (const auto& t : c[r.key])
        if (t != "full_attention") {
          in.problems.push_back(std::string(r.key) + " = " + c[r.key].dump() + ": " + r.why);
          break;
        }
      break;
    case Restriction::kHeadSizeFromHidden:
      if (h.heads > 0 && h.head_dim * h.heads != h.hidden) {
        in.problems.push_back(
            "head_dim = " + std::to_string(h.head_dim) + ": " + s.names.title + "'s " + r.why +
            ", so its head size is hidden_size / num_attention_heads = " + std::to_string(h.hidden / h.heads));
      }
      break;
    case Restriction::kZero:
    case Restriction::kLayerCount: break;  // written only
  }
}

// Which layers are MoE: the family's dense-layer keys (Qwen: mlp_only_layers, decoder_sparse_step), else all.
void read_moe_layers(const FamilySpec& s, ConfigReader& in, HfModel& h) {
  if (s.dense_layers == DenseLayers::kNone) {
    for (int64_t l = 0; l < h.layers; ++l) h.moe_layers.push_back(l);
    return;
  }
  const json& c = in.c;
  const int64_t step = in.integer("decoder_sparse_step", 1);
  if (step < 1) {
    in.problems.push_back("decoder_sparse_step = " + std::to_string(step) + ": must be at least 1");
  }
  std::set<int64_t> dense;
  if (in.has("mlp_only_layers")) {
    if (!c["mlp_only_layers"].is_array()) {
      in.problems.push_back("mlp_only_layers = " + c["mlp_only_layers"].dump() +
                            ": must be a list of layer indices");
    } else {
      for (const auto& l : c["mlp_only_layers"]) {
        if (l.is_number_integer()) {
          dense.insert(l.get<int64_t>());
        } else {
          in.problems.push_back("mlp_only_layers = " + c["mlp_only_layers"].dump() +
                                ": must be a list of layer indices");
        }
      }
    }
  }
  for (int64_t l = 0; l < h.layers && step >= 1; ++l)
    if (!dense.count(l) && h.experts > 0 && (l + 1) % step == 0) h.moe_layers.push_back(l);
}

// Everything config.json says, or the list of what moetrain cannot compute (thrown).
HfModel read_config(const FamilySpec& s, const json& c, const std::string& source) {
  ConfigReader in{c, {}};
  HfModel h;
  read_sizes(s, in, h);
  read_rope(s, in, h);
  if (h.heads > 0 && h.kv_heads > 0 && h.heads % h.kv_heads != 0) {
    in.problems.push_back("num_key_value_heads = " + std::to_string(h.kv_heads) +
                          ": must divide num_attention_heads = " + std::to_string(h.heads));
  }
  const std::string act = in.text(c, "hidden_act", "silu", "hidden_act");
  if (act != "silu") {
    in.problems.push_back("hidden_act = \"" + act + "\": moetrain's experts are SwiGLU (\"silu\")");
  }
  for (const auto& r : s.restrictions) check(s, r, in, h);
  h.qkv_bias = s.qkv_bias_key && in.boolean(s.qkv_bias_key, true);
  read_moe_layers(s, in, h);
  h.tie = in.boolean("tie_word_embeddings", false);
  h.name = in.text(c, "_name_or_path", std::string("imported-") + s.names.model_type, "_name_or_path");
  if (!in.problems.empty()) {
    std::string text = source + ": this " + s.names.title + " model cannot be imported:";
    for (const auto& p : in.problems) text += "\n  " + p;
    throw std::runtime_error(text);
  }
  return h;
}

void set_model(const FamilySpec& s, const HfModel& h, config::ModelConfig& m) {
  m.set_vocab_size(h.vocab);
  m.set_d_model(h.hidden);
  m.set_num_layers(h.layers);
  m.set_num_heads(h.heads);
  m.set_num_kv_heads(h.kv_heads == h.heads ? 0 : h.kv_heads);
  m.set_head_dim(h.heads > 0 && h.head_dim * h.heads == h.hidden ? 0 : h.head_dim);
  m.set_qk_norm(s.qk_norm);
  m.set_qkv_bias(h.qkv_bias);
  m.set_ffn_hidden(h.ffn);  // dense layers (families without: none; kept equal to the experts' size)
  m.set_num_experts(h.experts);
  m.set_top_k(h.top_k);
  m.set_moe_ffn_hidden(h.moe_ffn);
  if (static_cast<int64_t>(h.moe_layers.size()) == h.layers) {
    m.set_moe_layer_freq(1);
  } else if (h.moe_layers.empty()) {
    m.set_moe_layer_freq(0);
  } else {
    for (int64_t l : h.moe_layers) m.add_moe_layers(l);
  }
  const bool shared = s.shared_expert.size_key != nullptr;
  m.set_num_shared_experts(shared ? 1 : 0);
  m.set_shared_expert_ffn_hidden(shared ? h.shared_ffn : 0);
  m.set_shared_expert_gate(shared);
  m.set_rope_theta(h.theta);
  m.set_norm_eps(h.eps);
  m.set_init_std(h.init_std);
  m.set_tie_embeddings(h.tie);
}

// The families' routing: softmax over all experts (fp32), top-k, renormalised when norm_topk_prob (or
// always); dropless; no selection bias.
void set_routing(const HfModel& h, RoutingConfig& r) {
  r.set_router_type(RoutingConfig::TOPK);
  r.set_score_function(RoutingConfig::SOFTMAX);
  r.set_topk_order(RoutingConfig::SOFTMAX_THEN_TOPK);
  r.set_normalize_gates(h.norm_topk);
  r.set_gate_scale(1.0);
  r.set_num_groups(0);
  r.set_bias_update_rate(0);
  r.set_capacity_factor(0);
  r.set_eval_capacity_factor(0);
}

// moetrain's own rules (sizes divisible by 8, ...), checked on a copy whose required data.train_prefix is
// filled in: the returned recipe leaves the data section to the user. Errors say which key gave which field.
void validate(const FamilySpec& s, const config::Recipe& recipe, const std::string& source) {
  config::Recipe probe = recipe;
  probe.mutable_data()->set_train_prefix("<data of the fine-tuning run>");
  try {
    config::validate_recipe(probe, source);
  } catch (const config::RecipeError& e) {
    throw std::runtime_error(
        std::string(e.what()) + "\n(from " + source +
        ": model.vocab_size = vocab_size, model.d_model = hidden_size, "
        "model.num_layers = num_hidden_layers, model.num_heads = num_attention_heads, "
        "model.num_kv_heads = num_key_value_heads, model.head_dim = head_dim, model.moe_ffn_hidden = " +
        s.moe_ffn_key + ", model.num_experts = " + s.experts_key + ", model.top_k = num_experts_per_tok)");
  }
}

// "mixtral (MixtralForCausalLM), ... and olmoe (OlmoeForCausalLM)" and "\"mixtral\", ..., \"olmoe\"".
std::string family_list(bool with_architecture) {
  std::string out;
  const auto& all = all_families();
  for (size_t i = 0; i < all.size(); ++i) {
    const FamilyInfo& f = info(all[i]);
    out += !i ? "" : !with_architecture ? ", " : i + 1 < all.size() ? ", " : " and ";
    out += with_architecture ? std::string(f.model_type) + " (" + f.architecture + ")"
                             : "\"" + std::string(f.model_type) + "\"";
  }
  return out;
}

}  // namespace

config::Recipe recipe_from_hf_config(const FamilySpec& s, const json& c, const std::string& source) {
  const HfModel h = read_config(s, c, source);
  config::Recipe recipe;
  recipe.set_name(h.name);
  set_model(s, h, *recipe.mutable_model());
  set_routing(h, *recipe.mutable_routing());
  config::fill_defaults(recipe);
  validate(s, recipe, source);
  return recipe;
}

ImportedConfig recipe_from_hf_config(const json& c, const std::string& source) {
  if (!c.is_object()) {
    throw std::runtime_error(source + ": not a JSON object; expected a Hugging Face config.json");
  }
  if (c.contains("model_type") && !c["model_type"].is_string()) {
    throw std::runtime_error(source + ": model_type = " + c["model_type"].dump() +
                             ": must be a string naming the model family (" + family_list(false) + ")");
  }
  const std::string model_type = c.value("model_type", std::string());
  const auto family = family_named(model_type);
  if (!family) {
    throw std::runtime_error(source + ": model_type = \"" + model_type + "\"; moe-import reads " +
                             family_list(true));
  }
  return {*family, recipe_from_hf_config(spec(*family), c, source)};
}

}  // namespace moetrain::hf
