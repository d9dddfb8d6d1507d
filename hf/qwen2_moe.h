// moetrain -> Hugging Face Qwen2-MoE (Qwen2MoeForCausalLM), the export target for what Mixtral cannot
// hold: dense layers (config mlp_only_layers), a shared expert, and gates without renormalisation
// (norm_topk_prob false). Export only (docs/huggingface.md).
//
// Qwen2-MoE's MoE block is  Σ_k gate_k·expert_k(x) + sigmoid(x·sᵀ)·shared_expert(x)  with a learned
// shared-expert gate s (1, D). moetrain's shared expert is ungated, so we write s = 0 (sigmoid = 1/2,
// exactly) and the shared expert's down projection doubled; both factors are powers of two, so the
// product is exact. A recipe without shared experts gets an all-zero shared expert of size 8 (output 0).
// Qwen2-MoE's attention has q/k/v biases in transformers 4.x (qkv_bias in 5.x): written as zeros.
//
// Tensors (V, D, E, F = moe_ffn_hidden, Fd = ffn_hidden, S = shared hidden; per-expert layout, which
// transformers 5 converts on load):
//   model.embed_tokens.weight (V, D); model.norm.weight (D); lm_head.weight (V, D) unless tied
//   model.layers.L.{input_layernorm,post_attention_layernorm}.weight (D)
//   model.layers.L.self_attn.{q,k,v}_proj.weight (D, D) + .bias (D) zeros; o_proj.weight (D, D)
//   dense layer:  model.layers.L.mlp.{gate,up}_proj.weight (Fd, D) = mlp.w1/w3.weight; down_proj (D, Fd) = mlp.w2.weight
//   MoE layer:    model.layers.L.mlp.gate.weight (E, D) = moe.router.weight
//                 model.layers.L.mlp.experts.e.{gate,up}_proj.weight (F, D) = w1[e]ᵀ, w3[e]ᵀ; down_proj (D, F) = w2[e]ᵀ
//                 model.layers.L.mlp.shared_expert.{gate,up}_proj.weight (S, D); down_proj (D, S) = 2·moe.shared.w2.weight
//                 model.layers.L.mlp.shared_expert_gate.weight (1, D) zeros
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "hf/mixtral.h"

namespace moetrain::hf {

// Every reason Qwen2-MoE cannot compute `recipe` exactly (empty = exportable).
std::vector<std::string> qwen2_moe_export_problems(const config::Recipe& recipe, const model::TransformerImpl& model);

// config.json (call qwen2_moe_export_problems first).
nlohmann::json qwen2_moe_config(const config::Recipe& recipe, const model::TransformerImpl& model, const SpecialTokens& special);

// The weights under Qwen2-MoE's names, in file order; `model` is a one-process model with any LoRA
// adapters merged (hf::merge_adapters).
io::NamedTensors qwen2_moe_tensors(const model::TransformerImpl& model);

}  // namespace moetrain::hf
