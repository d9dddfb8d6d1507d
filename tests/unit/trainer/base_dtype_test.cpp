// finetune.base_dtype = BF16 (trainer/base_dtype.h): which weights become bf16, what memory that saves, and
// what it does to the logits: bitwise nothing against an fp32 base under train.precision = BF16 (autocast
// rounds an fp32 weight to the same bf16 at every use), and within the measured bf16 tolerance of fp32.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "csrc/config/recipe_loader.h"
#include "csrc/model/sharding.h"
#include "csrc/model/transformer.h"
#include "trainer/base_dtype.h"

using namespace moetrain;

namespace {

// Two layers (one MoE with a shared expert, one dense), LoRA on the experts and the attention, bf16 matmuls.
config::Recipe lora_recipe() {
  config::Recipe r;
  auto* m = r.mutable_model();
  m->set_vocab_size(96);
  m->set_d_model(64);
  m->set_num_layers(2);
  m->set_num_heads(4);
  m->set_ffn_hidden(128);
  m->set_num_experts(4);
  m->set_top_k(2);
  m->set_moe_ffn_hidden(64);
  m->set_moe_layer_freq(2);
  m->set_num_shared_experts(1);
  auto* lora = r.mutable_finetune()->mutable_lora();
  lora->set_rank(8);
  for (const char* t : {"gate", "up", "down", "attn_qkv", "attn_out"}) lora->add_targets(t);
  r.mutable_finetune()->set_base_dtype(config::TrainConfig::BF16);
  r.mutable_train()->set_precision(config::TrainConfig::BF16);
  r.mutable_data()->set_train_prefix("unused");
  return r;
}

// As the trainer freezes a LoRA run: everything but the adapters.
void freeze_base(model::TransformerImpl& m) {
  for (auto& p : model::roled_parameters(m)) {
    if (!p.role.adapter) p.tensor.requires_grad_(false);
  }
}

model::Transformer make_model(const config::Recipe& r, torch::ScalarType compute) {
  auto options = model::TransformerOptions::from_recipe(r);
  options.compute_dtype = compute;
  model::Transformer m(options);
  model::init_weights(*m, 7, 0.05);
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  for (auto& p : m->named_parameters()) {  // non-zero adapters, so they take part in the comparison
    if (p.key().find("_lora_b") != std::string::npos)
      p.value().copy_(at::normal(0.0, 0.05, p.value().sizes(), gen));
  }
  freeze_base(*m);
  return m;
}

torch::Tensor tokens() {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  return at::randint(0, 96, {2, 24}, gen, torch::kInt64);
}

std::string validation_error(const config::Recipe& r) {
  try {
    config::validate_recipe(r, "r");
  } catch (const config::RecipeError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(BaseDtype, HoldsTheFrozenMatricesInBf16AndHalvesTheirBytes) {
  auto m = make_model(lora_recipe(), torch::kBFloat16);
  int64_t held_elements = 0;
  for (const auto& p : m->named_parameters()) {
    if (trainer::held_in_base_dtype(*m, p.key(), p.value())) held_elements += p.value().numel();
  }
  const auto report = trainer::hold_frozen_base_in(*m, torch::kBFloat16);
  EXPECT_EQ(report.bytes_after, report.bytes_before - 2 * held_elements);
  EXPECT_EQ(report.bytes_after, trainer::parameter_bytes(*m));
  const auto params = m->named_parameters();
  for (const char* name : {"layers.0.attn.wqkv.weight", "layers.0.attn.wo.weight", "layers.0.moe.experts.w1",
                           "layers.0.moe.experts.w3", "layers.0.moe.experts.w2",
                           "layers.0.moe.shared.w1.weight", "layers.1.mlp.w2.weight", "lm_head.weight"}) {
    ASSERT_NE(params.find(name), nullptr) << name;
    EXPECT_EQ(params[name].scalar_type(), torch::kBFloat16) << name;
  }
  for (const char* name :
       {"embed.weight", "layers.0.moe.router.weight", "layers.0.attn_norm.weight", "norm.weight",
        "layers.0.moe.experts.w1_lora_a", "layers.0.moe.experts.w2_lora_b", "layers.0.attn.qkv_lora_a"}) {
    ASSERT_NE(params.find(name), nullptr) << name;
    EXPECT_EQ(params[name].scalar_type(), torch::kFloat32) << name;
  }
  std::printf("parameter bytes: %lld fp32 base, %lld bf16 base (%.3f)\n",
              static_cast<long long>(report.bytes_before), static_cast<long long>(report.bytes_after),
              static_cast<double>(report.bytes_after) / report.bytes_before);
  // This small model's embedding and adapters are a larger share than in a real model; still well below 0.6.
  EXPECT_LT(static_cast<double>(report.bytes_after) / report.bytes_before, 0.6);
}

TEST(BaseDtype, RefusesATrainableBase) {
  auto options = model::TransformerOptions::from_recipe(lora_recipe());
  model::Transformer m(options);
  EXPECT_THROW(trainer::hold_frozen_base_in(*m, torch::kBFloat16), std::logic_error);
}

TEST(BaseDtype, LogitsAndAdapterGradientsEqualAnFp32BaseUnderBf16Precision) {
  const auto r = lora_recipe();
  auto fp32_base = make_model(r, torch::kBFloat16), bf16_base = make_model(r, torch::kBFloat16);
  trainer::hold_frozen_base_in(*bf16_base, torch::kBFloat16);
  const auto x = tokens(), targets = tokens().roll(1, 1);
  auto run = [&](model::TransformerImpl& m) {
    auto out = m.forward(x);
    (model::lm_loss(out.logits, targets) + out.aux_loss).backward();
    return out.logits.detach();
  };
  const auto a = run(*fp32_base), b = run(*bf16_base);
  EXPECT_TRUE(torch::equal(a, b)) << "max |diff| " << (a - b).abs().max().item<double>();
  const auto pa = fp32_base->named_parameters(), pb = bf16_base->named_parameters();
  int adapters = 0;
  for (const auto& p : pb) {
    if (p.key().find("_lora_") == std::string::npos) {
      EXPECT_FALSE(p.value().grad().defined()) << p.key() << ": a frozen base weight got a gradient";
      continue;
    }
    ++adapters;
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_EQ(p.value().grad().scalar_type(), torch::kFloat32) << p.key();
    EXPECT_TRUE(torch::equal(p.value().grad(), pa[p.key()].grad())) << p.key();
  }
  EXPECT_EQ(adapters, 14);  // A and B of gate, up, down (one MoE layer) and of qkv, out (two layers)
}

// Stated tolerance: the bf16-base model's logits against the same weights in fp32 with fp32 matmuls differ
// by at most 2% of the largest logit magnitude (measured 0.67%, the same under ONEDNN_MAX_CPU_ISA=AVX2,
// AVX512_CORE and AVX512_CORE_BF16: 3x margin; bf16 keeps 8 bits of mantissa, so each matmul carries
// ~0.4% relative error).
TEST(BaseDtype, LogitsWithinBf16ToleranceOfTheFp32Model) {
  const auto r = lora_recipe();
  auto fp32 = make_model(r, torch::kFloat32), bf16_base = make_model(r, torch::kBFloat16);
  trainer::hold_frozen_base_in(*bf16_base, torch::kBFloat16);
  torch::NoGradGuard no_grad;
  const auto x = tokens();
  const auto ref = fp32->forward(x).logits, got = bf16_base->forward(x).logits.to(torch::kFloat32);
  const double scale = ref.abs().max().item<double>(), worst = (got - ref).abs().max().item<double>();
  const double mean = (got - ref).abs().mean().item<double>();
  std::printf("bf16 base vs fp32: max |diff| %.3e, mean |diff| %.3e, max |logit| %.3e (max relative to it %.3e)\n",
              worst, mean, scale, worst / scale);
  EXPECT_GT(worst, 0.0);  // it is a different computation
  EXPECT_LT(worst / scale, 0.02);
}

TEST(BaseDtype, RecipeNeedsLoraAndBf16Precision) {
  auto r = lora_recipe();
  EXPECT_EQ(validation_error(r), "");
  r.mutable_finetune()->mutable_lora()->set_rank(0);
  r.mutable_finetune()->mutable_lora()->clear_targets();
  EXPECT_NE(validation_error(r).find(
                "finetune.base_dtype = BF16: holds the frozen base weights of a LoRA run and needs "
                "finetune.lora.rank > 0"),
            std::string::npos)
      << validation_error(r);
  r = lora_recipe();
  r.mutable_train()->set_precision(config::TrainConfig::FP32);
  EXPECT_NE(validation_error(r).find("finetune.base_dtype = BF16: needs train.precision = BF16"), std::string::npos)
      << validation_error(r);
}
