// Gradient synchronisation and the global gradient norm for the data- and expert-parallel mesh.
//
// Objective: the mean over data-parallel ranks of each rank's loss. Hence
//   dense (replicated) parameters: all-reduce-sum over dp, divide by dp size;
//   expert parameters (sharded over ep, replicated over expert_dp): each rank's gradient already sums
//   the contributions of every ep source (through the all-to-all backward); all-reduce-sum over
//   expert_dp, divide by the dp size.
// Gradients travel in one flat bucket per group (one collective each).
#pragma once

#include <torch/torch.h>

#include "parallel/mesh.h"

namespace moetrain::parallel {

// True for parameters sharded over the expert-parallel group.
bool is_expert_parameter(const std::string& name);

void sync_gradients(torch::nn::Module& model, ProcessMesh& mesh);

// L2 norm of the whole model's gradient, every parameter counted once: replicated parameters from this
// rank, expert shards summed over the ep group. Identical on every rank.
double global_grad_norm(torch::nn::Module& model, ProcessMesh& mesh);

// Sums a tensor over the data-parallel group (routing counts, loss sums), in place.
void sum_over_dp(torch::Tensor& t, ProcessMesh& mesh);

}  // namespace moetrain::parallel
