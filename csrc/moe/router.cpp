#include "csrc/moe/router.h"

#include "csrc/model/precision.h"

#include <cmath>

namespace moetrain::moe {
namespace {

using config::RoutingConfig;

// Fixed pseudo-random expert of a token id (splitmix64 finaliser): the hash-routing baseline. Computed
// on the ids' device in int64, whose wrapping additions and multiplications are uint64's; the right shifts
// and the remainder are written out for unsigned values. Returns int64 (T, k).
torch::Tensor hash_experts(const torch::Tensor& token_ids_T, int64_t num_experts, int64_t top_k) {
  auto shift_right = [](const torch::Tensor& z, int64_t s) {  // logical shift of the uint64 bits
    return z.bitwise_right_shift(s).bitwise_and(static_cast<int64_t>((~0ULL) >> s));
  };
  auto z = token_ids_T.to(torch::kInt64) + static_cast<int64_t>(0x9E3779B97F4A7C15ULL);
  z = z.bitwise_xor(shift_right(z, 30)) * static_cast<int64_t>(0xBF58476D1CE4E5B9ULL);
  z = z.bitwise_xor(shift_right(z, 27)) * static_cast<int64_t>(0x94D049BB133111EBULL);
  z = z.bitwise_xor(shift_right(z, 31));
  // z mod E for z = hi·2^32 + lo read as unsigned: (hi mod E)·(2^32 mod E) + lo mod E, all below 2^62.
  const int64_t two32_mod = static_cast<int64_t>((1ULL << 32) % static_cast<uint64_t>(num_experts));
  auto hi = shift_right(z, 32), lo = z.bitwise_and(static_cast<int64_t>(0xFFFFFFFFULL));
  auto first = (hi.remainder(num_experts) * two32_mod + lo.remainder(num_experts)).remainder(num_experts);
  return (first.unsqueeze(1) + torch::arange(top_k, first.options())).remainder(num_experts);  // k distinct experts
}

}  // namespace

int64_t expert_capacity(double factor, int64_t tokens, int64_t top_k, int64_t num_experts, int64_t min_capacity) {
  if (factor <= 0) return 0;
  const auto cap = static_cast<int64_t>(std::ceil(factor * static_cast<double>(tokens * top_k) / static_cast<double>(num_experts)));
  return std::max(cap, min_capacity);
}

torch::Tensor apply_capacity(const torch::Tensor& routed_TE, const torch::Tensor& priority_TE, int64_t capacity) {
  const int64_t T = routed_TE.size(0);
  if (capacity <= 0 || capacity >= T) return routed_TE;
  auto ranked = priority_TE.masked_fill(routed_TE.logical_not(), -std::numeric_limits<float>::infinity());
  auto top = std::get<1>(ranked.topk(capacity, /*dim=*/0));  // (capacity, E) best tokens per expert
  auto keep = torch::zeros_like(routed_TE).scatter_(0, top, true);
  return routed_TE.logical_and(keep);
}

RouterImpl::RouterImpl(const RouterOptions& options) : options_(options) {
  weight = register_parameter("weight", torch::zeros({options.num_experts, options.d_model}, torch::kFloat32));
  expert_bias = register_buffer("expert_bias", torch::zeros({options.num_experts}, torch::kFloat32));
}

torch::Tensor RouterImpl::select_topk(const torch::Tensor& logits_TE, const torch::Tensor& scores_TE) const {
  const auto& r = options_.routing;
  const int64_t E = options_.num_experts, k = options_.top_k;
  // Selection space: logits for softmax-over-the-selected, scores otherwise; plus the balancing bias,
  // always: a bias learned earlier (pretraining) must still select when the update rate is 0 (fine-tuning).
  // It is zero in a model that never balanced, and x + 0 selects exactly as x.
  auto select_TE = r.topk_order() == RoutingConfig::TOPK_THEN_SOFTMAX ? logits_TE : scores_TE;
  select_TE = select_TE + expert_bias;
  if (r.num_groups() > 1) {
    const int64_t G = r.num_groups(), per_group = E / G, top_in_group = std::max<int64_t>(1, k / r.group_topk());
    auto grouped = select_TE.detach().view({-1, G, per_group});
    auto group_score_TG = std::get<0>(grouped.topk(top_in_group, -1)).sum(-1);
    auto best_groups = std::get<1>(group_score_TG.topk(r.group_topk(), -1));
    auto group_ok_TG = torch::zeros_like(group_score_TG, torch::kBool).scatter_(1, best_groups, true);
    auto expert_ok_TE = group_ok_TG.unsqueeze(-1).expand({-1, G, per_group}).reshape({-1, E});
    select_TE = select_TE.masked_fill(expert_ok_TE.logical_not(), -std::numeric_limits<float>::infinity());
  }
  return std::get<1>(select_TE.topk(k, -1));
}

Routing RouterImpl::forward(const torch::Tensor& x_TD, const torch::Tensor& token_ids_T) {
  const auto& r = options_.routing;
  const int64_t E = options_.num_experts, k = options_.top_k;
  model::AutocastScope fp32_router(x_TD.device().type(), std::nullopt);  // logits, scores, top-k, losses: fp32
  auto x = x_TD.to(torch::kFloat32);
  if (is_training() && r.jitter_eps() > 0) {
    x = x * torch::empty_like(x).uniform_(1.0 - r.jitter_eps(), 1.0 + r.jitter_eps());
  }
  Routing out;
  out.logits_TE = torch::matmul(x, weight.t());
  const int64_t T = out.logits_TE.size(0);
  torch::Tensor scores_TE;
  if (r.score_function() == RoutingConfig::SIGMOID) {
    scores_TE = torch::sigmoid(out.logits_TE);
    out.probs_TE = scores_TE / scores_TE.sum(-1, /*keepdim=*/true);
  } else {
    scores_TE = torch::softmax(out.logits_TE, -1);
    out.probs_TE = scores_TE;
  }

  torch::Tensor gates_TE;
  if (r.router_type() == RoutingConfig::EXPERT_CHOICE) {
    const int64_t c = std::min<int64_t>(T, static_cast<int64_t>(std::ceil(T * r.expert_choice_factor() / E)));
    auto chosen = std::get<1>(scores_TE.topk(c, /*dim=*/0));  // (c, E)
    out.routed_TE = torch::zeros_like(scores_TE, torch::kBool).scatter_(0, chosen, true);
    out.kept_TE = out.routed_TE;
    out.gates_TE = scores_TE * out.kept_TE * r.gate_scale();
    out.max_kept = E * c;
    return out;
  }

  torch::Tensor idx_TK;
  if (r.router_type() == RoutingConfig::HASH) {
    idx_TK = hash_experts(token_ids_T, E, k);
  } else if (r.router_type() == RoutingConfig::RANDOM) {
    idx_TK = std::get<1>(torch::rand({T, E}, scores_TE.options()).topk(k, -1));
  } else {
    idx_TK = select_topk(out.logits_TE, scores_TE);
  }

  torch::Tensor gates_TK;
  if (r.router_type() == RoutingConfig::HASH || r.router_type() == RoutingConfig::RANDOM) {
    gates_TK = torch::full({T, k}, 1.0 / static_cast<double>(k), scores_TE.options());  // fixed, no router gradient
  } else if (r.topk_order() == RoutingConfig::TOPK_THEN_SOFTMAX) {
    gates_TK = torch::softmax(out.logits_TE.gather(1, idx_TK), -1);
  } else {
    gates_TK = scores_TE.gather(1, idx_TK);
    if (r.normalize_gates()) gates_TK = gates_TK / gates_TK.sum(-1, /*keepdim=*/true);
  }
  gates_TK = gates_TK * r.gate_scale();

  out.routed_TE = torch::zeros_like(scores_TE, torch::kBool).scatter_(1, idx_TK, true);
  out.gates_TE = torch::zeros_like(scores_TE).scatter(1, idx_TK, gates_TK);
  const double factor = is_training() ? r.capacity_factor() : r.eval_capacity_factor();
  out.capacity = expert_capacity(factor, T, k, E, r.min_capacity());
  if (out.capacity > 0) {
    // PROBS ranks each expert's pairs by their final gate (after normalisation and scaling), as
    // Megatron-Core does; not by the raw score, whose order can differ once the gates are normalised.
    auto priority = r.drop_policy() == RoutingConfig::POSITION
                        ? -torch::arange(T, scores_TE.options()).unsqueeze(1).expand({T, E})
                        : out.gates_TE.detach();
    out.kept_TE = apply_capacity(out.routed_TE, priority, out.capacity);
    out.gates_TE = out.gates_TE * out.kept_TE;
    out.max_kept = std::min(T * k, E * out.capacity);
  } else {
    out.kept_TE = out.routed_TE;
    out.max_kept = T * k;
  }
  return out;
}

}  // namespace moetrain::moe
