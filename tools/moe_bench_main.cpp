// moe-bench: benchmarks of moetrain's building blocks. Results go to docs/benchmarks.md with the
// command and machine that produced them.
//
//   moe-bench moe-layer [--tokens N] [--d-model D] [--experts E] [--top-k K] [--hidden F]
//                       [--warmup N] [--iters N] [--threads T] [--precision fp32|bf16] [--device cpu|cuda]
//     MoE layer forward + backward throughput (tokens/s), printed as one JSON line. --precision bf16: mixed
//     precision as train.precision=BF16 runs it (fp32 weights and router, bf16 expert GEMMs).
//     --breakdown: a second JSON line, "moe-layer-breakdown", with where the time goes: each phase of
//     the layer timed alone, forward + backward (router; dispatch; the expert operands: casts to the compute
//     dtype and the output's cast back; the expert GEMMs with their SwiGLU; combine), their sum and
//     the rest of the layer (balancing loss, measures), in ms per iteration.
//     --device cuda: on GPU 0 (the clock is read after torch::cuda::synchronize()). With
//     MOETRAIN_CUDA_SYNC_DEBUG=warn|error the timed iterations (not the warm-up) run under CUDA's sync
//     debug mode (csrc/util/cuda_sync_debug.h), and the JSON line says so ("sync_debug"); in mode warn
//     "sync_warnings" counts the synchronisations of the timed iterations (0 when the mode is off).
//   moe-bench dense-swiglu [same options]
//     The reference for the MoE layer: a dense SwiGLU with hidden size top_k·hidden, which has the same
//     matmul FLOPs per token as the MoE layer's experts (the router's D·E is not counted).
//   moe-bench gemm [same options]
//     One dense GEMM with exactly the matmul FLOPs of the MoE layer's forward + backward: (T, D) × (D, 9·K·F),
//     in bf16 with --precision bf16 (torch::mm on bf16 tensors), else fp32. The GPU target compares the MoE layer's
//     matmul_gflop_per_s with this one's (docs/gpu.md).
//   moe-bench finetune [same options] [--lora-rank R]
//     One fine-tuning step of the MoE layer (forward, backward, AdamW step) with every weight trained,
//     then with LoRA rank R on all expert projections and the base frozen: time per step and the
//     memory that training state takes (trainable weights' gradients + AdamW moments), one JSON line each.
//   mpirun -np P moe-bench collectives [--bytes N] [--warmup N] [--iters N]
//     Latency of the world communicator's all_reduce_sum and all_to_all_v (N bytes of fp32 per rank, split
//     evenly over the ranks for the all-to-all; --bytes 0, the default, sweeps 8 B to 4 MiB): median and mean
//     microseconds over --iters calls, each timed alone between barriers, one JSON line per size from rank 0.
//     MOETRAIN_MPI_WAIT=block gives the blocking-MPI baseline of the polled, watched waits (docs/reliability.md).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <vector>
#include <string>

#include "csrc/model/attention.h"
#include "csrc/layers/precision.h"
#include "csrc/moe/balancing.h"
#include "csrc/moe/moe_layer.h"
#include "csrc/util/cuda_sync_debug.h"
#include "csrc/util/host_allocator.h"
#include "parallel/launch_env.h"
#include "parallel/world.h"
#include "tools/cli.h"

#include <torch/cuda.h>

namespace {

namespace cli = moetrain::tools::cli;

// The integer options by name without "--", and "bf16" (1 for --precision bf16).
using Args = std::map<std::string, int64_t>;

// --device.
torch::Device bench_device = torch::kCPU;

void synchronize() {
  if (bench_device.is_cuda()) torch::cuda::synchronize();
}

// Runs `step` under bf16 autocast with --precision bf16, one autocast scope per call as the trainer opens one
// per forward (so casts of weights are cached within a step, never across steps).
template <typename Step>
void run_step(const Args& args, Step& step) {
  moetrain::layers::AutocastScope autocast(bench_device.type(),
                                           args.at("bf16") ? torch::kBFloat16 : torch::kFloat32);
  step();
}

// Seconds per call of `step`: warmup calls, then the mean of iters calls.
template <typename Step>
double seconds_per_step(const Args& args, Step step) {
  for (int64_t i = 0; i < args.at("warmup"); ++i) run_step(args, step);
  synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < args.at("iters"); ++i) run_step(args, step);
  synchronize();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / args.at("iters");
}

// Runs `step` (forward + backward) warmup + iters times, under bf16 autocast with --precision bf16, and prints
// one JSON line with the time per iteration and tokens/s.
template <typename Step>
int time_steps(const char* bench, const Args& args, Step step) {
  const bool bf16 = args.at("bf16") != 0;
  for (int64_t i = 0; i < args.at("warmup"); ++i) run_step(args, step);
  synchronize();
  // Steady state: the timed iterations run under CUDA's sync debug mode when MOETRAIN_CUDA_SYNC_DEBUG asks.
  const auto sync_debug = bench_device.is_cuda() ? moetrain::util::sync_debug_from_env().mode
                                                 : moetrain::util::SyncDebugMode::kOff;
  moetrain::util::set_cuda_sync_debug(sync_debug);
  moetrain::util::SyncWarningCount sync_warnings;  // mode warn: every synchronisation, counted
  const auto t0 = std::chrono::steady_clock::now();
  try {
    for (int64_t i = 0; i < args.at("iters"); ++i) run_step(args, step);
  } catch (...) {
    moetrain::util::set_cuda_sync_debug(moetrain::util::SyncDebugMode::kOff);
    throw;
  }
  moetrain::util::set_cuda_sync_debug(moetrain::util::SyncDebugMode::kOff);
  synchronize();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t T = args.at("tokens"), K = args.at("top-k"), F = args.at("hidden"), D = args.at("d-model");
  const double flops = 3.0 * 3.0 * 2.0 * static_cast<double>(T * K * F * D);  // 3 GEMMs, forward + 2 backward
  std::printf(
      "{\"bench\": \"%s\", \"precision\": \"%s\", \"device\": \"%s\", \"sync_debug\": \"%s\", "
      "\"tokens\": %lld, \"d_model\": %lld, \"experts\": %lld, "
      "\"top_k\": %lld, \"hidden\": %lld, \"threads\": %d, \"iters\": %lld, \"ms_per_iter\": %.3f, "
      "\"tokens_per_s\": %.1f, \"matmul_gflop_per_s\": %.1f, \"sync_warnings\": %lld}\n",
      bench, bf16 ? "bf16" : "fp32", bench_device.is_cuda() ? "cuda" : "cpu",
      moetrain::util::to_string(sync_debug), static_cast<long long>(T), static_cast<long long>(D),
      static_cast<long long>(args.at("experts")), static_cast<long long>(K), static_cast<long long>(F),
      torch::get_num_threads(), static_cast<long long>(args.at("iters")), 1e3 * seconds / args.at("iters"),
      T * args.at("iters") / seconds, flops * args.at("iters") / seconds / 1e9,
      static_cast<long long>(sync_warnings.count()));
  std::fflush(stdout);
  return 0;
}

// Each phase of the MoE layer timed alone, forward + backward with a random incoming gradient, on the
// routing of `x`; prints one JSON line, "moe-layer-breakdown", in ms per iteration.
int print_breakdown(const Args& args, moetrain::moe::MoELayer& layer, const torch::Tensor& x_BSD,
                    double whole_s) {
  namespace moe = moetrain::moe;
  const int64_t E = args.at("experts"), D = args.at("d-model");
  const auto compute = args.at("bf16") ? std::optional<torch::ScalarType>(torch::kBFloat16) : std::nullopt;
  auto leaf = [](const torch::Tensor& t) { return t.detach().requires_grad_(true); };
  auto x_TD = leaf(x_BSD.reshape({-1, D}));
  // One routing, reused by the later phases as their input.
  moe::Routing route;
  {
    torch::NoGradGuard no_grad;
    route = layer->router(x_TD);
  }
  const auto layout = moe::RowLayout::dropless(route.max_kept);
  const auto rows = moe::dispatch_rows(route.kept_TE, layout);
  const auto offsets = rows.tokens_per_expert_E.cumsum(0).to(torch::kInt32);
  const int64_t N = rows.token_N.size(0);
  auto rows_ND = leaf(x_TD.index_select(0, rows.token_N));
  const auto g_TE = torch::randn_like(route.gates_TE), g_ND = torch::randn_like(rows_ND),
             g_TD = torch::randn_like(x_TD);
  moe::ExpertOperands cast_ops;  // leaves in the compute dtype, the inputs of the GEMM phase
  {
    torch::NoGradGuard no_grad;
    cast_ops = layer->experts->operands(rows_ND, compute);
  }
  for (auto* t : {&cast_ops.x_ND, &cast_ops.w1_EDF, &cast_ops.w3_EDF, &cast_ops.w2_EFD}) *t = leaf(*t);
  const auto g_out = torch::randn({N, D}, cast_ops.x_ND.options().requires_grad(false));
  auto gates_TE = leaf(route.gates_TE);

  std::vector<std::pair<const char*, double>> phases;
  phases.emplace_back("router", seconds_per_step(args,
                                                 [&] {
    auto r = layer->router(x_TD);
    ((r.gates_TE * g_TE).sum() + moe::switch_aux_loss(r.probs_TE, r.routed_TE, args.at("top-k"))).backward();
                      }));
  phases.emplace_back("dispatch", seconds_per_step(args, [&] {
                        moe::LocalDispatcher dispatcher(E);
                        dispatcher.dispatch(x_TD, route.kept_TE, layout).tokens_ND.backward(g_ND);
                      }));
  phases.emplace_back("operands", seconds_per_step(args, [&] {
                        auto ops = layer->experts->operands(rows_ND, compute);
                        std::vector<torch::Tensor> outs{ops.x_ND, ops.w1_EDF, ops.w3_EDF, ops.w2_EFD}, grads;
                        if (compute)
                          outs.push_back(leaf(cast_ops.x_ND).to(torch::kFloat32));  // the output's cast back
                        for (const auto& t : outs) grads.push_back(torch::ones_like(t));
                        torch::autograd::backward(outs, grads);
                      }));
  phases.emplace_back("expert_gemms", seconds_per_step(args, [&] {
                        moe::grouped_swiglu(cast_ops, offsets, 0.0).backward(g_out);
                      }));
  phases.emplace_back("combine", seconds_per_step(args, [&] {
                        moe::combine_rows(rows_ND, rows, gates_TE).backward(g_TD);
                      }));
  double sum = 0;
  std::string fields;
  for (const auto& [name, s] : phases) {
    sum += s;
    fields += ", \"" + std::string(name) + "_ms\": " + std::to_string(1e3 * s);
  }
  std::printf(
      "{\"bench\": \"moe-layer-breakdown\", \"precision\": \"%s\", \"device\": \"%s\", \"tokens\": %lld, "
      "\"threads\": %d, \"iters\": %lld%s, \"phases_ms\": %.3f, \"layer_ms\": %.3f, \"rest_ms\": %.3f}\n",
      compute ? "bf16" : "fp32", bench_device.is_cuda() ? "cuda" : "cpu", static_cast<long long>(x_TD.size(0)),
      torch::get_num_threads(), static_cast<long long>(args.at("iters")), fields.c_str(), 1e3 * sum,
      1e3 * whole_s, 1e3 * (whole_s - sum));
  std::fflush(stdout);
  return 0;
}

int bench_moe_layer(const Args& args) {
  const int64_t T = args.at("tokens"), D = args.at("d-model"), E = args.at("experts"), K = args.at("top-k"),
                F = args.at("hidden");
  if (args.at("threads") > 0) torch::set_num_threads(static_cast<int>(args.at("threads")));
  torch::manual_seed(0);
  moetrain::moe::MoEOptions options;
  options.d_model = D, options.num_experts = E, options.top_k = K, options.expert_hidden = F;
  options.routing.set_aux_loss_coeff(0.01);
  moetrain::moe::MoELayer layer(options);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : layer->parameters()) p.normal_(0.0, 0.02);
  }
  layer->to(bench_device);
  auto x = torch::randn({1, T, D}, torch::TensorOptions().device(bench_device).requires_grad(true));
  auto whole_layer = [&] {
    auto out = layer(x);
    (out.y.square().mean() + out.aux_loss).backward();
  };
  const int rc = time_steps("moe-layer", args, whole_layer);
  if (rc != 0 || !args.at("breakdown")) return rc;
  return print_breakdown(args, layer, x, seconds_per_step(args, whole_layer));
}

// A dense SwiGLU with hidden top_k·F: the same matmul FLOPs per token as the MoE layer's experts.
int bench_dense_swiglu(const Args& args) {
  const int64_t T = args.at("tokens"), D = args.at("d-model"), K = args.at("top-k"), F = args.at("hidden");
  if (args.at("threads") > 0) torch::set_num_threads(static_cast<int>(args.at("threads")));
  torch::manual_seed(0);
  moetrain::layers::SwiGLU mlp(D, K * F);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : mlp->parameters()) p.normal_(0.0, 0.02);
  }
  mlp->to(bench_device);
  auto x = torch::randn({1, T, D}, torch::TensorOptions().device(bench_device).requires_grad(true));
  return time_steps("dense-swiglu", args, [&] { mlp(x).square().mean().backward(); });
}

// One GEMM of the MoE layer's forward + backward matmul FLOPs, in the compute dtype (no autocast needed).
int bench_gemm(const Args& args) {
  const int64_t T = args.at("tokens"), D = args.at("d-model"), K = args.at("top-k"), F = args.at("hidden");
  if (args.at("threads") > 0) torch::set_num_threads(static_cast<int>(args.at("threads")));
  torch::manual_seed(0);
  const auto options =
      torch::TensorOptions().device(bench_device).dtype(args.at("bf16") ? torch::kBFloat16 : torch::kFloat32);
  auto a = torch::randn({T, D}, options), b = torch::randn({D, 9 * K * F}, options);
  torch::Tensor c;
  return time_steps("gemm", args, [&] { c = torch::mm(a, b); });
}

int bench_finetune(const Args& args) {
  const int64_t T = args.at("tokens"), D = args.at("d-model"), E = args.at("experts"), K = args.at("top-k"),
                F = args.at("hidden"), R = args.at("lora-rank");
  if (R <= 0 || R % 4 != 0) {
    throw std::invalid_argument("--lora-rank " + std::to_string(R) +
                                ": must be a positive multiple of 4 (the expert "
                                "adapters' fp32 grouped GEMM needs 16-byte aligned strides), for example 8");
  }
  if (args.at("threads") > 0) torch::set_num_threads(static_cast<int>(args.at("threads")));
  if (bench_device.is_cuda()) throw std::invalid_argument("finetune runs on the CPU only (--device cpu)");
  for (const bool lora : {false, true}) {
    torch::manual_seed(0);
    moetrain::moe::MoEOptions options;
    options.d_model = D, options.num_experts = E, options.top_k = K, options.expert_hidden = F;
    options.routing.set_aux_loss_coeff(0.01);
    if (lora) options.lora.rank = R, options.lora.gate = options.lora.up = options.lora.down = true;
    moetrain::moe::MoELayer layer(options);
    std::vector<torch::Tensor> trainable;
    int64_t total = 0;
    {
      torch::NoGradGuard no_grad;
      for (auto& p : layer->named_parameters()) {
        const bool adapter = p.key().find("_lora_") != std::string::npos;
        if (p.key().find("_lora_b") == std::string::npos) p.value().normal_(0.0, 0.02);  // B starts at 0
        total += p.value().numel();
        if (lora && !adapter) p.value().requires_grad_(false);
        else trainable.push_back(p.value());
      }
    }
    torch::optim::AdamW optimizer(trainable, torch::optim::AdamWOptions(1e-4));
    auto x = torch::randn({1, T, D});
    auto step = [&] {
      auto out = layer(x);
      (out.y.square().mean() + out.aux_loss).backward();
      optimizer.step();
      optimizer.zero_grad();
    };
    for (int64_t i = 0; i < std::max<int64_t>(args.at("warmup"), 1); ++i) step();
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < args.at("iters"); ++i) step();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int64_t trainable_numel = 0;
    for (const auto& p : trainable) trainable_numel += p.numel();
    // fp32: one gradient and two AdamW moments per trainable element.
    const double state_mib = 3.0 * 4.0 * static_cast<double>(trainable_numel) / (1 << 20);
    std::printf(
        "{\"bench\": \"finetune\", \"mode\": \"%s\", \"tokens\": %lld, \"d_model\": %lld, \"experts\": %lld, "
        "\"top_k\": %lld, \"hidden\": %lld, \"lora_rank\": %lld, \"threads\": %d, \"iters\": %lld, "
        "\"params\": %lld, \"trainable\": %lld, \"grad_and_adam_mib\": %.2f, \"ms_per_step\": %.3f, "
        "\"tokens_per_s\": %.1f}\n",
        lora ? "lora" : "full", static_cast<long long>(T), static_cast<long long>(D), static_cast<long long>(E),
        static_cast<long long>(K), static_cast<long long>(F), static_cast<long long>(lora ? R : 0),
        torch::get_num_threads(), static_cast<long long>(args.at("iters")), static_cast<long long>(total),
        static_cast<long long>(trainable_numel), state_mib, 1e3 * seconds / args.at("iters"),
        T * args.at("iters") / seconds);
  }
  return 0;
}

// Median and mean of `samples` microseconds.
std::pair<double, double> median_mean(std::vector<double> samples) {
  std::sort(samples.begin(), samples.end());
  double sum = 0;
  for (const double s : samples) sum += s;
  return {samples[samples.size() / 2], sum / static_cast<double>(samples.size())};
}

int bench_collectives(const Args& args) {
  const auto launch = moetrain::parallel::detect_launch();
  auto world = moetrain::parallel::world_communicator(launch);
  const int ranks = world->size();
  const char* wait = std::getenv("MOETRAIN_MPI_WAIT");
  std::vector<int64_t> sizes{8, 4096, 262144, 4194304};
  if (args.at("bytes") > 0) sizes = {args.at("bytes")};
  for (const int64_t bytes : sizes) {
    const int64_t per_rank = std::max<int64_t>(1, bytes / 4 / ranks);  // fp32 elements sent to each rank
    const auto x = torch::ones({per_rank * ranks});
    const std::vector<int64_t> counts(static_cast<size_t>(ranks), per_rank);
    std::vector<double> reduce_us, a2a_us;
    for (int64_t i = 0; i < args.at("warmup") + args.at("iters"); ++i) {
      auto y = x.clone();
      world->barrier();
      auto t0 = std::chrono::steady_clock::now();
      world->all_reduce_sum(y);
      auto t1 = std::chrono::steady_clock::now();
      world->barrier();
      auto t2 = std::chrono::steady_clock::now();
      auto z = world->all_to_all_v(x, counts, counts);
      auto t3 = std::chrono::steady_clock::now();
      if (i < args.at("warmup")) continue;
      reduce_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      a2a_us.push_back(std::chrono::duration<double, std::micro>(t3 - t2).count());
    }
    const auto [reduce_median, reduce_mean] = median_mean(reduce_us);
    const auto [a2a_median, a2a_mean] = median_mean(a2a_us);
    if (world->rank() == 0) {
      std::printf(
          "{\"bench\": \"collectives\", \"launcher\": \"%s\", \"ranks\": %d, \"wait\": \"%s\", \"bytes\": %lld, "
          "\"iters\": %lld, \"all_reduce_us_median\": %.1f, \"all_reduce_us_mean\": %.1f, "
          "\"all_to_all_us_median\": %.1f, \"all_to_all_us_mean\": %.1f}\n",
          launch.launcher.c_str(), ranks, wait ? wait : "poll", static_cast<long long>(per_rank * ranks * 4),
          static_cast<long long>(args.at("iters")), reduce_median, reduce_mean, a2a_median, a2a_mean);
      std::fflush(stdout);
    }
  }
  return 0;
}

// Integer flags: name, default, help.
struct IntFlag {
  const char* name;
  int64_t fallback;
  const char* help;
};
constexpr IntFlag kIntFlags[] = {
    {"tokens", 4096, "tokens per step"},
    {"d-model", 256, "model width D"},
    {"experts", 8, "experts E"},
    {"top-k", 2, "experts per token K"},
    {"hidden", 512, "expert hidden size F"},
    {"warmup", 2, "untimed iterations first"},
    {"iters", 10, "timed iterations"},
    {"threads", 0, "CPU threads (0: torch's default)"},
    {"lora-rank", 8, "finetune: LoRA rank R, a multiple of 4"},
    {"bytes", 0, "collectives: bytes per rank (0: sweep 8 B to 4 MiB)"},
};

void declare(cli::Command& cmd) {
  cmd.operand("BENCHMARK", "moe-layer, dense-swiglu, gemm, finetune or collectives", "name a benchmark");
  for (const auto& f : kIntFlags) cmd.option(std::string("--") + f.name, "N", f.help);
  cmd.option("--precision", "P", "fp32 (default) or bf16: mixed precision as train.precision=BF16 runs it")
      .toggle("--breakdown", "moe-layer: also where the layer's time goes, phase by phase")
      .option("--device", "D", "cpu (default) or cuda (GPU 0)")
      .retired("--bf16",
               "moe-bench spells precision as moe-eval does: pass --precision fp32 (was --bf16 0) or "
               "--precision bf16 (was --bf16 1)");
}

int run_benchmark(const std::string& name, const Args& args) {
  if (name == "moe-layer") return bench_moe_layer(args);
  if (name == "finetune") return bench_finetune(args);
  if (name == "dense-swiglu") return bench_dense_swiglu(args);
  if (name == "gemm") return bench_gemm(args);
  return bench_collectives(args);
}

}  // namespace

int main(int argc, char** argv) {
  // Before the first tensor; a malformed MOETRAIN_HOST_MALLOC is a usage error.
  if (const int rc = cli::setup_error("moe-bench", moetrain::util::keep_freed_host_memory)) return rc;
  cli::Command cmd("moe-bench",
                   "usage: moe-bench moe-layer|dense-swiglu|gemm|finetune|collectives [--tokens N] [--d-model D]\n"
                   "                 [--experts E] [--top-k K] [--hidden F] [--warmup N] [--iters N] [--threads T]\n"
                   "                 [--lora-rank R] [--precision fp32|bf16] [--breakdown] [--bytes N]\n"
                   "                 [--device cpu|cuda]\n");
  declare(cmd);
  return cmd.run(argc, argv, [&] {
    const std::string name = cmd.operand(0);
    const std::vector<std::string> known{"moe-layer", "dense-swiglu", "gemm", "finetune", "collectives"};
    if (std::find(known.begin(), known.end(), name) == known.end()) {
      throw cli::UsageError("unknown benchmark \"" + name +
                            "\" (known: moe-layer, dense-swiglu, gemm, finetune, collectives)");
    }
    Args args;
    for (const auto& f : kIntFlags) args[f.name] = cmd.integer(std::string("--") + f.name, f.fallback, 0);
    args["bf16"] = cmd.choice("--precision", {"fp32", "bf16"}, "fp32") == "bf16";
    args["breakdown"] = cmd.has("--breakdown");
    if (cmd.choice("--device", {"cpu", "cuda"}, "cpu") == "cuda")
      bench_device = torch::Device(torch::kCUDA, 0);
    if (bench_device.is_cuda() && !torch::cuda::is_available()) {
      throw std::invalid_argument("--device cuda: no GPU is visible (torch::cuda::is_available() is false)");
    }
    return run_benchmark(name, args);
  });
}
