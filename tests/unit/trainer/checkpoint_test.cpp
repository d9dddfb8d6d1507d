// Checkpointer: atomic commits, the `latest` pointer, pruning to keep_last, and exact restore.
#include <gtest/gtest.h>

#include <filesystem>
#include <cstdlib>
#include <fstream>

#include <nlohmann/json.hpp>

#include "csrc/io/safetensors.h"
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
  // Not fs::remove_all: see Note [remove_tree] in trainer/checkpoint.cpp.
  EXPECT_EQ(std::system(("rm -rf '" + dir.string() + "'").c_str()), 0);
  fs::create_directories(dir);
  return dir;
}

// One AdamW step on a made-up loss, so the optimizer has moments to save.
void take_a_step(model::TransformerImpl& model, torch::optim::AdamW& opt) {
  auto out = model.forward(torch::arange(8).remainder(32).view({1, 8}));
  (out.logits.square().mean() + out.aux_loss).backward();
  opt.step();
  opt.zero_grad();
}

// Loads the newest checkpoint of `dir` into a fresh model and returns the error text ("" if none).
std::string load_error(const fs::path& dir) {
  auto model = tiny_model();
  torch::optim::AdamW opt(model->parameters());
  trainer::Checkpointer ckpt(dir.string(), 2, "sig");
  try {
    ckpt.load(*ckpt.latest(), *model, opt);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

fs::path saved_checkpoint(const std::string& name) {
  auto dir = fresh(name);
  auto model = tiny_model();
  torch::optim::AdamW opt(model->parameters());
  take_a_step(*model, opt);
  trainer::Checkpointer(dir.string(), 2, "sig").save({1, 1, 1}, *model, opt);
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
  for (const auto& p : other->named_parameters())
    EXPECT_TRUE(torch::equal(p.value(), want[p.key()])) << p.key();
  EXPECT_TRUE(
      torch::equal(other->moe_layers()[0]->router->expert_bias, model->moe_layers()[0]->router->expert_bias));
}

// save_streamed (moe-import: no model built) writes the checkpoint save() writes for a model with those
// tensors and a fresh optimizer: the same manifest tensors and shards, the same stored values, and it
// loads back exactly; every tensor is read once, as it is written.
TEST(CheckpointerTest, SaveStreamedWritesWhatSaveWritesWithoutAModel) {
  auto model = tiny_model();
  model->moe_layers()[0]->router->expert_bias.copy_(torch::tensor({0.1f, -0.2f, 0.3f, 0.0f}));
  torch::optim::AdamW opt(model->parameters());  // no state, as moe-import has none
  const auto a = fresh("streamed_reference"), b = fresh("streamed");
  trainer::Checkpointer(a.string(), 2, "sig", "recipe").save({0, 0, 0}, *model, opt);

  std::vector<io::LazyTensor> params, buffers;
  int reads = 0;
  for (const auto& p : model->named_parameters()) {
    params.push_back({p.key(), p.value().sizes().vec(), torch::kFloat32,
                      [&reads, v = p.value().detach().clone()] {
      ++reads;
      return v;
                      }});
  }
  for (const auto& x : model->named_buffers()) {
    buffers.push_back({x.key(), x.value().sizes().vec(), torch::kFloat32,
                       [&reads, v = x.value().detach().clone()] {
      ++reads;
      return v;
                       }});
  }
  trainer::Checkpointer streamed(b.string(), 2, "sig", "recipe");
  const std::string dir = streamed.save_streamed({0, 0, 0}, model->options(), params, buffers);
  EXPECT_EQ(reads, static_cast<int>(params.size() + buffers.size()));
  EXPECT_EQ(fs::path(dir).filename(), "step_00000000");

  auto manifest = [](const fs::path& run) {
    return nlohmann::json::parse(trainer::read_manifest((run / "checkpoints" / "step_00000000").string()));
  };
  const auto want = manifest(a), got = manifest(b);
  EXPECT_EQ(got["tensors"], want["tensors"]);
  EXPECT_EQ(got["layout"], want["layout"]);
  EXPECT_EQ(got["model_digest"], want["model_digest"]);
  io::SafetensorsFile fa((a / "checkpoints/step_00000000/rank00000.safetensors").string());
  io::SafetensorsFile fb((b / "checkpoints/step_00000000/rank00000.safetensors").string());
  EXPECT_EQ(fb.names().size(), fa.names().size());
  for (const auto& name : fa.names()) {
    if (name.rfind("rng/", 0) == 0) continue;
    EXPECT_TRUE(torch::equal(fa.get(name), fb.get(name))) << name;
  }

  auto other = tiny_model();
  model::init_weights(*other, 99, 0.02);
  torch::optim::AdamW other_opt(other->parameters());
  streamed.load(*streamed.latest(), *other, other_opt);
  auto values = model->named_parameters();
  for (const auto& p : other->named_parameters())
    EXPECT_TRUE(torch::equal(p.value(), values[p.key()])) << p.key();
  EXPECT_TRUE(
      torch::equal(other->moe_layers()[0]->router->expert_bias, model->moe_layers()[0]->router->expert_bias));
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
    EXPECT_NE(std::string(e.what()).find(
                  "was written for a different model section:\nmodel A\nthe recipe now says:\nmodel B\n"),
              std::string::npos)
        << e.what();
  }
}

TEST(CheckpointerTest, RestoresOptimizerMomentsSoTheNextStepIsIdentical) {
  auto dir = fresh("optimizer");
  auto a = tiny_model();
  torch::optim::AdamW opt_a(a->parameters());
  take_a_step(*a, opt_a);
  trainer::Checkpointer ckpt(dir.string(), 2, "sig");
  ckpt.save({1, 1, 1}, *a, opt_a);

  auto b = tiny_model();
  torch::optim::AdamW opt_b(b->parameters());
  ckpt.load(*ckpt.latest(), *b, opt_b);
  take_a_step(*a, opt_a);
  take_a_step(*b, opt_b);
  auto want = a->named_parameters();
  for (const auto& p : b->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), want[p.key()])) << p.key();
}

TEST(CheckpointerTest, WritesAManifestWithDigestsAndSafetensorsShards) {
  auto dir = saved_checkpoint("manifest");
  const auto step = dir / "checkpoints" / "step_00000001";
  EXPECT_TRUE(fs::exists(step / "manifest.json"));
  EXPECT_TRUE(fs::exists(step / "rank00000.safetensors"));
  const std::string manifest = trainer::read_manifest(step.string());
  EXPECT_NE(manifest.find("\"sha256\""), std::string::npos);
  EXPECT_NE(manifest.find("\"optim/exp_avg/layers.0.moe.experts.w1\""), std::string::npos);
}

TEST(CheckpointerTest, ACorruptedByteIsRefused) {
  auto dir = saved_checkpoint("corrupt");
  const auto file = dir / "checkpoints" / "step_00000001" / "rank00000.safetensors";
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(fs::file_size(file) - 5));
  f.put('\x7f');
  f.close();
  EXPECT_NE(load_error(dir).find("does not match its SHA-256 in the manifest; the checkpoint is corrupted"),
            std::string::npos)
      << load_error(dir);
}

TEST(CheckpointerTest, ATruncatedOrMissingShardIsRefused) {
  auto dir = saved_checkpoint("truncated");
  const auto file = dir / "checkpoints" / "step_00000001" / "rank00000.safetensors";
  fs::resize_file(file, fs::file_size(file) - 100);
  EXPECT_NE(load_error(dir).find("(truncated?)"), std::string::npos) << load_error(dir);
  fs::remove(file);
  EXPECT_NE(load_error(dir).find("rank00000.safetensors is missing; the checkpoint is incomplete"),
            std::string::npos)
      << load_error(dir);
}

TEST(CheckpointerTest, AnUnknownFormatVersionIsRefused) {
  auto dir = saved_checkpoint("version");
  const auto path = dir / "checkpoints" / "step_00000001" / "manifest.json";
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  const auto at = text.find("\"version\": 1");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, 12, "\"version\": 7");
  std::ofstream(path) << text;
  EXPECT_NE(load_error(dir).find("has format version 7; this moetrain reads version 1"), std::string::npos)
      << load_error(dir);
}

TEST(CheckpointerTest, AnInterruptedSaveLeavesThePreviousCheckpointLatest) {
  auto dir = saved_checkpoint("interrupted");
  // What a crash mid-save leaves behind: a temporary directory with a partial shard and no manifest.
  fs::create_directories(dir / "checkpoints" / "step_00000002.tmp");
  std::ofstream(dir / "checkpoints" / "step_00000002.tmp" / "rank00000.safetensors") << "partial";
  trainer::Checkpointer ckpt(dir.string(), 2, "sig");
  EXPECT_EQ(*ckpt.latest(), (dir / "checkpoints" / "step_00000001").string());
  EXPECT_EQ(load_error(dir), "");
}
