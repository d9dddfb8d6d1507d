// The trainer's routing measures: every MoE layer's step sums come to the host in one read per step
// (docs/routing.md, "Host reads"), with the values of the per-forward measures.
#include <gtest/gtest.h>

#include "csrc/model/transformer.h"
#include "csrc/util/host_sync.h"
#include "trainer/moe_measures.h"

using namespace moetrain;

TEST(MoEMeasures, OneHostReadPerStepForEveryLayerWithThePerForwardValues) {
  config::ModelConfig m;
  m.set_vocab_size(64), m.set_d_model(16), m.set_num_layers(2), m.set_num_heads(2), m.set_ffn_hidden(32);
  m.set_num_experts(4), m.set_top_k(2), m.set_moe_ffn_hidden(16), m.set_moe_layer_freq(1);
  config::RoutingConfig cfg;
  cfg.set_capacity_factor(0.5), cfg.set_z_loss_coeff(1e-3);
  torch::manual_seed(5);
  model::Transformer model(model::TransformerOptions::from_recipe(m, cfg));
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.normal_(0, 0.3);
  }
  std::vector<model::ModelOutput> outs;
  for (int micro = 0; micro < 2; ++micro)
    outs.push_back(model->forward(torch::randint(0, 64, {2, 8}, torch::kInt64)));

  util::HostReadCount count;
  const auto layers = model->moe_layers();
  const auto measures = trainer::read_step_measures(layers, moe::MoEParallelContext());
  EXPECT_EQ(count.reads(), 1) << "one read for both layers";

  ASSERT_EQ(measures.size(), 2u);
  for (size_t l = 0; l < 2; ++l) {
    const auto& a = outs[0].moe_measures[l];
    const auto& b = outs[1].moe_measures[l];
    EXPECT_TRUE(torch::equal(measures[l].load_E, a.tokens_per_expert_E + b.tokens_per_expert_E)) << l;
    EXPECT_TRUE(torch::equal(measures[l].host_load_E, measures[l].load_E)) << l;
    EXPECT_EQ(measures[l].routed, (a.routed_pairs + b.routed_pairs).item<double>()) << l;
    EXPECT_EQ(measures[l].dropped, (a.dropped_pairs + b.dropped_pairs).item<double>()) << l;
    EXPECT_GT(measures[l].dropped, 0) << "capacity 0.5 drops";
    EXPECT_EQ(measures[l].tokens, 2 * 16) << "two micro-batches of 2 × 8 tokens";
    EXPECT_EQ(measures[l].unchosen, (a.unchosen_tokens + b.unchosen_tokens).item<double>()) << l;
    EXPECT_EQ(measures[l].unchosen_fraction(), measures[l].unchosen / 32) << l;
    EXPECT_NEAR(measures[l].entropy, (a.entropy + b.entropy).item<double>() / 2, 1e-12) << "mean over forwards";
    EXPECT_NEAR(measures[l].aux, a.aux_loss.item<double>() + b.aux_loss.item<double>(), 1e-9) << l;
    EXPECT_NEAR(measures[l].z, a.z_loss.item<double>() + b.z_loss.item<double>(), 1e-9) << l;
  }
}
