// Reading a one-process moetrain model's weights for export, with fine-tuning adapters folded in.
#pragma once

#include <string>

#include "csrc/io/safetensors.h"
#include "csrc/model/transformer.h"

namespace moetrain::hf {

// A parameter by its moetrain name (detached); throws std::logic_error when absent (a mapping bug).
torch::Tensor parameter(const model::TransformerImpl& model, const std::string& name);

// Throws std::logic_error naming `who` unless `model` is a one-process model (tp 1, all experts local).
void require_one_process(const model::TransformerImpl& model, const std::string& who);

// Hugging Face's separate projections <-> moetrain's fused wqkv (csrc/model/attention.h): q (H·Dh[, C]), k and
// v (Hkv·Dh[, C]) with head h at rows [h·Dh, (h+1)·Dh); fused ((G + 2)·Hkv·Dh[, C]), G = H / Hkv, slot
// s < G holding query head j·G + s for each key/value head j, then the keys, then the values. Works for
// weights (C = D), biases (no C) and LoRA B matrices (C = rank).
torch::Tensor fuse_qkv(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t heads,
                       int64_t kv_heads);
struct QkvParts {
  torch::Tensor q, k, v;
};
QkvParts split_qkv(const torch::Tensor& fused, int64_t heads, int64_t kv_heads);

// The routed experts of one MoE layer: (E, D, F) gate, (E, D, F) up, (E, F, D) down, each x·W.
// LoRA adapters (finetune.lora) must have been folded in first (merge_adapters below); adapters with a
// non-zero update are a std::logic_error, so an export can never drop them silently.
struct ExpertWeights {
  torch::Tensor w1_EDF, w3_EDF, w2_EFD;
};
ExpertWeights expert_weights(const model::TransformerImpl& model, int64_t layer);

// Folds every MoE layer's LoRA adapters into its expert weights, W += (alpha / rank)·A·B per expert
// (moe::GroupedExpertsImpl::merge_adapters); the model then computes the same function (up to rounding)
// with base weights alone. Returns whether there were adapters.
bool merge_adapters(model::TransformerImpl& model);

}  // namespace moetrain::hf
