// The communication points of Megatron-style tensor parallelism, as seen by the model. csrc calls them
// and knows nothing of how they communicate; parallel/tensor_parallel.cpp implements them over the
// tensor-parallel group. A model built without tensor parallelism has no TensorParallelOps at all.
//
//   copy_to_tp      identity forward, all-reduce backward   (input of a column-parallel layer)
//   reduce_from_tp  all-reduce forward, identity backward   (output of a row-parallel layer)
//   scatter_tokens  keep this rank's 1/tp of the tokens forward, all-gather backward
//   gather_tokens   all-gather the tokens forward, keep this rank's part backward
// scatter/gather put MoE layers in sequence-parallel form: each tensor-parallel rank routes and
// computes a different 1/tp of the tokens, so no token is computed tp times.
#pragma once

#include <torch/torch.h>

namespace moetrain::layers {

class TensorParallelOps {
 public:
  virtual ~TensorParallelOps() = default;
  virtual int size() const = 0;
  virtual int rank() const = 0;
  virtual torch::Tensor copy_to_tp(const torch::Tensor& x) = 0;
  virtual torch::Tensor reduce_from_tp(const torch::Tensor& x) = 0;
  virtual torch::Tensor scatter_tokens(const torch::Tensor& x_TD) = 0;  // (T, D) -> (T/tp, D)
  virtual torch::Tensor gather_tokens(const torch::Tensor& x_TD) = 0;   // (T/tp, D) -> (T, D)
};

}  // namespace moetrain::layers
