// Checkpointer: atomic commits, the `latest` pointer, pruning to keep_last, and exact restore.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "trainer/checkpoint.h"

using namespace moetrain;
namespace fs = std::filesystem;

namespace {

model::Transformer tiny_model() {
  config::ModelConfig m;
  m.set_vocab_size(32), m.set_d_model(16), m.set_num_layers(1), m.set_num_heads(2), m.set_ffn_hidden(32);
  m.set_num_experts(4), m.set_top_k(2), m.set_moe_ffn_hidden(16);
  config::RoutingConfig r;
  r.set_bias_update_rate(0.1);
  model::Transformer t(model::TransformerOptions::from_recipe(m, r));
  model::init_weights(*t, 3, 0.02);
  return t;
}

fs::path fresh(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / "moetrain_checkpoint_test" / name;
  std::error_code ignored;
  fs::remove(dir / "checkpoints" / "latest", ignored);
  for (int i = 1; i <= 3; ++i) {
    char step[32];
    std::snprintf(step, sizeof(step), "step_%08d", i);
    for (const char* f : {"model.pt", "optimizer.pt", "state.pt"}) fs::remove(dir / "checkpoints" / step / f, ignored);
    fs::remove(dir / "checkpoints" / step, ignored);
  }
  fs::create_directories(dir);
  return dir;
}

}  // namespace

TEST(CheckpointerTest, KeepsTheNewestAndRemovesOlderOnes) {
  auto dir = fresh("prune");
  auto model = tiny_model();
  torch::optim::AdamW opt(model->parameters());
  trainer::Checkpointer ckpt(dir.string(), /*keep_last=*/2, "sig");
  for (int64_t step = 1; step <= 3; ++step) ckpt.save({step, step * 10, step * 100}, *model, opt);
  EXPECT_FALSE(fs::exists(dir / "checkpoints" / "step_00000001"));
  EXPECT_TRUE(fs::exists(dir / "checkpoints" / "step_00000002"));
  EXPECT_TRUE(fs::exists(dir / "checkpoints" / "step_00000003"));
  EXPECT_EQ(*ckpt.latest(), (dir / "checkpoints" / "step_00000003").string());
}

TEST(CheckpointerTest, RestoresWeightsBiasesAndStateExactly) {
  auto dir = fresh("restore");
  auto model = tiny_model();
  model->moe_layers()[0]->router->expert_bias.copy_(torch::tensor({0.1f, -0.2f, 0.3f, 0.0f}));
  torch::optim::AdamW opt(model->parameters());
  trainer::Checkpointer ckpt(dir.string(), 2, "sig");
  ckpt.save({7, 70, 700}, *model, opt);

  auto other = tiny_model();
  model::init_weights(*other, 99, 0.02);
  torch::optim::AdamW other_opt(other->parameters());
  auto state = ckpt.load(*ckpt.latest(), *other, other_opt);
  EXPECT_EQ(state.step, 7);
  EXPECT_EQ(state.samples_consumed, 70);
  EXPECT_EQ(state.tokens, 700);
  auto want = model->named_parameters();
  for (const auto& p : other->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), want[p.key()])) << p.key();
  EXPECT_TRUE(torch::equal(other->moe_layers()[0]->router->expert_bias, model->moe_layers()[0]->router->expert_bias));
}

TEST(CheckpointerTest, RefusesACheckpointOfAnotherModel) {
  auto dir = fresh("refuse");
  auto model = tiny_model();
  torch::optim::AdamW opt(model->parameters());
  trainer::Checkpointer(dir.string(), 2, "model A\n").save({1, 1, 1}, *model, opt);
  trainer::Checkpointer reader(dir.string(), 2, "model B\n");
  try {
    reader.load(*reader.latest(), *model, opt);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("was written for a different model section:\nmodel A\nthe recipe now says:\nmodel B\n"),
              std::string::npos)
        << e.what();
  }
}
