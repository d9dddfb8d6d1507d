#include "trainer/train_step.h"

#include <chrono>
#include <limits>

#include "csrc/util/fault_injection.h"
#include "csrc/util/host_sync.h"
#include "csrc/util/memory_stats.h"
#include "parallel/grad_sync.h"
#include "trainer/optimizer.h"
#include "trainer/schedule.h"

namespace moetrain::trainer {

double monotonic_seconds() {
  using namespace std::chrono;
  return duration_cast<duration<double>>(steady_clock::now().time_since_epoch()).count();
}

TrainStep::TrainStep(const config::Recipe& recipe, StepParts parts)
    : recipe_(recipe), p_(parts), moe_layers_(parts.model.moe_layers()) {
  micro_batch_ = recipe.train().micro_batch_size();
  accumulation_ = recipe.train().grad_accum_steps();
  seq_len_ = recipe.data().seq_len();
  if (p_.mesh) dp_ = p_.mesh->sizes().dp(), dp_rank_ = p_.mesh->dp_rank();
  const double clip = recipe.optimizer().grad_clip();
  clip_ = clip > 0 ? clip : std::numeric_limits<double>::infinity();
  if (p_.mesh && recipe.parallel().grad_bucket_mb() > 0)
    buckets_ = std::make_unique<parallel::GradBuckets>(p_.model, *p_.mesh, recipe.parallel().grad_bucket_mb());
}

StepOutcome TrainStep::run(TrainState& state) {
  const double start = monotonic_seconds();
  const util::HostReadCount reads;  // every device-to-host read of the step, from any thread
  const bool count_memory = !p_.device.is_cpu() || util::tracking_cpu_memory();
  if (count_memory) util::reset_memory_peak(p_.device);
  const int64_t allocated_at_start = count_memory ? util::memory_stats(p_.device).allocated : -1;
  parallel::comm_clock().take();  // what came before the step (evaluation, checkpoints) is not the step's
  StepOutcome out;
  out.micro_batches = accumulation_;
  out.lr = set_learning_rate(state.step);
  torch::Tensor lm_sum = forward_backward(state);
  state.samples_consumed += micro_batch_ * accumulation_ * dp_;
  const torch::Tensor grad_norm = p_.distributed ? distributed_step(out) : replicated_step(out);
  // The step's routing measures and global-batch load, summed over the world, in one host read; then the
  // aux-loss-free bias update from that load.
  out.moe = read_step_measures(moe_layers_, p_.moe);
  for (size_t l = 0; l < moe_layers_.size(); ++l) moe_layers_[l]->end_step(out.moe[l].load_E);
  // The LM loss is replicated over tp: the mean over the world is the mean over dp. One host read for both.
  if (p_.mesh && p_.mesh->sizes().world > 1) parallel::sum_over_world(lm_sum, *p_.mesh);
  const auto scalars = util::read_to_host(torch::stack({lm_sum, grad_norm}), "step loss and gradient norm");
  out.lm_sum = scalars.data_ptr<double>()[0] / (p_.mesh ? p_.mesh->sizes().world : 1);
  out.grad_norm = scalars.data_ptr<double>()[1];
  state.step += 1;
  out.tokens_per_step = micro_batch_ * accumulation_ * seq_len_ * dp_;
  state.tokens += out.tokens_per_step;
  out.step = state.step, out.tokens = state.tokens;
  out.seconds = monotonic_seconds() - start;
  out.host_reads = reads.reads();
  if (count_memory) out.mem_allocated = allocated_at_start, out.mem_peak = util::memory_stats(p_.device).peak;
  out.comm = parallel::comm_clock().take();
  return out;
}

torch::Tensor TrainStep::replicated_step(StepOutcome& out) {
  reduce_gradients(out);
  const torch::Tensor grad_norm = p_.mesh ? parallel::global_grad_norm(p_.model, *p_.mesh)
                                          : local_grad_norm(p_.model);
  clip_gradients(p_.model, clip_, grad_norm);
  util::inject_fault(util::FaultPoint::kOptimizerStep);
  p_.optimizer.step();
  if (buckets_) {
    buckets_->zero_grad();  // keeps the .grad views into the buckets
  } else {
    p_.optimizer.zero_grad();
  }
  return grad_norm;
}

torch::Tensor TrainStep::distributed_step(StepOutcome& out) {
  auto& optimizer = *p_.distributed;
  if (buckets_) {  // all-reduced in buckets during backward: each rank keeps its shard of the means
    reduce_gradients(out);
    optimizer.shard_reduced_gradients();
  } else {
    optimizer.reduce_scatter_gradients();  // frees the full gradients
  }
  const torch::Tensor grad_norm = optimizer.grad_norm();
  optimizer.clip(clip_, grad_norm);
  util::inject_fault(util::FaultPoint::kOptimizerStep);
  optimizer.set_lr(out.lr);
  optimizer.step();
  if (buckets_) buckets_->zero_grad();  // keeps the .grad views into the buckets
  return grad_norm;
}

double TrainStep::set_learning_rate(int64_t step) {
  const double lr = learning_rate(recipe_, step);
  for (auto& group : p_.optimizer.param_groups())
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  return lr;
}

torch::Tensor TrainStep::forward_backward(const TrainState& state) {
  auto& model = p_.model;
  torch::Tensor lm_sum = torch::zeros({}, torch::TensorOptions(p_.device).dtype(torch::kFloat64));
  for (int64_t micro = 0; micro < accumulation_; ++micro) {
    // Data-parallel rank r reads micro-batch m at global positions base + (m·dp + r)·mbs: the same
    // sequences, in the same routing groups, as one process with dp× the accumulation steps.
    const int64_t first_sample = state.samples_consumed + (micro * dp_ + dp_rank_) * micro_batch_;
    auto batch = p_.data
                     .batch(first_sample, micro_batch_)  // (mbs, seq + 1)
                     .to(p_.device, /*non_blocking=*/p_.device.is_cuda());
    model.set_first_sample(first_sample);  // router noise keyed by global token
    auto out = model.forward(batch.narrow(1, 0, seq_len_));
    auto lm = model.token_losses(out.logits, batch.narrow(1, 1, seq_len_)).mean();
    auto loss = (lm + out.aux_loss + out.z_loss) / static_cast<double>(accumulation_);
    if (buckets_ && micro == accumulation_ - 1) buckets_->arm();  // its gradients are final: reduce them now
    loss.backward();
    if (p_.distributed) p_.distributed->accumulate_gradients();  // bf16 parameters: their gradients in fp32
    lm_sum += lm.detach().to(torch::kFloat64);
  }
  return lm_sum;
}

void TrainStep::reduce_gradients(StepOutcome& out) {
  // Every trainable parameter has a gradient, zero where the step did not use it (a router under RANDOM
  // routing): AdamW then decays it alike in one process and in every layout's gradient buckets.
  for (auto& p : p_.model.parameters()) {
    if (p.requires_grad() && !p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
  }
  if (buckets_) {
    out.grad_buckets = buckets_->buckets();
    out.grad_buckets_in_backward = buckets_->finish();
    out.grad_bucket_copies = buckets_->copies();
  } else if (p_.mesh) {
    parallel::sync_gradients(p_.model, *p_.mesh);
  }
}

}  // namespace moetrain::trainer
