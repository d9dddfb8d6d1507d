#include "csrc/model/attention.h"

#include "csrc/layers/recompute.h"

#include "csrc/layers/precision.h"

namespace moetrain::model {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) { return forward_parts(x, x); }

torch::Tensor RMSNormImpl::forward_parts(const torch::Tensor& x, const torch::Tensor& x_for_scale) {
  auto xf = x.to(torch::kFloat32), xs = x_for_scale.to(torch::kFloat32);
  auto normed = xf * torch::rsqrt(xs.pow(2).mean(-1, /*keepdim=*/true) + eps_);
  return (normed * weight.to(torch::kFloat32)).to(x.scalar_type());
}

torch::Tensor apply_rotary(const torch::Tensor& x, double theta) {
  const int64_t seq = x.size(2), head_dim = x.size(3), half = head_dim / 2;
  auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(x.device());
  auto inv_freq = torch::pow(theta, -torch::arange(0, half, opts) * 2.0 / head_dim);  // (Dh/2)
  auto angles = torch::outer(torch::arange(0, seq, opts), inv_freq);                  // (S, Dh/2)
  auto cos = torch::cat({angles.cos(), angles.cos()}, -1).to(x.scalar_type());        // (S, Dh)
  auto sin = torch::cat({angles.sin(), angles.sin()}, -1).to(x.scalar_type());
  auto x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  auto rotated = torch::cat({-x2, x1}, -1);
  return x * cos + rotated * sin;
}

AttentionImpl::AttentionImpl(const AttentionOptions& o)
    : options_(o), local_kv_heads_(o.kv_heads() / o.tp_size), head_dim_(o.head_size()), groups_(o.groups()) {
  const int64_t D = o.d_model, rows = (groups_ + 2) * local_kv_heads_ * head_dim_;
  const int64_t q_width = groups_ * local_kv_heads_ * head_dim_, kv_width = local_kv_heads_ * head_dim_;
  wqkv = register_module("wqkv", torch::nn::Linear(torch::nn::LinearOptions(D, rows).bias(o.qkv_bias)));
  wo = register_module("wo", torch::nn::Linear(torch::nn::LinearOptions(q_width, D).bias(false)));
  if (o.qk_norm == QkNorm::kPerHead) {
    q_norm = register_module("q_norm", RMSNorm(head_dim_, o.norm_eps));
    k_norm = register_module("k_norm", RMSNorm(head_dim_, o.norm_eps));
  } else if (o.qk_norm == QkNorm::kFullWidth) {
    q_norm = register_module("q_norm", RMSNorm(q_width, o.norm_eps));
    k_norm = register_module("k_norm", RMSNorm(kv_width, o.norm_eps));
  }
  const auto& lora = o.lora;
  if (lora.rank > 0 && lora.qkv) {
    qkv_lora_a = register_parameter("qkv_lora_a", torch::empty({lora.rank, D}));
    qkv_lora_b = register_parameter("qkv_lora_b", torch::zeros({rows, lora.rank}));
  }
  if (lora.rank > 0 && lora.out) {
    out_lora_a = register_parameter("out_lora_a", torch::empty({lora.rank, q_width}));
    out_lora_b = register_parameter("out_lora_b", torch::zeros({D, lora.rank}));
  }
}

namespace {
// linear(x, W) plus scale·linear(linear(x, A), B) when the projection has an adapter.
torch::Tensor adapted(const torch::Tensor& w, const torch::Tensor& x, const torch::Tensor& a,
                      const torch::Tensor& b, double scale) {
  auto y = torch::linear(x, w);
  if (a.defined()) y = y + torch::linear(torch::linear(x, a), b) * scale;
  return y;
}
}  // namespace

void AttentionImpl::merge_adapters() {
  torch::NoGradGuard no_grad;
  const auto& lora = options_.lora;
  const double s = lora.rank > 0 ? lora.alpha / static_cast<double>(lora.rank) : 0.0;
  if (qkv_lora_a.defined()) wqkv->weight.add_(torch::mm(qkv_lora_b, qkv_lora_a), s), qkv_lora_b.zero_();
  if (out_lora_a.defined()) wo->weight.add_(torch::mm(out_lora_b, out_lora_a), s), out_lora_b.zero_();
}

torch::Tensor AttentionImpl::full_width_norm(const torch::Tensor& x, const torch::Tensor& weight) const {
  auto xf = x.to(torch::kFloat32);
  torch::Tensor mean_sq;
  if (tp_) {  // Σ x² over the whole width: all-reduced forward, and backward (each rank's share feeds every rank)
    auto sum_sq = tp_->copy_to_tp(tp_->reduce_from_tp(xf.pow(2).sum(-1, /*keepdim=*/true)));
    mean_sq = sum_sq / static_cast<double>(x.size(-1) * tp_->size());
  } else {
    mean_sq = xf.pow(2).mean(-1, /*keepdim=*/true);
  }
  return (xf * torch::rsqrt(mean_sq + options_.norm_eps) * weight.to(torch::kFloat32)).to(x.scalar_type());
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& input) {
  // Under tensor parallelism the input is cast to the compute dtype before copy_to_tp (as the projection's
  // autocast would), so the backward's gradient sum over tp travels in bf16 under mixed precision.
  auto x = tp_ ? tp_->copy_to_tp(layers::in_compute_dtype(input)) : input;
  const int64_t B = x.size(0), S = x.size(1), G = groups_, Hkv = local_kv_heads_, Dh = head_dim_;
  const auto& lora = options_.lora;
  const double s = lora.rank > 0 ? lora.alpha / static_cast<double>(lora.rank) : 0.0;
  auto qkv = adapted(wqkv->weight, x, qkv_lora_a, qkv_lora_b, s);  // (B, S, R)
  if (wqkv->bias.defined()) qkv = qkv + wqkv->bias.to(qkv.scalar_type());
  qkv = qkv.view({B, S, G + 2, Hkv, Dh});
  // Query heads in their natural order h = j·G + s: (B, S, Hkv, G, Dh) -> (B, S, H, Dh).
  auto q = qkv.narrow(2, 0, G).transpose(2, 3).reshape({B, S, Hkv * G, Dh});
  auto k = qkv.select(2, G), v = qkv.select(2, G + 1);  // (B, S, Hkv, Dh)
  if (options_.qk_norm == QkNorm::kPerHead) {
    q = q_norm(q), k = k_norm(k);
  } else if (options_.qk_norm == QkNorm::kFullWidth) {
    q = full_width_norm(q.reshape({B, S, Hkv * G * Dh}), q_norm->weight).view({B, S, Hkv * G, Dh});
    k = full_width_norm(k.reshape({B, S, Hkv * Dh}), k_norm->weight).view({B, S, Hkv, Dh});
  }
  q = apply_rotary(q.transpose(1, 2), options_.rope_theta);  // (B, H, S, Dh)
  k = apply_rotary(k.transpose(1, 2), options_.rope_theta);  // (B, Hkv, S, Dh)
  v = v.transpose(1, 2);
  // Core attention: q (B, H, S, Dh), k and v (B, Hkv, S, Dh) -> (B, S, H·Dh). Under train.recompute_modules
  // "core_attn" only q, k and v are kept for backward.
  auto core = [=](const std::vector<torch::Tensor>& in) {
    auto k_rep = in[1], v_rep = in[2];
    if (G > 1)  // key/value head h / G for query head h
      k_rep = k_rep.repeat_interleave(G, 1), v_rep = v_rep.repeat_interleave(G, 1);
    auto out = at::scaled_dot_product_attention(in[0], k_rep, v_rep, /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                                /*is_causal=*/true);  // (B, H, S, Dh)
    return std::vector{out.transpose(1, 2).reshape({B, S, Hkv * G * Dh})};
  };
  const bool recompute = options_.recompute_core && is_training() && layers::can_recompute();
  auto out = recompute ? layers::recompute(core, {q, k, v})[0] : core({q, k, v})[0];
  // The tensor-parallel sum in the compute dtype (bf16 under mixed precision: half the bytes, as Megatron),
  // then back to the residual stream's dtype (fp32).
  auto y = adapted(wo->weight, out, out_lora_a, out_lora_b, s);
  if (tp_) y = tp_->reduce_from_tp(y);
  return y.to(input.scalar_type());
}

}  // namespace moetrain::model
