// Load-balancing losses, the aux-loss-free bias update and the load measures (docs/routing.md).
// Losses are returned without their coefficient. Shapes: T tokens, E experts, B sequences of S tokens.
#pragma once

#include <torch/torch.h>

#include "csrc/config/recipe.pb.h"
#include "csrc/moe/parallel_context.h"
#include "csrc/moe/router.h"

namespace moetrain::moe {

// Switch/GShard, generalised to top-k: E · Σ_i f_i · P_i with f_i = routed_i / (T·k), P_i = mean_t p_ti.
// A uniform router gives exactly 1. Gradient through P only.
torch::Tensor switch_aux_loss(const torch::Tensor& probs_TE, const torch::Tensor& routed_TE, int64_t top_k);

// The same per sequence, averaged over the B sequences (DeepSeek-V3's complementary sequence loss).
torch::Tensor sequence_aux_loss(const torch::Tensor& probs_BSE, const torch::Tensor& routed_BSE, int64_t top_k);

// One rank's share of the sequence loss when a micro-batch's tokens are split over ranks (the
// sequence-parallel MoE under tensor parallelism): probs_TE of this rank's tokens, seq_index_T the
// sequence (0..B-1) of each, counts_BE the routed pairs per sequence summed over every rank. The shares
// of all ranks add up to sequence_aux_loss of the whole micro-batch, in value and gradient.
torch::Tensor sequence_aux_loss_share(const torch::Tensor& probs_TE, const torch::Tensor& seq_index_T,
                                      const torch::Tensor& counts_BE, int64_t seq_len, int64_t top_k);

// E · Σ_i f_i · P_i with f_i = counts_E / (tokens · k) from counts gathered beyond this micro-batch.
torch::Tensor global_aux_loss(const torch::Tensor& probs_TE, const torch::Tensor& counts_E, int64_t tokens,
                              int64_t top_k);
// The same when the token count is only on the device: every token routes exactly k pairs (top-k
// routing), so tokens · k = Σ counts_E, and f_i = counts_i / Σ counts.
torch::Tensor global_aux_loss(const torch::Tensor& probs_TE, const torch::Tensor& counts_E);

// ST-MoE router z-loss: mean over tokens of logsumexp(logits)².
torch::Tensor router_z_loss(const torch::Tensor& logits_TE);

// The training losses of one MoE forward, coefficients applied: aux is the sum of the balancing losses the
// routing config enables (Switch, sequence, global-batch), z the router z-loss; both fp32 scalars.
struct LayerLosses {
  torch::Tensor aux, z;
};

// The tokens of one forward: B sequences of S (route's T = B·S rows), or under sequence-parallel MoE this
// rank's share `slice` of the micro-batch. The losses use the router's choice before capacity (routed_TE),
// never the kept pairs. Each rank's losses are its share: summed over the context's micro-batch ranks
// they are the one-process losses of the micro-batch, in value and gradient.
struct ForwardTokens {
  int64_t B = 0, S = 0;
  TokenSlice slice;
};

// `global_counts_E` (int64 (E), this layer's) accumulates the step's global-batch counts over its
// micro-batches for the global-batch loss: this forward's are added. Collectives through `context`:
// Switch and sequence losses sum counts over the micro-batch ranks when the tokens are a share, the
// global-batch loss over the global batch.
LayerLosses balancing_losses(const Routing& route, const ForwardTokens& tokens,
                             const config::RoutingConfig& routing, int64_t top_k,
                             const MoEParallelContext& context, torch::Tensor& global_counts_E);

// Aux-loss-free balancing step, in place, no autograd: bias_E += rate · sign(mean(counts) − counts) (SIGN),
// or rate · (mean(counts) − counts) / mean(counts) (PROPORTIONAL; no move when nothing was routed).
void update_expert_bias(torch::Tensor& bias_E, const torch::Tensor& counts_E, double rate,
                        config::RoutingConfig::BiasUpdate rule = config::RoutingConfig::SIGN);

// MaxVio = (max_i load_i − mean load) / mean load; 0 for an empty load. Reads counts_E on the host:
// for logging, with counts already there.
double max_violation(const torch::Tensor& counts_E);

// Mean over tokens of the router distribution's entropy, −Σ_i p_ti · log p_ti (nats): fp64 scalar on
// probs_TE's device, detached.
torch::Tensor router_entropy(const torch::Tensor& probs_TE);

}  // namespace moetrain::moe
