// Pieces of the training loop against numbers computed by hand: the learning-rate schedule,
// weight-decay groups, gradient clipping, the unigram baseline on the evaluation windows.
#include <gtest/gtest.h>

#include <limits>

#include "csrc/model/transformer.h"
#include "data/indexed_dataset.h"
#include "trainer/data_feed.h"
#include "trainer/optimizer.h"
#include "trainer/schedule.h"

using namespace moetrain;

namespace {

// lr 1e-3 → min_lr 1e-4, 10 warmup steps, 110 steps in all (100 decay steps).
config::Recipe schedule_recipe(config::ScheduleConfig::Decay decay, int64_t decay_steps = 0) {
  config::Recipe r;
  r.mutable_optimizer()->set_lr(1e-3);
  r.mutable_optimizer()->set_min_lr(1e-4);
  r.mutable_schedule()->set_warmup_steps(10);
  r.mutable_schedule()->set_decay(decay);
  r.mutable_schedule()->set_decay_steps(decay_steps);
  r.mutable_train()->set_steps(110);
  return r;
}

}  // namespace

TEST(Schedule, LinearWarmupThenCosineToMinLr) {
  const auto r = schedule_recipe(config::ScheduleConfig::COSINE);
  EXPECT_DOUBLE_EQ(trainer::learning_rate(r, 0), 1e-4);   // lr·1/10
  EXPECT_DOUBLE_EQ(trainer::learning_rate(r, 4), 5e-4);   // lr·5/10
  EXPECT_DOUBLE_EQ(trainer::learning_rate(r, 9), 1e-3);   // end of warmup: the peak
  EXPECT_DOUBLE_EQ(trainer::learning_rate(r, 10), 1e-3);  // decay progress 0
  // progress 1/4: min + (lr − min)·½(1 + cos(π/4)); progress 1/2: half way.
  EXPECT_NEAR(trainer::learning_rate(r, 35), 1e-4 + 9e-4 * 0.5 * (1 + std::sqrt(0.5)), 1e-18);
  EXPECT_NEAR(trainer::learning_rate(r, 60), 5.5e-4, 1e-18);
  EXPECT_NEAR(trainer::learning_rate(r, 110), 1e-4, 1e-18);  // the floor...
  EXPECT_NEAR(trainer::learning_rate(r, 500), 1e-4, 1e-18);  // ...and it stays there
  for (int64_t s = 11; s < 110; ++s)
    EXPECT_LT(trainer::learning_rate(r, s), trainer::learning_rate(r, s - 1)) << s;
}

TEST(Schedule, LinearAndConstantDecayAndExplicitDecaySteps) {
  const auto linear = schedule_recipe(config::ScheduleConfig::LINEAR);
  EXPECT_NEAR(trainer::learning_rate(linear, 35), 1e-4 + 9e-4 * 0.75, 1e-18);
  EXPECT_NEAR(trainer::learning_rate(linear, 60), 5.5e-4, 1e-18);
  const auto constant = schedule_recipe(config::ScheduleConfig::CONSTANT);
  EXPECT_DOUBLE_EQ(trainer::learning_rate(constant, 4), 5e-4);  // warmup still applies
  EXPECT_DOUBLE_EQ(trainer::learning_rate(constant, 100), 1e-3);
  const auto short_decay = schedule_recipe(config::ScheduleConfig::COSINE, 50);  // reaches min_lr at step 60
  EXPECT_NEAR(trainer::learning_rate(short_decay, 35), 5.5e-4, 1e-18);
  EXPECT_NEAR(trainer::learning_rate(short_decay, 60), 1e-4, 1e-18);
}

TEST(Optimizer, MatricesAreDecayedVectorsAreNotFrozenAndBuffersAreAbsent) {
  config::ModelConfig m;
  m.set_vocab_size(32), m.set_d_model(16), m.set_num_layers(1), m.set_num_heads(2), m.set_ffn_hidden(32);
  m.set_num_experts(4), m.set_top_k(2), m.set_moe_ffn_hidden(16);
  config::RoutingConfig routing;
  routing.set_bias_update_rate(1e-3);  // expert biases exist (as buffers)
  model::Transformer t(model::TransformerOptions::from_recipe(m, routing));
  config::OptimizerConfig o;
  o.set_weight_decay(0.1);
  // Freeze one matrix: it must get no group.
  torch::Tensor frozen;
  for (auto& p : t->named_parameters()) {
    if (p.key().find(".moe.router.") != std::string::npos) frozen = p.value(), frozen.requires_grad_(false);
  }
  ASSERT_TRUE(frozen.defined());
  auto opt = trainer::make_optimizer(*t, o);
  ASSERT_EQ(opt->param_groups().size(), 2u);
  const auto& decay = opt->param_groups()[0];
  const auto& no_decay = opt->param_groups()[1];
  EXPECT_DOUBLE_EQ(static_cast<const torch::optim::AdamWOptions&>(decay.options()).weight_decay(), 0.1);
  EXPECT_DOUBLE_EQ(static_cast<const torch::optim::AdamWOptions&>(no_decay.options()).weight_decay(), 0.0);
  for (const auto& p : decay.params()) EXPECT_GE(p.dim(), 2);
  for (const auto& p : no_decay.params()) EXPECT_LT(p.dim(), 2);
  int64_t trainable = 0;
  for (const auto& p : t->parameters()) trainable += p.requires_grad();
  EXPECT_EQ(static_cast<int64_t>(decay.params().size() + no_decay.params().size()), trainable);
  EXPECT_GT(no_decay.params().size(), 0u);  // the RMSNorm gains
  auto in_groups = [&](const torch::Tensor& t) {
    for (const auto& g : opt->param_groups())
      for (const auto& p : g.params())
        if (p.is_same(t)) return true;
    return false;
  };
  EXPECT_FALSE(in_groups(frozen));
  int64_t biases = 0;
  for (const auto& b : t->named_buffers()) {
    if (b.key().find("expert_bias") == std::string::npos) continue;
    ++biases;
    EXPECT_FALSE(in_groups(b.value())) << b.key();
  }
  EXPECT_EQ(biases, 1);  // the one MoE layer's bias
}

TEST(Optimizer, ARealStepLeavesTheExpertBiasesBitwiseAlone) {
  config::ModelConfig m;
  m.set_vocab_size(64), m.set_d_model(16), m.set_num_layers(2), m.set_num_heads(2), m.set_ffn_hidden(32);
  m.set_num_experts(4), m.set_top_k(2), m.set_moe_ffn_hidden(16), m.set_moe_layer_freq(1);
  config::RoutingConfig routing;
  routing.set_bias_update_rate(1e-3);
  model::Transformer t(model::TransformerOptions::from_recipe(m, routing));
  model::init_weights(*t, 4, 0.1);
  config::OptimizerConfig o;
  o.set_lr(0.1), o.set_weight_decay(0.1);  // large, so any contact would show
  auto opt = trainer::make_optimizer(*t, o);
  const auto layers = t->moe_layers();
  std::vector<torch::Tensor> bias_before, weight_before;
  for (const auto& layer : layers) {
    torch::NoGradGuard no_grad;
    layer->router->expert_bias.copy_(torch::tensor({0.01f, -0.02f, 0.03f, -0.04f}));
    bias_before.push_back(layer->router->expert_bias.clone());
    weight_before.push_back(layer->router->weight.detach().clone());
  }
  torch::manual_seed(4);
  auto tokens = torch::randint(0, 64, {2, 9}, torch::kInt64);
  auto out = t->forward(tokens.narrow(1, 0, 8));
  (t->token_losses(out.logits, tokens.narrow(1, 1, 8)).mean() + out.aux_loss).backward();
  opt->step();
  for (size_t l = 0; l < layers.size(); ++l) {
    // AdamW skips a tensor without a gradient, so the equality below alone would not see a bias that
    // had been handed to the optimizer: check its groups too.
    for (const auto& group : opt->param_groups())
      for (const auto& p : group.params())
        EXPECT_FALSE(p.is_same(layers[l]->router->expert_bias)) << "layer " << l;
    EXPECT_TRUE(torch::equal(layers[l]->router->expert_bias, bias_before[l]))
        << "no optimizer step, no weight decay";
    EXPECT_FALSE(torch::equal(layers[l]->router->weight, weight_before[l]))
        << "the router weight itself is trained";
  }
}

TEST(Optimizer, ClippingScalesToMaxNormAndReportsTheNormBefore) {
  torch::nn::Linear lin(torch::nn::LinearOptions(2, 1).bias(false));
  lin->weight.mutable_grad() = torch::tensor({{3.0f, 4.0f}});  // norm 5
  const auto norm = trainer::local_grad_norm(*lin);
  EXPECT_DOUBLE_EQ(norm.item<double>(), 5.0);
  trainer::clip_gradients(*lin, 10.0, norm);  // below max: untouched
  EXPECT_TRUE(torch::equal(lin->weight.grad(), torch::tensor({{3.0f, 4.0f}})));
  trainer::clip_gradients(*lin, std::numeric_limits<double>::infinity(), norm);  // no clipping
  EXPECT_TRUE(torch::equal(lin->weight.grad(), torch::tensor({{3.0f, 4.0f}})));
  trainer::clip_gradients(*lin, 1.0, norm);
  const float coef = static_cast<float>(1.0 / (5.0 + 1e-6));
  EXPECT_TRUE(torch::allclose(lin->weight.grad(), torch::tensor({{3.0f * coef, 4.0f * coef}}), 0, 1e-7));
  EXPECT_NEAR(lin->weight.grad().norm().item<double>(), 1.0, 1e-6);
}

TEST(UnigramBaseline, ScoresExactlyTheTargetsOfTheEvaluationWindows) {
  const std::string train = ::testing::TempDir() + "moetrain_unigram_windows_train";
  {
    data::IndexedDatasetWriter w(train, 4);
    w.add_document({0, 0, 1});  // p(t) = (count + 1) / (3 + 4): p(0) = 3/7, p(1) = 2/7, p(2) = p(3) = 1/7
    w.finish();
  }
  trainer::EvalWindows eval;
  eval.domains = {"a", "b"};
  // The first token of each window is context only; the targets are 0, 2 | 1, 1 and 3, 0.
  eval.windows = {torch::tensor({{3, 0, 2}}, torch::kInt64),
                  torch::tensor({{0, 1, 1}, {2, 3, 0}}, torch::kInt64)};
  const double nll = -(2 * std::log(3.0 / 7) + 2 * std::log(2.0 / 7) + 2 * std::log(1.0 / 7)) / 6;
  EXPECT_NEAR(trainer::unigram_baseline(train, eval, 4), std::exp(nll), 1e-12);
}
