// layers::CastCache: one cast per weight version, gradients bitwise those of w.to(dtype); and the grouped
// experts under mixed precision cast their weights once per optimizer step, whatever the micro-batches.
#include <gtest/gtest.h>

#include "csrc/layers/cast_cache.h"
#include "csrc/layers/precision.h"
#include "csrc/moe/experts.h"

namespace moetrain::layers {
namespace {

TEST(CastCache, CastsOncePerVersionOfTheWeight) {
  CastCache cache;
  auto w = torch::randn({4, 3}).requires_grad_();
  auto a = cache.get(w, torch::kBFloat16);
  auto b = cache.get(w, torch::kBFloat16);
  EXPECT_EQ(cache.casts(), 1);
  EXPECT_EQ(a.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(a, w.to(torch::kBFloat16)));
  EXPECT_TRUE(torch::equal(b, a));
  {
    torch::NoGradGuard no_grad;
    w.add_(1.0);  // the optimizer's update: a new version
  }
  auto c = cache.get(w, torch::kBFloat16);
  EXPECT_EQ(cache.casts(), 2);
  EXPECT_TRUE(torch::equal(c, w.to(torch::kBFloat16)));
  EXPECT_EQ(cache.get(w, torch::kFloat32).data_ptr(), w.data_ptr()) << "no cast to the weight's own dtype";
}

TEST(CastCache, GradientsAreBitwiseThoseOfTheUncachedCast) {
  CastCache cache;
  auto w = torch::randn({8, 5}).requires_grad_();
  auto ref = w.detach().clone().requires_grad_();
  const auto x1 = torch::randn({6, 8}, torch::kBFloat16), x2 = torch::randn({6, 8}, torch::kBFloat16);
  for (const auto& x : {x1, x2}) {  // two micro-batches: two backward passes through one cached cast
    x.matmul(cache.get(w, torch::kBFloat16)).pow(2).sum().backward();
    x.matmul(ref.to(torch::kBFloat16)).pow(2).sum().backward();
  }
  EXPECT_EQ(cache.casts(), 1);
  EXPECT_EQ(w.grad().scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(w.grad(), ref.grad()));
}

TEST(CastCache, MixedPrecisionExpertsCastTheirWeightsOncePerStep) {
  moe::GroupedExperts experts(4, 16, 8);
  for (auto& p : experts->parameters()) torch::nn::init::normal_(p, 0, 0.1);
  const auto tokens = torch::randn({12, 16});
  const auto counts = torch::tensor({3, 3, 0, 6}, torch::kInt64);
  AutocastScope bf16(c10::DeviceType::CPU, torch::kBFloat16);
  for (int micro = 0; micro < 3; ++micro)
    experts->forward(tokens, counts).pow(2).sum().backward();  // a dense gradient, as _grouped_mm needs
  EXPECT_EQ(experts->weight_casts(), 3) << "w1, w3, w2 once, not once per micro-batch";
}

}  // namespace
}  // namespace moetrain::layers
