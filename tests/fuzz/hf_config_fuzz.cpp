// Fuzz target: the Hugging Face config.json reader (hf/families.*: recipe_from_hf_config, every
// family). Input: config.json text; text that is not JSON is moe-import's own error and skipped here.
// Contract: a config moetrain can compute gives a recipe that validates; anything else throws
// std::runtime_error naming the field, its value and what moetrain supports.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "csrc/config/recipe_loader.h"
#include "hf/families.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto config = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) return 0;
  try {
    auto imported = moetrain::hf::recipe_from_hf_config(config, "config.json");
    imported.recipe.mutable_data()->set_train_prefix("fuzz");
    moetrain::config::validate_recipe(imported.recipe, "<imported>");  // must not throw: trap below
  } catch (const moetrain::config::RecipeError&) {
    __builtin_trap();  // recipe_from_hf_config returned a recipe moetrain rejects
  } catch (const std::runtime_error&) {
  }
  return 0;
}
