// Activation recomputation (csrc/layers/recompute.h, train.recompute): gradients, losses and routing
// measures bitwise those of the same steps without recomputation, for every granularity and module, in
// fp32 and under bf16 autocast; freed outputs really are freed until their consumer's backward.
#include <gtest/gtest.h>

#include "csrc/layers/precision.h"
#include "csrc/layers/recompute.h"
#include "csrc/model/transformer.h"

namespace moetrain::model {
namespace {

TEST(Recompute, GradientsOfABodyWithParametersAreBitwiseThoseWithoutIt) {
  torch::manual_seed(0);
  auto w = torch::randn({8, 8}).requires_grad_();
  auto body = [&](const std::vector<torch::Tensor>& in) {
    return std::vector{torch::tanh(in[0].matmul(w)).matmul(w), in[1].sum()};
  };
  const auto x0 = torch::randn({4, 8}), ids = torch::arange(4);
  auto x = x0.clone().requires_grad_();
  auto plain = body({x, ids});
  (plain[0].pow(2).sum() + plain[1]).backward();
  const auto w_grad = w.grad().clone(), x_grad = x.grad().clone();
  w.mutable_grad() = torch::Tensor();

  auto xr = x0.clone().requires_grad_();
  auto again = layers::recompute(body, {xr, ids});
  EXPECT_FALSE(again[0].grad_fn() == nullptr);
  EXPECT_FALSE(again[1].requires_grad()) << "integer outputs carry no gradient";
  again[0].pow(2).sum().backward();
  EXPECT_TRUE(torch::equal(w.grad(), w_grad));
  EXPECT_TRUE(torch::equal(xr.grad(), x_grad));
}

TEST(Recompute, ParametersGetGradientsWhenNoInputRequiresOne) {
  auto w = torch::randn({3, 3}).requires_grad_();
  auto y = layers::recompute([&](const std::vector<torch::Tensor>& in) { return std::vector{in[0].matmul(w)}; },
                             {torch::randn({2, 3})})[0];
  y.sum().backward();
  ASSERT_TRUE(w.grad().defined());
}

TEST(RecomputeWithoutOutput, FreesTheOutputUntilTheConsumersBackward) {
  torch::manual_seed(1);
  auto w = torch::randn({16, 16}).requires_grad_();
  const auto g0 = torch::randn({32, 16}), u0 = torch::randn({32, 16});
  auto act = [](const std::vector<torch::Tensor>& in) { return std::vector{torch::silu(in[0]) * in[1]}; };

  auto g = g0.clone().requires_grad_(), u = u0.clone().requires_grad_();
  act({g, u})[0].matmul(w).sum().backward();
  const auto w_grad = w.grad().clone(), g_grad = g.grad().clone(), u_grad = u.grad().clone();
  w.mutable_grad() = torch::Tensor();

  auto g2 = g0.clone().requires_grad_(), u2 = u0.clone().requires_grad_();
  layers::RecomputeWithoutOutput keep;
  auto h = keep.run(act, {g2, u2})[0];
  auto y = h.matmul(w);  // the consumer saves h
  keep.discard_outputs(y);
  EXPECT_EQ(h.storage().nbytes(), 0u) << "the activation's memory is given back";
  y.sum().backward();
  EXPECT_EQ(h.storage().nbytes(), static_cast<size_t>(h.numel() * h.element_size()));
  EXPECT_TRUE(torch::equal(w.grad(), w_grad));
  EXPECT_TRUE(torch::equal(g2.grad(), g_grad));
  EXPECT_TRUE(torch::equal(u2.grad(), u_grad));
}

TEST(RecomputeWithoutOutput, RefusesAnOutputThatSharesAnInputsMemory) {
  layers::RecomputeWithoutOutput keep;
  auto x = torch::randn({4}).requires_grad_();
  EXPECT_THROW(keep.run(
                   [](const std::vector<torch::Tensor>& in) {
    return std::vector{in[0].view({2, 2})};
                   },
                   {x}),
               c10::Error);
}

// A 3-layer model (dense, MoE, MoE) whose routing exercises every replayed state: router jitter keyed by
// token position, the global-batch loss's counts accumulated over micro-batches, z-loss, sequence loss.
TransformerOptions options(const RecomputeOptions& recompute) {
  config::ModelConfig m;
  m.set_vocab_size(61), m.set_d_model(32), m.set_num_layers(3), m.set_num_heads(4), m.set_num_kv_heads(2);
  m.set_ffn_hidden(48), m.set_num_experts(4), m.set_top_k(2), m.set_moe_ffn_hidden(24);
  m.add_moe_layers(1), m.add_moe_layers(2);
  m.set_num_shared_experts(1);
  config::RoutingConfig r;
  r.set_jitter_eps(0.1), r.set_aux_loss_coeff(0.01), r.set_global_aux_loss_coeff(0.01);
  r.set_seq_aux_loss_coeff(0.01), r.set_z_loss_coeff(0.001);
  auto o = TransformerOptions::from_recipe(m, r);
  o.seed = 7;
  o.recompute = recompute;
  o.moe.recompute_act = recompute.moe_act;
  return o;
}

struct StepResult {
  std::vector<torch::Tensor> grads, losses, step_measures;
};

// Two micro-batches of forward and backward, as TrainStep accumulates them.
StepResult train_two_micro_batches(const RecomputeOptions& recompute,
                                   std::optional<torch::ScalarType> autocast) {
  Transformer model(options(recompute));
  init_weights(*model, 11, 0.1);
  model->train();
  StepResult result;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  for (int micro = 0; micro < 2; ++micro) {
    auto batch = torch::randint(0, 61, {2, 9}, gen);
    model->set_first_sample(micro * 2);
    ModelOutput out;
    torch::Tensor lm;
    {
      layers::AutocastScope scope(c10::DeviceType::CPU, autocast);
      out = model->forward(batch.narrow(1, 0, 8));
      lm = model->token_losses(out.logits, batch.narrow(1, 1, 8)).mean();
    }
    ((lm + out.aux_loss + out.z_loss) / 2.0).backward();
    result.losses.insert(result.losses.end(), {lm.detach(), out.aux_loss.detach(), out.z_loss.detach()});
    for (const auto& m : out.moe_measures) result.losses.push_back(m.tokens_per_expert_E);
  }
  for (const auto& p : model->parameters())
    result.grads.push_back(p.grad().defined() ? p.grad() : torch::Tensor());
  for (const auto& layer : model->moe_layers()) {
    result.step_measures.push_back(layer->step_measures());
    result.step_measures.push_back(layer->step_counts());
  }
  return result;
}

void expect_bitwise(const StepResult& a, const StepResult& b, const std::string& what) {
  ASSERT_EQ(a.grads.size(), b.grads.size());
  for (size_t i = 0; i < a.grads.size(); ++i) {
    ASSERT_EQ(a.grads[i].defined(), b.grads[i].defined()) << what << " parameter " << i;
    if (a.grads[i].defined()) {
      EXPECT_TRUE(torch::equal(a.grads[i], b.grads[i])) << what << " parameter " << i;
    }
  }
  ASSERT_EQ(a.losses.size(), b.losses.size()) << what;
  for (size_t i = 0; i < a.losses.size(); ++i)
    EXPECT_TRUE(torch::equal(a.losses[i], b.losses[i])) << what << " loss " << i;
  for (size_t i = 0; i < a.step_measures.size(); ++i)
    EXPECT_TRUE(torch::equal(a.step_measures[i], b.step_measures[i])) << what << " step measure " << i;
}

std::vector<std::pair<std::string, RecomputeOptions>> every_setting() {
  std::vector<std::pair<std::string, RecomputeOptions>> s;
  RecomputeOptions r;
  r.full_layers = 3, s.emplace_back("FULL", r);
  r = {}, r.full_layers = 2, s.emplace_back("FULL 2 layers", r);
  r = {}, r.core_attn = true, s.emplace_back("core_attn", r);
  r = {}, r.moe_act = true, s.emplace_back("moe_act", r);
  r = {}, r.layernorm = true, s.emplace_back("layernorm", r);
  r = {}, r.mlp = true, s.emplace_back("mlp", r);
  r = {}, r.moe = true, s.emplace_back("moe", r);
  r = {}, r.core_attn = r.moe_act = r.layernorm = r.mlp = true, s.emplace_back("all but moe", r);
  r.moe = true, s.emplace_back("all five", r);
  r.full_layers = 1, s.emplace_back("FULL 1 layer with every module", r);
  return s;
}

TEST(Recompute, EveryGranularityAndModuleGivesBitwiseTheGradientsLossesAndLoads) {
  const StepResult none = train_two_micro_batches({}, std::nullopt);
  for (const auto& [name, setting] : every_setting())
    expect_bitwise(none, train_two_micro_batches(setting, std::nullopt), name);
}

TEST(Recompute, UnderBf16AutocastToo) {
  const StepResult none = train_two_micro_batches({}, torch::kBFloat16);
  for (const auto& [name, setting] : every_setting())
    expect_bitwise(none, train_two_micro_batches(setting, torch::kBFloat16), name + " bf16");
}

TEST(Recompute, EvaluationAndNoGradForwardsGiveThePlainLogits) {
  RecomputeOptions all;
  all.core_attn = all.moe_act = all.layernorm = all.mlp = all.moe = true;
  Transformer plain(options({})), recomputing(options(all));
  init_weights(*plain, 11, 0.1), init_weights(*recomputing, 11, 0.1);
  const auto tokens = torch::randint(0, 61, {2, 8});
  plain->eval(), recomputing->eval();
  EXPECT_TRUE(torch::equal(plain->forward(tokens).logits, recomputing->forward(tokens).logits));
  torch::NoGradGuard no_grad;  // a training forward that keeps nothing: nothing to recompute or free
  plain->train(), recomputing->train();
  EXPECT_TRUE(torch::equal(plain->forward(tokens).logits, recomputing->forward(tokens).logits));
}

}  // namespace
}  // namespace moetrain::model
