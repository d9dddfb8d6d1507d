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
#include "tools/cli.h"
#include "trainer/checkpoint.h"

namespace {

namespace cli = moetrain::tools::cli;

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

// HF_DIR/config.json, parsed; throws naming --hf and the fix when it is missing or not JSON.
nlohmann::json read_config(const std::string& hf_dir) {
  const std::string config_path = hf_dir + "/config.json";
  if (!exists(hf_dir))
    throw std::runtime_error("--hf " + hf_dir +
                             ": no such directory; pass a directory written by save_pretrained");
  if (!exists(config_path))
    throw std::runtime_error("--hf " + hf_dir +
                             ": has no config.json; pass a directory written by save_pretrained");
  std::ifstream in(config_path);
  std::stringstream text;
  text << in.rdbuf();
  try {
    return nlohmann::json::parse(text.str());
  } catch (const std::exception& e) {
    throw std::runtime_error(config_path + " is not valid JSON (" + e.what() + ")");
  }
}

// Copies HF_DIR/tokenizer.model into the run (when there is one) and points the recipe at it; returns
// its path, or "" for none.
std::string import_tokenizer(const std::string& hf_dir, const std::string& run_dir,
                             moetrain::config::Recipe& recipe) {
  if (!exists(hf_dir + "/tokenizer.model")) return "";
  const auto sp = moetrain::hf::read_sentencepiece(hf_dir + "/tokenizer.model");
  if (static_cast<int64_t>(sp.pieces.size()) > recipe.model().vocab_size()) {
    throw std::runtime_error(hf_dir + "/tokenizer.model has " + std::to_string(sp.pieces.size()) +
                             " pieces, more than config.json's vocab_size " +
                             std::to_string(recipe.model().vocab_size()) +
                             "; the tokenizer belongs to another model");
  }
  const std::string tokenizer = run_dir + "/tokenizer.model";
  moetrain::io::write_file_synced(tokenizer, sp.bytes);
  recipe.mutable_data()->set_tokenizer(tokenizer);
  return tokenizer;
}

void write_recipe(const std::string& hf_dir, const std::string& run_dir, moetrain::hf::Family family,
                  const std::string& recipe_text) {
  moetrain::io::write_file_synced(
      run_dir + "/recipe.textproto",
      "# Imported by moe-import from " + hf_dir + " (" + moetrain::hf::info(family).architecture +
          "): model and\n"
          "# routing from its config.json (softmax over all experts, top-k, dropless). Set data.train_prefix "
          "(and the\n"
          "# training sections) to train:\n"
          "#   moe-train --recipe " +
          run_dir +
          "/recipe.textproto --set data.train_prefix=PREFIX --run-dir NEW_RUN \\\n"
          "#             --set finetune.init_from=" +
          run_dir + "\n" + recipe_text);
}

int import_model(const std::string& hf_dir, const std::string& run_dir) {
  const nlohmann::json config = read_config(hf_dir);
  if (exists(run_dir + "/checkpoints/latest") || exists(run_dir + "/recipe.textproto")) {
    throw std::runtime_error("--out " + run_dir + " already holds a run; choose a new directory");
  }
  auto imported = moetrain::hf::recipe_from_hf_config(config, hf_dir + "/config.json");
  auto& recipe = imported.recipe;
  const moetrain::hf::HfWeights weights(hf_dir);
  // The model is never built: each tensor is read, converted and written in turn (import_plan checks the
  // whole directory first), so a model of any size imports in about the memory of its largest tensor.
  const auto options = moetrain::model::TransformerOptions::from_recipe(recipe.model(), recipe.routing());
  const auto plan = moetrain::hf::import_plan(imported.family, weights, options);

  std::filesystem::create_directories(run_dir);
  const std::string tokenizer = import_tokenizer(hf_dir, run_dir, recipe);
  const std::string recipe_text = moetrain::config::to_text(recipe);
  write_recipe(hf_dir, run_dir, imported.family, recipe_text);
  moetrain::trainer::Checkpointer checkpointer(run_dir, recipe.checkpoint().keep_last(),
                                               moetrain::trainer::model_section_text(recipe), recipe_text,
                                               /*mesh=*/nullptr);
  const std::string saved = checkpointer.save_streamed(moetrain::trainer::TrainState{}, options,
                                                       plan.parameters, plan.buffers);

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
                                  {"tokenizer",
                                   tokenizer.empty() ? nlohmann::json(nullptr) : nlohmann::json(tokenizer)}};
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  cli::Command cmd("moe-import", "usage: moe-import --hf HF_DIR --out RUN_DIR\n");
  cmd.required("--hf", "HF_DIR",
               "a Hugging Face Mixtral, Qwen2-MoE, Qwen3-MoE or OLMoE directory (config.json and\n"
               "safetensors weights in fp32, bf16 or fp16; read into fp32)")
      .required("--out", "RUN_DIR",
                "new run directory: recipe.textproto, checkpoints/step_00000000, tokenizer.model");
  return cmd.run(argc, argv, [&] { return import_model(cmd.get("--hf"), cmd.get("--out")); });
}
