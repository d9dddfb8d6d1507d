#include "trainer/ablation/study.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "csrc/config/recipe_loader.h"
#include "trainer/ablation/study.pb.h"

namespace moetrain::trainer::ablation {
namespace {

const std::vector<uint64_t> kDefaultSeeds = {1234, 1235, 1236};

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// `path` relative to the folder `dir` unless it is absolute.
std::string relative_to(const std::string& dir, const std::string& path) {
  return path.empty() || path[0] == '/' || dir.empty() ? path : dir + "/" + path;
}

std::string names(const std::vector<Variant>& variants) {
  std::string out;
  for (const auto& v : variants) out += (out.empty() ? "" : ", ") + v.name;
  return out;
}

// Throws unless every variant name and seed is given once and the baseline is a variant.
void check_study(const Study& s, const std::string& where) {
  for (size_t i = 0; i < s.variants.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (s.variants[i].name == s.variants[j].name)
        throw std::runtime_error(where + ": variant \"" + s.variants[i].name + "\" is named twice (" +
                                 s.variants[j].recipe + " and " + s.variants[i].recipe +
                                 "); give each variant once, with distinct file names");
  for (size_t i = 0; i < s.seeds.size(); ++i)
    if (std::count(s.seeds.begin(), s.seeds.end(), s.seeds[i]) > 1)
      throw std::runtime_error(where + ": seeds: " + std::to_string(s.seeds[i]) +
                               " is given twice; give distinct seeds (each seed is one run per variant)");
  if (std::none_of(s.variants.begin(), s.variants.end(), [&](const Variant& v) { return v.name == s.baseline; }))
    throw std::runtime_error(where + ": baseline: \"" + s.baseline + "\" is not a variant of the study (" +
                             names(s.variants) + "); name one of them");
}

}  // namespace

std::vector<Variant> folder_variants(const std::string& dir) {
  std::vector<Variant> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) throw std::runtime_error(dir + ": cannot open the variants folder; check the path");
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (ends_with(name, ".textproto") && name != ".textproto" && name != "base.textproto")
      out.push_back({name.substr(0, name.size() - 10), dir + "/" + name});
  }
  ::closedir(d);
  std::sort(out.begin(), out.end(), [](const Variant& a, const Variant& b) { return a.name < b.name; });
  if (out.empty())
    throw std::runtime_error(dir + ": no variant recipes (*.textproto other than base.textproto) in the folder");
  return out;
}

Study folder_study(const std::string& dir) {
  Study s;
  s.source = dir;
  s.variants = folder_variants(dir);
  s.seeds = {kDefaultSeeds[0]};
  s.baseline = s.variants.front().name;
  return s;
}

Study load_study(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    throw std::runtime_error(path + ": cannot open the study file; check the path given to moe-ablate");
  std::stringstream text;
  text << in.rdbuf();
  moetrain::ablation::Study file;
  config::parse_text(text.str(), path, "docs/ablations.md", file);
  const std::string dir = path.find('/') == std::string::npos ? "" : path.substr(0, path.rfind('/'));
  Study s;
  s.source = path;
  if (file.has_variants_dir()) s.variants = folder_variants(relative_to(dir, file.variants_dir()));
  for (const auto& v : file.variants()) {
    const std::string recipe = relative_to(dir, v), base = recipe.substr(recipe.rfind('/') + 1);
    if (!ends_with(base, ".textproto") || !is_file(recipe))
      throw std::runtime_error(path + ": variants: \"" + v + "\" is not a recipe file (looked for " + recipe +
                               "); give a *.textproto path relative to the study file");
    s.variants.push_back({base.substr(0, base.size() - 10), recipe});
  }
  if (s.variants.empty())
    throw std::runtime_error(path +
                             ": the study names no variant; add variants_dir: \"FOLDER\" or variants: "
                             "\"FILE.textproto\" (paths relative to the study file)");
  s.seeds.assign(file.seeds().begin(), file.seeds().end());
  if (s.seeds.empty()) s.seeds = kDefaultSeeds;
  if (file.steps() < 0 || file.tokens() < 0 || (file.steps() > 0 && file.tokens() > 0))
    throw std::runtime_error(path + ": steps: " + std::to_string(file.steps()) +
                             ", tokens: " + std::to_string(file.tokens()) +
                             "; give one budget, steps or tokens, as a positive number (0 or absent: the "
                             "recipes' own train.steps)");
  s.steps = file.steps(), s.tokens = file.tokens();
  s.sets.assign(file.set().begin(), file.set().end());
  s.baseline = file.has_baseline() ? file.baseline() : s.variants.front().name;
  check_study(s, path);
  return s;
}

std::vector<Run> plan_runs(const Study& study, const std::string& out_dir) {
  for (const auto& set : study.sets) {
    if (set.rfind("train.seed=", 0) == 0)
      throw std::runtime_error(study.source + ": set " + set +
                               ": every run's seed is one of the study's seeds; " +
                               "list the seeds in the study file (seeds: [...]) instead");
    if (set.rfind("train.steps=", 0) == 0 && (study.steps > 0 || study.tokens > 0))
      throw std::runtime_error(study.source + ": set " + set + ": the study's budget (steps: or tokens:) sets " +
                               "train.steps; change the budget in the study file instead");
  }
  std::vector<Run> runs;
  for (size_t v = 0; v < study.variants.size(); ++v) {
    const Variant& variant = study.variants[v];
    std::vector<std::string> sets = study.sets;
    try {
      const config::Recipe recipe = config::load_recipe(variant.recipe, sets);
      const int64_t per_step = recipe.train().micro_batch_size() * recipe.train().grad_accum_steps() *
                               recipe.data().seq_len();
      const int64_t steps = study.tokens > 0 ? (study.tokens + per_step - 1) / per_step : study.steps;
      if (steps > 0) sets.push_back("train.steps=" + std::to_string(steps));
      for (uint64_t seed : study.seeds) {
        std::vector<std::string> overrides = sets;
        overrides.push_back("train.seed=" + std::to_string(seed));
        // The run's recipe must load as moe-train will load it.
        const int64_t run_steps = config::load_recipe(variant.recipe, overrides).train().steps();
        runs.push_back({v, seed, run_steps,
                        out_dir + "/runs/" + variant.name + "/seed-" + std::to_string(seed), overrides});
      }
    } catch (const config::RecipeError& e) {
      throw std::runtime_error("variant " + variant.name + " (" + variant.recipe + "): " + e.what());
    }
  }
  return runs;
}

}  // namespace moetrain::trainer::ablation
