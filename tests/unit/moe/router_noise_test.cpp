// Router noise (jitter, RANDOM routing) is counter-based: a pure function of (seed, layer, global token
// index, column), so every rank draws its own tokens' noise and a token draws the same noise in every
// parallel layout (docs/routing.md, "Router noise").
#include <gtest/gtest.h>

#include <cstdint>
#include <set>

#include "csrc/model/transformer.h"
#include "csrc/moe/router.h"

using namespace moetrain::moe;
using moetrain::config::RoutingConfig;

namespace {

// The definition, in plain uint32 arithmetic (the library computes it with int64 tensor ops).
uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  return x ^ (x >> 16);
}
uint32_t reference_bits(uint64_t key, uint64_t token, uint32_t column) {
  uint32_t h = lowbias32(static_cast<uint32_t>(token) ^ static_cast<uint32_t>(key));
  h = lowbias32(h ^ static_cast<uint32_t>(token >> 32));
  return lowbias32(lowbias32(h ^ column) ^ static_cast<uint32_t>(key >> 32));
}

const torch::Device kCpu(torch::kCPU);

// A router whose logits are its jittered input: E = D and weight = identity, input all ones, so
// logits = the jitter factors U(1 − ε, 1 + ε) themselves.
Router jitter_probe(int64_t D, double eps, uint64_t seed = 11, int64_t layer = 0) {
  RouterOptions o;
  o.d_model = D, o.num_experts = D, o.top_k = 1;
  o.routing.set_jitter_eps(eps);
  Router r(o);
  r->weight.data().copy_(torch::eye(D));
  r->set_noise_stream(seed, layer);
  return r;
}

}  // namespace

TEST(RouterNoise, BitsAreTheDocumentedHashOfTokenAndColumn) {
  const uint64_t key = noise_stream_key(1234, 3, NoisePurpose::kJitter);
  // Token indices below and above 2^32 (the high word enters the hash), the largest columns too.
  for (int64_t first : {int64_t{0}, int64_t{4294967290}, int64_t{1} << 40}) {
    auto bits = noise_bits(key, first, 8, 5, kCpu);
    ASSERT_EQ(bits.sizes(), (std::vector<int64_t>{8, 5}));
    ASSERT_EQ(bits.scalar_type(), torch::kInt64);
    for (int64_t t = 0; t < 8; ++t)
      for (int64_t c = 0; c < 5; ++c)
        ASSERT_EQ(bits[t][c].item<int64_t>(), static_cast<int64_t>(reference_bits(key, first + t, c)))
            << "token " << first + t << " column " << c;
  }
}

TEST(RouterNoise, UniformIsInRangeWithTheMeanAndVarianceOfU01) {
  auto u = uniform_noise(noise_stream_key(7, 0, NoisePurpose::kJitter), 0, 4096, 64, kCpu);
  EXPECT_EQ(u.scalar_type(), torch::kFloat32);
  EXPECT_GE(u.min().item<float>(), 0.0f);
  EXPECT_LT(u.max().item<float>(), 1.0f);
  // 262144 draws: the mean's standard error is 0.29/512 = 5.6e-4, the variance's about 2.6e-4.
  EXPECT_NEAR(u.mean().item<double>(), 0.5, 3e-3);
  EXPECT_NEAR(u.var().item<double>(), 1.0 / 12.0, 2e-3);
  // Neighbouring tokens and columns are uncorrelated.
  auto a = u.narrow(0, 0, 4095).flatten() - 0.5, b = u.narrow(0, 1, 4095).flatten() - 0.5;
  EXPECT_NEAR((a * b).mean().item<double>() * 12.0, 0.0, 1e-2);
  auto c0 = u.narrow(1, 0, 63).flatten() - 0.5, c1 = u.narrow(1, 1, 63).flatten() - 0.5;
  EXPECT_NEAR((c0 * c1).mean().item<double>() * 12.0, 0.0, 1e-2);
}

TEST(RouterNoise, TokensLayersSeedsAndPurposesDrawDifferentNoise) {
  auto draw = [](uint64_t seed, int64_t layer, NoisePurpose p, int64_t first) {
    return noise_bits(noise_stream_key(seed, layer, p), first, 256, 16, kCpu);
  };
  auto base = draw(1, 0, NoisePurpose::kJitter, 0);
  // Every row (token) differs from every other.
  std::set<std::vector<int64_t>> rows;
  for (int64_t t = 0; t < 256; ++t) {
    auto row = base[t].contiguous();
    rows.insert(std::vector<int64_t>(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + 16));
  }
  EXPECT_EQ(rows.size(), 256u);
  // Other tokens, layer, seed or purpose: (almost) no value in common with the base draw.
  for (const auto& other : {draw(1, 0, NoisePurpose::kJitter, 256), draw(1, 1, NoisePurpose::kJitter, 0),
                            draw(2, 0, NoisePurpose::kJitter, 0), draw(1, 0, NoisePurpose::kRandomRouting, 0)}) {
    EXPECT_LT(other.eq(base).sum().item<int64_t>(), 3);
  }
}

// What the issue was: every rank seeds the global generator with train.seed, so two data-parallel
// ranks drew the same jitter for different tokens. Two simulated ranks, both seeded alike, whose
// micro-batches start at different global tokens, must draw different jitter.
TEST(RouterNoise, TwoRanksSeededAlikeDrawDifferentJitterForTheirTokens) {
  const int64_t D = 16, T = 32;
  const double eps = 0.1;
  std::vector<torch::Tensor> jitter;
  for (int64_t rank : {0, 1}) {
    torch::manual_seed(42);  // as the trainer does on every rank
    auto router = jitter_probe(D, eps);
    router->train();
    router->set_noise_position(rank * T);  // rank r's micro-batch: global tokens [r·T, (r + 1)·T)
    jitter.push_back(router(torch::ones({T, D})).logits_TE);
  }
  for (const auto& j : jitter) {  // in range, mean 1
    EXPECT_GE(j.min().item<float>(), 1.0f - eps - 1e-6f);
    EXPECT_LT(j.max().item<float>(), 1.0f + eps + 1e-6f);
    EXPECT_NEAR(j.mean().item<double>(), 1.0, 0.01);
  }
  EXPECT_LT(jitter[0].eq(jitter[1]).sum().item<int64_t>(), 3) << "the two ranks drew the same jitter";
  // One process routing both micro-batches in one forward draws exactly the ranks' noise.
  auto single = jitter_probe(D, eps);
  single->train();
  EXPECT_TRUE(torch::equal(single(torch::ones({2 * T, D})).logits_TE, torch::cat(jitter)));
}

TEST(RouterNoise, EachTrainingForwardAdvancesThePositionAndEvaluationHasNoJitter) {
  auto router = jitter_probe(8, 0.2);
  router->train();
  auto first = router(torch::ones({5, 8})).logits_TE;
  EXPECT_EQ(router->noise_position(), 5);
  auto second = router(torch::ones({5, 8})).logits_TE;
  EXPECT_EQ(router->noise_position(), 10);
  auto both = jitter_probe(8, 0.2);
  both->train();
  EXPECT_TRUE(torch::equal(torch::cat({first, second}), both(torch::ones({10, 8})).logits_TE));
  router->eval();
  EXPECT_TRUE(torch::equal(router(torch::ones({5, 8})).logits_TE, torch::ones({5, 8})));
  EXPECT_EQ(router->noise_position(), 10) << "evaluation does not move the training position";
}

TEST(RouterNoise, RandomRoutingOfAGlobalTokenIsTheSameInAnyLayout) {
  RouterOptions o;
  o.d_model = 4, o.num_experts = 8, o.top_k = 2;
  o.routing.set_router_type(RoutingConfig::RANDOM);
  auto make = [&] {
    Router r(o);
    r->set_noise_stream(5, 1);
    r->train();
    return r;
  };
  auto x = torch::randn({64, 4});
  auto whole = make()(x).routed_TE;
  // Two tensor-parallel halves (or data-parallel micro-batches): rows [0, 32) and [32, 64).
  auto half = make();
  auto lo = half(x.narrow(0, 0, 32)).routed_TE;
  half->set_noise_position(32);
  auto hi = half(x.narrow(0, 32, 32)).routed_TE;
  EXPECT_TRUE(torch::equal(whole, torch::cat({lo, hi})));
  EXPECT_TRUE(torch::equal(whole.sum(-1), torch::full({64}, 2, torch::kInt64)));
  EXPECT_FALSE(torch::equal(lo, hi)) << "different tokens, different experts";
  // Uniform over experts: 4096 tokens · 2 / 8 = 1024 pairs per expert (sd about 28).
  auto load = make()(torch::randn({4096, 4})).routed_TE.sum(0);
  EXPECT_LT((load - 1024).abs().max().item<int64_t>(), 150);
}

// The model keys its routers' noise by global sample: a micro-batch of 4 sequences routed in one
// forward equals the same sequences split over two data-parallel micro-batches of 2.
TEST(RouterNoise, ModelJitterIsTheSameWhateverTheMicroBatchSplit) {
  moetrain::config::ModelConfig m;
  m.set_vocab_size(64), m.set_d_model(16), m.set_num_layers(2), m.set_num_heads(2), m.set_ffn_hidden(32);
  m.set_num_experts(4), m.set_top_k(1), m.set_moe_ffn_hidden(16), m.set_moe_layer_freq(1);
  RoutingConfig cfg;
  cfg.set_jitter_eps(0.5);
  auto options = moetrain::model::TransformerOptions::from_recipe(m, cfg);
  options.seed = 3;
  torch::manual_seed(0);
  moetrain::model::Transformer model(options);
  moetrain::model::init_weights(*model, 3, 0.5);
  model->train();
  auto tokens = torch::randint(64, {4, 6}, torch::kInt64);
  model->set_first_sample(100);
  auto whole = model->forward(tokens).logits;
  model->set_first_sample(100);
  auto a = model->forward(tokens.narrow(0, 0, 2)).logits;
  model->set_first_sample(102);
  auto b = model->forward(tokens.narrow(0, 2, 2)).logits;
  EXPECT_TRUE(torch::allclose(whole, torch::cat({a, b}), 1e-5, 1e-6));
  // The old behaviour, both halves drawing the same noise, gives other logits: the check can fail.
  model->set_first_sample(100);
  auto b_wrong = model->forward(tokens.narrow(0, 2, 2)).logits;
  EXPECT_FALSE(torch::allclose(whole.narrow(0, 2, 2), b_wrong, 1e-5, 1e-6));
}
