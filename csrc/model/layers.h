// Transformer building blocks: RMSNorm, rotary embedding, causal self-attention, SwiGLU MLP.
// Shapes: B batch, S sequence, D d_model, H heads, Dh head size, F hidden size.
#pragma once

#include <torch/torch.h>

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
class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(int64_t d_model, int64_t num_heads, double rope_theta);
  torch::Tensor forward(const torch::Tensor& x);  // (B, S, D) -> (B, S, D)

  torch::nn::Linear wqkv{nullptr};  // weight (3·D, D): rows [q; k; v]
  torch::nn::Linear wo{nullptr};    // weight (D, D)
 private:
  int64_t num_heads_;
  double rope_theta_;
};
TORCH_MODULE(Attention);

// SwiGLU feed-forward: w2(silu(w1 x) * w3 x).
class SwiGLUImpl : public torch::nn::Module {
 public:
  SwiGLUImpl(int64_t d_model, int64_t hidden);
  torch::Tensor forward(const torch::Tensor& x);  // (..., D) -> (..., D)

  torch::nn::Linear w1{nullptr};  // gate projection, weight (F, D)
  torch::nn::Linear w3{nullptr};  // up projection, weight (F, D)
  torch::nn::Linear w2{nullptr};  // down projection, weight (D, F)
};
TORCH_MODULE(SwiGLU);

}  // namespace moetrain::model
