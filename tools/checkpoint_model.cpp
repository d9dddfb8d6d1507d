#include "tools/checkpoint_model.h"

#include <sys/stat.h>

#include <fstream>
#include <set>
#include <stdexcept>

#include "csrc/config/recipe_loader.h"
#include "trainer/checkpoint.h"

namespace moetrain::tools {
namespace {

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

// The step directory `path` names: itself when it holds a manifest, else RUN_DIR/checkpoints/<latest>.
std::string resolve_step_dir(const std::string& path, const std::string& flag) {
  if (!exists(path)) {
    throw std::runtime_error(
        flag + " " + path +
        ": no such directory; pass a checkpoint directory "
        "(RUN_DIR/checkpoints/step_NNNNNNNN) or a run directory (its checkpoints/latest is used)");
  }
  if (exists(path + "/manifest.json")) return path;
  std::ifstream latest(path + "/checkpoints/latest");
  std::string name;
  if (latest >> name) return path + "/checkpoints/" + name;
  throw std::runtime_error(flag + " " + path +
                           ": neither a checkpoint (no manifest.json) nor a run directory with "
                           "checkpoints/latest; pass RUN_DIR/checkpoints/step_NNNNNNNN of a finished save");
}

}  // namespace

CheckpointModel load_checkpoint_model(const std::string& path, const std::string& flag,
                                      std::optional<config::TrainConfig::Precision> precision) {
  CheckpointModel out;
  out.dir = resolve_step_dir(path, flag);
  try {
    out.manifest = nlohmann::json::parse(trainer::read_manifest(out.dir));
  } catch (const std::exception& e) {
    throw std::runtime_error(flag + " " + path + ": " + e.what());
  }
  const std::string recipe_text = out.manifest.value("recipe", std::string());
  if (recipe_text.empty()) {
    throw std::runtime_error(flag + " " + out.dir +
                             ": manifest.json stores no recipe (the checkpoint was saved without "
                             "one); re-save it with moe-train, which records the resolved recipe");
  }
  out.recipe = config::parse_recipe(recipe_text, out.dir + "/manifest.json (recipe)");
  config::fill_defaults(out.recipe);
  out.step = out.manifest.value("step", int64_t{0});
  if (precision) out.recipe.mutable_train()->set_precision(*precision);

  out.model = model::Transformer(model::TransformerOptions::from_recipe(out.recipe));  // with LoRA adapters, if any
  // Every model tensor of the checkpoint must land somewhere: a tensor this model lacks would otherwise
  // be ignored silently and the results would describe another model.
  std::set<std::string> ours;
  for (const auto& p : out.model->named_parameters()) ours.insert("model/" + p.key());
  for (const auto& b : out.model->named_buffers()) ours.insert("model/" + b.key());
  for (const auto& item : out.manifest.at("tensors").items()) {
    if (item.key().rfind("model/", 0) == 0 && !ours.count(item.key())) {
      throw std::runtime_error(flag + " " + out.dir + ": the checkpoint holds " + item.key() +
                               ", which the model built from its recipe does not have; this tool cannot use it");
    }
  }
  // Only load() is used, which reads the directory it is given (the run directory argument is unused).
  trainer::Checkpointer checkpointer(out.dir, 1, trainer::model_section_text(out.recipe), recipe_text,
                                     /*mesh=*/nullptr);
  trainer::LoadOptions options;
  options.optimizer = false;
  options.train_state = false;
  checkpointer.load(out.dir, *out.model, nullptr, options);
  out.model->eval();
  return out;
}

}  // namespace moetrain::tools
