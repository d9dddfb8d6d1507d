// A moetrain checkpoint (saved in any parallel layout) as a Hugging Face model directory
// (docs/huggingface.md): config.json, generation_config.json, model.safetensors (or shards of at most
// max_shard_bytes tensor bytes + model.safetensors.index.json), and the tokenizer: a SentencePiece model
// (tokenizer.model, tokenizer_config.json, special_tokens_map.json written for it) or a Hugging Face
// tokenizer directory's files (tokenizer.json and what lies beside it, copied). What moe-export does, as a
// call.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "hf/families.h"

namespace moetrain::tools {

struct ExportOptions {
  std::string checkpoint;  // RUN_DIR/checkpoints/step_NNNNNNNN, or RUN_DIR (its latest)
  std::string out;         // the model directory to write: must not exist, or be empty
  // The format: nullopt (auto) is the family whose attention the model has (q/k norm per head: Qwen3-MoE,
  // full width: OLMoE), else Mixtral when it computes the model exactly, else Qwen2-MoE (hf::auto_family).
  std::optional<hf::Family> family;
  torch::ScalarType dtype = torch::kFloat32;  // of the written weights: kFloat32 or kBFloat16 (rounded)
  // The tokenizer shipped: a SentencePiece .model or a Hugging Face tokenizer directory; empty: the recipe's
  // data.tokenizer (none when the recipe names none). ship_tokenizer = false: weights and configs only.
  std::string tokenizer;
  bool ship_tokenizer = true;
  int64_t max_shard_bytes = 5000000000LL;  // > 0
  // Empty: a LoRA run exports merged, W + (alpha/rank)·A·B. Else `out` gets the base model and this
  // directory (must not exist, or be empty) the PEFT adapter (hf/peft.h) that peft loads onto it.
  std::string adapter_out;
  // Called with each note on what the export does (the format chosen, what it leaves out); may be empty.
  std::function<void(const std::string&)> note;
};

struct ExportResult {
  std::string out;
  std::string adapter_out;  // empty when no adapter was written
  hf::Family family;
  torch::ScalarType dtype;
  std::string checkpoint;  // the step_* directory read
  int64_t step = 0;
  size_t tensors = 0;              // in the model files
  int64_t bytes = 0;               // tensor bytes written
  std::vector<std::string> files;  // model.safetensors, or its shards
  std::string tokenizer;           // the tokenizer shipped; empty for none
  // The summary moe-export prints: out, adapter, format, dtype, checkpoint, step, tensors, bytes, files,
  // tokenizer.
  nlohmann::json summary() const;
};

// Writes the directory complete or not at all: into OUT.tmp-<pid>, renamed to `out` at the end; on any
// error nothing is left behind and the error is thrown. Errors name the moe-export flag of the option
// at fault (--out, --checkpoint, --tokenizer, --adapter-out) and the fix: a non-empty destination; no
// checkpoint there; a model the format cannot compute exactly (each recipe field at fault named, and
// what the format allows); a tokenizer that is missing or does not fit the model; adapter_out for a run
// without LoRA adapters.
ExportResult export_checkpoint(const ExportOptions& options);

}  // namespace moetrain::tools
