// moetrain <-> Hugging Face Mixtral (MixtralForCausalLM): config.json, tensor names and layouts, and
// which recipes Mixtral represents exactly (docs/huggingface.md).
//
// Shapes: V vocabulary, D d_model, E experts, F moe_ffn_hidden, L layer index, e expert index.
// Written layout: the per-expert ("classic") layout of the Hub's Mixtral checkpoints, which
// transformers 4.x loads as it is and transformers 5 converts on load (conversion_mapping "mixtral"):
//   model.embed_tokens.weight                            (V, D)  embed.weight
//   model.layers.L.input_layernorm.weight                (D)     layers.L.attn_norm.weight
//   model.layers.L.self_attn.{q,k,v}_proj.weight         (D, D)  rows [0,D), [D,2D), [2D,3D) of layers.L.attn.wqkv.weight (3D, D)
//   model.layers.L.self_attn.o_proj.weight               (D, D)  layers.L.attn.wo.weight
//   model.layers.L.post_attention_layernorm.weight       (D)     layers.L.ffn_norm.weight
//   model.layers.L.block_sparse_moe.gate.weight          (E, D)  layers.L.moe.router.weight
//   model.layers.L.block_sparse_moe.experts.e.w1.weight  (F, D)  layers.L.moe.experts.w1[e]ᵀ  (w1: (E, D, F), gate)
//   model.layers.L.block_sparse_moe.experts.e.w3.weight  (F, D)  layers.L.moe.experts.w3[e]ᵀ  (w3: (E, D, F), up)
//   model.layers.L.block_sparse_moe.experts.e.w2.weight  (D, F)  layers.L.moe.experts.w2[e]ᵀ  (w2: (E, F, D), down)
//   model.norm.weight                                    (D)     norm.weight
//   lm_head.weight                                       (V, D)  lm_head.weight (absent when tied)
// Read as well: transformers 5's fused layout (save_pretrained(..., save_original_format=False)):
//   model.layers.L.mlp.gate.weight (E, D); model.layers.L.mlp.experts.gate_up_proj (E, 2F, D), per expert
//   [gate rows; up rows]; model.layers.L.mlp.experts.down_proj (E, D, F).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "csrc/config/recipe.pb.h"
#include "csrc/io/safetensors.h"
#include "csrc/model/transformer.h"
#include "hf/hf_dir.h"

namespace moetrain::hf {

// Special token ids for config.json (and the tokenizer files); -1 = none.
struct SpecialTokens {
  int64_t bos = -1, eos = -1, pad = -1, unk = -1;
};

// Every reason `recipe` (with `model`'s trained expert biases) cannot be run by Mixtral exactly: one
// line each naming the recipe field, its value and what Mixtral supports. Empty = exportable.
std::vector<std::string> mixtral_export_problems(const config::Recipe& recipe, const model::TransformerImpl& model);

// config.json of the recipe's model (call mixtral_export_problems first).
nlohmann::json mixtral_config(const config::Recipe& recipe, const SpecialTokens& special);

// The model's weights under Mixtral's names in the layout above, in file order. `model` is a
// one-process model (no expert or tensor parallelism): every tensor is global; LoRA adapters must be
// merged first (hf::merge_adapters).
io::NamedTensors mixtral_tensors(const model::TransformerImpl& model);

// Model and routing sections equivalent to a Mixtral config.json (every other section at its
// default); throws naming the config.json field, its value and what moetrain supports. `source` names
// the file in messages.
config::Recipe recipe_from_mixtral_config(const nlohmann::json& config, const std::string& source);

// Copies the tensors of a Mixtral directory (either layout, any dtype) into `model`, built from
// recipe_from_mixtral_config. Every parameter must be set and every tensor used; throws naming the
// tensor, its file and the expected shape otherwise. Expert selection biases are set to zero.
void load_mixtral_tensors(const HfWeights& weights, model::TransformerImpl& model);

}  // namespace moetrain::hf
