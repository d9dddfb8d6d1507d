// SwiGLU feed-forward, the dense MLP of the transformer and the MoE layer's shared experts.
#pragma once

#include <torch/torch.h>

#include <memory>

#include "csrc/layers/tensor_parallel_ops.h"

namespace moetrain::layers {

// SwiGLU feed-forward: w2(silu(w1 x) * w3 x). Tensor parallel (tp > 1): w1, w3 column-parallel
// (F/tp hidden units each), w2 row-parallel, output all-reduced.
class SwiGLUImpl : public torch::nn::Module {
 public:
  SwiGLUImpl(int64_t d_model, int64_t hidden, int64_t tp_size = 1);
  torch::Tensor forward(const torch::Tensor& x);  // (..., D) -> (..., D)
  void set_tensor_parallel(std::shared_ptr<TensorParallelOps> tp) { tp_ = std::move(tp); }

  torch::nn::Linear w1{nullptr};  // gate projection, weight (F/tp, D)
  torch::nn::Linear w3{nullptr};  // up projection, weight (F/tp, D)
  torch::nn::Linear w2{nullptr};  // down projection, weight (D, F/tp)
 private:
  std::shared_ptr<TensorParallelOps> tp_;
};
TORCH_MODULE(SwiGLU);

}  // namespace moetrain::layers
