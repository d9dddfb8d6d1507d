#include "csrc/moe/router.h"

#include "csrc/layers/precision.h"

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

uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

constexpr int64_t kLow32 = 0xFFFFFFFFLL;

// x · c mod 2^32 for x, c in [0, 2^32), in int64 without overflow: c split into 16-bit halves, so each
// product is below 2^48 and only the low 16 bits of the high product are shifted up.
torch::Tensor mul32(const torch::Tensor& x, uint32_t c) {
  const int64_t lo = c & 0xFFFF, hi = c >> 16;
  return (x * lo + (x * hi).bitwise_and(0xFFFF) * 65536).bitwise_and(kLow32);
}

// lowbias32 (C. Wellons): a bijection of [0, 2^32) with good avalanche; shifts of non-negative values.
torch::Tensor mix32(torch::Tensor x) {
  x = x.bitwise_xor(x.bitwise_right_shift(16));
  x = mul32(x, 0x7feb352dU);
  x = x.bitwise_xor(x.bitwise_right_shift(15));
  x = mul32(x, 0x846ca68bU);
  return x.bitwise_xor(x.bitwise_right_shift(16));
}

}  // namespace

uint64_t noise_stream_key(uint64_t seed, int64_t layer, NoisePurpose purpose) {
  return splitmix64(seed ^ splitmix64((static_cast<uint64_t>(layer) << 8) | static_cast<uint64_t>(purpose)));
}

torch::Tensor noise_bits(uint64_t key, int64_t first_token, int64_t T, int64_t C, const torch::Device& device) {
  TORCH_CHECK(first_token >= 0, "noise_bits: first_token must be >= 0, got ", first_token);
  const auto opts = torch::TensorOptions().dtype(torch::kInt64).device(device);
  const int64_t key_lo = static_cast<int64_t>(key & 0xFFFFFFFFULL), key_hi = static_cast<int64_t>(key >> 32);
  auto t = torch::arange(first_token, first_token + T, opts);                 // global token index, < 2^63
  auto h = mix32(t.bitwise_and(kLow32).bitwise_xor(key_lo));                  // low word of the index
  h = mix32(h.bitwise_xor(t.bitwise_right_shift(32)));                        // high word (t >= 0)
  auto hc = h.unsqueeze(1).bitwise_xor(torch::arange(C, opts).unsqueeze(0));  // (T, C): the column
  return mix32(mix32(hc).bitwise_xor(key_hi));
}

torch::Tensor uniform_noise(uint64_t key, int64_t first_token, int64_t T, int64_t C,
                            const torch::Device& device) {
  return noise_bits(key, first_token, T, C, device).bitwise_right_shift(8).to(torch::kFloat32) *
         (1.0 / 16777216.0);
}

int64_t expert_capacity(double factor, int64_t tokens, int64_t top_k, int64_t num_experts,
                        int64_t min_capacity) {
  if (factor <= 0) return 0;
  const auto cap = static_cast<int64_t>(
      std::ceil(factor * static_cast<double>(tokens * top_k) / static_cast<double>(num_experts)));
  return std::max(cap, min_capacity);
}

torch::Tensor apply_capacity(const torch::Tensor& routed_TE, const torch::Tensor& priority_TE,
                             int64_t capacity) {
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
    const int64_t G = r.num_groups(), per_group = E / G,
                  top_in_group = std::max<int64_t>(1, k / r.group_topk());
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
  layers::AutocastScope fp32_router(x_TD.device().type(), std::nullopt);  // logits, scores, top-k, losses: fp32
  const int64_t first_token = noise_position_;  // global index of row 0 (keys the noise)
  if (is_training()) noise_position_ += x_TD.size(0);
  Routing out;
  out.logits_TE = torch::matmul(jittered(x_TD.to(torch::kFloat32), first_token), weight.t());
  torch::Tensor scores_TE;
  if (options_.routing.score_function() == RoutingConfig::SIGMOID) {
    scores_TE = torch::sigmoid(out.logits_TE);
    out.probs_TE = scores_TE / scores_TE.sum(-1, /*keepdim=*/true);
  } else {
    scores_TE = torch::softmax(out.logits_TE, -1);
    out.probs_TE = scores_TE;
  }
  if (options_.routing.router_type() == RoutingConfig::EXPERT_CHOICE) {
    choose_by_experts(out, scores_TE);
  } else {
    choose_by_tokens(out, scores_TE, token_ids_T, first_token);
  }
  return out;
}

torch::Tensor RouterImpl::jittered(const torch::Tensor& x_TD, int64_t first_token) const {
  const double eps = options_.routing.jitter_eps();
  if (!is_training() || eps <= 0) return x_TD;
  auto u = uniform_noise(noise_stream_key(noise_seed_, noise_layer_, NoisePurpose::kJitter), first_token,
                         x_TD.size(0), x_TD.size(1), x_TD.device());
  return x_TD * ((1.0 - eps) + (2.0 * eps) * u);  // U(1 − ε, 1 + ε)
}

void RouterImpl::choose_by_experts(Routing& out, const torch::Tensor& scores_TE) const {
  const auto& r = options_.routing;
  const int64_t T = scores_TE.size(0), E = options_.num_experts;
  const int64_t c = std::min<int64_t>(T, static_cast<int64_t>(std::ceil(T * r.expert_choice_factor() / E)));
  auto chosen = std::get<1>(scores_TE.topk(c, /*dim=*/0));  // (c, E)
  out.routed_TE = torch::zeros_like(scores_TE, torch::kBool).scatter_(0, chosen, true);
  out.kept_TE = out.routed_TE;
  out.gates_TE = scores_TE * out.kept_TE * r.gate_scale();
  out.max_kept = E * c;
}

void RouterImpl::choose_by_tokens(Routing& out, const torch::Tensor& scores_TE,
                                  const torch::Tensor& token_ids_T, int64_t first_token) const {
  const auto& r = options_.routing;
  const int64_t T = scores_TE.size(0), E = options_.num_experts, k = options_.top_k;
  const bool fixed_gates = r.router_type() == RoutingConfig::HASH || r.router_type() == RoutingConfig::RANDOM;
  torch::Tensor idx_TK, gates_TK;
  if (r.router_type() == RoutingConfig::HASH) {
    idx_TK = hash_experts(token_ids_T, E, k);
  } else if (r.router_type() == RoutingConfig::RANDOM) {
    idx_TK = random_experts(first_token, T, scores_TE.device());
  } else {
    idx_TK = select_topk(out.logits_TE, scores_TE);
  }
  if (fixed_gates) {
    gates_TK = torch::full({T, k}, 1.0 / static_cast<double>(k),
                           scores_TE.options());  // fixed, no router gradient
  } else if (r.topk_order() == RoutingConfig::TOPK_THEN_SOFTMAX) {
    gates_TK = torch::softmax(out.logits_TE.gather(1, idx_TK), -1);
  } else {
    gates_TK = scores_TE.gather(1, idx_TK);
    if (r.normalize_gates()) gates_TK = gates_TK / gates_TK.sum(-1, /*keepdim=*/true);
  }
  gates_TK = gates_TK * r.gate_scale();
  out.routed_TE = torch::zeros_like(scores_TE, torch::kBool).scatter_(1, idx_TK, true);
  out.gates_TE = torch::zeros_like(scores_TE).scatter(1, idx_TK, gates_TK);
  apply_token_capacity(out);
}

torch::Tensor RouterImpl::random_experts(int64_t first_token, int64_t T, const torch::Device& device) const {
  // k distinct experts uniformly at random: the k largest of E independent keys per token. The keys are
  // hash · E + e (below 2^32 · E), so they never tie. Evaluation routes at random too (the baseline has
  // no other routing), from its own stream keyed by the evaluation batch's position.
  const int64_t E = options_.num_experts;
  const auto purpose = is_training() ? NoisePurpose::kRandomRouting : NoisePurpose::kRandomRoutingEval;
  auto keys = noise_bits(noise_stream_key(noise_seed_, noise_layer_, purpose), first_token, T, E, device) * E +
              torch::arange(E, torch::TensorOptions().dtype(torch::kInt64).device(device));
  return std::get<1>(keys.topk(options_.top_k, -1));
}

void RouterImpl::apply_token_capacity(Routing& out) const {
  const auto& r = options_.routing;
  const int64_t T = out.routed_TE.size(0), E = options_.num_experts, k = options_.top_k;
  const double factor = is_training() ? r.capacity_factor() : r.eval_capacity_factor();
  out.capacity = expert_capacity(factor, T, k, E, r.min_capacity());
  if (out.capacity == 0) {
    out.kept_TE = out.routed_TE;
    out.max_kept = T * k;
    return;
  }
  // PROBS ranks each expert's pairs by their final gate (after normalisation and scaling), as Megatron-Core
  // does; not by the raw score, whose order can differ once the gates are normalised.
  auto priority = r.drop_policy() == RoutingConfig::POSITION
                      ? -torch::arange(T, out.gates_TE.options()).unsqueeze(1).expand({T, E})
                      : out.gates_TE.detach();
  out.kept_TE = apply_capacity(out.routed_TE, priority, out.capacity);
  out.gates_TE = out.gates_TE * out.kept_TE;
  out.max_kept = std::min(T * k, E * out.capacity);
}

}  // namespace moetrain::moe
