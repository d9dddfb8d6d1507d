// Transformer building blocks: RMSNorm, rotary embedding, causal self-attention, SwiGLU MLP.
// Shapes: B batch, S sequence, D d_model, H heads, Dh head size, F hidden size.
#pragma once

#include <torch/torch.h>

#include <memory>

#include "csrc/model/tensor_parallel_ops.h"

namespace moetrain::model {

// y = x / sqrt(mean(x²) + eps) · weight, computed in fp32 and cast back to x's dtype.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);  // (..., D) -> (..., D)

  torch::Tensor weight;  // (D)
 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

// Rotary position embedding, "rotate half" convention (as Llama/Mixtral in Hugging Face):
// the head vector is split in two halves (x1, x2) and rotated by angle pos·theta^(-2i/Dh).
// x: (B, H, S, Dh), positions 0..S-1.
torch::Tensor apply_rotary(const torch::Tensor& x, double theta);

// Causal multi-head self-attention with RoPE, through LibTorch's scaled_dot_product_attention.
// Tensor parallel (tp > 1): this rank holds heads [rank·H/tp, (rank+1)·H/tp): wqkv is column-parallel
// (its q, k and v rows of those heads), wo row-parallel (its input columns), output all-reduced.
// LoRA on the attention projections (fine-tuning; tp 1): W (out, in) gains (alpha / rank)·B·A with
// A (rank, in) ~ N(0, 1/in), B (out, rank) = 0.
struct AttentionLora {
  int64_t rank = 0;
  double alpha = 16;
  bool qkv = false, out = false;
};

class AttentionImpl : public torch::nn::Module {
 public:
  using Lora = AttentionLora;
  AttentionImpl(int64_t d_model, int64_t num_heads, double rope_theta, int64_t tp_size = 1, const Lora& lora = {});
  torch::Tensor forward(const torch::Tensor& x);  // (B, S, D) -> (B, S, D)
  void set_tensor_parallel(std::shared_ptr<TensorParallelOps> tp) { tp_ = std::move(tp); }
  // Folds the adapters into wqkv and wo and zeroes B (export of a LoRA run).
  void merge_adapters();

  torch::nn::Linear wqkv{nullptr};  // weight (3·D/tp, D): rows [q; k; v] of the local heads
  torch::nn::Linear wo{nullptr};    // weight (D, D/tp)
  torch::Tensor qkv_lora_a, qkv_lora_b, out_lora_a, out_lora_b;  // (rank, D), (3D, rank), (rank, D), (D, rank)
  const Lora& lora() const { return lora_; }
 private:
  int64_t local_heads_;
  double rope_theta_;
  Lora lora_;
  std::shared_ptr<TensorParallelOps> tp_;
};
TORCH_MODULE(Attention);

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

}  // namespace moetrain::model
