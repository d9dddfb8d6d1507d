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

// Global L2 norm of all gradients (accumulated in fp64; over every rank of `mesh` when given), then,
// when it exceeds max_norm, every gradient is scaled by max_norm / (norm + 1e-6) as
// torch::nn::utils::clip_grad_norm_ does. Returns the norm before clipping.
double clip_gradients(torch::nn::Module& model, double max_norm, parallel::ProcessMesh* mesh);

}  // namespace moetrain::trainer
