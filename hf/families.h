// moetrain <-> the Hugging Face MoE families: Mixtral (MixtralForCausalLM), Qwen2-MoE (Qwen2MoeForCausalLM),
// Qwen3-MoE (Qwen3MoeForCausalLM) and OLMoE (OlmoeForCausalLM). Each family is described once, as data: a
// FamilySpec (hf/family_spec.h) in hf/specs/<model_type>.cpp with its config.json fields and defaults,
// tensor names and layouts, and what it computes that moetrain does not; the code reads the spec. Below,
// the overview (docs/huggingface.md has the per-family table).
//
// What the families compute (transformers 5), and moetrain's recipe for it:
//   all:        RMSNorm (fp32 inside), RoPE rotate-half (default type only), GQA (model.num_kv_heads,
//               model.head_dim), SwiGLU experts, router softmax over all experts in fp32, top-k
//   Mixtral:    every layer MoE, gates renormalised (routing.normalize_gates true), no biases, no q/k norm
//   Qwen2-MoE:  q/k/v biases (qkv_bias), a shared expert with a sigmoid gate (model.shared_expert_gate),
//               dense layers from mlp_only_layers / decoder_sparse_step, norm_topk_prob
//   Qwen3-MoE:  q/k RMSNorm per head over head_dim before RoPE (model.qk_norm PER_HEAD), dense layers from
//               mlp_only_layers / decoder_sparse_step, norm_topk_prob
//   OLMoE:      q/k RMSNorm over the full projection width (model.qk_norm FULL_WIDTH), every layer MoE,
//               norm_topk_prob
//
// Tensor names (L layer, e expert; D d_model, V vocabulary, E experts, F expert hidden, Fd dense hidden,
// Fs shared hidden, H heads, Hkv key/value heads, Dh head size):
//   model.embed_tokens.weight (V, D), model.norm.weight (D), lm_head.weight (V, D) unless tied
//   model.layers.L.{input_layernorm,post_attention_layernorm}.weight (D)
//   model.layers.L.self_attn.q_proj.weight (H·Dh, D), {k,v}_proj.weight (Hkv·Dh, D), o_proj.weight (D, H·Dh):
//       attn.wqkv in its slot layout (csrc/model/attention.h; hf::fuse_qkv), attn.wo
//   Qwen2-MoE:  self_attn.{q,k,v}_proj.bias = attn.wqkv.bias (zeros when the model has none)
//   Qwen3-MoE, OLMoE: self_attn.{q,k}_norm.weight = attn.{q,k}_norm.weight ((Dh) per head; (H·Dh), (Hkv·Dh))
//   MoE block:  Mixtral model.layers.L.block_sparse_moe., the others model.layers.L.mlp.:
//       gate.weight (E, D) = moe.router.weight
//       per expert (what moe-export writes): Mixtral experts.e.{w1,w3,w2}.weight, the others
//       experts.e.{gate,up,down}_proj.weight: (F, D), (F, D), (D, F) = w1[e]ᵀ, w3[e]ᵀ, w2[e]ᵀ
//       transformers 5 fused (read; under mlp. for every family): experts.gate_up_proj (E, 2F, D), per
//       expert [gate rows; up rows], experts.down_proj (E, D, F)
//   Qwen2-MoE:  mlp.shared_expert.{gate,up,down}_proj.weight (Fs, D), (Fs, D), (D, Fs) = moe.shared.w1/w3/w2,
//               mlp.shared_expert_gate.weight (1, D) = moe.shared_gate.weight. A model whose shared expert
//               has no gate is written with gate 0 (sigmoid = 1/2) and down_proj doubled (exact); a model
//               without shared experts gets an all-zero shared expert of size 8.
//   dense layer (Qwen): model.layers.L.mlp.{gate,up,down}_proj.weight = mlp.w1/w3/w2.weight
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "csrc/config/recipe.pb.h"
#include "csrc/io/safetensors.h"
#include "csrc/model/transformer.h"
#include "hf/hf_dir.h"

namespace moetrain::hf {

enum class Family { kMixtral, kQwen2Moe, kQwen3Moe, kOlmoe };

struct FamilyInfo {
  const char* model_type;    // config.json model_type and moe-export --format: "mixtral", "qwen2_moe", ...
  const char* title;         // for messages: "Mixtral", "Qwen2-MoE", ...
  const char* architecture;  // "MixtralForCausalLM", ...
  const char* module;        // transformers.models.<module>.modeling_<module>
};
const FamilyInfo& info(Family family);
std::optional<Family> family_named(const std::string& model_type);
const std::vector<Family>& all_families();

// Special token ids for config.json (and the tokenizer files); -1 = none.
struct SpecialTokens {
  int64_t bos = -1, eos = -1, pad = -1, unk = -1;
};

// ---- export --------------------------------------------------------------------------------------------
// Every reason `family` cannot compute `recipe` (with `model`'s trained expert biases) exactly: one line
// each naming the recipe field, its value and what the family supports. Empty = exportable.
std::vector<std::string> export_problems(Family family, const config::Recipe& recipe,
                                         const model::TransformerImpl& model);

// The family `moe-export --format auto` picks: the one whose attention the model has (q/k norm per head:
// Qwen3-MoE; full width: OLMoE), else Mixtral when it is exact, else Qwen2-MoE.
Family auto_family(const config::Recipe& recipe, const model::TransformerImpl& model);

// config.json (call export_problems first). `dtype`: the dtype the weights are written in.
nlohmann::json export_config(Family family, const config::Recipe& recipe, const model::TransformerImpl& model,
                             const SpecialTokens& special, torch::ScalarType dtype);

// The weights under the family's names in the per-expert layout above, fp32, in file order. `model`: one
// process (tp 1, all experts), LoRA adapters merged (hf::merge_adapters).
io::NamedTensors export_tensors(Family family, const model::TransformerImpl& model);

// ---- import --------------------------------------------------------------------------------------------
struct ImportedConfig {
  Family family;
  config::Recipe recipe;  // model and routing sections; every other section at its default
};

// The recipe of a config.json of any of the four families; throws listing every field moetrain does not
// compute exactly (sliding window, clip_qkv, a rope scaling type, an o_proj bias, ...), each named with
// its value. `source` names the file in messages.
ImportedConfig recipe_from_hf_config(const nlohmann::json& config, const std::string& source);

// The tensors of the one-process model `options` describes (built from the imported recipe), each read
// from a directory of `family` (either expert layout, any float dtype) only when asked for, in fp32:
// `parameters` under the model's parameter names and shapes, `buffers` the expert selection biases (zero).
// Every tensor of the directory must be used and every one the model needs present with its shape:
// checked when the plan is made, before anything is read or written, naming the tensor, its file and the
// expected shape. The readers refer to `weights`, which must outlive the plan.
struct ImportPlan {
  std::vector<io::LazyTensor> parameters, buffers;
};
ImportPlan import_plan(Family family, const HfWeights& weights, const model::TransformerOptions& options);

// The plan copied into `model` (built from the imported recipe): every parameter set, or a logic_error.
void load_hf_tensors(Family family, const HfWeights& weights, model::TransformerImpl& model);

}  // namespace moetrain::hf
