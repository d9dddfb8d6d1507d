// Gradient synchronisation and the global gradient norm for the data- and expert-parallel mesh.
//
// Objective: the mean over data-parallel ranks of each rank's loss. Hence
//   dense (replicated) parameters: all-reduce-sum over dp, divide by dp size;
//   expert parameters (sharded over ep, replicated over expert_dp): each rank's gradient already sums
//   the contributions of every ep source (through the all-to-all backward); all-reduce-sum over
//   expert_dp, divide by the dp size.
// Tensor parallelism: attention and dense-MLP weights are sharded over tp (their gradients are complete
// per shard); the router and shared experts see 1/tp of the tokens (sequence parallel), so their
// gradients are first summed over tp; everything else is replicated with identical gradients on every tp
// rank. Experts belong to the expert mesh (parallel/mesh.h): every rank holding an expert shard is in its
// expert_dp group, tp peers included, so the expert_dp sum covers every token; under expert tensor
// parallelism each rank's gradient is complete for its slice of the hidden dimension.
// Gradients travel in one flat bucket per group (one collective each).
#pragma once

#include <torch/torch.h>

#include "csrc/model/sharding.h"
#include "parallel/mesh.h"

namespace moetrain::parallel {

// Which parameter is which comes from model::parameter_role (csrc/model/sharding.h).

void sync_gradients(model::TransformerImpl& model, ProcessMesh& mesh);

// Sums `grads` over `group` in one flat message (their concatenation), in place, and divides by `divisor`.
void all_reduce_mean_bucket(std::vector<torch::Tensor>& grads, Communicator& group, double divisor);

// L2 norm of the whole model's gradient, every parameter counted once: replicated parameters from this
// rank, expert shards summed over the ep and expert_tp groups. Identical on every rank. An fp64 scalar on
// the gradients' device (no host read).
torch::Tensor global_grad_norm(model::TransformerImpl& model, ProcessMesh& mesh);

// The global norm from this rank's sums of squares (fp64, shape (1)) of the replicated parameters, of its
// tensor-parallel slices (summed over tp here) and of its expert shards (summed over ep and expert_tp here).
torch::Tensor grad_norm_from_squares(const torch::Tensor& replicated_sq, torch::Tensor tp_sq,
                                     torch::Tensor expert_sq, ProcessMesh& mesh);

// Sums a tensor over the data-parallel group, in place (routing counts of the global-batch aux loss).
void sum_over_dp(torch::Tensor& t, ProcessMesh& mesh);
// Sums a tensor over every rank, in place (step routing counts, loss sums for logging).
void sum_over_world(torch::Tensor& t, ProcessMesh& mesh);

}  // namespace moetrain::parallel
