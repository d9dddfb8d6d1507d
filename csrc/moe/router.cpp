#include "csrc/moe/router.h"

namespace moetrain::moe {

TopKRouterImpl::TopKRouterImpl(int64_t d_model, int64_t num_experts, int64_t top_k)
    : num_experts_(num_experts), top_k_(top_k) {
  weight = register_parameter("weight", torch::zeros({num_experts, d_model}, torch::kFloat32));
}

RouterOutput TopKRouterImpl::forward(const torch::Tensor& x_TD) {
  auto logits_TE = torch::matmul(x_TD.to(torch::kFloat32), weight.t());
  auto probs_TE = torch::softmax(logits_TE, -1);
  auto [top_probs_TK, expert_idx_TK] = probs_TE.topk(top_k_, -1);
  auto gates_TK = top_probs_TK / top_probs_TK.sum(-1, /*keepdim=*/true);
  auto routing_map_TE = torch::zeros_like(probs_TE).scatter_(1, expert_idx_TK, 1.0);
  return {probs_TE, expert_idx_TK, gates_TK, routing_map_TE};
}

torch::Tensor switch_aux_loss(const torch::Tensor& probs_TE, const torch::Tensor& routing_map_TE, int64_t top_k) {
  const int64_t T = probs_TE.size(0), E = probs_TE.size(1);
  auto f_E = routing_map_TE.sum(0) / static_cast<double>(T * top_k);
  auto P_E = probs_TE.mean(0);
  return (f_E.detach() * P_E).sum() * static_cast<double>(E);
}

}  // namespace moetrain::moe
