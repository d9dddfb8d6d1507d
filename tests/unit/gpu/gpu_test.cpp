// GPU unit tests: the model and the MoE layer on CUDA against the CPU (fp32), bf16 on CUDA, and the hot
// path under CUDA's sync debug mode "error". Every CUDA test skips without a GPU (this is how CI and the
// dev machine run them: compiled, skipped); launch/gpu-check.sh runs them on the first GPU machine.
// The environment parsing of the sync-debug switch runs everywhere.
#include <gtest/gtest.h>

#include <torch/cuda.h>

#include <cstdlib>
#include <map>

#include "csrc/layers/precision.h"
#include "csrc/model/transformer.h"
#include "csrc/moe/experts.h"
#include "csrc/moe/moe_layer.h"
#include "csrc/util/cuda_sync_debug.h"
#include "csrc/util/host_sync.h"

using namespace moetrain;

namespace {

class Cuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU on this machine: compiled, not run";
    // fp32 means fp32: no TF32 in cuBLAS for the comparisons with the CPU.
    at::globalContext().setFloat32MatmulPrecision("highest");
  }
  void TearDown() override {
    if (torch::cuda::is_available()) util::set_cuda_sync_debug(util::SyncDebugMode::kOff);
  }
};

double max_rel(const torch::Tensor& a, const torch::Tensor& b) {
  auto x = a.detach().to(torch::kCPU, torch::kFloat64), y = b.detach().to(torch::kCPU, torch::kFloat64);
  return ((x - y).abs().max() / y.abs().max().clamp_min(1e-12)).item<double>();
}

model::TransformerOptions tiny_options() {
  config::ModelConfig m;
  m.set_vocab_size(128), m.set_d_model(64), m.set_num_layers(2), m.set_num_heads(4), m.set_ffn_hidden(96);
  m.set_num_experts(8), m.set_top_k(2), m.set_moe_ffn_hidden(48), m.set_moe_layer_freq(1);
  config::RoutingConfig r;
  r.set_aux_loss_coeff(0.01);
  return model::TransformerOptions::from_recipe(m, r);
}

moe::MoELayer moe_layer(const config::RoutingConfig& routing) {
  moe::MoEOptions o;
  o.d_model = 32, o.num_experts = 8, o.top_k = 2, o.expert_hidden = 64;
  o.routing = routing;
  torch::manual_seed(11);
  moe::MoELayer layer(o);
  torch::NoGradGuard no_grad;
  for (auto& p : layer->parameters()) p.normal_(0.0, 0.1);
  return layer;
}

// Forward + backward of the layer on x (moved to the layer's device): output, losses and every gradient.
struct LayerRun {
  torch::Tensor y, aux;
  std::map<std::string, torch::Tensor> grads;
};

LayerRun run_layer(moe::MoELayer& layer, const torch::Tensor& x_cpu, torch::Device device) {
  for (auto& p : layer->parameters()) p.mutable_grad() = torch::Tensor();
  auto x = x_cpu.to(device);
  auto out = layer(x);
  (out.y.square().mean() + out.aux_loss + out.z_loss).backward();
  LayerRun r{out.y, out.aux_loss, {}};
  for (const auto& p : layer->named_parameters()) r.grads[p.key()] = p.value().grad();
  return r;
}

// A layer whose router never picks expert 0: its router row is -1 and every input is positive, so its
// logit is far below the others (rows of N(0, 0.1)). Forward + backward under deterministic algorithms
// (torch then fills new memory with NaN, so anything left uninitialised shows), bf16 autocast when asked.
LayerRun run_with_an_empty_expert(torch::Device device, bool bf16) {
  config::RoutingConfig r;
  r.set_aux_loss_coeff(0.01);
  auto layer = moe_layer(r);
  {
    torch::NoGradGuard no_grad;
    layer->named_parameters()["router.weight"][0].fill_(-1.0);
  }
  layer->to(device);
  torch::manual_seed(9);
  auto x = torch::randn({2, 64, 32}).abs() + 0.5;
  const auto logits = x.view({-1, 32}).matmul(layer->named_parameters()["router.weight"].cpu().t());
  EXPECT_FALSE((std::get<1>(logits.topk(2, 1)) == 0).any().item<bool>()) << "expert 0 got tokens";
  at::globalContext().setDeterministicAlgorithms(true, /*warn_only=*/false);
  LayerRun run;
  try {
    layers::AutocastScope autocast(device.type(), bf16 ? torch::kBFloat16 : torch::kFloat32);
    run = run_layer(layer, x, device);
  } catch (...) {
    at::globalContext().setDeterministicAlgorithms(false, false);
    throw;
  }
  at::globalContext().setDeterministicAlgorithms(false, false);
  return run;
}

void expect_empty_expert_gradients_zero(const LayerRun& run, const char* what) {
  for (const char* name : {"experts.w1", "experts.w3", "experts.w2"}) {
    const auto g = run.grads.at(name).cpu();
    EXPECT_TRUE(torch::equal(g[0], torch::zeros_like(g[0])))
        << what << ": " << name << "[0] (the empty expert)";
    EXPECT_TRUE(torch::isfinite(g).all().item<bool>()) << what << ": " << name;
    EXPECT_GT(g.slice(0, 1).abs().sum().item<double>(), 0.0) << what << ": " << name << " of the others";
  }
}

}  // namespace

// The empty expert's gradient is exactly 0 (GroupedExpertsImpl masks it: moe::mask_empty_experts). On the
// CPU the mask changes nothing: the layer's output and gradients equal the unmasked grouped GEMMs'.
TEST(EmptyExpert, CpuGradientIsExactlyZeroAndTheMaskChangesNothing) {
  expect_empty_expert_gradients_zero(run_with_an_empty_expert(torch::kCPU, /*bf16=*/false), "cpu fp32");
  auto layer = moe_layer(config::RoutingConfig{});
  torch::manual_seed(4);
  const auto x = torch::randn({40, 32});
  auto counts = torch::tensor({10, 0, 25, 0, 5, 0, 0, 0}, torch::kInt64);
  auto offsets = counts.cumsum(0).to(torch::kInt32);
  auto grads_of = [&](bool masked) {
    for (auto& p : layer->parameters()) p.mutable_grad() = torch::Tensor();
    auto ops = layer->experts->operands(x, std::nullopt);
    auto y = moe::grouped_swiglu(masked ? moe::mask_empty_experts(ops, counts) : ops, offsets, 0.0);
    y.square().sum().backward();
    return std::make_pair(y, layer->experts->w2_EFD.grad().clone());
  };
  auto [y_plain, g_plain] = grads_of(false);
  auto [y_masked, g_masked] = grads_of(true);
  EXPECT_TRUE(torch::equal(y_plain, y_masked));
  EXPECT_TRUE(torch::equal(g_plain, g_masked));
}

// bf16 on CUDA: an empty CUTLASS group leaves its weight gradient uninitialised; masked, it is exactly 0.
TEST_F(Cuda, MoELayerBf16EmptyExpertGetsExactlyZeroGradient) {
  setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);
  expect_empty_expert_gradients_zero(run_with_an_empty_expert(torch::kCUDA, /*bf16=*/true), "cuda bf16");
  expect_empty_expert_gradients_zero(run_with_an_empty_expert(torch::kCUDA, /*bf16=*/false), "cuda fp32");
}

// c10's sync debug warnings are counted and nothing else is (runs everywhere: the warning is raised here).
TEST(CudaSyncDebugEnv, SyncWarningCountCountsOnlySyncWarnings) {
  util::SyncWarningCount outer;
  {
    util::SyncWarningCount inner;
    TORCH_WARN("called a synchronizing CUDA operation");
    TORCH_WARN("called a synchronizing CUDA operation");
    EXPECT_EQ(inner.count(), 2);
  }
  TORCH_WARN("called a synchronizing CUDA operation");
  TORCH_WARN("some other warning: passed on, not counted");
  EXPECT_EQ(outer.count(), 1);
}

TEST(CudaSyncDebugEnv, ParsesModesAndStepsAndRejectsTypos) {
  auto env = [](std::map<std::string, std::string> vars) {
    return [vars](const char* name) -> const char* {
      auto it = vars.find(name);
      return it == vars.end() ? nullptr : it->second.c_str();
    };
  };
  EXPECT_EQ(util::sync_debug_from_env(env({})).mode, util::SyncDebugMode::kOff);
  EXPECT_EQ(util::sync_debug_from_env(env({})).after_steps, 2);
  auto s = util::sync_debug_from_env(
      env({{"MOETRAIN_CUDA_SYNC_DEBUG", "error"}, {"MOETRAIN_CUDA_SYNC_DEBUG_AFTER", "5"}}));
  EXPECT_EQ(s.mode, util::SyncDebugMode::kError);
  EXPECT_EQ(s.after_steps, 5);
  EXPECT_EQ(util::sync_debug_from_env(env({{"MOETRAIN_CUDA_SYNC_DEBUG", "warn"}})).mode,
            util::SyncDebugMode::kWarn);
  EXPECT_EQ(util::sync_debug_from_env(env({{"MOETRAIN_CUDA_SYNC_DEBUG", ""}})).mode, util::SyncDebugMode::kOff);
  EXPECT_THROW(util::sync_debug_from_env(env({{"MOETRAIN_CUDA_SYNC_DEBUG", "eror"}})), std::invalid_argument);
  EXPECT_THROW(util::sync_debug_from_env(env({{"MOETRAIN_CUDA_SYNC_DEBUG_AFTER", "-1"}})),
               std::invalid_argument);
  // The switch stays off before its step and whenever the variable is off.
  util::SteadyStateSyncDebug off(util::SyncDebugSettings{});
  off.step_begins(100);
  EXPECT_FALSE(off.active());
}

TEST_F(Cuda, TransformerFp32ForwardAndBackwardMatchTheCpu) {
  model::Transformer cpu(tiny_options()), gpu(tiny_options());
  model::init_weights(*cpu, 7, 0.02);
  model::init_weights(*gpu, 7, 0.02);
  gpu->to(torch::kCUDA);
  torch::manual_seed(3);
  auto tokens = torch::randint(0, 128, {4, 32});
  auto loss_of = [&](model::Transformer& m) {
    auto t = tokens.to(m->parameters()[0].device());
    auto out = m(t);
    auto loss = model::lm_loss(out.logits, t) + out.aux_loss;
    loss.backward();
    return std::make_pair(out.logits, loss);
  };
  auto [logits_c, loss_c] = loss_of(cpu);
  auto [logits_g, loss_g] = loss_of(gpu);
  EXPECT_TRUE(logits_g.is_cuda());
  EXPECT_LT(max_rel(logits_g, logits_c), 1e-4);
  EXPECT_LT(max_rel(loss_g, loss_c), 1e-5);
  auto pc = cpu->named_parameters(), pg = gpu->named_parameters();
  for (const auto& p : pc) {
    ASSERT_TRUE(pg[p.key()].grad().defined()) << p.key();
    EXPECT_LT(max_rel(pg[p.key()].grad(), p.value().grad()), 1e-3) << p.key();
  }
}

TEST_F(Cuda, MoELayerFp32MatchesTheCpuDroplessAndWithCapacity) {
  for (const bool capped : {false, true}) {
    config::RoutingConfig r;
    r.set_aux_loss_coeff(0.01);
    r.set_z_loss_coeff(1e-3);
    if (capped) r.set_capacity_factor(1.0);
    auto cpu = moe_layer(r), gpu = moe_layer(r);
    gpu->to(torch::kCUDA);
    torch::manual_seed(5);
    auto x = torch::randn({2, 64, 32});
    auto a = run_layer(cpu, x, torch::kCPU), b = run_layer(gpu, x, torch::kCUDA);
    EXPECT_TRUE(b.y.is_cuda());
    EXPECT_LT(max_rel(b.y, a.y), 1e-4) << (capped ? "capacity 1.0" : "dropless");
    EXPECT_LT(max_rel(b.aux, a.aux), 1e-5);
    for (const auto& [name, g] : a.grads) {
      ASSERT_TRUE(b.grads[name].defined()) << name;
      EXPECT_LT(max_rel(b.grads[name], g), 1e-3) << name << (capped ? " (capacity 1.0)" : " (dropless)");
    }
  }
}

// bf16 on CUDA (autocast as train.precision=BF16 sets it): weights and gradients stay fp32, the output
// keeps its input's dtype and is close to the fp32 one.
TEST_F(Cuda, MoELayerBf16TracksFp32AndKeepsFp32Gradients) {
  config::RoutingConfig r;
  r.set_aux_loss_coeff(0.01);
  auto layer = moe_layer(r);
  layer->to(torch::kCUDA);
  torch::manual_seed(5);
  auto x = torch::randn({2, 64, 32});
  auto fp32 = run_layer(layer, x, torch::kCUDA);
  LayerRun bf16;
  {
    layers::AutocastScope autocast(torch::kCUDA, torch::kBFloat16);
    bf16 = run_layer(layer, x, torch::kCUDA);
  }
  EXPECT_EQ(bf16.y.scalar_type(), torch::kFloat32);
  EXPECT_LT(max_rel(bf16.y, fp32.y), 3e-2);
  for (const auto& [name, g] : bf16.grads) {
    ASSERT_TRUE(g.defined()) << name;
    EXPECT_EQ(g.scalar_type(), torch::kFloat32) << name;
    EXPECT_TRUE(torch::isfinite(g).all().item<bool>()) << name;
    EXPECT_LT(max_rel(g, fp32.grads[name]), 1e-1) << name;
  }
}

// docs/routing.md, "Host reads": with one expert rank a layer's forward and backward read nothing of the
// device. On CUDA that means they never make the host wait in bf16 (the grouped GEMM's CUTLASS path on
// sm90/sm100): forward and backward run under sync debug "error". fp32 takes torch's grouped-GEMM
// fallback, which copies the offsets to the host once per grouped GEMM; under "warn" those are counted:
// 3 in the forward (gate, up, down) and 4 in the backward (the weight gradients of w1, w3, w2 and the
// down projection's input gradient; the input x needs no gradient here).
TEST_F(Cuda, MoELayerForwardAndBackwardNeverSynchroniseWithOneExpertRank) {
  for (const bool capped : {false, true}) {
    const char* layout = capped ? "capacity 1.25" : "dropless";
    config::RoutingConfig r;
    r.set_aux_loss_coeff(0.01);
    if (capped) r.set_capacity_factor(1.25);
    auto layer = moe_layer(r);
    layer->to(torch::kCUDA);
    auto x = torch::randn({2, 64, 32}, torch::kCUDA);
    {
      layers::AutocastScope autocast(torch::kCUDA, torch::kBFloat16);
      run_layer(layer, x, torch::kCUDA);  // warm-up: allocator and kernel selection
      util::HostReadCount reads;
      util::set_cuda_sync_debug(util::SyncDebugMode::kError);
      try {
        run_layer(layer, x, torch::kCUDA);
      } catch (const std::exception& e) {
        util::set_cuda_sync_debug(util::SyncDebugMode::kOff);
        ADD_FAILURE() << layout << ", bf16: a synchronising operation in the hot path: " << e.what();
      }
      util::set_cuda_sync_debug(util::SyncDebugMode::kOff);
      EXPECT_EQ(reads.reads(), 0) << layout;
    }
    run_layer(layer, x, torch::kCUDA);  // fp32 warm-up
    util::HostReadCount reads;
    int64_t syncs = -1;
    {
      util::SyncWarningCount warnings;
      util::set_cuda_sync_debug(util::SyncDebugMode::kWarn);
      run_layer(layer, x, torch::kCUDA);
      util::set_cuda_sync_debug(util::SyncDebugMode::kOff);
      syncs = warnings.count();
    }
    EXPECT_EQ(reads.reads(), 0) << layout;
    EXPECT_EQ(syncs, 7) << layout
                        << ", fp32: one sync per grouped GEMM of the fallback (3 forward, 4 backward)";
  }
}

// A sanctioned read (util::read_to_host) lifts the mode for itself only.
TEST_F(Cuda, SanctionedHostReadsPassUnderSyncDebugErrorAndOthersThrow) {
  auto t = torch::arange(4, torch::TensorOptions().device(torch::kCUDA));
  util::set_cuda_sync_debug(util::SyncDebugMode::kError);
  EXPECT_TRUE(torch::equal(util::read_to_host(t, "test"), torch::arange(4)));
  EXPECT_EQ(util::cuda_sync_debug(), util::SyncDebugMode::kError);
  EXPECT_ANY_THROW(t.sum().item<int64_t>());
  {
    util::SyncDebugPause pause;
    EXPECT_EQ(t.sum().item<int64_t>(), 6);
  }
  EXPECT_EQ(util::cuda_sync_debug(), util::SyncDebugMode::kError);
  util::set_cuda_sync_debug(util::SyncDebugMode::kOff);
}

TEST_F(Cuda, DeterministicAlgorithmsGiveBitwiseEqualRepeats) {
  setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);  // what train.deterministic sets
  at::globalContext().setDeterministicAlgorithms(true, /*warn_only=*/false);
  config::RoutingConfig r;
  r.set_aux_loss_coeff(0.01);
  auto a = moe_layer(r), b = moe_layer(r);
  a->to(torch::kCUDA), b->to(torch::kCUDA);
  auto x = torch::randn({2, 64, 32});
  LayerRun ra, rb;
  try {
    ra = run_layer(a, x, torch::kCUDA), rb = run_layer(b, x, torch::kCUDA);
  } catch (const std::exception& e) {
    at::globalContext().setDeterministicAlgorithms(false, false);
    FAIL() << "an op without a deterministic CUDA implementation: " << e.what();
  }
  at::globalContext().setDeterministicAlgorithms(false, false);
  EXPECT_TRUE(torch::equal(ra.y, rb.y));
  for (const auto& [name, g] : ra.grads) EXPECT_TRUE(torch::equal(g, rb.grads[name])) << name;
}
