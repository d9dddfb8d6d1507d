// A trained model in one process, from a moetrain checkpoint saved in any parallel layout: the recipe
// is the one stored in the checkpoint's manifest.json, the weights are resharded by trainer::Checkpointer.
// Shared by moe-eval and moe-export.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "csrc/config/recipe.pb.h"
#include "csrc/model/transformer.h"

namespace moetrain::tools {

struct CheckpointModel {
  std::string dir;  // the step_* directory read
  config::Recipe recipe;
  nlohmann::json manifest;
  int64_t step = 0;
  // One process (no expert or tensor parallelism), evaluation mode; LoRA adapters of finetune.lora included.
  model::Transformer model{nullptr};
};

// `path`: a step_* directory, or a run directory (its checkpoints/latest is used). `flag` names the
// command-line flag in errors ("--checkpoint"). Throws with the path and the fix when there is no
// checkpoint there, when the manifest has no recipe, or when the checkpoint holds tensors the model
// built from its recipe does not have. `precision`: the model's compute precision instead of the
// recipe's train.precision (moe-eval --precision); the recipe returned says which was used.
CheckpointModel load_checkpoint_model(const std::string& path, const std::string& flag,
                                      std::optional<config::TrainConfig::Precision> precision = std::nullopt);

}  // namespace moetrain::tools
