// The hot-path contract of docs/routing.md ("Host reads"), checked on the CPU: with one expert-parallel
// rank an MoE layer's forward and backward read nothing of the device on the host, whatever the routing
// and capacity; the reads that remain go through util::read_to_host, which counts them. Also: the
// device-side pieces that replaced host reads give the results of the host versions.
#include <gtest/gtest.h>

#include "csrc/moe/dispatch.h"
#include "csrc/moe/moe_layer.h"
#include "csrc/util/host_sync.h"

using namespace moetrain::moe;
using moetrain::config::RoutingConfig;
using moetrain::util::HostReadCount;

namespace {

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

MoELayer layer_with(const RoutingConfig& cfg, int64_t shared_hidden = 0) {
  MoEOptions o;
  o.d_model = 8, o.num_experts = 4, o.top_k = 2, o.expert_hidden = 16, o.shared_hidden = shared_hidden;
  o.routing = cfg;
  torch::manual_seed(7);
  MoELayer layer(o);
  for (auto& p : layer->parameters()) p.data().normal_(0, 0.3);
  return layer;
}

}  // namespace

TEST(HostReads, TheHelperCountsAndNamesEveryReadInNestedScopes) {
  HostReadCount outer;
  auto t = torch::arange(3);
  {
    HostReadCount inner;
    EXPECT_TRUE(torch::equal(moetrain::util::read_to_host(t, "first"), t));
    EXPECT_EQ(inner.reads(), 1);
  }
  moetrain::util::read_to_host(t, "second");
  EXPECT_EQ(outer.reads(), 2);
  EXPECT_EQ(joined(outer.names()), "first, second");
}

// EP = 1: zero reads per layer forward + backward, dropless, capped (capacity without padding) and
// padded; with every balancing loss; and for the routers that build their routing differently.
TEST(HostReads, NoneInALayerForwardAndBackwardWithOneExpertRank) {
  struct Case {
    const char* name;
    RoutingConfig cfg;
  };
  std::vector<Case> cases;
  auto add = [&](const char* name, auto&& set) {
    RoutingConfig cfg;
    set(cfg);
    cases.push_back({name, cfg});
  };
  add("dropless top-k, every loss", [](RoutingConfig& c) {
    c.set_aux_loss_coeff(0.01), c.set_seq_aux_loss_coeff(0.01), c.set_global_aux_loss_coeff(0.01),
        c.set_z_loss_coeff(1e-3);
  });
  add("padded capacity", [](RoutingConfig& c) { c.set_capacity_factor(1.0), c.set_pad_to_capacity(true); });
  add("capacity without padding", [](RoutingConfig& c) { c.set_capacity_factor(1.0); });
  add("position drops, sigmoid, groups", [](RoutingConfig& c) {
    c.set_capacity_factor(1.25), c.set_drop_policy(RoutingConfig::POSITION),
        c.set_score_function(RoutingConfig::SIGMOID);
    c.set_num_groups(2), c.set_group_topk(1), c.set_jitter_eps(0.01);
  });
  add("expert choice", [](RoutingConfig& c) { c.set_router_type(RoutingConfig::EXPERT_CHOICE); });
  add("hash", [](RoutingConfig& c) { c.set_router_type(RoutingConfig::HASH), c.set_aux_loss_coeff(0); });
  add("random", [](RoutingConfig& c) { c.set_router_type(RoutingConfig::RANDOM), c.set_aux_loss_coeff(0); });
  for (const auto& c : cases) {
    MoELayer layer = layer_with(c.cfg, /*shared_hidden=*/16);
    auto x = torch::randn({2, 6, 8}, torch::requires_grad());
    auto ids = torch::randint(0, 1000, {2, 6}, torch::kInt64);
    HostReadCount count;
    auto out = layer(x, ids);
    (out.y.square().sum() + out.aux_loss + out.z_loss).backward();
    EXPECT_EQ(count.reads(), 0) << c.name << ": " << joined(count.names());
    EXPECT_TRUE(x.grad().isfinite().all().item<bool>()) << c.name;
  }
}

// Capacity without padding: the rows past the kept pairs are not computed (the grouped GEMM leaves
// them undefined, and their input gradient too). Poisoned with NaN here, they reach neither the output
// nor the input gradient, and the result equals that of a layout with exactly the kept rows.
TEST(Dispatch, UnusedRowsOfACappedLayoutReachNeitherOutputNorGradient) {
  torch::manual_seed(0);
  auto kept = torch::tensor({{1, 0, 0}, {1, 1, 0}, {0, 1, 0}, {1, 0, 0}, {0, 0, 0}, {0, 1, 0}},
                            torch::kBool);  // 6 kept
  auto gates = torch::rand({6, 3}) * kept;
  auto x = torch::randn({6, 8}, torch::requires_grad());
  auto x_exact = x.detach().clone().requires_grad_();
  LocalDispatcher capped(3), exact(3);
  auto a = capped.dispatch(x, kept, RowLayout::capped(10));
  auto b = exact.dispatch(x_exact, kept, RowLayout::dropless(6));
  ASSERT_EQ(a.tokens_ND.size(0), 10);
  EXPECT_TRUE(torch::equal(a.tokens_per_expert_El, b.tokens_per_expert_El));
  EXPECT_TRUE(torch::equal(a.tokens_ND.narrow(0, 0, 6), b.tokens_ND));
  // A per-row "expert" whose unused rows come out NaN in value and in input gradient.
  auto nan_tail = [](const torch::Tensor& rows) {
    auto poison = torch::zeros({rows.size(0), 1});
    poison.narrow(0, 6, rows.size(0) - 6).fill_(std::nanf(""));
    auto in = rows.view_as(rows);
    in.register_hook([poison](torch::Tensor g) { return g + poison; });
    return in * 2 + 1 + poison;
  };
  auto ya = capped.combine(nan_tail(a.tokens_ND), gates);
  auto yb = exact.combine(b.tokens_ND * 2 + 1, gates);
  EXPECT_TRUE(torch::equal(ya, yb));
  auto g = torch::randn_like(ya);
  (ya * g).sum().backward();
  (yb * g).sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), x_exact.grad()));
}

// The step's sums on the device: what the trainer reads once per step.
TEST(MoELayer, StepMeasuresSumTheTrainingForwardsAndResetAtEndStep) {
  RoutingConfig cfg;
  cfg.set_aux_loss_coeff(0.01), cfg.set_z_loss_coeff(1e-3), cfg.set_capacity_factor(0.5);
  MoELayer layer = layer_with(cfg);
  auto a = layer(torch::randn({2, 6, 8})).measures, b = layer(torch::randn({2, 6, 8})).measures;
  layer->eval();
  layer(torch::randn({2, 6, 8}));  // evaluation forwards are not the step's
  layer->train();
  ASSERT_EQ(layer->step_forwards(), 2);
  auto m = layer->step_measures();
  auto f64 = [](const torch::Tensor& t) { return t.to(torch::kFloat64); };
  EXPECT_TRUE(torch::equal(m[kRoutedPairs], f64(a.routed_pairs + b.routed_pairs)));
  EXPECT_TRUE(torch::equal(m[kDroppedPairs], f64(a.dropped_pairs + b.dropped_pairs)));
  EXPECT_GT(m[kDroppedPairs].item<double>(), 0) << "capacity 0.5 drops";
  EXPECT_TRUE(torch::allclose(m[kEntropySum], a.entropy + b.entropy));
  EXPECT_TRUE(torch::allclose(m[kAuxLossSum], f64(a.aux_loss) + f64(b.aux_loss)));
  EXPECT_TRUE(torch::allclose(m[kZLossSum], f64(a.z_loss) + f64(b.z_loss)));
  EXPECT_EQ(m[kTokens].item<double>(), 2 * 12) << "two training forwards of 2 × 6 tokens";
  EXPECT_TRUE(torch::equal(m[kUnchosenTokens], f64(a.unchosen_tokens + b.unchosen_tokens)));
  EXPECT_TRUE(torch::equal(layer->step_counts(), a.tokens_per_expert_E + b.tokens_per_expert_E));
  layer->end_step(layer->step_counts().clone());
  EXPECT_EQ(layer->step_forwards(), 0);
  EXPECT_TRUE(torch::equal(layer->step_measures(), torch::zeros({kNumStepMeasures}, torch::kFloat64)));
}
