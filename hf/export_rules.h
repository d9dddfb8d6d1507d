// Rules every Hugging Face export target shares (Mixtral, Qwen2-MoE): routing that is a softmax over
// all experts, token-choice top-k, no gate scaling, no group limit, no expert selection bias.
#pragma once

#include <string>
#include <vector>

#include "csrc/config/recipe.pb.h"
#include "csrc/model/transformer.h"

namespace moetrain::hf {

// One line per routing setting `target` (a model family's name, for messages) cannot compute, naming
// the recipe field, its value and what the target supports. Expert biases are read from `model`.
std::vector<std::string> routing_problems(const config::Recipe& recipe, const model::TransformerImpl& model,
                                          const std::string& target);

// Settings that do not change the exported model's outputs but are worth a note (LoRA merged,
// evaluation capacity). `merged`: the adapters of a LoRA run are merged into the exported weights (no --adapter-out).
std::vector<std::string> export_notes(const config::Recipe& recipe, const std::string& target, bool merged);

// Indices of the model's dense (SwiGLU, non-MoE) layers.
std::vector<int64_t> dense_layers(const model::TransformerImpl& model);

// "model.moe_layer_freq = 2" or "model.moe_layers = [0, 2]": the field that decides the dense layers.
std::string moe_layers_field(const config::ModelConfig& model);

std::string number_text(double v);                // shortest readable form: 2.5, 0.001
std::string join(const std::vector<int64_t>& v);  // "1, 3"

}  // namespace moetrain::hf
