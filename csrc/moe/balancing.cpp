#include "csrc/moe/balancing.h"

#include "csrc/layers/recompute.h"

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
  auto P_BE = torch::zeros({B, E}, probs_TE.options()).index_add(0, seq_index_T, probs_TE) /
              static_cast<double>(seq_len);
  return (f_BE.detach() * P_BE).sum(1).mean() * static_cast<double>(E);
}

torch::Tensor global_aux_loss(const torch::Tensor& probs_TE, const torch::Tensor& counts_E, int64_t tokens,
                              int64_t top_k) {
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

namespace {

// Switch loss of this forward's tokens. A share of the micro-batch takes f from the counts of every
// share (the micro-batch's T·k pairs) and P over its own tokens, divided by the number of shares.
torch::Tensor switch_loss(const Routing& route, const ForwardTokens& tokens, int64_t top_k,
                          const MoEParallelContext& context) {
  if (!tokens.slice.is_share()) return switch_aux_loss(route.probs_TE, route.routed_TE, top_k);
  const double shares = static_cast<double>(context.micro_batch_ranks());
  const int64_t micro_batch_tokens = tokens.slice.sequences * tokens.slice.seq_len;
  auto counts_E = context.sum_over_micro_batch(route.routed_TE.sum(0));
  return global_aux_loss(route.probs_TE, counts_E, micro_batch_tokens, top_k) / shares;
}

// Sequence loss. A share gives each of its tokens its sequence (tokens first_token.. of the flattened
// micro-batch) and takes the per-sequence counts of every share.
torch::Tensor sequence_loss(const Routing& route, const ForwardTokens& tokens, int64_t top_k,
                            const MoEParallelContext& context) {
  const int64_t E = route.probs_TE.size(1);
  const TokenSlice& slice = tokens.slice;
  if (!slice.is_share()) {
    return sequence_aux_loss(route.probs_TE.view({tokens.B, tokens.S, E}),
                             route.routed_TE.view({tokens.B, tokens.S, E}), top_k);
  }
  const auto i64 = torch::TensorOptions(route.routed_TE.device()).dtype(torch::kInt64);
  auto seq_T = (torch::arange(tokens.B * tokens.S, i64) + slice.first_token).div(slice.seq_len, "floor");
  auto counts_BE = torch::zeros({slice.sequences, E}, i64).index_add(0, seq_T, route.routed_TE.to(torch::kInt64));
  counts_BE = context.sum_over_micro_batch(counts_BE);
  return sequence_aux_loss_share(route.probs_TE, seq_T, counts_BE, slice.seq_len, top_k);
}

// Global-batch loss: f from the counts of the whole global batch, accumulated over the step's
// micro-batches so far. Each rank holds its tokens' share of P; the token count stays on the device (top-k
// routes k pairs per token, so tokens · k = Σ counts). Divided by the micro-batch ranks, as the Switch loss.
torch::Tensor global_batch_loss(const Routing& route, const MoEParallelContext& context,
                                torch::Tensor& global_counts_E) {
  // A replay in backward (train.recompute) finds the counts as its first run left them: it adds nothing,
  // and its collective is skipped on every rank alike.
  if (!layers::replaying()) {
    auto counts_E = context.sum_over_global_batch(route.routed_TE.sum(0));
    if (global_counts_E.device() != counts_E.device())
      global_counts_E = global_counts_E.to(counts_E.device());
    global_counts_E += counts_E;
  }
  return global_aux_loss(route.probs_TE, global_counts_E) / static_cast<double>(context.micro_batch_ranks());
}

}  // namespace

LayerLosses balancing_losses(const Routing& route, const ForwardTokens& tokens,
                             const config::RoutingConfig& routing, int64_t top_k,
                             const MoEParallelContext& context, torch::Tensor& global_counts_E) {
  const double shares = static_cast<double>(context.micro_batch_ranks());
  auto aux = torch::zeros({}, route.probs_TE.options());
  if (routing.aux_loss_coeff() > 0)
    aux = aux + routing.aux_loss_coeff() * switch_loss(route, tokens, top_k, context);
  if (routing.seq_aux_loss_coeff() > 0) {
    aux = aux + routing.seq_aux_loss_coeff() * sequence_loss(route, tokens, top_k, context);
  }
  if (routing.global_aux_loss_coeff() > 0) {
    aux = aux + routing.global_aux_loss_coeff() * global_batch_loss(route, context, global_counts_E);
  }
  auto z = routing.z_loss_coeff() > 0 ? routing.z_loss_coeff() * router_z_loss(route.logits_TE) / shares
                                      : torch::zeros({}, route.probs_TE.options());
  return {aux, z};
}

void update_expert_bias(torch::Tensor& bias_E, const torch::Tensor& counts_E, double rate,
                        config::RoutingConfig::BiasUpdate rule) {
  torch::NoGradGuard no_grad;
  auto c = counts_E.to(torch::kFloat32);
  const auto mean = c.mean();
  if (rule == config::RoutingConfig::PROPORTIONAL) {  // on the device: no host read of the mean
    bias_E.add_((mean - c) / mean.clamp_min(1e-30) * rate);
  } else {
    bias_E.add_(torch::sign(mean - c) * rate);
  }
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
