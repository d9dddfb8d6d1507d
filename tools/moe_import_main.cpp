// moe-import --hf HF_DIR --out RUN_DIR
// Turns a Hugging Face Mixtral, Qwen2-MoE, Qwen3-MoE or OLMoE directory (hf/families.h; config.json +
// model.safetensors, or shards with model.safetensors.index.json; per-expert or transformers 5 fused expert
// tensors; fp32, bf16 or fp16 on disk) into a moetrain run directory:
//   RUN_DIR/recipe.textproto                     model and routing from config.json, other sections default
//   RUN_DIR/checkpoints/step_00000000 + latest   the weights (fp32), expert biases 0, no optimizer state; written
//                                                one tensor at a time without building the model
//   RUN_DIR/tokenizer.model                      when HF_DIR has one (the recipe's data.tokenizer points at it)
// Checkpoints reshard on load, so this one loads into any (TP, EP, DP) layout: resume it in place, or
// start a fine-tuning run from it with finetune.init_from = RUN_DIR.
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "csrc/config/recipe_loader.h"
#include "hf/families.h"
#include "hf/tokenizer.h"
#include "trainer/checkpoint.h"

namespace {

constexpr const char* kUsage =
    "usage: moe-import --hf HF_DIR --out RUN_DIR\n"
    "  --hf HF_DIR    a Hugging Face Mixtral, Qwen2-MoE, Qwen3-MoE or OLMoE directory (config.json and\n"
    "                 safetensors weights in fp32, bf16 or fp16; read into fp32)\n"
    "  --out RUN_DIR  new run directory: recipe.textproto, checkpoints/step_00000000, tokenizer.model\n";

int usage_error(const std::string& message) {
  std::fprintf(stderr, "moe-import: error: %s\n%s", message.c_str(), kUsage);
  return 2;
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string hf_dir, run_dir;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::printf("%s", kUsage);
      return 0;
    }
    std::string* slot = arg == "--hf" ? &hf_dir : arg == "--out" ? &run_dir : nullptr;
    if (!slot) return usage_error("unknown argument \"" + arg + "\"");
    if (i + 1 >= argc) return usage_error(arg + " needs a value");
    *slot = argv[++i];
  }
  if (hf_dir.empty()) return usage_error("--hf is required (a Hugging Face model directory)");
  if (run_dir.empty()) return usage_error("--out is required (a new run directory)");

  try {
    const std::string config_path = hf_dir + "/config.json";
    if (!exists(hf_dir)) throw std::runtime_error("--hf " + hf_dir + ": no such directory; pass a directory written by save_pretrained");
    if (!exists(config_path)) throw std::runtime_error("--hf " + hf_dir + ": has no config.json; pass a directory written by save_pretrained");
    if (exists(run_dir + "/checkpoints/latest") || exists(run_dir + "/recipe.textproto")) {
      throw std::runtime_error("--out " + run_dir + " already holds a run; choose a new directory");
    }
    nlohmann::json config;
    {
      std::ifstream in(config_path);
      std::stringstream text;
      text << in.rdbuf();
      try {
        config = nlohmann::json::parse(text.str());
      } catch (const std::exception& e) {
        throw std::runtime_error(config_path + " is not valid JSON (" + e.what() + ")");
      }
    }
    auto imported = moetrain::hf::recipe_from_hf_config(config, config_path);
    auto& recipe = imported.recipe;
    const moetrain::hf::HfWeights weights(hf_dir);
    // The model is never built: each tensor is read, converted and written in turn (import_plan checks the
    // whole directory first), so a model of any size imports in about the memory of its largest tensor.
    const auto options = moetrain::model::TransformerOptions::from_recipe(recipe.model(), recipe.routing());
    const auto plan = moetrain::hf::import_plan(imported.family, weights, options);

    std::filesystem::create_directories(run_dir);
    std::string tokenizer;
    if (exists(hf_dir + "/tokenizer.model")) {
      const auto sp = moetrain::hf::read_sentencepiece(hf_dir + "/tokenizer.model");
      if (static_cast<int64_t>(sp.pieces.size()) > recipe.model().vocab_size()) {
        throw std::runtime_error(hf_dir + "/tokenizer.model has " + std::to_string(sp.pieces.size()) +
                                 " pieces, more than config.json's vocab_size " + std::to_string(recipe.model().vocab_size()) +
                                 "; the tokenizer belongs to another model");
      }
      tokenizer = run_dir + "/tokenizer.model";
      moetrain::io::write_file_synced(tokenizer, sp.bytes);
      recipe.mutable_data()->set_tokenizer(tokenizer);
    }
    const std::string recipe_text = moetrain::config::to_text(recipe);
    moetrain::io::write_file_synced(
        run_dir + "/recipe.textproto",
        "# Imported by moe-import from " + hf_dir + " (" + moetrain::hf::info(imported.family).architecture + "): model and\n"
        "# routing from its config.json (softmax over all experts, top-k, dropless). Set data.train_prefix (and the\n"
        "# training sections) to train:\n"
        "#   moe-train --recipe " + run_dir + "/recipe.textproto --set data.train_prefix=PREFIX --run-dir NEW_RUN \\\n"
        "#             --set finetune.init_from=" + run_dir + "\n" + recipe_text);

    moetrain::trainer::Checkpointer checkpointer(run_dir, recipe.checkpoint().keep_last(), moetrain::trainer::model_section_text(recipe),
                                                 recipe_text, /*mesh=*/nullptr);
    const std::string saved = checkpointer.save_streamed(moetrain::trainer::TrainState{}, options, plan.parameters, plan.buffers);

    int64_t params = 0;
    for (const auto& p : plan.parameters) {
      int64_t n = 1;
      for (const int64_t d : p.shape) n *= d;
      params += n;
    }
    const nlohmann::json summary = {{"out", run_dir},
                                    {"family", moetrain::hf::info(imported.family).model_type},
                                    {"checkpoint", saved},
                                    {"parameters", params},
                                    {"hf_tensors", weights.names().size()},
                                    {"tokenizer", tokenizer.empty() ? nlohmann::json(nullptr) : nlohmann::json(tokenizer)}};
    std::printf("%s\n", summary.dump().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-import: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
