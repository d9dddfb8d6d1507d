// Megatron-style tensor-parallel communication (see csrc/layers/tensor_parallel_ops.h for what each
// operation does forward and backward) over the mesh's tensor-parallel group.
#pragma once

#include "csrc/layers/tensor_parallel_ops.h"
#include "parallel/communicator.h"

namespace moetrain::parallel {

class TensorParallel : public layers::TensorParallelOps {
 public:
  explicit TensorParallel(Communicator& tp_group) : tp_(tp_group) {}
  int size() const override { return tp_.size(); }
  int rank() const override { return tp_.rank(); }
  torch::Tensor copy_to_tp(const torch::Tensor& x) override;
  torch::Tensor reduce_from_tp(const torch::Tensor& x) override;
  torch::Tensor scatter_tokens(const torch::Tensor& x_TD) override;
  torch::Tensor gather_tokens(const torch::Tensor& x_TD) override;

 private:
  Communicator& tp_;
};

}  // namespace moetrain::parallel
