// tools::export_checkpoint (tools/hf_export.h) as a call: what it writes from a checkpoint on disk, and that a refused
// or failed export leaves nothing behind. (tests/e2e/hf_bridge.py, hf_peft.py and finetune_walkthrough.py
// load what moe-export writes with transformers and peft.)
#include "tools/hf_export.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <set>

#include "csrc/config/recipe_loader.h"
#include "csrc/io/safetensors.h"
#include "hf/hf_dir.h"
#include "hf/weights.h"
#include "tests/unit/hf/hf_test_util.h"
#include "trainer/checkpoint.h"

namespace moetrain::hf {
namespace {

using tools::export_checkpoint;
using tools::ExportOptions;

using testing::error_of;
using testing::small_recipe;
using testing::temp_dir;

std::set<std::string> entries(const std::string& dir) {
  std::set<std::string> out;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") out.insert(e->d_name);
    }
    ::closedir(d);
  }
  return out;
}

// The same seeded model of `recipe` each call (LoRA B non-zero, so that the adapters change the model);
// zero_lora_b: the base model that a PEFT adapter is loaded onto.
model::Transformer seeded_model(const config::Recipe& recipe, bool zero_lora_b = false) {
  model::Transformer m(model::TransformerOptions::from_recipe(recipe));
  model::init_weights(*m, 7, 0.5);
  torch::manual_seed(3);
  torch::NoGradGuard no_grad;
  for (auto& p : m->named_parameters()) {
    const std::string& name = p.key();
    if (name.find("_lora_") != std::string::npos) p.value().uniform_(-0.5, 0.5);
    if (zero_lora_b && name.size() > 7 && name.compare(name.size() - 7, 7, "_lora_b") == 0) p.value().zero_();
  }
  return m;
}

// `run`: a run directory with one checkpoint (step 0) of seeded_model(recipe).
void save_run(const std::string& run, const config::Recipe& recipe) {
  auto m = seeded_model(recipe);
  torch::optim::AdamW optimizer(m->parameters());
  trainer::Checkpointer(run, 1, trainer::model_section_text(recipe), config::to_text(recipe), nullptr)
      .save(trainer::TrainState{}, *m, optimizer);
}

// What the export of seeded_model(recipe, zero_lora_b) should hold in `family`: its tensors (adapters
// merged) in `dtype`.
std::map<std::string, torch::Tensor> expected(Family family, const config::Recipe& recipe,
                                              torch::ScalarType dtype, bool zero_lora_b = false) {
  auto model = seeded_model(recipe, zero_lora_b);
  merge_adapters(*model);
  std::map<std::string, torch::Tensor> out;
  for (const auto& [name, t] : export_tensors(family, *model)) out[name] = t.to(dtype);
  return out;
}

void expect_tensors(const std::string& dir, const std::map<std::string, torch::Tensor>& want) {
  const HfWeights got(dir);
  ASSERT_EQ(got.names().size(), want.size());
  for (const auto& [name, t] : want) EXPECT_TRUE(torch::equal(got.get(name), t)) << name;
}

TEST(ExportCheckpoint, WritesTheModelDirectoryAndNothingElse) {
  const std::string root = temp_dir("plain"), run = root + "/run";
  save_run(run, small_recipe());
  ExportOptions options;
  options.checkpoint = run;  // a run directory: its latest checkpoint
  options.out = root + "/hf/";
  std::vector<std::string> notes;
  options.note = [&](const std::string& n) { notes.push_back(n); };
  const auto result = export_checkpoint(options);
  EXPECT_EQ(result.out, root + "/hf");
  EXPECT_EQ(result.family, Family::kMixtral);  // auto: Mixtral computes this model exactly
  EXPECT_EQ(result.checkpoint, run + "/checkpoints/step_00000000");
  EXPECT_EQ(result.files, std::vector<std::string>{"model.safetensors"});
  EXPECT_TRUE(result.tokenizer.empty());
  EXPECT_EQ(entries(root + "/hf"),
            (std::set<std::string>{"config.json", "generation_config.json", "model.safetensors"}));
  EXPECT_EQ(entries(root), (std::set<std::string>{"hf", "run"}));  // no temporary directory left
  expect_tensors(root + "/hf", expected(Family::kMixtral, small_recipe(), torch::kFloat32));
  std::ifstream config(root + "/hf/config.json");
  EXPECT_EQ(nlohmann::json::parse(config)["model_type"], "mixtral");
  ASSERT_FALSE(notes.empty());
  EXPECT_NE(notes.back().find("the recipe names no data.tokenizer"), std::string::npos);
  const auto summary = result.summary();
  EXPECT_EQ(summary["format"], "mixtral");
  EXPECT_EQ(summary["dtype"], "fp32");
  EXPECT_EQ(summary["tensors"], result.tensors);
  EXPECT_TRUE(summary["adapter"].is_null() && summary["tokenizer"].is_null());
}

TEST(ExportCheckpoint, Bf16ShardsInTheFormatAskedFor) {
  const std::string root = temp_dir("shards"), run = root + "/run";
  save_run(run, small_recipe());
  ExportOptions options;
  options.checkpoint = run;
  options.out = root + "/hf";
  options.family = Family::kQwen2Moe;
  options.dtype = torch::kBFloat16;
  options.max_shard_bytes = 4000;
  options.ship_tokenizer = false;
  const auto result = export_checkpoint(options);
  EXPECT_EQ(result.family, Family::kQwen2Moe);
  EXPECT_GT(result.files.size(), 1u);
  EXPECT_EQ(entries(root + "/hf").count("model.safetensors.index.json"), 1u);
  EXPECT_EQ(result.summary()["dtype"], "bf16");
  expect_tensors(root + "/hf", expected(Family::kQwen2Moe, small_recipe(), torch::kBFloat16));
}

TEST(ExportCheckpoint, RefusalsLeaveNothingBehind) {
  const std::string root = temp_dir("refused"), run = root + "/run";
  save_run(run, small_recipe({"model.num_shared_experts=1"}));
  ExportOptions options;
  options.checkpoint = run;
  options.out = root + "/hf";
  options.family = Family::kMixtral;
  const std::string refused = error_of([&] { export_checkpoint(options); });
  EXPECT_NE(refused.find("Hugging Face Mixtral cannot represent this model exactly:"), std::string::npos)
      << refused;
  EXPECT_NE(refused.find("model.num_shared_experts = 1"), std::string::npos) << refused;
  EXPECT_EQ(refused.find("--format names another family"), std::string::npos) << "the format was asked for";

  options.family.reset();
  options.tokenizer = root + "/nope.model";
  EXPECT_NE(error_of([&] {
              export_checkpoint(options);
            }).find("--tokenizer " + root + "/nope.model: no such file"),
            std::string::npos);
  options.tokenizer.clear();
  options.checkpoint = root + "/nope";
  EXPECT_NE(error_of([&] {
              export_checkpoint(options);
            }).find("--checkpoint " + root + "/nope: no such directory"),
            std::string::npos);
  options.checkpoint = run;
  options.adapter_out = root + "/adapter";  // a run without adapters
  EXPECT_NE(error_of([&] { export_checkpoint(options); }).find("finetune.lora.rank = 0"), std::string::npos);
  EXPECT_EQ(entries(root), std::set<std::string>{"run"});  // no output, no temporary directory

  options.adapter_out.clear();
  ::mkdir((root + "/hf").c_str(), 0755);
  std::ofstream(root + "/hf/keep") << "x";
  EXPECT_EQ(error_of([&] { export_checkpoint(options); }),
            "--out " + root + "/hf exists and is not empty; choose a new directory or remove it");
  EXPECT_EQ(entries(root + "/hf"), std::set<std::string>{"keep"});
  options.ship_tokenizer = false;
  options.tokenizer = "t.model";
  EXPECT_EQ(error_of([&] { export_checkpoint(options); }),
            "--tokenizer and --no-tokenizer exclude each other; pass one");
}

TEST(ExportCheckpoint, AdapterOutSplitsTheBaseFromThePeftAdapter) {
  const std::string root = temp_dir("adapter"), run = root + "/run";
  const auto recipe = small_recipe({"finetune.lora.rank=4"});
  save_run(run, recipe);
  ExportOptions options;
  options.checkpoint = run;
  options.out = root + "/merged";
  export_checkpoint(options);
  const auto merged = expected(Family::kMixtral, recipe, torch::kFloat32);
  expect_tensors(root + "/merged", merged);

  options.out = root + "/base";
  options.adapter_out = root + "/adapter";
  const auto result = export_checkpoint(options);
  EXPECT_EQ(result.adapter_out, root + "/adapter");
  EXPECT_EQ(entries(root + "/adapter"),
            (std::set<std::string>{"adapter_config.json", "adapter_model.safetensors"}));
  const auto base = expected(Family::kMixtral, recipe, torch::kFloat32, /*zero_lora_b=*/true);
  expect_tensors(root + "/base", base);
  const std::string w1 = "model.layers.0.block_sparse_moe.experts.0.w1.weight";
  EXPECT_FALSE(torch::equal(merged.at(w1), base.at(w1))) << "the adapters change the expert weights";
}

}  // namespace
}  // namespace moetrain::hf
