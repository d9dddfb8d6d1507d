// Recipe loading: good files, bad files with their exact messages, typed overrides, validation rules.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ftw.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <string>

#include "csrc/config/recipe_loader.h"

using namespace moetrain::config;

namespace {

std::string source_dir() {
  const char* dir = std::getenv("MOETRAIN_SOURCE_DIR");
  return dir ? dir : ".";
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const RecipeError& e) {
    return e.what();
  }
  return "<no error>";
}

Recipe valid_recipe() {
  Recipe r = parse_recipe("data { train_prefix: \"corpus/train\" }", "<test>");
  fill_defaults(r);
  return r;
}

}  // namespace

std::vector<std::string> shipped_recipes() {
  static std::vector<std::string> found;
  found.clear();
  auto visit = [](const char* path, const struct stat*, int type, struct FTW*) {
    const std::string p = path;
    const bool study = p.size() > 16 && p.compare(p.size() - 16, 16, ".study.textproto") == 0;  // ablation_test's
    if (type == FTW_F && p.size() > 10 && p.compare(p.size() - 10, 10, ".textproto") == 0 && !study)
      found.push_back(p);
    return 0;
  };
  nftw((source_dir() + "/recipes").c_str(), visit, 16, FTW_PHYS);
  return found;
}

// Recipes whose base is a model that moe-import writes (recipes/finetune/qwen3_moe_lora.textproto) load
// in a copy of the tree with a stand-in for that model's recipe.
const std::map<std::string, std::string> kImportedBases{
    {"../../models/qwen3-moe/recipe.textproto", "tests/unit/config/qwen3_30b_a3b_imported.textproto"}};

std::string with_imported_base(const std::string& path) {
  std::ifstream in(path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const auto& [base, stand_in] : kImportedBases) {
    if (text.find("base: \"" + base + "\"") == std::string::npos) continue;
    const std::string root = ::testing::TempDir() + "/recipe_imported_base",
                      recipes = root + "/recipes/finetune";
    const std::string model_dir = root + "/" + base.substr(6, base.rfind('/') - 6);  // without "../../"
    EXPECT_EQ(std::system(("mkdir -p '" + recipes + "' '" + model_dir + "'").c_str()), 0);
    std::ofstream(recipes + "/" + path.substr(path.rfind('/') + 1)) << text;
    std::ifstream model(source_dir() + "/" + stand_in);
    std::ofstream(root + "/" + base.substr(6)) << model.rdbuf();
    return recipes + "/" + path.substr(path.rfind('/') + 1);
  }
  return path;
}

TEST(RecipeFiles, EveryShippedRecipeLoadsAndValidates) {
  const auto recipes = shipped_recipes();
  EXPECT_GE(recipes.size(), 20u);
  for (const auto& path : recipes) {
    Recipe r;
    EXPECT_NO_THROW(r = load_recipe(with_imported_base(path), {})) << path;
    EXPECT_GT(r.train().steps(), 0) << path;
    EXPECT_TRUE(r.model().has_d_model()) << path << ": defaults are filled in";
  }
  // The Qwen3-MoE fine-tuning recipe on Qwen3-30B-A3B's model, under the walk-through's EP 8.
  const std::string qwen3 = with_imported_base(source_dir() + "/recipes/finetune/qwen3_moe_lora.textproto");
  Recipe r;
  EXPECT_NO_THROW(r = load_recipe(qwen3, {"parallel.expert=8"})) << qwen3;
  EXPECT_EQ(r.model().num_experts(), 128);
  EXPECT_EQ(r.finetune().lora().rank(), 16);
  EXPECT_TRUE(r.finetune().freeze_router());
}

TEST(RecipeFiles, FillDefaultsMakesEveryFieldExplicit) {
  Recipe r = parse_recipe("", "<test>");
  fill_defaults(r);
  EXPECT_TRUE(r.train().has_seed());
  EXPECT_EQ(r.train().seed(), 1234u);
  EXPECT_EQ(r.model().top_k(), 2);
  const std::string text = to_text(r);
  EXPECT_NE(text.find("aux_loss_coeff: 0.01"), std::string::npos) << text;
  // The resolved text parses back to the same recipe.
  Recipe again = parse_recipe(text, "<resolved>");
  EXPECT_EQ(to_text(again), text);
}

TEST(RecipeErrors, UnknownFieldNamesFileLineColumnAndClosestField) {
  EXPECT_EQ(error_of([] { parse_recipe("train {\n  stepz: 5\n}\n", "r.textproto"); }),
            "r.textproto:2:8: unknown field \"stepz\" in TrainConfig; did you mean \"steps\"? known fields: "
            "steps, seed, micro_batch_size, grad_accum_steps, eval_interval, eval_sequences, threads, exit_interval, precision, device, deterministic, "
            "recompute, recompute_modules, recompute_num_layers");
}

TEST(RecipeErrors, UnknownSectionIsAnError) {
  EXPECT_EQ(error_of([] { parse_recipe("modle { d_model: 8 }", "r.textproto"); }),
            "r.textproto:1:7: unknown field \"modle\" in Recipe; did you mean \"model\"? known fields: name, model, "
            "routing, data, optimizer, schedule, train, parallel, checkpoint, logging, base, finetune");
}

TEST(RecipeErrors, WrongTypeNamesPosition) {
  EXPECT_EQ(error_of([] { parse_recipe("train {\n  steps: \"ten\"\n}", "r.textproto"); }),
            "r.textproto:2:10: Expected integer, got: \"ten\" (see docs/recipes.md for the field's type)");
}

TEST(RecipeErrors, RepeatedSingularFieldIsAnError) {
  EXPECT_EQ(error_of([] { parse_recipe("train { steps: 1 steps: 2 }", "r.textproto"); }),
            "r.textproto:1:23: Non-repeated field \"steps\" is specified multiple times. (see docs/recipes.md for "
            "the field's type)");
}

TEST(RecipeErrors, MissingFileSaysWhichPath) {
  EXPECT_EQ(error_of([] { load_recipe("/nonexistent/r.textproto", {}); }),
            "/nonexistent/r.textproto: cannot open recipe file; check the path given to --recipe");
}

TEST(RecipeOverrides, SetsTypedScalarsStringsEnumsAndLists) {
  Recipe r = valid_recipe();
  apply_override(r, "train.steps=50");
  apply_override(r, "optimizer.lr=1e-3");
  apply_override(r, "data.train_prefix=other/train");
  apply_override(r, "schedule.decay=LINEAR");
  apply_override(r, "model.moe_layers=[0,2]");
  apply_override(r, "model.moe_layers=[1]");
  apply_override(r, "model.tie_embeddings=true");
  EXPECT_EQ(r.train().steps(), 50);
  EXPECT_DOUBLE_EQ(r.optimizer().lr(), 1e-3);
  EXPECT_EQ(r.data().train_prefix(), "other/train");
  EXPECT_EQ(r.schedule().decay(), ScheduleConfig::LINEAR);
  ASSERT_EQ(r.model().moe_layers_size(), 1) << "a list override replaces the list";
  EXPECT_EQ(r.model().moe_layers(0), 1);
  EXPECT_TRUE(r.model().tie_embeddings());
}

TEST(RecipeOverrides, BadOverridesNameTheOverrideAndTheFix) {
  Recipe r = valid_recipe();
  EXPECT_EQ(error_of([&] { apply_override(r, "train.steps=abc"); }),
            "--set train.steps=abc: Expected integer, got: abc (see docs/recipes.md for the field's type)");
  EXPECT_EQ(error_of([&] { apply_override(r, "train.stepz=5"); }),
            "--set train.stepz=5: unknown field \"stepz\" in train; did you mean \"steps\"? known fields: steps, seed, "
            "micro_batch_size, grad_accum_steps, eval_interval, eval_sequences, threads, exit_interval, precision, device, deterministic, "
            "recompute, recompute_modules, recompute_num_layers");
  EXPECT_EQ(error_of([&] { apply_override(r, "train=5"); }),
            "--set train=5: \"train\" is a section; set one of its fields: steps, seed, micro_batch_size, "
            "grad_accum_steps, eval_interval, eval_sequences, threads, exit_interval, precision, device, deterministic, "
            "recompute, recompute_modules, recompute_num_layers");
  EXPECT_EQ(error_of([&] { apply_override(r, "train.steps.x=5"); }),
            "--set train.steps.x=5: \"train.steps\" is a value, not a section; override it as train.steps=VALUE");
  EXPECT_EQ(error_of([&] { apply_override(r, "train.steps"); }),
            "--set train.steps: expected field.path=value, for example --set train.steps=100");
  EXPECT_EQ(r.train().steps(), 1000) << "a failed override changes nothing";
}

TEST(RecipeValidation, ListsEveryProblemWithFieldValueAndFix) {
  Recipe r = valid_recipe();
  r.mutable_model()->set_num_heads(6);
  r.mutable_model()->set_top_k(9);
  r.mutable_optimizer()->set_lr(0);
  r.mutable_model()->add_moe_layers(7);
  EXPECT_EQ(error_of([&] { validate_recipe(r, "r.textproto"); }),
            "r.textproto: invalid recipe:\n"
            "  model.num_heads = 6: model.d_model (256) must be divisible by num_heads; pick a divisor of d_model\n"
            "  model.top_k = 9: must be between 1 and model.num_experts (8)\n"
            "  model.moe_layers = 7: layer index out of range; use 0..3\n"
            "  optimizer.lr = 0: must be > 0; 3e-4 is a common start\n"
            "  optimizer.min_lr = 3e-05: must be in [0, optimizer.lr (0)]");
}

TEST(RecipeValidation, TableOfSingleRules) {
  struct Case {
    std::string set;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"model.d_model=0", "  model.d_model = 0: must be >= 1; set it to 1 or more"},
      {"model.moe_ffn_hidden=100",
       "  model.moe_ffn_hidden = 100: must be a multiple of 8 (grouped expert GEMM alignment); round it to 104"},
      {"model.num_heads=3",
       "  model.num_heads = 3: model.d_model (256) must be divisible by num_heads; pick a divisor of d_model"},
      {"model.top_k=0", "  model.top_k = 0: must be between 1 and model.num_experts (8)"},
      {"model.moe_layers=[1,1]", "  model.moe_layers = 1: listed twice; list each MoE layer once"},
      {"routing.aux_loss_coeff=-1", "  routing.aux_loss_coeff = -1: must be >= 0 (0 turns it off)"},
      {"data.train_prefix=\"\"",
       "  data.train_prefix = \"\": is required; point it at PREFIX of PREFIX.bin/PREFIX.idx made by moe-data encode"},
      {"train.steps=0", "  train.steps = 0: must be >= 1; set it to 1 or more"},
      {"train.micro_batch_size=0", "  train.micro_batch_size = 0: must be >= 1; set it to 1 or more"},
      {"optimizer.beta2=1", "  optimizer.beta2 = 1: must be in [0, 1); 0.95 is usual"},
      {"parallel.expert=3",
       "  parallel.expert = 3: model.num_experts (8) must be divisible by the expert-parallel size"},
      {"checkpoint.keep_last=0", "  checkpoint.keep_last = 0: must be >= 1; set it to 1 or more"},
      {"parallel.timeout_s=0",
       "  parallel.timeout_s = 0: must be > 0: the seconds a rank waits for its peers in a collective "
       "before the job is stopped with a report (docs/reliability.md); the default is 600"},
  };
  for (const auto& c : cases) {
    Recipe r = valid_recipe();
    apply_override(r, c.set);
    EXPECT_EQ(error_of([&] { validate_recipe(r, "r"); }), "r: invalid recipe:\n" + c.message) << c.set;
  }
}

TEST(RecipeValidation, DModelMustFitGroupedGemmAlignment) {
  Recipe r = valid_recipe();
  apply_override(r, "model.d_model=36");
  apply_override(r, "model.num_heads=2");
  EXPECT_EQ(
      error_of([&] { validate_recipe(r, "r"); }),
      "r: invalid recipe:\n  model.d_model = 36: must be a multiple of 8 (grouped expert GEMM alignment); round it to 40");
}

// Every routing rule of the routing issue, with its exact message. Each case is a list of overrides.
TEST(RecipeValidation, RoutingRulesTable) {
  struct Case {
    std::vector<std::string> set;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"model.top_k=9"}, "  model.top_k = 9: must be between 1 and model.num_experts (8)"},
      {{"routing.num_groups=3", "routing.group_topk=1"},
       "  routing.num_groups = 3: model.num_experts (8) must be divisible by the number of groups"},
      {{"routing.num_groups=4", "routing.group_topk=5"},
       "  routing.group_topk = 5: must be between 1 and routing.num_groups (4)"},
      {{"routing.num_groups=4", "routing.group_topk=0"},
       "  routing.group_topk = 0: must be between 1 and routing.num_groups (4)"},
      {{"routing.num_groups=8", "routing.group_topk=1"},
       "  routing.group_topk = 1: the best 1 groups hold only 1 experts, fewer than model.top_k (2); raise group_topk"},
      {{"routing.group_topk=2"},
       "  routing.group_topk = 2: needs routing.num_groups > 1; set num_groups or leave group_topk at 0"},
      {{"routing.num_groups=-1"}, "  routing.num_groups = -1: must be >= 0 (0 or 1 = no group limit)"},
      {{"routing.pad_to_capacity=true"},
       "  routing.pad_to_capacity = true: padding needs a capacity: set routing.capacity_factor > 0 (for example 1.25)"},
      {{"finetune.lora.rank=-1"}, "  finetune.lora.rank = -1: must be >= 0; set it to 0 or more"},
      {{"finetune.lora.rank=8", "finetune.lora.alpha=0"},
       "  finetune.lora.alpha = 0: must be > 0 (16 is common)"},
      {{"finetune.lora.rank=8", "finetune.lora.targets=[\"gate\",\"q\"]"},
       "  finetune.lora.targets = \"q\": each target is one of \"gate\", \"up\", \"down\" (the expert projections w1, w3, w2), "
       "\"attn_qkv\", \"attn_out\""},
      {{"finetune.lora.rank=8", "finetune.lora.targets=[gate,attn_qkv]", "parallel.tensor=2"},
       "  finetune.lora.targets = \"attn_qkv\": adapters on the attention projections need parallel.tensor = 1 (not yet "
       "sharded over tensor parallelism); keep the expert targets or set parallel.tensor=1"},
      {{"finetune.lora.targets=[up]"},
       "  finetune.lora.rank = 0: targets are set but rank 0 means no adapters: set finetune.lora.rank (for example 8)"},
      {{"routing.router_type=EXPERT_CHOICE", "routing.aux_loss_coeff=0", "routing.capacity_factor=1.25"},
       "  routing.capacity_factor = 1.25: EXPERT_CHOICE sets each expert's token count itself (routing.expert_choice_factor); "
       "leave capacity_factor, eval_capacity_factor at 0 and pad_to_capacity false"},
      {{"routing.router_type=EXPERT_CHOICE"},
       "  routing.aux_loss_coeff = 0.01: EXPERT_CHOICE routing is balanced by construction (every expert takes the same "
       "number of tokens); set it to 0"},
      {{"routing.router_type=EXPERT_CHOICE", "routing.aux_loss_coeff=0", "routing.bias_update_rate=0.001"},
       "  routing.bias_update_rate = 0.001: EXPERT_CHOICE routing is balanced by construction (every expert takes the same "
       "number of tokens); set it to 0"},
      {{"routing.router_type=HASH"},
       "  routing.aux_loss_coeff = 0.01: balancing means nothing for routing.router_type HASH (its routing is not learned); set it to 0"},
      {{"routing.router_type=RANDOM", "routing.aux_loss_coeff=0", "routing.z_loss_coeff=0.001"},
       "  routing.z_loss_coeff = 0.001: routing.router_type RANDOM has no router logits; set it to 0"},
      {{"routing.router_type=RANDOM", "routing.aux_loss_coeff=0", "routing.num_groups=2", "routing.group_topk=1"},
       "  routing.num_groups = 2: group-limited routing needs routing.router_type TOPK, not RANDOM"},
      {{"routing.seq_aux_loss_coeff=-0.1"},
       "  routing.seq_aux_loss_coeff = -0.1: must be >= 0 (0 turns it off)"},
      {{"routing.global_aux_loss_coeff=-1"},
       "  routing.global_aux_loss_coeff = -1: must be >= 0 (0 turns it off)"},
      {{"routing.z_loss_coeff=-1"}, "  routing.z_loss_coeff = -1: must be >= 0 (0 turns it off)"},
      {{"routing.bias_update_rate=-0.001"},
       "  routing.bias_update_rate = -0.001: must be >= 0 (0 turns it off)"},
      {{"routing.gate_scale=0"}, "  routing.gate_scale = 0: must be > 0; 1 leaves the gates as they are"},
      {{"routing.jitter_eps=1"},
       "  routing.jitter_eps = 1: must be in [0, 1); 0.01 is Switch's value, 0 turns it off"},
      {{"routing.score_function=SIGMOID", "routing.topk_order=TOPK_THEN_SOFTMAX"},
       "  routing.topk_order = TOPK_THEN_SOFTMAX: applies to SOFTMAX scores only; with score_function SIGMOID use "
       "SOFTMAX_THEN_TOPK and normalize_gates: true"},
      {{"routing.expert_choice_factor=0"},
       "  routing.expert_choice_factor = 0: must be > 0; 1 gives each expert T/E tokens"},
      {{"routing.capacity_factor=-1"}, "  routing.capacity_factor = -1: must be >= 0 (0 = dropless)"},
      {{"routing.eval_capacity_factor=-2"},
       "  routing.eval_capacity_factor = -2: must be >= 0 (0 = dropless at evaluation)"},
      {{"routing.min_capacity=-4"}, "  routing.min_capacity = -4: must be >= 0"},
      {{"routing.aux_loss_coeff=-0.01"}, "  routing.aux_loss_coeff = -0.01: must be >= 0 (0 turns it off)"},
      {{"routing.topk_order=TOPK_THEN_SOFTMAX", "routing.normalize_gates=false"},
       "  routing.normalize_gates = false: routing.topk_order TOPK_THEN_SOFTMAX makes the k gates a softmax, which always "
       "sums to 1, so false would be ignored; set normalize_gates: true, or topk_order: SOFTMAX_THEN_TOPK for "
       "unnormalised probabilities"},
      {{"routing.min_capacity=4"},
       "  routing.min_capacity = 4: applies only with a capacity; set routing.capacity_factor (or eval_capacity_factor) > 0, "
       "or leave min_capacity at 0"},
      {{"routing.router_type=EXPERT_CHOICE", "routing.aux_loss_coeff=0", "routing.min_capacity=4"},
       "  routing.min_capacity = 4: EXPERT_CHOICE has no capacity (routing.expert_choice_factor sets each expert's token "
       "count); leave min_capacity at 0"},
      {{"routing.router_type=HASH", "routing.aux_loss_coeff=0", "routing.capacity_factor=1.25"},
       "  routing.drop_policy = PROBS: routing.router_type HASH gives every pair the same gate (gate_scale/k), so there is "
       "no lowest gate to drop; set drop_policy: POSITION, or leave capacity_factor and eval_capacity_factor at 0"},
      {{"routing.router_type=RANDOM", "routing.aux_loss_coeff=0", "routing.eval_capacity_factor=1"},
       "  routing.drop_policy = PROBS: routing.router_type RANDOM gives every pair the same gate (gate_scale/k), so there "
       "is no lowest gate to drop; set drop_policy: POSITION, or leave capacity_factor and eval_capacity_factor at 0"},
      {{"model.top_k=1", "routing.capacity_factor=1.25"},
       "  routing.drop_policy = PROBS: with model.top_k 1 and normalised gates every gate equals gate_scale, so there is "
       "no lowest gate to drop; set topk_order: SOFTMAX_THEN_TOPK with normalize_gates: false (Switch's top-1 gate), or "
       "drop_policy: POSITION"},
      {{"model.top_k=1", "routing.topk_order=TOPK_THEN_SOFTMAX", "routing.capacity_factor=1.25"},
       "  routing.drop_policy = PROBS: with model.top_k 1 and normalised gates every gate equals gate_scale, so there is "
       "no lowest gate to drop; set topk_order: SOFTMAX_THEN_TOPK with normalize_gates: false (Switch's top-1 gate), or "
       "drop_policy: POSITION"},
  };
  for (const auto& c : cases) {
    Recipe r = valid_recipe();
    for (const auto& o : c.set) apply_override(r, o);
    EXPECT_EQ(error_of([&] { validate_recipe(r, "r"); }), "r: invalid recipe:\n" + c.message) << c.set.front();
  }
  // Valid combinations pass: DeepSeek-V3 style (sigmoid, groups, bias + tiny sequence loss), capacity with padding.
  Recipe ok = valid_recipe();
  for (const char* o :
       {"routing.score_function=SIGMOID", "routing.num_groups=4", "routing.group_topk=2",
        "routing.bias_update_rate=0.001", "routing.aux_loss_coeff=0", "routing.seq_aux_loss_coeff=0.0001",
        "routing.capacity_factor=1.25", "routing.pad_to_capacity=true"}) {
    apply_override(ok, o);
  }
  EXPECT_NO_THROW(validate_recipe(ok, "r"));
  // Capacity the policy can honour: hash/random routing dropping by position; top-1 with Switch's
  // unnormalised gate dropping by probability; bias balancing with capacity.
  const std::vector<std::vector<std::string>> allowed = {
      {"routing.router_type=HASH", "routing.aux_loss_coeff=0", "routing.capacity_factor=1.25",
       "routing.drop_policy=POSITION"},
      {"routing.router_type=RANDOM", "routing.aux_loss_coeff=0", "routing.eval_capacity_factor=1",
       "routing.drop_policy=POSITION"},
      {"model.top_k=1", "routing.normalize_gates=false", "routing.capacity_factor=1.25"},
      {"model.top_k=1", "routing.capacity_factor=1.25", "routing.drop_policy=POSITION"},
      {"routing.aux_loss_coeff=0", "routing.bias_update_rate=0.001", "routing.capacity_factor=1.0",
       "routing.min_capacity=4"},
      {"routing.topk_order=TOPK_THEN_SOFTMAX", "routing.capacity_factor=1.0"},
  };
  for (const auto& set : allowed) {
    Recipe r = valid_recipe();
    for (const auto& o : set) apply_override(r, o);
    EXPECT_NO_THROW(validate_recipe(r, "r")) << set.front() << " " << set.back();
  }
}

// Debian's libprotobuf and LibTorch in one process: parse, print and use a recipe beside torch ops.
TEST(RecipeWithTorch, ProtobufAndTorchShareAProcess) {
  Recipe r = valid_recipe();
  auto t = torch::ones({r.model().d_model()}) * 2;
  apply_override(r, "model.d_model=" + std::to_string(t.sum().item<int64_t>()));
  EXPECT_EQ(r.model().d_model(), 512);
  EXPECT_NE(to_text(r).find("d_model: 512"), std::string::npos);
}

namespace {

std::string write_file(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string path = dir + "/" + name;
  std::ofstream(path) << text;
  return path;
}

std::string temp_dir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "moetrain_recipe_" + name;
  std::system(("mkdir -p " + dir + "/variants").c_str());
  return dir;
}

}  // namespace

TEST(RecipeBase, VariantOverridesItsBaseFieldByField) {
  const std::string dir = temp_dir("base");
  write_file(
      dir, "base.textproto",
      "name: \"base\"\nmodel { d_model: 64 num_heads: 4 moe_layers: [0, 1] }\n"
      "routing { aux_loss_coeff: 0.02 z_loss_coeff: 0.001 }\ndata { train_prefix: \"t\" }\ntrain { steps: 7 }\n");
  write_file(dir, "variants/middle.textproto", "base: \"../base.textproto\"\nrouting { aux_loss_coeff: 0 }\n");
  const std::string leaf = write_file(dir, "variants/leaf.textproto",
                                      "base: \"middle.textproto\"\nname: \"leaf\"\nmodel { moe_layers: [1] }\n"
                                      "routing { bias_update_rate: 0.001 }\n");
  Recipe r = load_recipe(leaf, {"train.steps=9"});
  EXPECT_EQ(r.name(), "leaf");
  EXPECT_EQ(r.model().d_model(), 64) << "kept from the base";
  ASSERT_EQ(r.model().moe_layers_size(), 1) << "a list is replaced whole";
  EXPECT_EQ(r.model().moe_layers(0), 1);
  EXPECT_EQ(r.routing().aux_loss_coeff(), 0.0) << "set by the middle recipe";
  EXPECT_DOUBLE_EQ(r.routing().z_loss_coeff(), 0.001) << "a section merges field by field";
  EXPECT_DOUBLE_EQ(r.routing().bias_update_rate(), 0.001);
  EXPECT_EQ(r.train().steps(), 9) << "--set applies after the bases";
  EXPECT_FALSE(r.has_base()) << "the resolved recipe stands alone";
}

TEST(RecipeBase, MissingBaseAndCyclesAreClearErrors) {
  const std::string dir = temp_dir("cycle");
  const std::string a = write_file(dir, "a.textproto", "base: \"b.textproto\"\n");
  write_file(dir, "b.textproto", "base: \"a.textproto\"\n");
  const std::string err = error_of([&] { load_recipe(a, {}); });
  EXPECT_EQ(err.rfind("recipe base cycle: ", 0), 0u) << err;
  EXPECT_NE(err.find("a.textproto -> "), std::string::npos) << err;
  EXPECT_NE(err.find("; remove one of the base fields"), std::string::npos) << err;
  const std::string lonely = write_file(dir, "lonely.textproto", "base: \"nope.textproto\"\n");
  EXPECT_EQ(error_of([&] { load_recipe(lonely, {}); }),
            lonely + ": base \"" + dir +
                "/nope.textproto\" cannot be opened; base paths are relative to the recipe "
                "that names them");
  const std::string bad = write_file(dir, "bad_base.textproto", "train { stepz: 1 }\n");
  const std::string child = write_file(dir, "child.textproto", "base: \"bad_base.textproto\"\n");
  EXPECT_EQ(error_of([&] { load_recipe(child, {}); }).rfind(bad + ":1:14: unknown field \"stepz\"", 0), 0u)
      << "errors in a base name the base file, line and column";
}

TEST(RecipeValidation, LoraRankOfExpertAdaptersFitsGroupedGemmAlignment) {
  Recipe r = valid_recipe();
  apply_override(r, "finetune.lora.rank=6");
  EXPECT_EQ(error_of([&] { validate_recipe(r, "r"); }),
            "r: invalid recipe:\n  finetune.lora.rank = 6: must be a multiple of 4 for the expert adapters (the rank is a "
            "stride of their fp32 grouped GEMM, which needs 16-byte alignment); use 8");
  apply_override(r, "finetune.lora.targets=[attn_qkv]");  // attention adapters use plain matmuls
  EXPECT_NO_THROW(validate_recipe(r, "r"));
  apply_override(r, "finetune.lora.targets=[attn_qkv,down]");
  EXPECT_NE(error_of([&] { validate_recipe(r, "r"); }).find("finetune.lora.rank = 6: must be a multiple of 4"),
            std::string::npos);
  apply_override(r, "finetune.lora.rank=4");
  EXPECT_NO_THROW(validate_recipe(r, "r"));
}

TEST(RecipeValidation, EachProblemSaysWhereItsFieldWasSet) {
  const std::string dir = temp_dir("origins");
  write_file(dir, "base.textproto", "model {\n  num_experts: 4\n  top_k: 6\n}\ndata { train_prefix: \"t\" }\n");
  const std::string leaf = write_file(dir, "leaf.textproto",
                                      "base: \"base.textproto\"\ntrain {\n  steps: 0\n}\n");
  // A field set in a base names the base's line and column; one set in the file, the file's; an
  // override names the override; a field left at its default names nothing.
  EXPECT_EQ(error_of([&] { load_recipe(leaf, {}); }),
            leaf + ": invalid recipe:\n  " + dir +
                "/base.textproto:3:3: model.top_k = 6: must be between 1 and model.num_experts (4)\n  " +
                leaf + ":3:3: train.steps = 0: must be >= 1; set it to 1 or more");
  EXPECT_EQ(
      error_of([&] {
        load_recipe(leaf, {"train.steps=10", "model.top_k=5"});
      }),
      leaf +
          ": invalid recipe:\n  --set model.top_k=5: model.top_k = 5: must be between 1 and model.num_experts (4)");
}

// The attention of released models (grouped-query attention, head size, q/k norm, biases, shared-expert
// gate): their rules, each with its exact message.
TEST(RecipeValidation, AttentionOfReleasedModels) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"model.num_kv_heads=3"},
       "  model.num_kv_heads = 3: model.num_heads (4) must be divisible by num_kv_heads (each key/value "
       "head serves num_heads / num_kv_heads query heads); pick a divisor of num_heads, or 0 for num_heads"},
      {{"model.head_dim=7"}, "  model.head_dim = 7: must be even for rotary embeddings; round it to 8"},
      {{"model.num_kv_heads=2", "parallel.tensor=4"},
       "  parallel.tensor = 4: model.num_kv_heads (2) must be divisible by the tensor-parallel size (each rank holds whole "
       "key/value heads and their query heads); use a parallel.tensor that divides 2"},
      {{"model.shared_expert_gate=true"},
       "  model.shared_expert_gate = true: gates the shared expert, but model.num_shared_experts "
       "is 0; set num_shared_experts (Qwen2-MoE: 1) or leave the gate off"},
  };
  for (const auto& [set, message] : cases) {
    Recipe r = valid_recipe();
    for (const auto& s : set) apply_override(r, s);
    EXPECT_EQ(error_of([&] { validate_recipe(r, "r"); }), "r: invalid recipe:\n" + message) << set[0];
  }
  // A head size independent of d_model / num_heads needs no divisibility: 3 heads of 64 with d_model 256.
  Recipe r = valid_recipe();
  for (const char* s :
       {"model.num_heads=3", "model.head_dim=64", "model.num_kv_heads=1", "model.qk_norm=FULL_WIDTH",
        "model.qkv_bias=true", "model.num_shared_experts=1", "model.shared_expert_gate=true"})
    apply_override(r, s);
  EXPECT_EQ(error_of([&] { validate_recipe(r, "r"); }), "<no error>");
}
