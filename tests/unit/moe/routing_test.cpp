// Routing, balancing and capacity against the definitions of docs/routing.md, with numbers computed by
// hand or by an independent formula in the test.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "csrc/model/transformer.h"
#include "csrc/moe/balancing.h"
#include "csrc/moe/moe_layer.h"
#include "csrc/moe/router.h"

using namespace moetrain::moe;
using moetrain::config::RoutingConfig;

namespace {

Router make_router(int64_t d, int64_t e, int64_t k, const RoutingConfig& cfg = RoutingConfig(),
                   uint64_t seed = 0) {
  RouterOptions o;
  o.d_model = d, o.num_experts = e, o.top_k = k, o.routing = cfg;
  torch::manual_seed(seed);
  Router r(o);
  r->weight.data().normal_();
  return r;
}

std::vector<int64_t> selected(const Routing& r, int64_t t) {
  std::vector<int64_t> out;
  for (int64_t e = 0; e < r.routed_TE.size(1); ++e)
    if (r.routed_TE[t][e].item<bool>()) out.push_back(e);
  return out;
}

}  // namespace

TEST(Router, SoftmaxGatesSumToOneAndEqualSoftmaxOverSelectedLogits) {
  auto router = make_router(8, 5, 2);
  auto x = torch::randn({7, 8});
  auto r = router(x);
  EXPECT_TRUE(torch::allclose(r.gates_TE.sum(-1), torch::ones({7}), 0, 1e-6));
  EXPECT_TRUE(torch::equal(r.routed_TE.sum(-1), torch::full({7}, 2, torch::kInt64)));
  auto logits = torch::matmul(x, router->weight.t());
  auto idx = std::get<1>(logits.topk(2, -1));
  auto expected = torch::zeros({7, 5}).scatter(1, idx, torch::softmax(logits.gather(1, idx), -1));
  EXPECT_TRUE(torch::allclose(r.gates_TE, expected, 1e-6, 1e-7));
  EXPECT_EQ(r.probs_TE.scalar_type(), torch::kFloat32);
}

TEST(Router, TopkThenSoftmaxEqualsRenormalisedSoftmaxThenTopk) {
  RoutingConfig mixtral;
  mixtral.set_topk_order(RoutingConfig::TOPK_THEN_SOFTMAX);
  auto a = make_router(8, 6, 2), b = make_router(8, 6, 2, mixtral);
  auto x = torch::randn({5, 8});
  EXPECT_TRUE(torch::allclose(a(x).gates_TE, b(x).gates_TE, 1e-6, 1e-7));
}

TEST(Router, UnnormalisedGatesAndScaleAreTheProbabilitiesTimesTheScale) {
  RoutingConfig cfg;
  cfg.set_normalize_gates(false);
  cfg.set_gate_scale(2.5);
  auto router = make_router(8, 4, 2, cfg);
  auto x = torch::randn({3, 8});
  auto r = router(x);
  auto probs = torch::softmax(torch::matmul(x, router->weight.t()), -1);
  EXPECT_TRUE(torch::allclose(r.gates_TE, probs * r.routed_TE * 2.5, 1e-6, 1e-7));
}

TEST(Router, SigmoidScoresWithNormalisedGates) {
  RoutingConfig cfg;
  cfg.set_score_function(RoutingConfig::SIGMOID);
  auto router = make_router(8, 6, 3, cfg);
  auto x = torch::randn({4, 8});
  auto r = router(x);
  auto s = torch::sigmoid(torch::matmul(x, router->weight.t()));
  auto idx = std::get<1>(s.topk(3, -1));
  auto sel = s.gather(1, idx);
  auto expected = torch::zeros_like(s).scatter(1, idx, sel / sel.sum(-1, true));
  EXPECT_TRUE(torch::allclose(r.gates_TE, expected, 1e-6, 1e-7));
  EXPECT_TRUE(torch::allclose(r.probs_TE, s / s.sum(-1, true), 1e-6, 1e-7))
      << "P of the aux loss: normalised sigmoid";
}

TEST(Router, ComputesInFp32ForLowPrecisionInputs) {
  auto router = make_router(8, 4, 1);
  auto r = router(torch::randn({3, 8}).to(torch::kBFloat16));
  EXPECT_EQ(r.probs_TE.scalar_type(), torch::kFloat32);
  EXPECT_EQ(r.gates_TE.scalar_type(), torch::kFloat32);
}

TEST(Router, JitterOnlyInTraining) {
  RoutingConfig cfg;
  cfg.set_jitter_eps(0.5);
  auto router = make_router(8, 4, 2, cfg);
  auto x = torch::randn({6, 8});
  router->eval();
  EXPECT_TRUE(torch::equal(router(x).logits_TE, router(x).logits_TE));
  router->train();
  EXPECT_FALSE(torch::equal(router(x).logits_TE, router(x).logits_TE));
}

TEST(GroupLimited, NeverUsesMoreThanGroupTopkGroups) {
  RoutingConfig cfg;
  cfg.set_num_groups(4);
  cfg.set_group_topk(2);
  auto router = make_router(16, 16, 4, cfg, 3);
  auto r = router(torch::randn({200, 16}));
  auto groups_used = r.routed_TE.view({200, 4, 4}).any(-1).sum(-1);
  EXPECT_LE(groups_used.max().item<int64_t>(), 2);
  EXPECT_TRUE(torch::equal(r.routed_TE.sum(-1), torch::full({200}, 4, torch::kInt64)));
  // Without the limit the same router spreads over more groups.
  auto free = make_router(16, 16, 4, RoutingConfig(), 3)(torch::randn({200, 16}));
  EXPECT_GT(free.routed_TE.view({200, 4, 4}).any(-1).sum(-1).max().item<int64_t>(), 2);
}

// Group score = the sum of the group's best max(1, ⌊k/group_topk⌋) selection scores, not its maximum.
// k = 2, group_topk = 1: each group is scored by its best two. Logits (3, 0, 0, 0 | 2.5, 2.5, 0, 0):
// group 0 has the highest single score (e^3 > e^2.5), group 1 the highest sum of two (2·e^2.5 > e^3 + 1),
// so the sum routes the token to experts 4 and 5 and the maximum would route it to group 0. Scores
// are softmax(logits) (a common positive factor: the comparisons are those of the exponentials).
TEST(GroupLimited, GroupsAreScoredByTheSumOfTheirTopScoresNotTheirMaximum) {
  RoutingConfig cfg;
  cfg.set_num_groups(2);
  cfg.set_group_topk(1);
  RouterOptions o;
  o.d_model = 8, o.num_experts = 8, o.top_k = 2, o.routing = cfg;
  Router router(o);
  router->weight.data().copy_(torch::eye(8));                                  // logits = x
  auto x = torch::tensor({{3.0f, 0.0f, 0.0f, 0.0f, 2.5f, 2.5f, 0.0f, 0.0f},    // sum and maximum disagree
                          {3.0f, 1.0f, 0.0f, 0.0f, 2.5f, 0.0f, 0.0f, 0.0f}});  // both pick group 0
  ASSERT_GT(2 * std::exp(2.5), std::exp(3.0) + 1) << "the sum of the best two prefers group 1";
  auto r = router(x);
  EXPECT_EQ(selected(r, 0), (std::vector<int64_t>{4, 5})) << "group 1 by the sum of its best two scores";
  EXPECT_EQ(selected(r, 1), (std::vector<int64_t>{0, 1})) << "group 0 by both: the only group allowed";
  // Without the group limit token 0 takes the two highest scores, across the groups.
  Router free(RouterOptions{8, 8, 2, RoutingConfig()});
  free->weight.data().copy_(torch::eye(8));
  auto f = selected(free(x), 0);
  EXPECT_EQ(f.size(), 2u);
  EXPECT_EQ(f[0], 0);
}

TEST(ExpertChoice, EveryExpertTakesExactlyCTokens) {
  RoutingConfig cfg;
  cfg.set_router_type(RoutingConfig::EXPERT_CHOICE);
  cfg.set_expert_choice_factor(2.0);
  auto router = make_router(8, 4, 1, cfg);
  auto x = torch::randn({10, 8});
  auto r = router(x);
  const int64_t c = 5;  // ceil(10 · 2 / 4)
  EXPECT_TRUE(torch::equal(r.routed_TE.sum(0), torch::full({4}, c, torch::kInt64)));
  auto probs = torch::softmax(torch::matmul(x, router->weight.t()), -1);
  EXPECT_TRUE(torch::allclose(r.gates_TE, probs * r.routed_TE, 1e-6, 1e-7)) << "gate = the token's probability";
  // Each expert's tokens are its c highest-probability tokens.
  for (int64_t e = 0; e < 4; ++e) {
    const float lowest_taken = probs.select(1, e).masked_select(r.routed_TE.select(1, e)).min().item<float>();
    auto not_taken = probs.select(1, e).masked_select(r.routed_TE.select(1, e).logical_not());
    if (not_taken.numel()) {
      EXPECT_GE(lowest_taken, not_taken.max().item<float>());
    }
  }
}

TEST(Baselines, HashRoutingIsAFixedFunctionOfTheTokenId) {
  RoutingConfig cfg;
  cfg.set_router_type(RoutingConfig::HASH);
  auto router = make_router(8, 8, 2, cfg);
  auto ids = torch::tensor({5, 9, 5, 1000, 9}, torch::kInt64);
  auto a = router(torch::randn({5, 8}), ids), b = router(torch::randn({5, 8}), ids);
  EXPECT_TRUE(torch::equal(a.routed_TE, b.routed_TE)) << "independent of the hidden state";
  EXPECT_TRUE(torch::equal(a.routed_TE[0], a.routed_TE[2]));
  EXPECT_TRUE(torch::equal(a.routed_TE.sum(-1), torch::full({5}, 2, torch::kInt64)));
  EXPECT_TRUE(torch::allclose(a.gates_TE.sum(-1), torch::ones({5})));
}

// The hash is computed on the ids' device with int64 arithmetic standing in for uint64 (no host read):
// it must be splitmix64's finaliser exactly, as written here with unsigned integers on the host.
TEST(Baselines, HashRoutingIsSplitmix64OfTheTokenId) {
  auto splitmix_expert = [](uint64_t id, uint64_t E) {
    uint64_t z = id + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return static_cast<int64_t>(z % E);
  };
  auto ids = torch::cat({torch::arange(0, 2000, torch::kInt64),
                         torch::tensor({int64_t{1} << 31, int64_t{1} << 40, int64_t{151935}})});
  for (int64_t E : {4, 7, 64}) {
    RoutingConfig cfg;
    cfg.set_router_type(RoutingConfig::HASH);
    auto r = make_router(8, E, 2, cfg)(torch::randn({ids.size(0), 8}), ids);
    for (int64_t t = 0; t < ids.size(0); ++t) {
      const int64_t first = splitmix_expert(static_cast<uint64_t>(ids[t].item<int64_t>()),
                                            static_cast<uint64_t>(E));
      std::vector<int64_t> expected{std::min(first, (first + 1) % E), std::max(first, (first + 1) % E)};
      ASSERT_EQ(selected(r, t), expected) << "E " << E << ", id " << ids[t].item<int64_t>();
    }
  }
}

TEST(Baselines, RandomRoutingPicksKDistinctExperts) {
  RoutingConfig cfg;
  cfg.set_router_type(RoutingConfig::RANDOM);
  auto router = make_router(8, 8, 3, cfg);
  auto r = router(torch::randn({64, 8}));
  EXPECT_TRUE(torch::equal(r.routed_TE.sum(-1), torch::full({64}, 3, torch::kInt64)));
  EXPECT_GT(r.routed_TE.sum(0).min().item<int64_t>(), 0) << "every expert is drawn over 64 tokens";
}

TEST(AuxLoss, UniformRouterGivesExactlyOne) {
  // Every probability is 1/E. With E and T·k powers of two every operation is exact.
  for (int64_t E : {2, 4, 8, 16}) {
    auto probs = torch::softmax(torch::zeros({16, E}), -1);
    auto routed = torch::zeros({16, E}, torch::kBool)
                      .scatter_(1, std::get<1>(torch::rand({16, E}).topk(2, -1)), true);
    EXPECT_EQ(switch_aux_loss(probs, routed, 2).item<float>(), 1.0f) << E;
  }
  // Otherwise 1/E is rounded once: within two float ulps of 1.
  auto probs = torch::softmax(torch::zeros({10, 6}), -1);
  auto routed = torch::zeros({10, 6}, torch::kBool).scatter_(1, std::get<1>(torch::rand({10, 6}).topk(2, -1)), true);
  // (Otherwise — E = 6, T·k = 20 — 1/E and f_i are rounded:)
  EXPECT_NEAR(switch_aux_loss(probs, routed, 2).item<float>(), 1.0f, 2.4e-7f);
}

TEST(AuxLoss, MatchesDefinitionOnKnownNumbers) {
  // T = 2, E = 2, k = 1: both tokens → expert 0; f = (1, 0), P = (0.675, 0.325): L = 2 · 0.675 = 1.35.
  auto probs = torch::tensor({{0.75f, 0.25f}, {0.6f, 0.4f}});
  auto routed = torch::tensor({{true, false}, {true, false}});
  EXPECT_NEAR(switch_aux_loss(probs, routed, 1).item<float>(), 1.35f, 1e-6);
}

TEST(AuxLoss, SequenceLossEqualsMicroBatchLossAtBatchSizeOne) {
  torch::manual_seed(0);
  auto probs = torch::softmax(torch::randn({1, 12, 4}), -1);
  auto routed = torch::zeros({1, 12, 4}, torch::kBool).scatter_(2, std::get<1>(probs.topk(2, -1)), true);
  EXPECT_EQ(sequence_aux_loss(probs, routed, 2).item<float>(),
            switch_aux_loss(probs[0], routed[0], 2).item<float>());
  // With two sequences it is the mean of the per-sequence losses.
  auto p2 = torch::softmax(torch::randn({2, 6, 4}), -1);
  auto r2 = torch::zeros({2, 6, 4}, torch::kBool).scatter_(2, std::get<1>(p2.topk(2, -1)), true);
  const float mean = (switch_aux_loss(p2[0], r2[0], 2) + switch_aux_loss(p2[1], r2[1], 2)).item<float>() / 2;
  EXPECT_NEAR(sequence_aux_loss(p2, r2, 2).item<float>(), mean, 1e-6);
}

TEST(AuxLoss, GlobalLossUsesTheGivenCountsAndLocalProbabilities) {
  auto probs = torch::tensor({{0.5f, 0.5f}, {0.9f, 0.1f}});
  // counts from 8 tokens, k = 1: f = (6/8, 2/8); P = (0.7, 0.3): L = 2 · (0.75·0.7 + 0.25·0.3) = 1.2.
  EXPECT_NEAR(global_aux_loss(probs, torch::tensor({6, 2}), 8, 1).item<float>(), 1.2f, 1e-6);
}

TEST(ZLoss, KnownLogits) {
  // logsumexp(0, 0) = ln 2, logsumexp(ln 3, 0) = ln 4: z = (ln²2 + ln²4) / 2.
  auto logits = torch::tensor({{0.0f, 0.0f}, {std::log(3.0f), 0.0f}});
  const double expected = (std::pow(std::log(2.0), 2) + std::pow(std::log(4.0), 2)) / 2;
  EXPECT_NEAR(router_z_loss(logits).item<float>(), expected, 1e-6);
}

TEST(BiasBalancing, UpdateMovesEachBiasByExactlyURateTowardsTheMean) {
  auto bias = torch::tensor({0.5f, 0.0f, -0.25f, 0.0f});
  update_expert_bias(bias, torch::tensor({10, 2, 4, 4}), 1e-3);  // mean 5
  auto expected = torch::tensor({0.5f - 1e-3f, 0.0f + 1e-3f, -0.25f + 1e-3f, 0.0f + 1e-3f});
  EXPECT_TRUE(torch::equal(bias, expected));
  auto balanced = torch::zeros({3});
  update_expert_bias(balanced, torch::tensor({4, 4, 4}), 1e-3);
  EXPECT_TRUE(torch::equal(balanced, torch::zeros({3}))) << "sign(0) = 0: no move at the mean";
}

TEST(BiasBalancing, ProportionalUpdateMovesEachBiasByURateTimesTheRelativeError) {
  auto bias = torch::tensor({0.5f, 0.0f, -0.25f, 0.0f});
  update_expert_bias(bias, torch::tensor({10, 2, 4, 4}), 1e-3, RoutingConfig::PROPORTIONAL);  // mean 5
  auto expected = torch::tensor({0.5f - 1e-3f, 0.0f + 0.6f * 1e-3f, -0.25f + 0.2f * 1e-3f, 0.0f + 0.2f * 1e-3f});
  EXPECT_TRUE(torch::allclose(bias, expected, 0, 1e-7)) << bias;
  auto none = torch::zeros({3});
  update_expert_bias(none, torch::zeros({3}, torch::kInt64), 1e-3, RoutingConfig::PROPORTIONAL);
  EXPECT_TRUE(torch::equal(none, torch::zeros({3}))) << "nothing routed: no move (and no division by zero)";
}

TEST(BiasBalancing, BiasChangesSelectionButNotTheGateOfASelectedExpert) {
  RoutingConfig cfg;
  cfg.set_bias_update_rate(1e-3);
  cfg.set_normalize_gates(false);
  auto router = make_router(8, 4, 1, cfg);
  auto x = torch::randn({6, 8});
  auto before = router(x);
  const int64_t e0 = selected(before, 0)[0];
  router->expert_bias.fill_(0);
  router->expert_bias[(e0 + 1) % 4] = 10.0f;  // a large bias makes expert e0+1 win everywhere
  auto after = router(x);
  EXPECT_EQ(selected(after, 0)[0], (e0 + 1) % 4);
  auto probs = torch::softmax(torch::matmul(x, router->weight.t()), -1);
  EXPECT_TRUE(torch::allclose(after.gates_TE, probs * after.routed_TE, 1e-6, 1e-7))
      << "gates from unbiased scores";
  EXPECT_TRUE(torch::equal(after.probs_TE, before.probs_TE)) << "aux-loss probabilities unchanged";
}

// A bias learned while pretraining takes part in selection whatever the current update rate: fine-tuning
// recipes set the rate to 0 (no further updates), and must route as the pretrained model did.
TEST(BiasBalancing, ALearnedBiasSelectsEvenWhenTheUpdateRateIsZero) {
  RoutingConfig cfg;
  cfg.set_bias_update_rate(0);
  auto router = make_router(8, 4, 1, cfg);
  auto x = torch::randn({6, 8});
  const int64_t e0 = selected(router(x), 0)[0];
  router->expert_bias.fill_(0);
  router->expert_bias[(e0 + 1) % 4] = 10.0f;
  auto after = router(x);
  for (int64_t t = 0; t < 6; ++t) EXPECT_EQ(selected(after, t)[0], (e0 + 1) % 4) << "token " << t;
}

TEST(Capacity, FormulaWithMinimum) {
  EXPECT_EQ(expert_capacity(0.0, 100, 2, 8, 4), 0) << "0 = dropless";
  EXPECT_EQ(expert_capacity(1.0, 100, 2, 8, 0), 25);
  EXPECT_EQ(expert_capacity(1.25, 100, 2, 8, 0), 32);  // ceil(31.25)
  EXPECT_EQ(expert_capacity(0.1, 100, 2, 8, 4), 4);    // max(ceil(2.5), 4)
}

TEST(Capacity, ProbsPolicyKeepsTheHighestGates) {
  RoutingConfig cfg;
  cfg.set_capacity_factor(0.5);    // T = 8, k = 1, E = 2: capacity 2
  cfg.set_normalize_gates(false);  // Switch's top-1 gate: the probability itself
  auto router = make_router(8, 2, 1, cfg, 5);
  auto x = torch::randn({8, 8});
  auto r = router(x);
  ASSERT_EQ(r.capacity, 2);
  auto probs = torch::softmax(torch::matmul(x, router->weight.t()), -1);  // = the gates of the routed pairs
  for (int64_t e = 0; e < 2; ++e) {
    auto routed = r.routed_TE.select(1, e), kept = r.kept_TE.select(1, e);
    EXPECT_EQ(kept.sum().item<int64_t>(), std::min<int64_t>(2, routed.sum().item<int64_t>()));
    auto dropped = routed.logical_and(kept.logical_not());
    if (dropped.any().item<bool>()) {
      EXPECT_GE(probs.select(1, e).masked_select(kept).min().item<float>(),
                probs.select(1, e).masked_select(dropped).max().item<float>());
    }
  }
  EXPECT_TRUE(torch::equal(r.gates_TE > 0, r.kept_TE)) << "dropped pairs have gate 0";
}

// The probs policy ranks by the final gate (after normalisation and scaling), as Megatron-Core does,
// not by the raw score. Two tokens, E = 3, k = 2, both routed to expert 0; capacity 1 = ⌈0.5·2·2/3⌉.
// Raw scores prefer token A on expert 0, the normalised gates prefer token B:
//   softmax  A: p = (0.50, 0.45, 0.05) → experts {0, 1}, gates 0.50/0.95 = 0.5263, 0.45/0.95 = 0.4737
//            B: p = (0.45, 0.25, 0.30) → experts {0, 2}, gates 0.45/0.75 = 0.6,    0.30/0.75 = 0.4
//   sigmoid  A: s = (0.9, 0.85, 0.1)   → experts {0, 1}, gates 0.9/1.75 = 0.5143,  0.85/1.75 = 0.4857
//            B: s = (0.8, 0.2, 0.3)    → experts {0, 2}, gates 0.8/1.1 = 0.7273,   0.3/1.1 = 0.2727
// Expert 0 keeps B (the higher gate) and drops A; experts 1 and 2 have one pair each and keep it.
TEST(Capacity, ProbsPolicyRanksByTheFinalGateNotTheRawScore) {
  struct Case {
    const char* name;
    RoutingConfig::ScoreFunction score;
    RoutingConfig::TopKOrder order;
    std::vector<float> a, b;   // scores of tokens A and B
    std::vector<float> gates;  // expected gates (A then B) before scaling
  };
  const std::vector<Case> cases = {
      {"softmax, normalised",
       RoutingConfig::SOFTMAX,
       RoutingConfig::SOFTMAX_THEN_TOPK,
       {0.5f, 0.45f, 0.05f},
       {0.45f, 0.25f, 0.3f},
       {0, 0.45f / 0.95f, 0, 0.45f / 0.75f, 0, 0.3f / 0.75f}},
      {"softmax over the selected",
       RoutingConfig::SOFTMAX,
       RoutingConfig::TOPK_THEN_SOFTMAX,
       {0.5f, 0.45f, 0.05f},
       {0.45f, 0.25f, 0.3f},
       {0, 0.45f / 0.95f, 0, 0.45f / 0.75f, 0, 0.3f / 0.75f}},
      {"sigmoid, normalised",
       RoutingConfig::SIGMOID,
       RoutingConfig::SOFTMAX_THEN_TOPK,
       {0.9f, 0.85f, 0.1f},
       {0.8f, 0.2f, 0.3f},
       {0, 0.85f / 1.75f, 0, 0.8f / 1.1f, 0, 0.3f / 1.1f}},
  };
  for (const auto& c : cases) {
    RoutingConfig cfg;
    cfg.set_score_function(c.score);
    cfg.set_topk_order(c.order);
    cfg.set_capacity_factor(0.5);
    cfg.set_gate_scale(2.0);  // scaling keeps the order; the kept gates are scaled
    auto router = make_router(3, 3, 2, cfg);
    router->weight.data().copy_(torch::eye(3));  // logits = x
    auto s = torch::stack({torch::tensor(c.a), torch::tensor(c.b)});
    auto x = c.score == RoutingConfig::SIGMOID ? torch::log(s / (1 - s)) : torch::log(s);  // scores = s
    auto r = router(x);
    ASSERT_EQ(r.capacity, 1) << c.name;
    ASSERT_GT(s[0][0].item<float>(), s[1][0].item<float>()) << "the raw score prefers token A on expert 0";
    auto routed = torch::tensor({true, true, false, true, false, true}).view({2, 3});
    auto kept = torch::tensor({false, true, false, true, false, true}).view({2, 3});
    EXPECT_TRUE(torch::equal(r.routed_TE, routed)) << c.name;
    EXPECT_TRUE(torch::equal(r.kept_TE, kept)) << c.name << ": expert 0 keeps token B, whose gate is higher";
    auto gates = torch::tensor(c.gates).view({2, 3}) * 2.0;
    EXPECT_TRUE(torch::allclose(r.gates_TE, gates, 1e-5, 1e-6)) << c.name << "\n" << r.gates_TE;
  }
}

TEST(Capacity, PositionPolicyKeepsTheEarliestTokens) {
  RoutingConfig cfg;
  cfg.set_capacity_factor(0.5);
  cfg.set_drop_policy(RoutingConfig::POSITION);
  auto router = make_router(8, 2, 1, cfg, 5);
  auto r = router(torch::randn({8, 8}));
  for (int64_t e = 0; e < 2; ++e) {
    auto routed_tokens = r.routed_TE.select(1, e).nonzero().view({-1});
    auto kept_tokens = r.kept_TE.select(1, e).nonzero().view({-1});
    const int64_t n = std::min<int64_t>(2, routed_tokens.numel());
    EXPECT_TRUE(torch::equal(kept_tokens, routed_tokens.narrow(0, 0, n))) << e;
  }
}

TEST(Capacity, EvaluationUsesItsOwnFactor) {
  RoutingConfig cfg;
  cfg.set_capacity_factor(0.5);
  cfg.set_eval_capacity_factor(0);
  auto router = make_router(8, 2, 1, cfg);
  auto x = torch::randn({8, 8});
  EXPECT_EQ(router(x).capacity, 2);
  router->eval();
  auto r = router(x);
  EXPECT_EQ(r.capacity, 0);
  EXPECT_TRUE(torch::equal(r.kept_TE, r.routed_TE));
}

TEST(Measures, MaxViolationAndEntropy) {
  EXPECT_DOUBLE_EQ(max_violation(torch::tensor({4, 4, 4, 4})), 0.0);
  EXPECT_DOUBLE_EQ(max_violation(torch::tensor({10, 2, 4, 4})), 1.0);  // (10 − 5) / 5
  EXPECT_NEAR(router_entropy(torch::full({3, 4}, 0.25f)).item<double>(), std::log(4.0), 1e-7);
}

TEST(Balancing, SequenceLossSharesOfTokenSlicesAddUpToTheWholeLoss) {
  // 2 sequences of 6 tokens split over 3 "ranks" of 4 consecutive tokens (slices cross sequences), as
  // the sequence-parallel MoE splits a micro-batch under tensor parallelism.
  torch::manual_seed(5);
  const int64_t B = 2, S = 6, E = 4, k = 2, ranks = 3, Tl = B * S / ranks;
  auto logits = torch::randn({B * S, E}, torch::requires_grad());
  auto probs = torch::softmax(logits, -1);
  auto routed = torch::zeros({B * S, E}, torch::kInt64).scatter_(1, std::get<1>(probs.topk(k, -1)), 1);
  auto whole = sequence_aux_loss(probs.view({B, S, E}), routed.view({B, S, E}), k);
  auto seq_T = torch::arange(B * S, torch::kInt64).div(S, "floor");
  auto counts_BE = torch::zeros({B, E}, torch::kInt64).index_add(0, seq_T, routed);  // what the tp all-reduce gives
  auto shares = torch::zeros({});
  for (int64_t r = 0; r < ranks; ++r) {
    shares = shares + sequence_aux_loss_share(probs.narrow(0, r * Tl, Tl), seq_T.narrow(0, r * Tl, Tl),
                                              counts_BE, S, k);
  }
  EXPECT_NEAR(shares.item<double>(), whole.item<double>(), 1e-6);
  auto g_whole = torch::autograd::grad({whole}, {logits}, {}, true)[0];
  auto g_shares = torch::autograd::grad({shares}, {logits})[0];
  EXPECT_TRUE(torch::allclose(g_whole, g_shares, 1e-6, 1e-7));
}

namespace {

MoEOptions layer_options(int64_t experts, int64_t top_k, const RoutingConfig& cfg) {
  MoEOptions o;
  o.d_model = 8, o.num_experts = experts, o.top_k = top_k, o.expert_hidden = 16;
  o.routing = cfg;
  return o;
}

}  // namespace

// The coefficient as the MoE layer applies it: a uniform router (zero router weights: every p = 1/E)
// gives each balancing loss exactly 1, so the layer's aux loss is exactly α, compared with == against
// α rounded once to fp32 (0 ulp). T = 2·4 tokens, k = 2, E = 8: every f_i, P_i and sum is a dyadic
// fraction, so nothing else is rounded.
TEST(AuxLoss, UniformRouterMoELayerGivesExactlyTheCoefficient) {
  torch::manual_seed(0);
  auto x = torch::randn({2, 4, 8});
  for (double alpha : {0.01, 0.001, 1e-4, 0.3}) {
    for (int which = 0; which < 3; ++which) {  // micro-batch, sequence, global batch
      RoutingConfig cfg;
      cfg.set_aux_loss_coeff(which == 0 ? alpha : 0.0);
      cfg.set_seq_aux_loss_coeff(which == 1 ? alpha : 0.0);
      cfg.set_global_aux_loss_coeff(which == 2 ? alpha : 0.0);
      MoELayer layer(layer_options(8, 2, cfg));
      layer->router->weight.data().zero_();
      auto out = layer(x);
      EXPECT_EQ(out.aux_loss.item<float>(), static_cast<float>(alpha))
          << "alpha " << alpha << ", loss " << which;
      EXPECT_EQ(out.measures.aux_loss.item<float>(), static_cast<float>(alpha));
      EXPECT_EQ(out.z_loss.item<float>(), 0.0f);
    }
  }
}

// What can go wrong under expert choice is not load (every expert takes c tokens) but tokens that no
// expert chooses. Sigmoid scores with every router row = e_0: each expert scores the tokens by x[0]
// alone, so with T = 4, E = 2, factor 1 (c = 2) both experts choose tokens 0 and 1, and tokens 2 and 3
// get no expert. Under token choice the same measure counts tokens whose every pair was dropped.
TEST(ExpertChoice, UnchosenTokensAreCounted) {
  auto x = torch::zeros({1, 4, 8});
  x[0].select(1, 0).copy_(torch::tensor({2.0f, 3.0f, -1.0f, -2.0f}));
  RoutingConfig ec;
  ec.set_router_type(RoutingConfig::EXPERT_CHOICE);
  ec.set_score_function(RoutingConfig::SIGMOID);
  ec.set_aux_loss_coeff(0);
  MoELayer choice(layer_options(2, 1, ec));
  choice->router->weight.data().zero_();
  choice->router->weight.data().select(1, 0).fill_(1.0f);
  auto s = choice(x).measures;
  EXPECT_EQ(s.tokens.item<int64_t>(), 4);
  EXPECT_EQ(s.unchosen_tokens.item<int64_t>(), 2) << "tokens 2 and 3";
  EXPECT_EQ(s.dropped_pairs.item<int64_t>(), 0) << "expert choice drops nothing: dropped_frac cannot see it";
  EXPECT_TRUE(torch::equal(choice->step_measures()[kUnchosenTokens], torch::tensor(2.0, torch::kFloat64)));

  // Token choice, top-1, every token prefers expert 0, capacity 1 (factor 0.5 · 4 · 1 / 2), position
  // policy: token 0 keeps expert 0, tokens 1..3 lose their only pair.
  RoutingConfig tc;
  tc.set_capacity_factor(0.5);
  tc.set_drop_policy(RoutingConfig::POSITION);
  tc.set_normalize_gates(false);
  MoELayer capped(layer_options(2, 1, tc));
  capped->router->weight.data().zero_();
  capped->router->weight.data()[0][0] = 1.0f;
  x[0].select(1, 0).copy_(torch::tensor({2.0f, 3.0f, 1.0f, 4.0f}));
  EXPECT_EQ(capped(x).measures.unchosen_tokens.item<int64_t>(), 3);
  // Dropless top-2: every token has its two experts.
  MoELayer dropless(layer_options(4, 2, RoutingConfig()));
  EXPECT_EQ(dropless(torch::randn({2, 5, 8})).measures.unchosen_tokens.item<int64_t>(), 0);
}

namespace {

// A one-rank parallel context that counts the count sums the MoE layer asks for.
struct CountingContext : moetrain::moe::MoEParallelContext {
  mutable int micro_batch_sums = 0, global_batch_sums = 0;
  torch::Tensor sum_over_micro_batch(const torch::Tensor& t) const override {
    ++micro_batch_sums;
    return t;
  }
  torch::Tensor sum_over_global_batch(const torch::Tensor& t) const override {
    ++global_batch_sums;
    return t;
  }
};

}  // namespace

// Balancing losses are training losses. In evaluation the layer computes none and asks for none of
// their count all-reduces (tp sums of the Switch and sequence losses, dp sum of the global loss); the
// evaluation forward leaves the step's global-batch counts alone.
TEST(AuxLoss, EvaluationComputesNoBalancingLossAndNoCountCollective) {
  RoutingConfig cfg;
  cfg.set_aux_loss_coeff(0.01), cfg.set_seq_aux_loss_coeff(0.01), cfg.set_global_aux_loss_coeff(0.01);
  cfg.set_z_loss_coeff(1e-3);
  torch::manual_seed(3);
  MoELayer layer(layer_options(4, 2, cfg));
  auto context = std::make_shared<CountingContext>();
  layer->set_parallel_context(context);
  const TokenSlice slice{2, 3, 0};  // the whole micro-batch of 2 sequences × 3 tokens
  auto x = torch::randn({2, 3, 8});

  auto train = layer->forward(x, {}, slice);
  EXPECT_GT(train.aux_loss.item<float>(), 0.0f);
  EXPECT_GT(train.z_loss.item<float>(), 0.0f);
  EXPECT_EQ(context->micro_batch_sums, 2) << "Switch and sequence losses each sum their counts over tp";
  EXPECT_EQ(context->global_batch_sums, 1) << "the global-batch loss sums its counts over dp";
  layer->eval();
  auto eval = layer->forward(x, {}, slice);
  EXPECT_EQ(eval.aux_loss.item<float>(), 0.0f);
  EXPECT_EQ(eval.z_loss.item<float>(), 0.0f);
  EXPECT_EQ(context->micro_batch_sums, 2) << "no count all-reduce in evaluation";
  EXPECT_EQ(context->global_batch_sums, 1) << "no count all-reduce in evaluation";
  // The next training forward sees the step's counts of the training forwards only: the global loss of
  // a second identical micro-batch equals the one of a fresh layer that saw the same two.
  layer->train();
  auto second = layer->forward(x, {}, slice);
  layer->end_step(layer->step_counts().clone());
  auto again_first = layer->forward(x, {}, slice);
  auto again_second = layer->forward(x, {}, slice);
  EXPECT_EQ(second.aux_loss.item<float>(), again_second.aux_loss.item<float>());
  EXPECT_EQ(train.aux_loss.item<float>(), again_first.aux_loss.item<float>());
}

// The trainer's bias update path: MoELayer::end_step with the step's counts, after the optimizer step.
// u = 2^-10 and biases that are multiples of 2^-3 make b ± u exact in fp32, so each move is exactly ±u.
TEST(BiasBalancing, EndStepMovesEachBiasByExactlyUAndLeavesRouterAndGatesAlone) {
  const double u = 1.0 / 1024;
  RoutingConfig cfg;
  cfg.set_aux_loss_coeff(0);
  cfg.set_bias_update_rate(u);
  cfg.set_normalize_gates(false);  // each gate is its pair's probability: comparable pair by pair
  torch::manual_seed(2);
  MoELayer layer(layer_options(4, 2, cfg));
  for (auto& p : layer->parameters()) p.data().normal_(0, 0.3);
  layer->router->expert_bias.copy_(torch::tensor({0.5f, 0.0f, -0.25f, 0.125f}));
  auto x1 = torch::randn({2, 6, 8}), x2 = torch::randn({2, 6, 8});
  auto c1 = layer(x1).measures.tokens_per_expert_E,
       c2 = layer(x2).measures.tokens_per_expert_E;  // two micro-batches
  const auto counts = layer->step_counts().clone();
  ASSERT_TRUE(torch::equal(counts, c1 + c2)) << "the step's load: every micro-batch's routed pairs";

  const auto x_TD = x1.reshape({-1, 8});
  const auto before = layer->router(x_TD);
  const auto bias_before = layer->router->expert_bias.clone();
  layer->end_step(counts);
  const auto after = layer->router(x_TD);

  const double mean = counts.to(torch::kFloat64).mean().item<double>();
  int64_t up = 0, down = 0;
  for (int64_t e = 0; e < 4; ++e) {
    const double c = counts[e].item<int64_t>();
    const float moved = layer->router->expert_bias[e].item<float>() - bias_before[e].item<float>();
    const float expected = c < mean ? static_cast<float>(u) : c > mean ? -static_cast<float>(u) : 0.0f;
    EXPECT_EQ(moved, expected) << "expert " << e << ": count " << c << ", mean " << mean;
    up += c<mean, down += c> mean;
  }
  EXPECT_GT(up, 0);
  EXPECT_GT(down, 0);
  EXPECT_TRUE(torch::equal(layer->step_counts(), torch::zeros({4}, torch::kInt64)))
      << "the step's counts reset";

  EXPECT_TRUE(torch::equal(after.probs_TE, before.probs_TE));
  auto both = before.routed_TE.logical_and(after.routed_TE);  // pairs selected before and after the update
  ASSERT_GT(both.sum().item<int64_t>(), 0);
  EXPECT_TRUE(torch::equal(after.gates_TE.masked_select(both), before.gates_TE.masked_select(both)))
      << "the gate of a selected pair does not depend on the bias";
  EXPECT_TRUE(torch::equal(after.gates_TE, before.probs_TE * after.routed_TE))
      << "gates from the unbiased scores";

  // A frozen router freezes the bias too.
  const auto bias_mid = layer->router->expert_bias.clone();
  layer->set_router_frozen(true);
  layer->end_step(torch::tensor({10, 2, 4, 4}));
  EXPECT_TRUE(torch::equal(layer->router->expert_bias, bias_mid));
}

// The trainer builds its AdamW groups from model.parameters() (weight decay on the matrices, none on
// 1-D tensors). The expert bias must be in neither: a buffer, saved with the model, never optimised
// nor decayed. Checked on a whole model, with the same grouping and a real AdamW step.
TEST(BiasBalancing, ExpertBiasIsABufferNotAParameter) {
  moetrain::config::ModelConfig m;
  m.set_vocab_size(64), m.set_d_model(16), m.set_num_layers(2), m.set_num_heads(2), m.set_ffn_hidden(32);
  m.set_num_experts(4), m.set_top_k(2), m.set_moe_ffn_hidden(16), m.set_moe_layer_freq(1);
  RoutingConfig cfg;
  cfg.set_bias_update_rate(1e-3);
  torch::manual_seed(4);
  moetrain::model::Transformer model(moetrain::model::TransformerOptions::from_recipe(m, cfg));
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.normal_(0, 0.1);
  }
  const auto layers = model->moe_layers();
  ASSERT_EQ(layers.size(), 2u);
  auto buffers = model->named_buffers();
  for (size_t l = 0; l < layers.size(); ++l) {
    auto& bias = layers[l]->router->expert_bias;
    bias.copy_(torch::tensor({0.01f, -0.02f, 0.03f, -0.04f}));
    EXPECT_FALSE(bias.requires_grad());
    for (const auto& p : model->parameters()) EXPECT_FALSE(p.is_same(bias)) << "layer " << l;
    const std::string key = "layers." + std::to_string(l) + ".moe.router.expert_bias";
    ASSERT_TRUE(buffers.contains(key)) << key;
    EXPECT_TRUE(buffers[key].is_same(bias)) << key;
  }
  // That AdamW (trainer::make_optimizer) never moves it: Optimizer.ARealStepLeavesTheExpertBiasesBitwiseAlone.
}
