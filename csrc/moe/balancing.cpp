#include "csrc/moe/balancing.h"

namespace moetrain::moe {

torch::Tensor switch_aux_loss(const torch::Tensor& probs_TE, const torch::Tensor& routed_TE, int64_t top_k) {
  const int64_t T = probs_TE.size(0), E = probs_TE.size(1);
  auto f_E = routed_TE.to(torch::kFloat32).sum(0) / static_cast<double>(T * top_k);
  auto P_E = probs_TE.mean(0);
  return (f_E.detach() * P_E).sum() * static_cast<double>(E);
}

torch::Tensor sequence_aux_loss(const torch::Tensor& probs_BSE, const torch::Tensor& routed_BSE, int64_t top_k) {
  const int64_t S = probs_BSE.size(1), E = probs_BSE.size(2);
  auto f_BE = routed_BSE.to(torch::kFloat32).sum(1) / static_cast<double>(S * top_k);
  auto P_BE = probs_BSE.mean(1);
  return (f_BE.detach() * P_BE).sum(1).mean() * static_cast<double>(E);
}

torch::Tensor sequence_aux_loss_share(const torch::Tensor& probs_TE, const torch::Tensor& seq_index_T,
                                      const torch::Tensor& counts_BE, int64_t seq_len, int64_t top_k) {
  const int64_t B = counts_BE.size(0), E = probs_TE.size(1);
  auto f_BE = counts_BE.to(torch::kFloat32) / static_cast<double>(seq_len * top_k);
  auto P_BE = torch::zeros({B, E}, probs_TE.options()).index_add(0, seq_index_T, probs_TE) / static_cast<double>(seq_len);
  return (f_BE.detach() * P_BE).sum(1).mean() * static_cast<double>(E);
}

torch::Tensor global_aux_loss(const torch::Tensor& probs_TE, const torch::Tensor& counts_E, int64_t tokens, int64_t top_k) {
  const int64_t E = probs_TE.size(1);
  auto f_E = counts_E.to(torch::kFloat32) / static_cast<double>(tokens * top_k);
  return (f_E.detach() * probs_TE.mean(0)).sum() * static_cast<double>(E);
}

torch::Tensor global_aux_loss(const torch::Tensor& probs_TE, const torch::Tensor& counts_E) {
  const int64_t E = probs_TE.size(1);
  auto f_E = counts_E.to(torch::kFloat32) / counts_E.sum().to(torch::kFloat32);
  return (f_E.detach() * probs_TE.mean(0)).sum() * static_cast<double>(E);
}

torch::Tensor router_z_loss(const torch::Tensor& logits_TE) {
  return torch::logsumexp(logits_TE.to(torch::kFloat32), -1).square().mean();
}

void update_expert_bias(torch::Tensor& bias_E, const torch::Tensor& counts_E, double rate) {
  torch::NoGradGuard no_grad;
  auto c = counts_E.to(torch::kFloat32);
  bias_E.add_(torch::sign(c.mean() - c) * rate);
}

double max_violation(const torch::Tensor& counts_E) {
  auto c = counts_E.to(torch::kFloat64);
  const double mean = c.mean().item<double>();
  return mean > 0 ? (c.max().item<double>() - mean) / mean : 0.0;
}

torch::Tensor router_entropy(const torch::Tensor& probs_TE) {
  torch::NoGradGuard no_grad;
  auto p = probs_TE.to(torch::kFloat64);
  return (-(p * torch::log(p.clamp_min(1e-30))).sum(-1)).mean();
}

}  // namespace moetrain::moe
