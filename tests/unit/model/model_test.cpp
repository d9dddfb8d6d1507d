// Model pieces: RMSNorm, rotary embedding, causal attention, the transformer and its seeded init.
#include <gtest/gtest.h>

#include <algorithm>

#include "csrc/model/transformer.h"

using namespace moetrain::model;

namespace {

TransformerOptions tiny_options(bool tie = false) {
  moetrain::config::ModelConfig m;
  m.set_vocab_size(64), m.set_d_model(32), m.set_num_layers(2), m.set_num_heads(4), m.set_ffn_hidden(48);
  m.set_num_experts(4), m.set_top_k(2), m.set_moe_ffn_hidden(24), m.set_moe_layer_freq(2);
  m.set_tie_embeddings(tie);
  moetrain::config::RoutingConfig r;
  r.set_aux_loss_coeff(0.01);
  return TransformerOptions::from_recipe(m, r);
}

}  // namespace

TEST(RMSNorm, MatchesDefinition) {
  RMSNorm norm(4, 1e-6);
  auto x = torch::tensor({{1.0f, 2.0f, 3.0f, 4.0f}});
  auto expected = x / std::sqrt((1.0 + 4.0 + 9.0 + 16.0) / 4.0 + 1e-6);
  EXPECT_TRUE(torch::allclose(norm(x), expected, 1e-6, 1e-7));
}

TEST(Rotary, PreservesNormAndLeavesPositionZeroUnchanged) {
  torch::manual_seed(0);
  auto x = torch::randn({2, 3, 5, 8});
  auto y = apply_rotary(x, 10000.0);
  EXPECT_TRUE(torch::allclose(y.norm(2, -1), x.norm(2, -1), 1e-5, 1e-5));
  EXPECT_TRUE(torch::equal(y.select(2, 0), x.select(2, 0)));
}

TEST(Rotary, DotProductDependsOnlyOnRelativePosition) {
  torch::manual_seed(0);
  auto q = torch::randn({8}), k = torch::randn({8});
  // Place the same q and k at every position, then compare <q_m, k_n> for equal m − n.
  auto qs = apply_rotary(q.expand({1, 1, 10, 8}).contiguous(), 100.0)[0][0];
  auto ks = apply_rotary(k.expand({1, 1, 10, 8}).contiguous(), 100.0)[0][0];
  const float d_7_4 = qs[7].dot(ks[4]).item<float>(), d_3_0 = qs[3].dot(ks[0]).item<float>();
  const float d_9_2 = qs[9].dot(ks[2]).item<float>(), d_8_1 = qs[8].dot(ks[1]).item<float>();
  EXPECT_NEAR(d_7_4, d_3_0, 1e-5);
  EXPECT_NEAR(d_9_2, d_8_1, 1e-5);
  EXPECT_GT(std::abs(d_7_4 - d_9_2), 1e-3) << "different offsets give different scores";
}

TEST(Attention, IsCausal) {
  torch::manual_seed(0);
  Attention attn(16, 2, 10000.0);
  auto x = torch::randn({1, 6, 16});
  auto y = attn(x);
  auto x2 = x.clone();
  x2.narrow(1, 4, 2).normal_();  // change the future of position 3
  auto y2 = attn(x2);
  EXPECT_TRUE(torch::allclose(y.narrow(1, 0, 4), y2.narrow(1, 0, 4), 0, 1e-6));
  EXPECT_FALSE(torch::allclose(y.narrow(1, 4, 2), y2.narrow(1, 4, 2), 0, 1e-3));
}

TEST(Transformer, ShapesAuxLossAndExpertCounts) {
  Transformer model(tiny_options());
  init_weights(*model, 7, 0.02);
  auto tokens = torch::randint(0, 64, {3, 10});
  auto out = model(tokens);
  EXPECT_EQ(out.logits.sizes(), (std::vector<int64_t>{3, 10, 64}));
  ASSERT_EQ(out.moe_stats.size(), 1u) << "moe_layer_freq 2 over 2 layers: layer 0 only";
  EXPECT_EQ(out.moe_stats[0].tokens_per_expert_E.sum().item<int64_t>(), 3 * 10 * 2);
  EXPECT_EQ(out.moe_stats[0].dropped_pairs.item<int64_t>(), 0) << "dropless by default";
  auto loss = lm_loss(out.logits, tokens);
  EXPECT_NEAR(loss.item<float>(), std::log(64.0f), 0.1f) << "small init predicts close to uniform";
}

TEST(Transformer, InitDependsOnSeedAndNameOnly) {
  Transformer a(tiny_options()), b(tiny_options()), c(tiny_options());
// The model's aux loss is the sum over its MoE layers of each layer's loss, coefficient applied, in
// training only. Zero router weights make every p = 1/E, so each layer's Switch loss is exactly 1 and
// its aux loss exactly α (T·k = 32 pairs, E = 4: every f_i, P_i and sum is a dyadic fraction).
TEST(Transformer, AuxLossIsTheSumOfTheLayersCoefficientTimesLossInTrainingOnly) {
  auto options = tiny_options();
  std::fill(options.is_moe.begin(), options.is_moe.end(), true);  // both layers MoE
  Transformer model(options);
  init_weights(*model, 7, 0.02);
  for (auto& layer : model->moe_layers()) layer->router->weight.data().zero_();
  auto tokens = torch::randint(0, 64, {2, 8});
  auto out = model(tokens);
  ASSERT_EQ(out.moe_stats.size(), 2u);
  const float alpha = 0.01f;
  for (const auto& stats : out.moe_stats) EXPECT_EQ(stats.aux_loss.item<float>(), alpha);
  EXPECT_EQ(out.aux_loss.item<float>(), alpha + alpha) << "Σ over the two MoE layers";
  EXPECT_EQ(out.z_loss.item<float>(), 0.0f) << "z_loss_coeff 0";
  model->eval();
  EXPECT_EQ(model(tokens).aux_loss.item<float>(), 0.0f) << "no balancing loss in evaluation";
}

  init_weights(*a, 7, 0.02);
  init_weights(*b, 7, 0.02);
  init_weights(*c, 8, 0.02);
  auto pa = a->named_parameters(), pb = b->named_parameters(), pc = c->named_parameters();
  for (const auto& p : pa) {
    EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
    if (p.value().dim() > 1) {
      EXPECT_FALSE(torch::equal(p.value(), pc[p.key()])) << p.key();
    }
  }
  // Output projections are scaled by 1/sqrt(2·layers).
  const double std_wo = pa["layers.0.attn.wo.weight"].std().item<double>();
  EXPECT_NEAR(std_wo, 0.02 / 2.0, 0.002);
}

TEST(Transformer, TiedEmbeddingsShareOneMatrix) {
  Transformer model(tiny_options(/*tie=*/true));
  EXPECT_FALSE(model->lm_head);
  EXPECT_EQ(model->named_parameters().find("lm_head.weight"), nullptr);
  auto out = model(torch::randint(0, 64, {1, 4}));
  EXPECT_EQ(out.logits.size(-1), 64);
}
