// Gradients reduced while backward runs (parallel.grad_bucket_mb > 0), the objective and the groups as
// sync_gradients (parallel/grad_sync.h) has them: dense parameters summed over dp, expert parameters over
// expert_dp, both divided by the dp size; parameters whose gradients are tensor-parallel shares
// (tp_partial_grad) are summed over tp first, so they wait for the end of backward, as before.
//
// Buckets: each group's parameters in reverse order of registration (about the order backward finishes
// them), cut every grad_bucket_mb MiB of fp32 (and where the dtype changes). Each bucket owns one flat
// buffer, and its parameters' .grad are views into it (Megatron's contiguous gradient buffer): autograd
// accumulates every micro-batch in place there, and the bucket's all-reduce runs on the buffer itself, with
// no concatenated copy and nothing to write back. A post-accumulate-grad hook on every parameter counts
// the final gradients of the step's last micro-batch (arm()); a bucket whose gradients are all final has
// its all-reduce started (Communicator::all_reduce_sum_async), buckets strictly in order so that every rank
// starts the same collectives in the same order whatever order its hooks ran in. finish() starts what
// backward left (parameters without a gradient have zeros), waits for every bucket and divides. zero_grad()
// replaces the optimizer's: it zeroes the buffers and keeps the views.
//
// Same result as sync_gradients: each element's sum over the group is the same all-reduce of the same
// values, only cut into several messages; with a group of 2 ranks (a + b) it is bitwise equal, with more the
// MPI library's algorithm for a message size may add in another order (tests/e2e/grad_buckets.py allows 1e-6
// there; measured bitwise equal over 4 ranks).
#pragma once

#include <torch/torch.h>

#include <memory>
#include <vector>

#include "csrc/model/transformer.h"
#include "parallel/mesh.h"

namespace moetrain::parallel {

class GradBuckets {
 public:
  GradBuckets(model::TransformerImpl& model, ProcessMesh& mesh, double bucket_mb);
  ~GradBuckets();
  GradBuckets(const GradBuckets&) = delete;
  GradBuckets& operator=(const GradBuckets&) = delete;

  // The next backward is the step's last: each gradient it finishes is final.
  void arm();
  // After that backward: every bucket reduced, every gradient the mean over its group. Returns how many
  // buckets started during the backward (the others started here).
  int64_t finish();
  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }
  // Gradients found outside their bucket when it started (autograd replaced the view, or code outside set
  // .grad) and copied in, since construction. 0 in training: the reduction works in place.
  int64_t copies() const { return copies_; }
  // For the next step: every bucket's buffer zeroed, every bucketed .grad its view again; the gradients of
  // tensor-parallel shares set to none (as Optimizer::zero_grad does).
  void zero_grad();

 private:
  struct Bucket;
  class Hook;
  void gradient_final(size_t bucket);
  void start_ready_buckets();
  void start(Bucket& b);
  void point_grads_at_buffers(Bucket& b);  // .grad = the view, copying in a gradient found elsewhere

  ProcessMesh& mesh_;
  std::vector<std::unique_ptr<Bucket>> buckets_;
  std::vector<torch::Tensor> hooked_;   // parameters carrying our hook (removed in the destructor)
  std::vector<torch::Tensor> partial_;  // tp shares (never experts): summed over tp, then dp, after backward
  size_t next_ = 0;                     // the first bucket not started
  int64_t started_in_backward_ = 0;     // this step's buckets started from the hooks
  int64_t copies_ = 0;
  bool armed_ = false;
};

}  // namespace moetrain::parallel
