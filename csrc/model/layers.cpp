#include "csrc/model/layers.h"

namespace moetrain::model {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  auto xf = x.to(torch::kFloat32);
  auto normed = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps_);
  return (normed * weight.to(torch::kFloat32)).to(x.scalar_type());
}

torch::Tensor apply_rotary(const torch::Tensor& x, double theta) {
  const int64_t seq = x.size(2), head_dim = x.size(3), half = head_dim / 2;
  auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(x.device());
  auto inv_freq = torch::pow(theta, -torch::arange(0, half, opts) * 2.0 / head_dim);  // (Dh/2)
  auto angles = torch::outer(torch::arange(0, seq, opts), inv_freq);                   // (S, Dh/2)
  auto cos = torch::cat({angles.cos(), angles.cos()}, -1).to(x.scalar_type());        // (S, Dh)
  auto sin = torch::cat({angles.sin(), angles.sin()}, -1).to(x.scalar_type());
  auto x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  auto rotated = torch::cat({-x2, x1}, -1);
  return x * cos + rotated * sin;
}

AttentionImpl::AttentionImpl(int64_t d_model, int64_t num_heads, double rope_theta, int64_t tp_size, const Lora& lora)
    : local_heads_(num_heads / tp_size), rope_theta_(rope_theta), lora_(lora) {
  const int64_t local = d_model / tp_size;
  wqkv = register_module("wqkv", torch::nn::Linear(torch::nn::LinearOptions(d_model, 3 * local).bias(false)));
  wo = register_module("wo", torch::nn::Linear(torch::nn::LinearOptions(local, d_model).bias(false)));
  if (lora.rank > 0 && lora.qkv) {
    qkv_lora_a = register_parameter("qkv_lora_a", torch::empty({lora.rank, d_model}));
    qkv_lora_b = register_parameter("qkv_lora_b", torch::zeros({3 * local, lora.rank}));
  }
  if (lora.rank > 0 && lora.out) {
    out_lora_a = register_parameter("out_lora_a", torch::empty({lora.rank, local}));
    out_lora_b = register_parameter("out_lora_b", torch::zeros({d_model, lora.rank}));
  }
}

namespace {
// linear(x, W) plus scale·linear(linear(x, A), B) when the projection has an adapter.
torch::Tensor adapted(const torch::Tensor& w, const torch::Tensor& x, const torch::Tensor& a, const torch::Tensor& b, double scale) {
  auto y = torch::linear(x, w);
  if (a.defined()) y = y + torch::linear(torch::linear(x, a), b) * scale;
  return y;
}
}  // namespace

void AttentionImpl::merge_adapters() {
  torch::NoGradGuard no_grad;
  const double s = lora_.rank > 0 ? lora_.alpha / static_cast<double>(lora_.rank) : 0.0;
  if (qkv_lora_a.defined()) wqkv->weight.add_(torch::mm(qkv_lora_b, qkv_lora_a), s), qkv_lora_b.zero_();
  if (out_lora_a.defined()) wo->weight.add_(torch::mm(out_lora_b, out_lora_a), s), out_lora_b.zero_();
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& input) {
  auto x = tp_ ? tp_->copy_to_tp(input) : input;
  const int64_t B = x.size(0), S = x.size(1), Dl = wo->weight.size(1), Dh = Dl / local_heads_;
  const double s = lora_.rank > 0 ? lora_.alpha / static_cast<double>(lora_.rank) : 0.0;
  auto qkv = adapted(wqkv->weight, x, qkv_lora_a, qkv_lora_b, s).view({B, S, 3, local_heads_, Dh}).permute({2, 0, 3, 1, 4});  // (3, B, H/tp, S, Dh)
  auto q = apply_rotary(qkv[0], rope_theta_);
  auto k = apply_rotary(qkv[1], rope_theta_);
  auto v = qkv[2];
  auto out = at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                              /*is_causal=*/true);  // (B, H/tp, S, Dh)
  // Back to the residual stream's dtype (fp32 under mixed precision) before the tensor-parallel sum.
  auto y = adapted(wo->weight, out.transpose(1, 2).reshape({B, S, Dl}), out_lora_a, out_lora_b, s).to(input.scalar_type());
  return tp_ ? tp_->reduce_from_tp(y) : y;
}

SwiGLUImpl::SwiGLUImpl(int64_t d_model, int64_t hidden, int64_t tp_size) {
  const int64_t local = hidden / tp_size;
  w1 = register_module("w1", torch::nn::Linear(torch::nn::LinearOptions(d_model, local).bias(false)));
  w3 = register_module("w3", torch::nn::Linear(torch::nn::LinearOptions(d_model, local).bias(false)));
  w2 = register_module("w2", torch::nn::Linear(torch::nn::LinearOptions(local, d_model).bias(false)));
}

torch::Tensor SwiGLUImpl::forward(const torch::Tensor& input) {
  auto x = tp_ ? tp_->copy_to_tp(input) : input;
  auto y = w2(torch::silu(w1(x)) * w3(x)).to(input.scalar_type());  // residual dtype, as in attention
  return tp_ ? tp_->reduce_from_tp(y) : y;
}

}  // namespace moetrain::model
