// Optimizer set-up and gradient clipping.
#pragma once

#include <memory>

#include <torch/torch.h>

#include "csrc/config/recipe.pb.h"

namespace moetrain::parallel {
class ProcessMesh;
}

namespace moetrain::trainer {

// AdamW over the trainable parameters in two groups: group 0 holds the matrices (dim >= 2), decayed
// with optimizer.weight_decay; group 1 holds vectors and scalars (norm gains), never decayed.
// Frozen parameters (requires_grad false) are in neither group and get no state. Buffers (the expert
// biases of aux-loss-free balancing) are not parameters and so are never seen by the optimizer.
std::unique_ptr<torch::optim::AdamW> make_optimizer(torch::nn::Module& model, const config::OptimizerConfig& o);

// L2 norm of the gradients of `model`'s parameters, accumulated in fp64: an fp64 scalar on the gradients'
// device (no host read). One process; a distributed run takes parallel::global_grad_norm.
torch::Tensor local_grad_norm(torch::nn::Module& model);

// Scales every gradient by min(1, max_norm / (norm + 1e-6)), as torch::nn::utils::clip_grad_norm_ does,
// with `norm` the global norm before clipping (on the device: the host does not decide). An infinite
// max_norm scales nothing.
void clip_gradients(torch::nn::Module& model, double max_norm, const torch::Tensor& norm);

}  // namespace moetrain::trainer
