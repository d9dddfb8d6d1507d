#include "hf/mixtral.h"

#include <cmath>
#include <set>
#include <sstream>
#include <stdexcept>

#include "csrc/config/recipe_loader.h"
#include "hf/export_rules.h"
#include "hf/weights.h"

namespace moetrain::hf {
namespace {

using config::RoutingConfig;
using nlohmann::json;

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + ")";
}

}  // namespace

std::vector<std::string> mixtral_export_problems(const config::Recipe& recipe, const model::TransformerImpl& model) {
  const auto& m = recipe.model();
  const auto& r = recipe.routing();
  std::vector<std::string> out;
  if (const auto dense = dense_layers(model); !dense.empty()) {
    out.push_back(moe_layers_field(m) + (dense.size() == 1 ? ": layer " + join(dense) + " is a dense SwiGLU layer"
                                                             : ": layers " + join(dense) + " are dense SwiGLU layers") +
                  "; Mixtral has a routed MoE block in every layer (model.moe_layer_freq 1, or "
                  "every layer listed in model.moe_layers)");
  }
  if (m.num_shared_experts() > 0) {
    out.push_back("model.num_shared_experts = " + std::to_string(m.num_shared_experts()) +
                  ": Mixtral has no shared (always-on) experts; it supports 0");
  }
  if (r.score_function() == RoutingConfig::SOFTMAX && r.topk_order() == RoutingConfig::SOFTMAX_THEN_TOPK && !r.normalize_gates()) {
    out.push_back("routing.normalize_gates = false: Mixtral renormalises the k selected probabilities to sum to 1 "
                  "(normalize_gates true; topk_order TOPK_THEN_SOFTMAX computes the same gates)");
  }
  for (auto& p : routing_problems(recipe, model, "Mixtral")) out.push_back(std::move(p));
  return out;
}

json mixtral_config(const config::Recipe& recipe, const SpecialTokens& special) {
  const auto& m = recipe.model();
  auto id = [](int64_t v) { return v >= 0 ? json(v) : json(nullptr); };
  return {
      {"architectures", {"MixtralForCausalLM"}},
      {"model_type", "mixtral"},
      {"vocab_size", m.vocab_size()},
      {"hidden_size", m.d_model()},
      {"intermediate_size", m.moe_ffn_hidden()},
      {"num_hidden_layers", m.num_layers()},
      {"num_attention_heads", m.num_heads()},
      {"num_key_value_heads", m.num_heads()},
      {"head_dim", m.d_model() / m.num_heads()},
      {"hidden_act", "silu"},
      {"max_position_embeddings", recipe.data().seq_len()},  // the context the model was trained on
      {"initializer_range", m.init_std()},
      {"rms_norm_eps", m.norm_eps()},
      {"tie_word_embeddings", m.tie_embeddings()},
      // transformers 5 reads rope_parameters, 4.x reads rope_theta; both are written.
      {"rope_theta", m.rope_theta()},
      {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", m.rope_theta()}}},
      {"sliding_window", nullptr},
      {"attention_dropout", 0.0},
      {"num_local_experts", m.num_experts()},
      {"num_experts_per_tok", m.top_k()},
      {"output_router_logits", false},
      {"router_aux_loss_coef", recipe.routing().aux_loss_coeff()},
      {"router_jitter_noise", 0.0},
      {"use_cache", true},
      {"bos_token_id", id(special.bos)},
      {"eos_token_id", id(special.eos)},
      {"pad_token_id", id(special.pad)},
      {"dtype", "float32"},        // transformers 5
      {"torch_dtype", "float32"},  // transformers 4.x
  };
}

io::NamedTensors mixtral_tensors(const model::TransformerImpl& model) {
  const auto& o = model.options();
  require_one_process(model, "mixtral_tensors");
  io::NamedTensors out;
  out.emplace_back("model.embed_tokens.weight", parameter(model, "embed.weight"));
  for (int64_t l = 0; l < o.num_layers; ++l) {
    const std::string ours = "layers." + std::to_string(l) + ".", hf = "model.layers." + std::to_string(l) + ".";
    append_attention(out, model, l, /*qkv_bias=*/false);
    out.emplace_back(hf + "block_sparse_moe.gate.weight", parameter(model, ours + "moe.router.weight"));
    // Ours: x·W with W (E, in, out); Mixtral's nn.Linear: x·Wᵀ with W (out, in).
    const ExpertWeights w = expert_weights(model, l);  // LoRA adapters merged beforehand (merge_adapters)
    for (int64_t e = 0; e < w.w1_EDF.size(0); ++e) {
      const std::string ex = hf + "block_sparse_moe.experts." + std::to_string(e) + ".";
      out.emplace_back(ex + "w1.weight", w.w1_EDF[e].t().contiguous());
      out.emplace_back(ex + "w2.weight", w.w2_EFD[e].t().contiguous());
      out.emplace_back(ex + "w3.weight", w.w3_EDF[e].t().contiguous());
    }
  }
  out.emplace_back("model.norm.weight", parameter(model, "norm.weight"));
  if (!o.tie_embeddings) out.emplace_back("lm_head.weight", parameter(model, "lm_head.weight"));
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Import

namespace {

// Reads config.json fields with Mixtral's defaults for absent ones, and collects every problem.
struct ConfigReader {
  const json& c;
  const std::string& source;
  std::vector<std::string> problems;

  int64_t integer(const std::string& key, int64_t fallback) {
    if (!c.contains(key) || c[key].is_null()) return fallback;
    if (!c[key].is_number_integer()) {
      problems.push_back(key + " = " + c[key].dump() + ": must be an integer");
      return fallback;
    }
    return c[key].get<int64_t>();
  }
  double real(const json& obj, const std::string& key, double fallback, const std::string& shown) {
    if (!obj.contains(key) || obj[key].is_null()) return fallback;
    if (!obj[key].is_number()) {
      problems.push_back(shown + " = " + obj[key].dump() + ": must be a number");
      return fallback;
    }
    return obj[key].get<double>();
  }
};

}  // namespace

config::Recipe recipe_from_mixtral_config(const json& c, const std::string& source) {
  if (!c.is_object()) throw std::runtime_error(source + ": not a JSON object; expected a Hugging Face config.json");
  const std::string model_type = c.value("model_type", std::string());
  if (model_type != "mixtral") {
    throw std::runtime_error(source + ": model_type = \"" + model_type +
                             "\"; moe-import reads Mixtral models (model_type \"mixtral\", MixtralForCausalLM)");
  }
  ConfigReader in{c, source, {}};
  // Defaults: transformers' MixtralConfig (what from_pretrained assumes for an absent field).
  const int64_t vocab = in.integer("vocab_size", 32000), hidden = in.integer("hidden_size", 4096);
  const int64_t layers = in.integer("num_hidden_layers", 32), heads = in.integer("num_attention_heads", 32);
  const int64_t kv_heads = in.integer("num_key_value_heads", 8), ffn = in.integer("intermediate_size", 14336);
  const int64_t experts = in.integer("num_local_experts", 8), top_k = in.integer("num_experts_per_tok", 2);
  const double eps = in.real(c, "rms_norm_eps", 1e-5, "rms_norm_eps");
  const double init_std = in.real(c, "initializer_range", 0.02, "initializer_range");
  double theta = in.real(c, "rope_theta", 1e6, "rope_theta");
  if (c.contains("rope_parameters") && c["rope_parameters"].is_object()) {
    const json& rp = c["rope_parameters"];
    theta = in.real(rp, "rope_theta", theta, "rope_parameters.rope_theta");
    const std::string type = rp.value("rope_type", std::string("default"));
    if (type != "default") {
      in.problems.push_back("rope_parameters.rope_type = \"" + type + "\": moetrain's rotary embedding is the plain "
                            "(\"default\") RoPE; scaled variants are not supported");
    }
  }
  if (c.contains("rope_scaling") && !c["rope_scaling"].is_null()) {  // transformers 4.x
    in.problems.push_back("rope_scaling = " + c["rope_scaling"].dump() + ": moetrain's rotary embedding is the plain RoPE "
                          "(rope_scaling null)");
  }
  if (kv_heads != heads) {
    in.problems.push_back("num_key_value_heads = " + std::to_string(kv_heads) + " with num_attention_heads = " +
                          std::to_string(heads) + ": grouped-query attention is not supported by moetrain's attention "
                          "(it needs num_key_value_heads equal to num_attention_heads)");
  }
  if (c.contains("head_dim") && !c["head_dim"].is_null() && heads > 0 && c["head_dim"] != hidden / heads) {
    in.problems.push_back("head_dim = " + c["head_dim"].dump() + ": moetrain's head size is hidden_size / num_attention_heads = " +
                          std::to_string(hidden / heads));
  }
  const std::string act = c.value("hidden_act", std::string("silu"));
  if (act != "silu") in.problems.push_back("hidden_act = \"" + act + "\": moetrain's experts are SwiGLU (\"silu\")");
  if (c.contains("sliding_window") && !c["sliding_window"].is_null()) {
    in.problems.push_back("sliding_window = " + c["sliding_window"].dump() +
                          ": moetrain's attention is full causal attention (sliding_window null)");
  }
  bool tie = false;
  if (c.contains("tie_word_embeddings")) {
    if (!c["tie_word_embeddings"].is_boolean()) in.problems.push_back("tie_word_embeddings = " + c["tie_word_embeddings"].dump() + ": must be true or false");
    else tie = c["tie_word_embeddings"].get<bool>();
  }
  if (!in.problems.empty()) {
    std::string text = source + ": this Mixtral model cannot be imported:";
    for (const auto& p : in.problems) text += "\n  " + p;
    throw std::runtime_error(text);
  }

  config::Recipe recipe;
  recipe.set_name(c.value("_name_or_path", std::string("imported-mixtral")));
  auto* m = recipe.mutable_model();
  m->set_vocab_size(vocab);
  m->set_d_model(hidden);
  m->set_num_layers(layers);
  m->set_num_heads(heads);
  m->set_ffn_hidden(ffn);  // no dense layers; kept equal to the experts' size
  m->set_num_experts(experts);
  m->set_top_k(top_k);
  m->set_moe_ffn_hidden(ffn);
  m->set_moe_layer_freq(1);
  m->set_num_shared_experts(0);
  m->set_rope_theta(theta);
  m->set_norm_eps(eps);
  m->set_init_std(init_std);
  m->set_tie_embeddings(tie);
  // Mixtral's routing: softmax over all experts, top-k, renormalised; dropless; no selection bias.
  auto* r = recipe.mutable_routing();
  r->set_router_type(RoutingConfig::TOPK);
  r->set_score_function(RoutingConfig::SOFTMAX);
  r->set_topk_order(RoutingConfig::SOFTMAX_THEN_TOPK);
  r->set_normalize_gates(true);
  r->set_gate_scale(1.0);
  r->set_num_groups(0);
  r->set_bias_update_rate(0);
  r->set_capacity_factor(0);
  r->set_eval_capacity_factor(0);
  config::fill_defaults(recipe);

  // moetrain's own rules (sizes divisible by 8, heads divide d_model, ...), checked on a copy whose
  // required data.train_prefix is filled in: the returned recipe leaves the data section to the user.
  config::Recipe probe = recipe;
  probe.mutable_data()->set_train_prefix("<data of the fine-tuning run>");
  try {
    config::validate_recipe(probe, source);
  } catch (const config::RecipeError& e) {
    throw std::runtime_error(std::string(e.what()) +
                             "\n(from " + source + ": model.vocab_size = vocab_size, model.d_model = hidden_size, "
                             "model.num_layers = num_hidden_layers, model.num_heads = num_attention_heads, "
                             "model.moe_ffn_hidden = intermediate_size, model.num_experts = num_local_experts, "
                             "model.top_k = num_experts_per_tok)");
  }
  return recipe;
}

void load_mixtral_tensors(const HfWeights& w, model::TransformerImpl& model) {
  const auto& o = model.options();
  const int64_t V = o.vocab_size, D = o.d_model, E = o.moe.num_experts, F = o.moe.expert_hidden;
  std::set<std::string> used;
  auto take = [&](const std::string& name, const std::vector<int64_t>& shape) {
    if (!w.contains(name)) {
      throw std::runtime_error(w.dir() + " has no tensor " + name + "; it is not a complete Mixtral checkpoint");
    }
    if (w.shape(name) != shape) {
      throw std::runtime_error(w.dir() + "/" + w.file_of(name) + ": " + name + " has shape " + shape_text(w.shape(name)) +
                               ", config.json implies " + shape_text(shape) + "; the weights belong to another config");
    }
    used.insert(name);
    return w.get(name).to(torch::kFloat32);
  };
  torch::NoGradGuard no_grad;
  auto params = model.named_parameters();
  auto set = [&](const std::string& ours, const torch::Tensor& value) {
    torch::Tensor* p = params.find(ours);
    if (!p) throw std::logic_error("moetrain model has no parameter " + ours + " (a bug in hf/mixtral.cpp)");
    p->copy_(value.reshape(p->sizes()));
  };

  const auto embed = take("model.embed_tokens.weight", {V, D});
  set("embed.weight", embed);
  for (int64_t l = 0; l < o.num_layers; ++l) {
    const std::string ours = "layers." + std::to_string(l) + ".", hf = "model.layers." + std::to_string(l) + ".";
    set(ours + "attn_norm.weight", take(hf + "input_layernorm.weight", {D}));
    set(ours + "attn.wqkv.weight", torch::cat({take(hf + "self_attn.q_proj.weight", {D, D}),
                                               take(hf + "self_attn.k_proj.weight", {D, D}),
                                               take(hf + "self_attn.v_proj.weight", {D, D})}, 0));
    set(ours + "attn.wo.weight", take(hf + "self_attn.o_proj.weight", {D, D}));
    set(ours + "ffn_norm.weight", take(hf + "post_attention_layernorm.weight", {D}));
    // transformers 4.x and the Hub: block_sparse_moe.*; transformers 5 fused: mlp.*
    const std::string moe = w.contains(hf + "block_sparse_moe.gate.weight") ? hf + "block_sparse_moe." : hf + "mlp.";
    set(ours + "moe.router.weight", take(moe + "gate.weight", {E, D}));
    torch::Tensor w1, w3, w2;  // ours: (E, D, F), (E, D, F), (E, F, D)
    if (w.contains(moe + "experts.0.w1.weight")) {
      std::vector<torch::Tensor> g, u, d;
      for (int64_t e = 0; e < E; ++e) {
        const std::string ex = moe + "experts." + std::to_string(e) + ".";
        g.push_back(take(ex + "w1.weight", {F, D}).t());
        u.push_back(take(ex + "w3.weight", {F, D}).t());
        d.push_back(take(ex + "w2.weight", {D, F}).t());
      }
      w1 = torch::stack(g), w3 = torch::stack(u), w2 = torch::stack(d);
    } else if (w.contains(moe + "experts.gate_up_proj")) {
      const auto gate_up = take(moe + "experts.gate_up_proj", {E, 2 * F, D});  // per expert [gate; up] rows
      w1 = gate_up.narrow(1, 0, F).transpose(1, 2);
      w3 = gate_up.narrow(1, F, F).transpose(1, 2);
      w2 = take(moe + "experts.down_proj", {E, D, F}).transpose(1, 2);
    } else {
      throw std::runtime_error(w.dir() + " has neither " + moe + "experts.0.w1.weight (per-expert layout) nor " + moe +
                               "experts.gate_up_proj (transformers 5 fused layout) for layer " + std::to_string(l));
    }
    set(ours + "moe.experts.w1", w1.contiguous());
    set(ours + "moe.experts.w3", w3.contiguous());
    set(ours + "moe.experts.w2", w2.contiguous());
  }
  set("norm.weight", take("model.norm.weight", {D}));
  if (!o.tie_embeddings) {
    set("lm_head.weight", take("lm_head.weight", {V, D}));
  } else if (w.contains("lm_head.weight")) {  // some writers store the tied copy anyway
    if (!torch::equal(take("lm_head.weight", {V, D}), embed)) {
      throw std::runtime_error(w.dir() + ": config.json says tie_word_embeddings true, but lm_head.weight differs from "
                               "model.embed_tokens.weight; set tie_word_embeddings false in config.json");
    }
  }
  for (auto& b : model.named_buffers())
    if (b.key().find("expert_bias") != std::string::npos) b.value().zero_();

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
    throw std::runtime_error(w.dir() + " holds tensors a Mixtral model of its config.json does not have: " + list +
                             "; it is not a plain MixtralForCausalLM checkpoint (adapters or extra heads are not imported)");
  }
}

}  // namespace moetrain::hf
