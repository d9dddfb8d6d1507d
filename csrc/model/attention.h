// Attention and its parts: RMSNorm, rotary embedding, causal self-attention (the dense SwiGLU is
// csrc/layers/swiglu.h).
// Shapes: B batch, S sequence, D d_model, H heads, Dh head size, F hidden size.
#pragma once

#include <torch/torch.h>

#include <memory>

#include "csrc/layers/tensor_parallel_ops.h"

namespace moetrain::model {

// y = x / sqrt(mean(x²) + eps) · weight, computed in fp32 and cast back to x's dtype.
class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);  // (..., D) -> (..., D)
  // forward(x) with x's two uses given apart: x · rsqrt(mean(x_for_scale²) + eps) · weight, both the same
  // values. A recomputed norm (train.recompute "layernorm") passes x twice, so that its two gradient terms
  // reach x one by one, in the order they do without recomputation (x · … first, then x²), and x's
  // gradient is summed bitwise alike.
  torch::Tensor forward_parts(const torch::Tensor& x, const torch::Tensor& x_for_scale);

  torch::Tensor weight;  // (D)
 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

// Rotary position embedding, "rotate half" convention (as Llama/Mixtral in Hugging Face):
// the head vector is split in two halves (x1, x2) and rotated by angle pos·theta^(-2i/Dh).
// x: (B, H, S, Dh), positions 0..S-1.
torch::Tensor apply_rotary(const torch::Tensor& x, double theta);

// Causal self-attention with RoPE, through LibTorch's scaled_dot_product_attention.
// Grouped-query attention: H query heads share Hkv key/value heads, G = H / Hkv query heads each (query
// head h uses key/value head h / G, as Hugging Face's repeat_kv); the head size Dh is independent of D.
//
// wqkv is one fused projection whose rows are G + 2 "slots" of Hkv·Dh rows each (per key/value head j,
// Dh rows): slot s < G holds query head j·G + s, slot G the keys, slot G + 1 the values. Without GQA
// (G = 1) this is [q; k; v]. Tensor parallel (tp > 1, Hkv divisible by tp): this rank holds key/value
// heads [rank·Hkv/tp, +Hkv/tp) and their query heads, i.e. the same rows of every slot (one box of the
// global (G + 2, Hkv·Dh, D) tensor, csrc/model/sharding.h); wo is row-parallel (its input columns), the
// output all-reduced.
//
// Options of released models: q/k/v biases (qkv_bias, laid out like wqkv's rows), and RMSNorm on queries
// and keys before RoPE, either per head over Dh with one weight (Dh) shared by the heads (Qwen3-MoE) or
// over the whole projection width, H·Dh for q and Hkv·Dh for k (OLMoE). Under TP the full-width norm
// sums the squares over the tensor-parallel group (its weight is split like the heads).
//
// LoRA on the attention projections (fine-tuning; tp 1): W (out, in) gains (alpha / rank)·B·A with
// A (rank, in) ~ N(0, 1/in), B (out, rank) = 0.
struct AttentionLora {
  int64_t rank = 0;
  double alpha = 16;
  bool qkv = false, out = false;
};

enum class QkNorm { kNone, kPerHead, kFullWidth };

struct AttentionOptions {
  int64_t d_model = 0, num_heads = 0;
  int64_t num_kv_heads = 0;  // 0 = num_heads
  int64_t head_dim = 0;      // 0 = d_model / num_heads
  double rope_theta = 10000.0, norm_eps = 1e-5;
  QkNorm qk_norm = QkNorm::kNone;
  bool qkv_bias = false;
  int64_t tp_size = 1;
  AttentionLora lora;
  bool recompute_core = false;  // train.recompute_modules "core_attn": keep only q, k, v for backward
  int64_t kv_heads() const { return num_kv_heads > 0 ? num_kv_heads : num_heads; }
  int64_t head_size() const { return head_dim > 0 ? head_dim : d_model / num_heads; }
  int64_t groups() const { return num_heads / kv_heads(); }  // query heads per key/value head
};

class AttentionImpl : public torch::nn::Module {
 public:
  using Lora = AttentionLora;
  explicit AttentionImpl(const AttentionOptions& options);
  torch::Tensor forward(const torch::Tensor& x);  // (B, S, D) -> (B, S, D)
  void set_tensor_parallel(std::shared_ptr<layers::TensorParallelOps> tp) { tp_ = std::move(tp); }
  // Folds the adapters into wqkv and wo and zeroes B (export of a LoRA run).
  void merge_adapters();

  // Local sizes: Hl = H/tp query heads, Hkvl = Hkv/tp key/value heads, R = (G + 2)·Hkvl·Dh rows.
  torch::nn::Linear wqkv{nullptr};           // weight (R, D) in the slot layout above; bias (R) when qkv_bias
  torch::nn::Linear wo{nullptr};             // weight (D, Hl·Dh)
  RMSNorm q_norm{nullptr}, k_norm{nullptr};  // weight (Dh) per head, or (Hl·Dh), (Hkvl·Dh) full width
  torch::Tensor qkv_lora_a, qkv_lora_b, out_lora_a,
      out_lora_b;  // (rank, D), (R, rank), (rank, Hl·Dh), (D, rank)
  const Lora& lora() const { return options_.lora; }
  const AttentionOptions& options() const { return options_; }
 private:
  // RMSNorm over the last dim of x (B, S, W) whose full width is W·tp (summed over the tp group).
  torch::Tensor full_width_norm(const torch::Tensor& x, const torch::Tensor& weight) const;
  AttentionOptions options_;
  int64_t local_kv_heads_, head_dim_, groups_;
  std::shared_ptr<layers::TensorParallelOps> tp_;
};
TORCH_MODULE(Attention);

}  // namespace moetrain::model
