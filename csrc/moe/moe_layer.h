// The MoE feed-forward layer: route → (capacity) → dispatch → grouped experts → combine (+ shared
// experts), with its balancing losses and load measures.
#pragma once

#include <memory>

#include "csrc/layers/swiglu.h"
#include "csrc/moe/dispatch.h"
#include "csrc/moe/experts.h"
#include "csrc/moe/parallel_context.h"
#include "csrc/moe/router.h"

namespace moetrain::moe {

struct MoEOptions {
  int64_t d_model = 0;
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t expert_hidden = 0;
  int64_t shared_hidden = 0;  // 0 = no shared experts
  bool shared_gate = false;   // shared experts' output × sigmoid(x·w_g), w_g (1, D) (Qwen2-MoE)
  // Expert parallelism: this process holds experts [first_local_expert, first_local_expert + local_experts).
  int64_t local_experts = 0;  // 0 = all experts
  int64_t first_local_expert = 0;
  // Expert tensor parallelism: this process holds slice expert_hidden_shard of expert_hidden_shards of
  // each local expert's hidden dimension, columns [shard · H/shards, +H/shards) of w1/w3 and rows of w2.
  // Its output is then a partial sum, which the dispatcher sums over the expert-tensor group.
  int64_t expert_hidden_shards = 1, expert_hidden_shard = 0;
  int64_t local_expert_hidden() const { return expert_hidden / expert_hidden_shards; }
  config::RoutingConfig routing;  // defaults filled in
  ExpertLoraOptions lora;         // adapters on the experts (fine-tuning)
  bool recompute_act = false;     // train.recompute_modules "moe_act" (GroupedExperts)
};

// Per-layer measures of one forward: detached tensors on the layer's device, never read on the host in
// the forward (docs/routing.md, "Host reads"). Training forwards also add them to the step's sums
// (MoELayerImpl::step_measures), which the trainer reads once per step.
struct MoEMeasures {
  torch::Tensor tokens_per_expert_E;  // int64 (E) routed pairs per expert, before capacity (the router's load)
  torch::Tensor routed_pairs;         // int64 scalar: Σ routed
  torch::Tensor dropped_pairs;        // int64 scalar: routed but over capacity
  torch::Tensor tokens;               // int64 scalar: T, the tokens this forward routed
  // int64 scalar: tokens no expert computes (no kept pair): under expert choice the tokens no expert
  // chose; under token choice the tokens whose every pair was dropped by the capacity.
  torch::Tensor unchosen_tokens;
  torch::Tensor entropy;  // fp64 scalar: mean router entropy (nats)
  torch::Tensor aux_loss;  // fp32 scalar: coefficient-weighted balancing losses of this layer (0 in evaluation)
  torch::Tensor z_loss;    // fp32 scalar: coefficient-weighted z-loss of this layer (0 in evaluation)
};

// Layout of MoELayerImpl::step_measures (unscoped: the values index that tensor).
enum StepMeasure : int64_t {
  kRoutedPairs,
  kDroppedPairs,
  kEntropySum,
  kAuxLossSum,
  kZLossSum,
  kTokens,
  kUnchosenTokens,
  kNumStepMeasures
};

struct MoEOutput {
  torch::Tensor y;  // (B, S, D)
  // Training only: in evaluation (is_training() false) both are 0 and no balancing collective runs.
  torch::Tensor aux_loss;  // scalar: Σ of the layer's balancing losses, coefficients applied
  torch::Tensor z_loss;    // scalar: z-loss, coefficient applied
  MoEMeasures measures;
};

class MoELayerImpl : public torch::nn::Module {
 public:
  explicit MoELayerImpl(const MoEOptions& options);
  // x_BSD; token_ids_BS (int64) are needed by HASH routing only. `slice` says where x's tokens sit in
  // the micro-batch when they are one rank's share of it (sequence-parallel MoE under tensor
  // parallelism); the sequence loss needs it.
  MoEOutput forward(const torch::Tensor& x_BSD, const torch::Tensor& token_ids_BS = {},
                    const TokenSlice& slice = {});

  // Routed counts of every training forward since the last end_step() (the step's load): int64 (E).
  const torch::Tensor& step_counts() const { return step_counts_E_; }
  // Sums of every training forward's MoEMeasures since the last end_step(): fp64 (kNumStepMeasures),
  // indexed by StepMeasure, on the layer's device; step_forwards() training forwards.
  const torch::Tensor& step_measures() const { return step_measures_; }
  int64_t step_forwards() const { return step_forwards_; }
  // After the optimizer step: applies the aux-loss-free bias update from `counts_E` (the step's counts
  // over the whole global batch) unless the router is frozen, and resets the step's accumulators.
  void end_step(const torch::Tensor& counts_E);

  // Installs how this layer's tokens relate to other processes (parallel_context.h): its dispatcher and
  // the count sums of the balancing losses. A new layer is one process.
  void set_parallel_context(std::shared_ptr<const MoEParallelContext> context);
  void set_router_frozen(bool frozen) { router_frozen_ = frozen; }

  Router router{nullptr};
  GroupedExperts experts{nullptr};
  layers::SwiGLU shared{nullptr};          // null unless options.shared_hidden > 0
  torch::nn::Linear shared_gate{nullptr};  // weight (1, D); null unless options.shared_gate

 private:
  MoEOptions options_;
  std::shared_ptr<const MoEParallelContext> context_;
  std::shared_ptr<TokenDispatcher> dispatcher_;
  // This forward's measures (detached; no host read).
  static MoEMeasures forward_measures(const Routing& route, const MoEOutput& out);
  // The step's accumulators, on the device of the latest forward (accumulate_step moves them there).
  void accumulate_step(const MoEMeasures& measures);
  torch::Tensor step_counts_E_;         // int64, this process
  torch::Tensor global_step_counts_E_;  // int64, summed over the data-parallel group (global aux loss)
  torch::Tensor step_measures_;         // fp64 (kNumStepMeasures)
  int64_t step_forwards_ = 0;
  bool router_frozen_ = false;
};
TORCH_MODULE(MoELayer);

}  // namespace moetrain::moe
