// MoE layer pieces against independent formulas: dispatch round trip, grouped experts, the whole layer
// against a dense reference, gradients against finite differences.
#include <gtest/gtest.h>

#include "csrc/layers/precision.h"
#include "csrc/moe/moe_layer.h"

using namespace moetrain::moe;

namespace {

// Reference expert: one SwiGLU with expert e's weights, computed directly.
torch::Tensor expert_reference(GroupedExpertsImpl& ex, int64_t e, const torch::Tensor& x_ND) {
  return torch::matmul(torch::silu(torch::matmul(x_ND, ex.w1_EDF[e])) * torch::matmul(x_ND, ex.w3_EDF[e]),
                       ex.w2_EFD[e]);
}

MoEOptions small_options() {
  MoEOptions o;
  o.d_model = 8, o.num_experts = 4, o.top_k = 2, o.expert_hidden = 16;
  o.routing.set_aux_loss_coeff(0.01);
  return o;
}

MoELayer random_layer(const MoEOptions& o, uint64_t seed) {
  torch::manual_seed(seed);
  MoELayer layer(o);
  for (auto& p : layer->parameters()) p.data().normal_(0, 0.3);
  return layer;
}

void copy_weights(torch::nn::Module& dst, const torch::nn::Module& src) {
  torch::NoGradGuard no_grad;
  auto from = src.named_parameters();
  for (auto& p : dst.named_parameters()) p.value().copy_(from[p.key()]);
}

}  // namespace

TEST(Dispatch, RoundTripWithIdentityExpertsReturnsTheInput) {
  torch::manual_seed(0);
  LocalDispatcher dispatcher(4);
  auto x = torch::randn({9, 8});
  auto idx = std::get<1>(torch::rand({9, 4}).topk(2, -1));  // two distinct experts per token
  auto kept = torch::zeros({9, 4}, torch::kBool).scatter_(1, idx, true);
  auto gates = torch::zeros({9, 4}).scatter_(1, idx, torch::softmax(torch::randn({9, 2}), -1));
  Dispatched d = dispatcher.dispatch(x, kept, RowLayout::dropless(18));
  EXPECT_EQ(d.tokens_ND.size(0), 18);
  EXPECT_TRUE(torch::equal(d.tokens_per_expert_El, kept.sum(0)));
  int64_t row = 0;
  for (int64_t e = 0; e < 4; ++e) {
    const int64_t n = d.tokens_per_expert_El[e].item<int64_t>();
    EXPECT_TRUE(torch::equal(d.tokens_ND.narrow(0, row, n), x.index({kept.select(1, e)})))
        << "expert " << e << " gets its tokens in token order";
    row += n;
  }
  EXPECT_TRUE(torch::allclose(dispatcher.combine(d.tokens_ND, gates), x, 1e-6, 1e-6));
}

TEST(Dispatch, PaddingGivesExactlyCapacityRowsAndTheSameResult) {
  torch::manual_seed(0);
  auto x = torch::randn({6, 8});
  auto kept = torch::tensor({{1, 0, 0}, {1, 1, 0}, {0, 1, 0}, {1, 0, 0}, {0, 0, 0}, {0, 1, 0}}, torch::kBool);
  auto gates = torch::rand({6, 3}) * kept;
  LocalDispatcher plain(3), padded(3);
  auto a = plain.dispatch(x, kept, RowLayout::dropless(6));
  auto b = padded.dispatch(x, kept, RowLayout::padded(3, 4));
  EXPECT_EQ(b.tokens_ND.size(0), 12);
  EXPECT_TRUE(torch::equal(b.tokens_per_expert_El, torch::full({3}, 4, torch::kInt64)));
  // Any per-row function: padding rows carry gate 0 and change nothing.
  auto ya = plain.combine(a.tokens_ND * 2 + 1, gates);
  auto yb = padded.combine(b.tokens_ND * 2 + 1, gates);
  EXPECT_TRUE(torch::allclose(ya, yb, 0, 1e-6));
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
  for (size_t i = 0; i < grads.size(); ++i)
    EXPECT_TRUE(torch::allclose(grads[i], ref_grads[i], 1e-5, 1e-6)) << i;
}

TEST(MoELayer, MatchesDenseReferenceAndItsGradients) {
  MoELayer layer = random_layer(small_options(), 0);
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
      row = row + gates[t][j] *
                      expert_reference(*layer->experts, top_i[t][j].item<int64_t>(), x_TD[t].unsqueeze(0))[0];
    }
    rows.push_back(row);
  }
  auto ref = torch::stack(rows).view({2, 5, 8});
  EXPECT_TRUE(torch::allclose(out.y, ref, 1e-5, 1e-6));

  auto g = torch::randn_like(ref);
  auto params = std::vector<torch::Tensor>{x, layer->router->weight, layer->experts->w3_EDF};
  auto grads = torch::autograd::grad({out.y}, params, {g});
  auto ref_grads = torch::autograd::grad({ref}, params, {g});
  for (size_t i = 0; i < grads.size(); ++i)
    EXPECT_TRUE(torch::allclose(grads[i], ref_grads[i], 1e-4, 1e-6)) << i;
}

// Central differences in float32 on a tiny case: the analytic gradient of the router (through gates,
// aux, sequence-aux and z-loss) and of the experts agrees to 2e-3.
TEST(MoELayer, RouterAndExpertGradientsMatchFiniteDifferences) {
  MoEOptions o = small_options();
  o.routing.set_seq_aux_loss_coeff(0.1);
  o.routing.set_z_loss_coeff(0.01);
  MoELayer layer = random_layer(o, 1);
  auto x = torch::randn({2, 3, 8});
  auto loss_of = [&] {
    auto out = layer(x);
    return (out.y.pow(2).sum() + out.aux_loss + out.z_loss).to(torch::kFloat64);
  };
  for (auto* param : {&layer->router->weight, &layer->experts->w1_EDF}) {
    auto analytic = torch::autograd::grad({loss_of()}, {*param})[0].reshape({-1});
    torch::NoGradGuard no_grad;
    auto flat = param->view({-1});
    const float h = 1e-3f;
    for (int64_t i = 0; i < flat.numel(); i += 7) {
      const float orig = flat[i].item<float>();
      flat[i] = orig + h;
      const double up = loss_of().item<double>();
      flat[i] = orig - h;
      const double down = loss_of().item<double>();
      flat[i] = orig;
      EXPECT_NEAR(analytic[i].item<float>(), (up - down) / (2 * h), 2e-3) << i;
    }
  }
}

TEST(MoELayer, SharedExpertAddsDenseSwiGLUToTheRoutedOutput) {
  MoEOptions o = small_options();
  MoELayer routed_only(o);
  o.shared_hidden = 16;
  MoELayer with_shared = random_layer(o, 0);
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

TEST(MoELayer, DroppedTokensContributeNothingAndAuxUsesThePreDropMap) {
  MoEOptions o = small_options();
  o.top_k = 1;
  o.routing.set_capacity_factor(0.25);  // capacity = ceil(0.25 · 16 · 1 / 4) = 1 token per expert
  MoELayer layer = random_layer(o, 3);
  MoEOptions dropless = o;
  dropless.routing.set_capacity_factor(0);
  MoELayer reference(dropless);
  copy_weights(*reference, *layer);
  auto x = torch::randn({1, 16, 8});
  auto out = layer(x);
  auto full = reference(x);
  const int64_t dropped = out.measures.dropped_pairs.item<int64_t>();
  EXPECT_EQ(out.measures.routed_pairs.item<int64_t>(), 16);
  EXPECT_EQ(dropped, 16 - (out.measures.tokens_per_expert_E > 0).sum().item<int64_t>());
  EXPECT_TRUE(torch::equal(out.measures.aux_loss, full.measures.aux_loss))
      << "aux loss from the routing before drops";
  // Each row is either the dropless output (kept) or exactly zero (dropped: residual only).
  int64_t zero_rows = 0;
  for (int64_t t = 0; t < 16; ++t) {
    auto row = out.y[0][t];
    if (row.abs().max().item<float>() == 0.0f) {
      ++zero_rows;
    } else {
      EXPECT_TRUE(torch::allclose(row, full.y[0][t], 1e-5, 1e-6)) << t;
    }
  }
  EXPECT_EQ(zero_rows, dropped);
}

// Mixed precision: the experts return bf16 rows and combine_rows widens them inside its gate product. That
// must be bitwise what casting the rows to fp32 first gives, forward and backward (the rows' gradient
// rounded to bf16, the gates' in fp32).
TEST(Dispatch, Bf16RowsCombineInFp32ExactlyAsRowsCastFirst) {
  torch::manual_seed(0);
  auto kept = torch::rand({7, 4}) < 0.5;
  const auto rows = dispatch_rows(kept, RowLayout::capped(7 * 4));
  const int64_t N = rows.token_N.size(0);
  auto values = torch::randn({N, 8}).to(torch::kBFloat16);
  auto gate_values = torch::rand({7, 4}) * kept;
  auto rows_a = values.clone().requires_grad_(true), rows_b = values.clone().requires_grad_(true);
  auto gates_a = gate_values.clone().requires_grad_(true), gates_b = gate_values.clone().requires_grad_(true);
  auto a = combine_rows(rows_a, rows, gates_a);
  auto b = combine_rows(rows_b.to(torch::kFloat32), rows, gates_b);
  EXPECT_EQ(a.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(a, b));
  auto g = torch::randn_like(a);
  a.backward(g), b.backward(g);
  EXPECT_EQ(rows_a.grad().scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(rows_a.grad(), rows_b.grad()));
  EXPECT_TRUE(torch::equal(gates_a.grad(), gates_b.grad()));
}

// Under bf16 autocast the experts' output stays bf16 (half the bytes of an expert-parallel return trip) and
// equals their GEMMs on operands cast to bf16; the layer's output is fp32, like the residual stream.
TEST(GroupedExperts, UnderBf16AutocastReturnBf16AndTheLayerStaysFp32) {
  auto layer = random_layer(small_options(), 3);
  auto x = torch::randn({2, 5, 8});
  moetrain::layers::AutocastScope autocast(torch::kCPU, torch::kBFloat16);
  auto rows = torch::randn({6, 8});
  auto counts = torch::tensor({2, 0, 3, 1}, torch::kInt64);
  auto y = layer->experts(rows, counts);
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  auto direct = grouped_swiglu(layer->experts->operands(rows, torch::kBFloat16),
                               counts.cumsum(0).to(torch::kInt32), 0.0);
  EXPECT_TRUE(torch::equal(y, direct));
  EXPECT_EQ(layer(x).y.scalar_type(), torch::kFloat32);
}
