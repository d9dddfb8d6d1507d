// A Hugging Face MoE family as data. Each family is one FamilySpec (hf/specs/<model_type>.cpp): its names,
// its config.json keys and transformers' defaults for them, its tensor names, and what it does not have.
// The generic code reads only the spec:
//   config_to_hf.cpp    export_problems, export_config        tensors_to_hf.cpp    export_tensors
//   config_from_hf.cpp  recipe_from_hf_config                  tensors_from_hf.cpp  import_plan
//   peft.cpp            peft_adapter                           families.cpp         the registry, auto_family
// The functions below are those of hf/families.h taking a spec instead of a registered Family, so a spec
// can be tried (tests/unit/hf/family_spec_test.cpp) before it is registered.
//
// Adding a family: a spec file (copy the nearest one), a Family value and its line in families.cpp's
// registry, the file in hf/CMakeLists.txt. Only what no field below describes is new code (DeepSeek-V3's
// sigmoid router with groups and first_k_dense_replace, gpt-oss's interleaved fused experts with biases
// and attention sinks, Llama-4's chunked attention and its multimodal prefix): a field for it here, read
// where the generic code handles its neighbours.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "hf/families.h"

namespace moetrain::hf {

// transformers' config-class defaults: what from_pretrained assumes for an absent config.json field.
struct ConfigDefaults {
  int64_t vocab_size = 0, hidden_size = 0, num_hidden_layers = 0, num_attention_heads = 0;
  int64_t num_key_value_heads = -1;   // -1: num_attention_heads
  int64_t intermediate_size = 0;      // read always (the dense layers', or the experts' size)
  int64_t moe_intermediate_size = 0;  // read when FamilySpec::moe_ffn_key names it
  int64_t num_experts = 0, num_experts_per_tok = 0;
  int64_t shared_expert_intermediate_size = 0;  // read when the family has a shared expert
  double rms_norm_eps = 0, rope_theta = 0;
};

// A config.json setting moetrain has only in one (neutral) form, or a rule on the config beyond moetrain's
// own. Export writes the neutral value; import refuses any other, as "key = value: why". `why` null:
// written on export, not checked on import (transformers ignores it when the rest is neutral).
struct Restriction {
  enum Kind {
    kNull,               // null or absent
    kFalse,              // false or absent (a non-boolean is a type error)
    kZero,               // 0.0 (written only)
    kLayerCount,         // num_hidden_layers (written only)
    kFullAttention,      // a list with "full_attention" for every layer, when it is a list
    kHeadSizeFromHidden  // writes nothing: head_dim · num_attention_heads must equal hidden_size
  };
  const char* key;
  Kind kind;
  const char* why;
};

// Which layers are dense (SwiGLU, no experts).
enum class DenseLayers {
  kNone,           // every layer has a routed MoE block
  kQwenSparseStep  // mlp_only_layers and decoder_sparse_step; intermediate_size is the dense layers' size
};

// The shared (always-on) expert, when the family has one: a SwiGLU of its own size with a sigmoid gate.
struct SharedExpertSpec {
  const char* size_key = nullptr;         // config.json key of its hidden size; null = the family has none
  const char* prefix = "shared_expert.";  // + {gate,up,down}_proj.weight, under the MoE block
  const char* gate = "shared_expert_gate.weight";  // (1, D), under the MoE block
  int64_t empty_size = 8;  // hidden size of the all-zero shared expert written for a model without one
};

// Tensor names under model.layers.L. (L layer, e expert).
struct LayerNames {
  const char* input_norm = "input_layernorm.weight";
  const char* post_attention_norm = "post_attention_layernorm.weight";
  const char* attention = "self_attn.";  // + the four below, and q_norm / k_norm
  const char *q = "q_proj", *k = "k_proj", *v = "v_proj", *o = "o_proj";  // + .weight / .bias
  const char *q_norm = "q_norm.weight", *k_norm = "k_norm.weight";
  const char* dense = "mlp.";  // + {gate,up,down}_proj.weight in a dense layer
  // The routed MoE block: <moe_block>gate.weight (the router, (E, D)) and per expert
  // <moe_block>experts.e.{gate,up,down}.weight ((F, D), (F, D), (D, F)): what export writes.
  const char* moe_block = "mlp.";
  const char *expert_gate = "gate_proj", *expert_up = "up_proj", *expert_down = "down_proj";
  // transformers 5's fused layout (import reads it; PEFT adapters target it): <fused_block>experts.
  // <gate_up> (E, 2F, D), per expert [gate rows; up rows], and <fused_block>experts.<down> (E, D, F).
  const char* fused_block = "mlp.";
  const char *fused_gate_up = "gate_up_proj", *fused_down = "down_proj";
};

struct FamilySpec {
  FamilyInfo names;  // model_type, title, architecture, module (hf::info)
  // What the format holds, in words, for the refusal of an export it cannot represent exactly.
  const char* holds = "";
  ConfigDefaults defaults;
  // config.json keys of the experts' hidden size, their count, and top-k renormalisation.
  const char* moe_ffn_key = "moe_intermediate_size";  // "intermediate_size": the same key as the dense size
  const char* experts_key = "num_experts";
  // Read on import when experts_key is absent (transformers 5 may save the count under it).
  const char* experts_alias = nullptr;
  const char* norm_topk_key = "norm_topk_prob";  // null: the family always renormalises the top-k gates
  // Architecture.
  DenseLayers dense_layers = DenseLayers::kNone;
  SharedExpertSpec shared_expert;
  config::ModelConfig::QkNorm qk_norm = config::ModelConfig::NO_QK_NORM;  // q/k RMSNorm before RoPE
  // q/k/v biases: their config key (absent = true); written always, zeros when the model has none.
  const char* qkv_bias_key = nullptr;
  std::vector<Restriction> restrictions;  // in the order import reports them
  LayerNames layer;
};

// The registered spec of `family`.
const FamilySpec& spec(Family family);

// The registered families' specs (hf/specs/).
FamilySpec mixtral_spec();
FamilySpec qwen2_moe_spec();
FamilySpec qwen3_moe_spec();
FamilySpec olmoe_spec();

// ---- hf/families.h's functions for a spec (same contracts) ---------------------------------------------
std::vector<std::string> export_problems(const FamilySpec& spec, const config::Recipe& recipe,
                                         const model::TransformerImpl& model);
nlohmann::json export_config(const FamilySpec& spec, const config::Recipe& recipe,
                             const model::TransformerImpl& model, const SpecialTokens& special,
                             torch::ScalarType dtype);
io::NamedTensors export_tensors(const FamilySpec& spec, const model::TransformerImpl& model);
// `config`'s model_type is the spec's (not checked here).
config::Recipe recipe_from_hf_config(const FamilySpec& spec, const nlohmann::json& config,
                                     const std::string& source);
ImportPlan import_plan(const FamilySpec& spec, const HfWeights& weights,
                       const model::TransformerOptions& options);

}  // namespace moetrain::hf
