// moe-train --recipe FILE [--set field.path=value]... [--run-dir DIR]
// Trains the recipe's model; resumes from DIR/checkpoints/latest when present.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "csrc/config/recipe_loader.h"
#include "parallel/launch_env.h"
#include "trainer/trainer.h"

namespace {

constexpr const char* kUsage =
    "usage: moe-train --recipe FILE [--set field.path=value]... [--run-dir DIR]\n"
    "  --recipe FILE   recipe in Protobuf text format (schema: csrc/config/recipe.proto, docs/recipes.md)\n"
    "  --set A.B=V     override one recipe field, typed like the file (repeatable)\n"
    "  --run-dir DIR   where metrics, TensorBoard events, checkpoints and the resolved recipe go\n"
    "                  (default: runs/<recipe file name>); an existing run there is resumed\n";

int usage_error(const std::string& message) {
  std::fprintf(stderr, "moe-train: error: %s\n%s", message.c_str(), kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string recipe_path, run_dir;
  std::vector<std::string> overrides;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* flag) -> const char* {
      if (i + 1 >= argc) return nullptr;
      (void)flag;
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      std::printf("%s", kUsage);
      return 0;
    } else if (arg == "--recipe" || arg == "--set" || arg == "--run-dir") {
      const char* v = value(arg.c_str());
      if (!v) return usage_error(arg + " needs a value");
      if (arg == "--recipe") recipe_path = v;
      else if (arg == "--set") overrides.emplace_back(v);
      else run_dir = v;
    } else {
      return usage_error("unknown argument \"" + arg + "\"");
    }
  }
  if (recipe_path.empty()) return usage_error("--recipe is required");
  if (run_dir.empty()) run_dir = "runs/" + std::filesystem::path(recipe_path).stem().string();

  moetrain::config::Recipe recipe;
  try {
    recipe = moetrain::config::load_recipe(recipe_path, overrides);
    const auto launch = moetrain::parallel::detect_launch();
    const int64_t needed = recipe.parallel().tensor() * recipe.parallel().expert();
    if (launch.world_size != 1 || needed != 1) {
      std::fprintf(stderr,
                   "moe-train: error: this build trains in one process: launched with world size %d by %s, "
                   "recipe asks for parallel.tensor=%lld parallel.expert=%lld; run without a launcher and "
                   "with --set parallel.tensor=1 --set parallel.expert=1\n",
                   launch.world_size, launch.launcher.c_str(), static_cast<long long>(recipe.parallel().tensor()),
                   static_cast<long long>(recipe.parallel().expert()));
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-train: error: %s\n", e.what());
    return 2;
  }
  try {
    moetrain::trainer::Trainer trainer(recipe, run_dir);
    const auto summary = trainer.run();
    if (summary.val_ppl == summary.val_ppl) {
      std::printf("final: step %lld | train loss %.4f | validation loss %.4f | validation perplexity %.2f "
                  "(unigram baseline %.2f)\n",
                  static_cast<long long>(summary.steps), summary.final_loss, summary.val_loss, summary.val_ppl,
                  summary.unigram_ppl);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-train: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
