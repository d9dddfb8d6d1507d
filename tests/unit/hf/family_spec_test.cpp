// The family spec table (hf/family_spec.h): every registered spec's config.json keys and defaults, its
// restrictions, and a family that exists only as a spec, exported and imported by the generic code.
// (hf_test.cpp checks the families' mappings; tests/e2e/hf_families.py against transformers.)
#include <gtest/gtest.h>
#include <set>
#include <nlohmann/json.hpp>

#include "csrc/config/recipe_loader.h"
#include "hf/family_spec.h"
#include "hf/hf_dir.h"
#include "hf/peft.h"
#include "hf/weights.h"
#include "tests/unit/hf/hf_test_util.h"

namespace moetrain::hf {
namespace {

using config::ModelConfig;
using nlohmann::json;
using testing::error_of;
using testing::temp_dir;

// hf_test_util.h's small_recipe with three layers (so a dense layer can sit between two MoE layers).
config::Recipe three_layer_recipe(std::vector<std::string> overrides) {
  overrides.insert(overrides.begin(), "model.num_layers=3");
  return testing::small_recipe(overrides);
}

model::Transformer small_model(const config::Recipe& r) {
  model::Transformer m(model::TransformerOptions::from_recipe(r));
  model::init_weights(*m, 7, 0.5);
  torch::NoGradGuard no_grad;
  for (auto& p : m->named_parameters()) p.value().uniform_(-1, 1);  // norms, biases and LoRA B not trivial
  return m;
}

// A recipe each spec can export exactly, with values other than the spec's defaults for every key it names.
config::Recipe recipe_for(const FamilySpec& s) {
  std::vector<std::string> o = {"model.num_experts=6",
                                "model.top_k=3",
                                "model.moe_ffn_hidden=16",
                                "model.num_heads=4",
                                "model.num_kv_heads=2",
                                "routing.normalize_gates=" + std::string(s.norm_topk_key ? "false" : "true")};
  o.push_back("model.qk_norm=" + ModelConfig::QkNorm_Name(s.qk_norm));
  if (s.dense_layers != DenseLayers::kNone) o.push_back("model.moe_layers=[0,2]");
  if (s.shared_expert.size_key)
    o.insert(o.end(), {"model.num_shared_experts=1", "model.shared_expert_gate=true"});
  if (s.qkv_bias_key) o.push_back("model.qkv_bias=true");
  return three_layer_recipe(o);
}

// The parameters a plan reads, set in `model` (what load_hf_tensors does for a registered family).
void load(const ImportPlan& plan, model::TransformerImpl& model) {
  torch::NoGradGuard no_grad;
  auto params = model.named_parameters();
  for (const auto& t : plan.parameters) {
    ASSERT_TRUE(params.find(t.name)) << t.name;
    params[t.name].copy_(t.read());
  }
  EXPECT_EQ(plan.parameters.size(), params.size());
}

TEST(HfFamilySpec, TheRegistryNamesEachFamilyOnce) {
  std::set<std::string> types, architectures;
  for (Family f : all_families()) {
    EXPECT_EQ(&info(f), &spec(f).names);
    EXPECT_EQ(family_named(info(f).model_type), f);
    EXPECT_STRNE(spec(f).holds, "") << info(f).title << ": an export refusal says what the format holds";
    types.insert(info(f).model_type);
    architectures.insert(info(f).architecture);
  }
  EXPECT_EQ(types.size(), all_families().size());
  EXPECT_EQ(architectures.size(), all_families().size());
  // auto_family picks among the families with the model's q/k norm: every value has one.
  for (auto n : {ModelConfig::NO_QK_NORM, ModelConfig::PER_HEAD, ModelConfig::FULL_WIDTH}) {
    bool found = false;
    for (Family f : all_families()) found = found || spec(f).qk_norm == n;
    EXPECT_TRUE(found) << ModelConfig::QkNorm_Name(n);
  }
}

// Export writes every key the spec names; import reads each back to the recipe's value.
TEST(HfFamilySpec, EveryFamilysConfigKeysRoundTrip) {
  for (Family f : all_families()) {
    const FamilySpec& s = spec(f);
    const auto recipe = recipe_for(s);
    auto model = small_model(recipe);
    ASSERT_TRUE(export_problems(f, recipe, *model).empty()) << s.names.title;
    const json c = export_config(f, recipe, *model, {}, torch::kFloat32);
    EXPECT_EQ(c["model_type"], s.names.model_type);
    EXPECT_EQ(c[s.moe_ffn_key], 16) << s.names.title;
    EXPECT_EQ(c[s.experts_key], 6) << s.names.title;
    if (s.norm_topk_key) {
      EXPECT_EQ(c[s.norm_topk_key], false) << s.names.title;
    }
    if (s.shared_expert.size_key) {
      EXPECT_EQ(c[s.shared_expert.size_key], 16) << s.names.title;
    }
    if (s.qkv_bias_key) {
      EXPECT_EQ(c[s.qkv_bias_key], true) << s.names.title;
    }
    for (const auto& r : s.restrictions) EXPECT_TRUE(c.contains(r.key)) << r.key;  // head_dim: always written
    const auto imported = recipe_from_hf_config(c, "config.json");
    ASSERT_EQ(imported.family, f);
    const auto& m = imported.recipe.model();
    EXPECT_EQ(m.num_experts(), 6);
    EXPECT_EQ(m.top_k(), 3);
    EXPECT_EQ(m.moe_ffn_hidden(), 16);
    EXPECT_EQ(m.num_kv_heads(), 2);
    EXPECT_EQ(m.qk_norm(), s.qk_norm);
    EXPECT_EQ(m.qkv_bias(), s.qkv_bias_key != nullptr);
    EXPECT_EQ(m.shared_expert_ffn_hidden(), s.shared_expert.size_key ? 16 : 0);
    EXPECT_EQ(m.moe_layers_size(), s.dense_layers != DenseLayers::kNone ? 2 : 0) << s.names.title;
    EXPECT_EQ(imported.recipe.routing().normalize_gates(), !s.norm_topk_key) << s.names.title;
  }
}

// A config.json with only model_type is transformers' default model of the family: the spec's defaults.
TEST(HfFamilySpec, AbsentKeysTakeTheSpecsDefaults) {
  for (Family f : all_families()) {
    const ConfigDefaults& d = spec(f).defaults;
    const auto m = recipe_from_hf_config({{"model_type", info(f).model_type}}, "config.json").recipe.model();
    EXPECT_EQ(m.vocab_size(), d.vocab_size);
    EXPECT_EQ(m.d_model(), d.hidden_size);
    EXPECT_EQ(m.num_layers(), d.num_hidden_layers);
    EXPECT_EQ(m.num_heads(), d.num_attention_heads);
    EXPECT_EQ(m.num_kv_heads(), d.num_key_value_heads < 0 ? 0 : d.num_key_value_heads) << info(f).title;
    EXPECT_EQ(m.ffn_hidden(), d.intermediate_size);
    EXPECT_EQ(m.moe_ffn_hidden(), spec(f).moe_ffn_key == std::string("intermediate_size")
                                      ? d.intermediate_size
                                      : d.moe_intermediate_size);
    EXPECT_EQ(m.num_experts(), d.num_experts);
    EXPECT_EQ(m.top_k(), d.num_experts_per_tok);
    EXPECT_EQ(m.shared_expert_ffn_hidden(), d.shared_expert_intermediate_size);
    EXPECT_EQ(m.norm_eps(), d.rms_norm_eps);
    EXPECT_EQ(m.rope_theta(), d.rope_theta);
  }
}

// Each checked restriction, given another value than its neutral one, is refused as "key = value: why".
TEST(HfFamilySpec, EveryRestrictionIsRefusedWithItsReason) {
  for (Family f : all_families()) {
    const FamilySpec& s = spec(f);
    const auto recipe = recipe_for(s);
    auto model = small_model(recipe);
    const json exported = export_config(f, recipe, *model, {}, torch::kFloat32);
    for (const auto& r : s.restrictions) {
      if (!r.why) continue;
      json c = exported;
      std::string shown;
      switch (r.kind) {
        case Restriction::kNull: c[r.key] = 64, shown = "64"; break;
        case Restriction::kFalse: c[r.key] = true, shown = "true"; break;
        case Restriction::kFullAttention: c[r.key][1] = "sliding_attention", shown = c[r.key].dump(); break;
        case Restriction::kHeadSizeFromHidden: c[r.key] = 8, shown = "8"; break;
        default: FAIL() << r.key << " has a reason but is written only";
      }
      const std::string e = error_of([&] { recipe_from_hf_config(c, "config.json"); });
      EXPECT_NE(e.find(std::string(r.key) + " = " + shown + ": "), std::string::npos)
          << s.names.title << ": " << e;
      EXPECT_NE(e.find(r.why), std::string::npos) << s.names.title << ": " << e;
    }
  }
}

// What a new family needs: a spec (here a Qwen3-MoE-like family with its own names, keys, defaults, a
// shared expert and a restriction); the generic export, import and PEFT code does the rest. Registering it
// (a Family value, its line in families.cpp) makes moe-export --format and moe-import take it.
FamilySpec toy_spec() {
  FamilySpec s = qwen3_moe_spec();
  s.names = {"toy_moe", "Toy-MoE", "ToyMoeForCausalLM", "toy_moe"};
  s.defaults.num_experts = 16;
  s.moe_ffn_key = "expert_intermediate_size";
  s.experts_key = "n_routed_experts";
  s.experts_alias = nullptr;
  s.shared_expert.size_key = "shared_intermediate_size";
  s.shared_expert.prefix = "shared_experts.";
  s.restrictions.push_back(
      {"attn_logit_softcapping", Restriction::kNull, "moetrain does not cap attention logits"});
  s.layer.moe_block = "moe.";
  s.layer.expert_gate = "w_gate", s.layer.expert_up = "w_up", s.layer.expert_down = "w_down";
  return s;
}

TEST(HfFamilySpec, ANewFamilyIsOneSpec) {
  const FamilySpec s = toy_spec();
  const auto recipe = recipe_for(s);
  auto model = small_model(recipe);
  EXPECT_TRUE(export_problems(s, recipe, *model).empty());
  const json c = export_config(s, recipe, *model, {}, torch::kFloat32);
  EXPECT_EQ(c["n_routed_experts"], 6);
  EXPECT_EQ(c["expert_intermediate_size"], 16);
  EXPECT_TRUE(c["attn_logit_softcapping"].is_null());
  const auto tensors = export_tensors(s, *model);
  std::set<std::string> names;
  for (const auto& [name, t] : tensors) names.insert(name);
  EXPECT_TRUE(names.count("model.layers.0.moe.experts.5.w_down.weight"));
  EXPECT_TRUE(names.count("model.layers.2.moe.shared_experts.up_proj.weight"));
  EXPECT_TRUE(names.count("model.layers.1.mlp.gate_proj.weight"));  // dense layer

  const std::string dir = temp_dir("toy");
  write_weights(dir, tensors, 1 << 20);
  const config::Recipe imported = recipe_from_hf_config(s, c, "config.json");
  EXPECT_EQ(imported.name(), "imported-toy_moe");
  model::Transformer back(model::TransformerOptions::from_recipe(imported));
  const HfWeights weights(dir);
  load(import_plan(s, weights, back->options()), *back);
  for (const auto& p : model->named_parameters())
    EXPECT_TRUE(torch::equal(p.value(), back->named_parameters()[p.key()])) << p.key();

  json softcapped = c;
  softcapped["attn_logit_softcapping"] = 30.0;
  EXPECT_NE(error_of([&] { recipe_from_hf_config(s, softcapped, "config.json"); })
                .find("this Toy-MoE model cannot be imported:\n  attn_logit_softcapping = 30.0: moetrain "
                      "does not cap"),
            std::string::npos);
  auto lora = small_model(three_layer_recipe({"finetune.lora.rank=2", "model.qk_norm=PER_HEAD"}));
  const auto adapter = peft_adapter(s, *lora);
  EXPECT_EQ(adapter.config["auto_mapping"]["base_model_class"], "ToyMoeForCausalLM");
  EXPECT_EQ(adapter.config["target_parameters"], json({"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}));
}

}  // namespace
}  // namespace moetrain::hf
