#include "hf/families.h"

#include "hf/family_spec.h"

#include <stdexcept>

namespace moetrain::hf {

// The registry: one spec per Family value, in all_families() order (moe-export --format auto's preference
// among families with the same attention).
const FamilySpec& spec(Family family) {
  static const FamilySpec specs[] = {mixtral_spec(), qwen2_moe_spec(), qwen3_moe_spec(), olmoe_spec()};
  return specs[static_cast<int>(family)];
}

const std::vector<Family>& all_families() {
  static const std::vector<Family> all{Family::kMixtral, Family::kQwen2Moe, Family::kQwen3Moe, Family::kOlmoe};
  return all;
}

const FamilyInfo& info(Family family) { return spec(family).names; }

std::optional<Family> family_named(const std::string& model_type) {
  for (Family f : all_families())
    if (model_type == info(f).model_type) return f;
  return std::nullopt;
}

// The families with the model's q/k norm; the first that computes it exactly, else the last of them
// (Mixtral, else Qwen2-MoE, without q/k norm).
Family auto_family(const config::Recipe& recipe, const model::TransformerImpl& model) {
  std::vector<Family> candidates;
  for (Family f : all_families())
    if (spec(f).qk_norm == recipe.model().qk_norm()) candidates.push_back(f);
  if (candidates.empty())
    throw std::logic_error("no Hugging Face family has model.qk_norm " +
                           std::to_string(recipe.model().qk_norm()));
  for (Family f : candidates)
    if (export_problems(f, recipe, model).empty()) return f;
  return candidates.back();
}

std::vector<std::string> export_problems(Family family, const config::Recipe& recipe,
                                         const model::TransformerImpl& model) {
  return export_problems(spec(family), recipe, model);
}

nlohmann::json export_config(Family family, const config::Recipe& recipe, const model::TransformerImpl& model,
                             const SpecialTokens& special, torch::ScalarType dtype) {
  return export_config(spec(family), recipe, model, special, dtype);
}

io::NamedTensors export_tensors(Family family, const model::TransformerImpl& model) {
  return export_tensors(spec(family), model);
}

ImportPlan import_plan(Family family, const HfWeights& weights, const model::TransformerOptions& options) {
  return import_plan(spec(family), weights, options);
}

}  // namespace moetrain::hf
