// Fuzz target: the recipe parser and validator (csrc/config). Input: recipe text. Leading lines
// "#set PATH=VALUE" (comments to the parser) are applied as --set overrides after parsing.
// Contract: bad input throws config::RecipeError; a recipe that validates prints (to_text) as text
// that parses back to the same recipe.
#include <cstdint>
#include <sstream>
#include <string>

#include "csrc/config/recipe_loader.h"

using namespace moetrain::config;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    Recipe recipe = parse_recipe(text, "<fuzz>");
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line) && line.rfind("#set ", 0) == 0;)
      apply_override(recipe, line.substr(5));
    fill_defaults(recipe);
    validate_recipe(recipe, "<fuzz>");
    const std::string printed = to_text(recipe);
    Recipe again = parse_recipe(printed, "<printed>");
    fill_defaults(again);
    if (again.SerializeAsString() != recipe.SerializeAsString()) __builtin_trap();  // round trip lost a field
  } catch (const RecipeError&) {
  }
  return 0;
}
