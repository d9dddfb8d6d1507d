// Reading a one-process moetrain model's weights for export, with fine-tuning adapters folded in.
#pragma once

#include <string>

#include "csrc/model/transformer.h"

namespace moetrain::hf {

// A parameter by its moetrain name (detached); throws std::logic_error when absent (a mapping bug).
torch::Tensor parameter(const model::TransformerImpl& model, const std::string& name);

// The routed experts of one MoE layer as they compute: (E, D, F) gate, (E, D, F) up, (E, F, D) down,
// each x·W. With LoRA adapters (finetune.lora) the update is merged: W + (alpha / rank)·A·B per expert,
// A (E, in, rank), B (E, rank, out); equal to moetrain's x·W + scale·(x·A)·B up to rounding.
struct ExpertWeights {
  torch::Tensor w1_EDF, w3_EDF, w2_EFD;
};
ExpertWeights expert_weights(const model::TransformerImpl& model, int64_t layer);

// Whether the model carries LoRA adapters (they are merged by expert_weights).
bool has_adapters(const model::TransformerImpl& model);

}  // namespace moetrain::hf
