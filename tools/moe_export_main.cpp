// moe-export --checkpoint STEP_DIR --out HF_DIR [--format auto|mixtral|qwen2_moe|qwen3_moe|olmoe]
//            [--dtype fp32|bf16] [--tokenizer FILE|DIR | --no-tokenizer] [--max-shard-bytes N] [--adapter-out DIR]
// Writes a Hugging Face model directory from a moetrain checkpoint saved in any parallel layout:
// tools::export_checkpoint (tools/hf_export.h) does the work, complete or not at all; prints its summary as one
// JSON line. Usage errors exit 2, a refused or failed export 1.
#include <cstdio>

#include "tools/hf_export.h"
#include "tools/cli.h"

namespace cli = moetrain::tools::cli;

int main(int argc, char** argv) {
  cli::Command cmd(
      "moe-export",
      "usage: moe-export --checkpoint STEP_DIR --out HF_DIR [--format auto|mixtral|qwen2_moe|qwen3_moe|olmoe]\n"
      "                  [--dtype fp32|bf16] [--tokenizer FILE|DIR | --no-tokenizer] [--max-shard-bytes N]\n"
      "                  [--adapter-out DIR]\n");
  cmd.required("--checkpoint", "DIR",
               "RUN_DIR/checkpoints/step_NNNNNNNN (any parallel layout), or RUN_DIR (its latest)")
      .required("--out", "HF_DIR", "new directory for the Hugging Face model (must not exist, or be empty)")
      .option("--format", "F",
              "mixtral (MixtralForCausalLM), qwen2_moe (Qwen2MoeForCausalLM: dense layers, shared\n"
              "expert, q/k/v biases, unnormalised gates), qwen3_moe (Qwen3MoeForCausalLM: q/k norm\n"
              "per head), olmoe (OlmoeForCausalLM: full-width q/k norm), or auto (default): the\n"
              "family of the model's q/k norm, else mixtral when exact, else qwen2_moe")
      .option("--dtype", "D", "fp32 (default) or bf16: the dtype of the written weights")
      .option("--tokenizer", "FILE|DIR",
              "tokenizer to ship: a SentencePiece .model, or a Hugging Face model or tokenizer\n"
              "directory with tokenizer.json, copied as it is (default: the recipe's data.tokenizer)")
      .toggle("--no-tokenizer", "export the weights and configs only")
      .option("--max-shard-bytes", "N",
              "largest weight file; bigger models get shards + model.safetensors.index.json\n"
              "(default 5000000000)")
      .option("--adapter-out", "DIR",
              "LoRA runs: write the base model to HF_DIR and the PEFT adapter\n"
              "(adapter_config.json, adapter_model.safetensors) to DIR; without it the adapters\n"
              "are merged into HF_DIR's expert weights");
  return cmd.run(argc, argv, [&] {
    moetrain::tools::ExportOptions options;
    options.checkpoint = cmd.get("--checkpoint");
    options.out = cmd.get("--out");
    const std::string format = cmd.choice("--format", {"auto", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe"},
                                          "auto");
    if (format != "auto") options.family = moetrain::hf::family_named(format);
    options.dtype = cmd.choice("--dtype", {"fp32", "bf16"}, "fp32") == "bf16" ? torch::kBFloat16
                                                                              : torch::kFloat32;
    options.tokenizer = cmd.get("--tokenizer");
    options.ship_tokenizer = !cmd.has("--no-tokenizer");
    if (!options.ship_tokenizer && cmd.has("--tokenizer")) {
      throw cli::UsageError("--tokenizer and --no-tokenizer exclude each other; pass one");
    }
    options.max_shard_bytes = cmd.integer("--max-shard-bytes", options.max_shard_bytes, 1,
                                          "expected a positive number of bytes (for example 5000000000)");
    options.adapter_out = cmd.get("--adapter-out");
    options.note = [](const std::string& note) {
      std::fprintf(stderr, "moe-export: note: %s\n", note.c_str());
    };
    std::printf("%s\n", moetrain::tools::export_checkpoint(options).summary().dump().c_str());
    return 0;
  });
}
