// MoE layer pieces against independent formulas: gating, aux loss, dispatch round trip, grouped experts.
#include <gtest/gtest.h>

#include "csrc/moe/moe_layer.h"

using namespace moetrain::moe;

namespace {

// Reference expert: one SwiGLU with expert e's weights, computed directly.
torch::Tensor expert_reference(GroupedExpertsImpl& ex, int64_t e, const torch::Tensor& x_ND) {
  return torch::matmul(torch::silu(torch::matmul(x_ND, ex.w1_EDF[e])) * torch::matmul(x_ND, ex.w3_EDF[e]), ex.w2_EFD[e]);
}

MoEOptions small_options() {
  MoEOptions o;
  o.d_model = 8, o.num_experts = 4, o.top_k = 2, o.expert_hidden = 16, o.aux_loss_coeff = 0.01;
  return o;
}

}  // namespace

TEST(Router, GatesSumToOneAndEqualSoftmaxOverSelectedLogits) {
  torch::manual_seed(0);
  TopKRouter router(8, 5, 2);
  router->weight.data().normal_();
  auto x = torch::randn({7, 8});
  auto out = router(x);
  EXPECT_TRUE(torch::allclose(out.gates_TK.sum(-1), torch::ones({7}), 0, 1e-6));
  auto logits = torch::matmul(x, router->weight.t());
  auto selected_logits = logits.gather(1, out.expert_idx_TK);
  EXPECT_TRUE(torch::allclose(out.gates_TK, torch::softmax(selected_logits, -1), 1e-6, 1e-6));
  EXPECT_TRUE(torch::equal(out.routing_map_TE.sum(-1), torch::full({7}, 2.0f)));
  EXPECT_EQ(out.probs_TE.scalar_type(), torch::kFloat32);
}

TEST(Router, ComputesInFp32ForLowPrecisionInputs) {
  TopKRouter router(8, 4, 1);
  auto out = router(torch::randn({3, 8}).to(torch::kBFloat16));
  EXPECT_EQ(out.probs_TE.scalar_type(), torch::kFloat32);
  EXPECT_EQ(out.gates_TK.scalar_type(), torch::kFloat32);
}

TEST(AuxLoss, UniformRouterGivesExactlyOne) {
  // Zero router weights: every probability is 1/E. With E a power of two every step is exact.
  for (int64_t E : {2, 4, 8, 16}) {
    TopKRouter router(8, E, 2);
    auto out = router(torch::randn({10, 8}));
    EXPECT_EQ(switch_aux_loss(out.probs_TE, out.routing_map_TE, 2).item<float>(), 1.0f) << E;
  }
  // Otherwise 1/E is rounded once: within two float ulps of 1.
  TopKRouter router(8, 6, 2);
  auto out = router(torch::randn({10, 8}));
  EXPECT_NEAR(switch_aux_loss(out.probs_TE, out.routing_map_TE, 2).item<float>(), 1.0f, 2.4e-7f);
}

TEST(AuxLoss, MatchesDefinitionOnKnownNumbers) {
  // T = 2, E = 2, k = 1: token 0 → expert 0 (p = 0.75), token 1 → expert 0 (p = 0.6).
  auto probs = torch::tensor({{0.75f, 0.25f}, {0.6f, 0.4f}});
  auto map = torch::tensor({{1.0f, 0.0f}, {1.0f, 0.0f}});
  // f = (1, 0), P = (0.675, 0.325): L = 2 · (1·0.675) = 1.35.
  EXPECT_NEAR(switch_aux_loss(probs, map, 1).item<float>(), 1.35f, 1e-6);
}

TEST(Dispatch, RoundTripWithIdentityExpertsReturnsTheInput) {
  torch::manual_seed(0);
  LocalDispatcher dispatcher(4);
  auto x = torch::randn({9, 8});
  auto idx = std::get<1>(torch::rand({9, 4}).topk(2, -1));  // two distinct experts per token
  auto gates = torch::softmax(torch::randn({9, 2}), -1);
  Dispatched d = dispatcher.dispatch(x, idx);
  EXPECT_EQ(d.tokens_ND.size(0), 18);
  EXPECT_TRUE(torch::equal(d.tokens_per_expert_El, torch::bincount(idx.reshape({-1}), {}, 4)));
  // Grouped by expert: the expert of each dispatched row is non-decreasing.
  auto expert_of_row = std::get<0>(idx.reshape({-1}).sort(/*stable=*/true, 0, false));
  for (int64_t e = 0; e < 4; ++e) {
    auto rows = d.tokens_ND.index({expert_of_row == e});
    auto expected = x.index({(idx == e).any(1)});
    EXPECT_TRUE(torch::equal(rows, expected)) << "expert " << e << " gets its tokens in token order";
  }
  auto y = dispatcher.combine(d.tokens_ND, gates);
  EXPECT_TRUE(torch::allclose(y, x, 1e-6, 1e-6));
}

TEST(GroupedExperts, MatchPerExpertReferenceIncludingEmptyExperts) {
  torch::manual_seed(0);
  GroupedExperts ex(4, 8, 16);
  for (auto& p : ex->parameters()) p.data().normal_(0, 0.3);
  auto counts = torch::tensor({3, 0, 5, 2}, torch::kInt64);
  auto x = torch::randn({10, 8}, torch::requires_grad());
  auto y = ex(x, counts);
  std::vector<torch::Tensor> parts;
  int64_t begin = 0;
  for (int64_t e = 0; e < 4; ++e) {
    const int64_t n = counts[e].item<int64_t>();
    parts.push_back(expert_reference(*ex, e, x.narrow(0, begin, n)));
    begin += n;
  }
  auto ref = torch::cat(parts);
  EXPECT_TRUE(torch::allclose(y, ref, 1e-5, 1e-6));

  auto g = torch::randn_like(y);
  auto grads = torch::autograd::grad({y}, {x, ex->w1_EDF, ex->w2_EFD}, {g});
  auto ref_grads = torch::autograd::grad({ref}, {x, ex->w1_EDF, ex->w2_EFD}, {g});
  for (size_t i = 0; i < grads.size(); ++i) EXPECT_TRUE(torch::allclose(grads[i], ref_grads[i], 1e-5, 1e-6)) << i;
}

TEST(MoELayer, MatchesDenseReferenceAndItsGradients) {
  torch::manual_seed(0);
  MoELayer layer(small_options());
  for (auto& p : layer->parameters()) p.data().normal_(0, 0.3);
  auto x = torch::randn({2, 5, 8}, torch::requires_grad());
  auto out = layer(x);

  // Reference: y_t = Σ_k gate_tk · expert_{e_tk}(x_t), with routing recomputed independently.
  auto x_TD = x.reshape({10, 8});
  auto probs = torch::softmax(torch::matmul(x_TD, layer->router->weight.t()), -1);
  auto [top_p, top_i] = probs.topk(2, -1);
  auto gates = top_p / top_p.sum(-1, true);
  std::vector<torch::Tensor> rows;
  for (int64_t t = 0; t < 10; ++t) {
    auto row = torch::zeros({8});
    for (int64_t j = 0; j < 2; ++j) {
      row = row + gates[t][j] * expert_reference(*layer->experts, top_i[t][j].item<int64_t>(), x_TD[t].unsqueeze(0))[0];
    }
    rows.push_back(row);
  }
  auto ref = torch::stack(rows).view({2, 5, 8});
  EXPECT_TRUE(torch::allclose(out.y, ref, 1e-5, 1e-6));

  auto g = torch::randn_like(ref);
  auto params = std::vector<torch::Tensor>{x, layer->router->weight, layer->experts->w3_EDF};
  auto grads = torch::autograd::grad({out.y}, params, {g});
  auto ref_grads = torch::autograd::grad({ref}, params, {g});
  for (size_t i = 0; i < grads.size(); ++i) EXPECT_TRUE(torch::allclose(grads[i], ref_grads[i], 1e-4, 1e-6)) << i;
}

TEST(MoELayer, RouterGradientMatchesFiniteDifferences) {
  torch::manual_seed(1);
  MoELayer layer(small_options());
  for (auto& p : layer->parameters()) p.data().normal_(0, 0.3);
  auto x = torch::randn({1, 6, 8});
  auto loss_of = [&] {
    auto out = layer(x);
    return (out.y.pow(2).sum() + out.aux_loss).to(torch::kFloat64);
  };
  auto analytic = torch::autograd::grad({loss_of()}, {layer->router->weight})[0];
  torch::NoGradGuard no_grad;
  const float h = 1e-3f;
  for (int64_t e = 0; e < 4; ++e) {
    for (int64_t d = 0; d < 8; d += 3) {
      auto w = layer->router->weight;
      const float orig = w[e][d].item<float>();
      w[e][d] = orig + h;
      const double up = loss_of().item<double>();
      w[e][d] = orig - h;
      const double down = loss_of().item<double>();
      w[e][d] = orig;
      EXPECT_NEAR(analytic[e][d].item<float>(), (up - down) / (2 * h), 2e-3) << e << "," << d;
    }
  }
}

TEST(MoELayer, SharedExpertAddsDenseSwiGLUToTheRoutedOutput) {
  torch::manual_seed(0);
  MoEOptions o = small_options();
  MoELayer routed_only(o);
  o.shared_hidden = 10;
  MoELayer with_shared(o);
  ASSERT_TRUE(with_shared->shared);
  for (auto& p : with_shared->parameters()) p.data().normal_(0, 0.3);
  {
    torch::NoGradGuard no_grad;
    routed_only->router->weight.copy_(with_shared->router->weight);
    routed_only->experts->w1_EDF.copy_(with_shared->experts->w1_EDF);
    routed_only->experts->w2_EFD.copy_(with_shared->experts->w2_EFD);
    routed_only->experts->w3_EDF.copy_(with_shared->experts->w3_EDF);
  }
  auto x = torch::randn({1, 4, 8});
  auto expected = routed_only(x).y + with_shared->shared(x);
  EXPECT_TRUE(torch::allclose(with_shared(x).y, expected, 1e-5, 1e-6));
}
