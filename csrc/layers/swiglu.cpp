#include "csrc/layers/swiglu.h"

#include "csrc/layers/precision.h"

namespace moetrain::layers {

SwiGLUImpl::SwiGLUImpl(int64_t d_model, int64_t hidden, int64_t tp_size) {
  const int64_t local = hidden / tp_size;
  w1 = register_module("w1", torch::nn::Linear(torch::nn::LinearOptions(d_model, local).bias(false)));
  w3 = register_module("w3", torch::nn::Linear(torch::nn::LinearOptions(d_model, local).bias(false)));
  w2 = register_module("w2", torch::nn::Linear(torch::nn::LinearOptions(local, d_model).bias(false)));
}

torch::Tensor SwiGLUImpl::forward(const torch::Tensor& input) {
  auto x = tp_ ? tp_->copy_to_tp(in_compute_dtype(input)) : input;  // as in attention
  auto y = w2(torch::silu(w1(x)) * w3(x));                          // the compute dtype
  if (tp_) y = tp_->reduce_from_tp(y);                              // summed in it
  return y.to(input.scalar_type());                                 // residual dtype
}

}  // namespace moetrain::layers
