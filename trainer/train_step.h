// One optimizer step of the loop, in named phases:
//   set_learning_rate → forward_backward (the micro-batches) → reduce_gradients → clip → optimizer step
//   → end_moe_step (routing measures, aux-loss-free bias update) → read_scalars (one host read)
// and what it produced, before any formatting (StepReporter turns it into the logs).
#pragma once

#include <vector>

#include "csrc/config/recipe.pb.h"
#include "csrc/model/transformer.h"
#include "parallel/comm_clock.h"
#include "parallel/distributed_optimizer.h"
#include "parallel/grad_buckets.h"
#include "parallel/mesh.h"
#include "trainer/checkpoint.h"
#include "trainer/data_feed.h"
#include "trainer/moe_measures.h"

namespace moetrain::trainer {

// Seconds on a monotonic clock (step times, the ETA).
double monotonic_seconds();

struct StepOutcome {
  int64_t step = 0;             // optimizer steps completed, this one included
  int64_t micro_batches = 0;    // train.grad_accum_steps
  double lr = 0;                // the learning rate the step used
  double lm_sum = 0;            // Σ over micro-batches of the mean LM loss (the same on every rank)
  double grad_norm = 0;         // global gradient norm before clipping
  int64_t tokens_per_step = 0;  // global batch: micro-batch × accumulation × sequence length × dp
  int64_t tokens = 0;           // training tokens seen in total after the step
  double seconds = 0;           // wall time of the step
  int64_t host_reads = 0;       // device-to-host reads (util::read_to_host) during the step
  // Tensor memory of this process's device (util::memory_stats; -1 where not counted): held when the step
  // started (parameters, optimizer state, buckets) and the most held at once during it.
  int64_t mem_allocated = -1, mem_peak = -1;
  std::vector<LayerStepMeasures> moe;     // per MoE layer, in layer order
  std::vector<parallel::CommTally> comm;  // this rank's collectives of the step, by group and operation
  // Gradient buckets (parallel.grad_bucket_mb > 0; -1 without): in all, started during backward, and the
  // gradients since the start that were not accumulated in place in their bucket (GradBuckets::copies).
  int64_t grad_buckets = -1, grad_buckets_in_backward = -1, grad_bucket_copies = -1;
};

// What a step works on; every reference outlives the TrainStep.
struct StepParts {
  model::TransformerImpl& model;
  torch::optim::AdamW& optimizer;
  TrainingData& data;
  parallel::ProcessMesh* mesh;  // null: one process
  const moe::MoEParallelContext& moe;
  torch::Device device;
  parallel::DistributedOptimizer* distributed = nullptr;  // optimizer.distributed: steps instead of `optimizer`
};

class TrainStep {
 public:
  TrainStep(const config::Recipe& recipe, StepParts parts);
  // Runs the step after state.step and advances `state` (step, samples consumed, tokens).
  StepOutcome run(TrainState& state);

 private:
  double set_learning_rate(int64_t step);
  // The step's micro-batches, forward and backward; returns Σ of their LM losses, fp64 on the device.
  torch::Tensor forward_backward(const TrainState& state);
  // Every gradient final and reduced over its groups (tp, dp, expert dp) as one process would have it.
  void reduce_gradients(StepOutcome& out);
  // Reduction, norm, clipping and AdamW: replicated (torch::optim::AdamW on every rank) or distributed
  // (parallel::DistributedOptimizer). Both return the gradient norm before clipping.
  torch::Tensor replicated_step(StepOutcome& out);
  torch::Tensor distributed_step(StepOutcome& out);

  const config::Recipe& recipe_;
  StepParts p_;
  std::unique_ptr<parallel::GradBuckets> buckets_;  // parallel.grad_bucket_mb > 0 with several ranks
  std::vector<moe::MoELayer> moe_layers_;
  int64_t micro_batch_ = 0, accumulation_ = 0, seq_len_ = 0, dp_ = 1, dp_rank_ = 0;
  double clip_ = 0;
};

}  // namespace moetrain::trainer
