#include "csrc/moe/moe_layer.h"

#include "csrc/moe/balancing.h"

namespace moetrain::moe {

MoELayerImpl::MoELayerImpl(const MoEOptions& options) : options_(options) {
  RouterOptions ro;
  ro.d_model = options.d_model, ro.num_experts = options.num_experts, ro.top_k = options.top_k;
  ro.routing = options.routing;
  router = register_module("router", Router(ro));
  const int64_t local = options.local_experts > 0 ? options.local_experts : options.num_experts;
  experts = register_module("experts", GroupedExperts(local, options.d_model, options.expert_hidden, options.lora));
  if (options.shared_hidden > 0) {
    shared = register_module("shared", model::SwiGLU(options.d_model, options.shared_hidden));
    if (options.shared_gate) {
      shared_gate = register_module("shared_gate", torch::nn::Linear(torch::nn::LinearOptions(options.d_model, 1).bias(false)));
    }
  }
  dispatcher_ = std::make_shared<LocalDispatcher>(options.num_experts);
  step_counts_E_ = torch::zeros({options.num_experts}, torch::kInt64);
  global_step_counts_E_ = torch::zeros({options.num_experts}, torch::kInt64);
  step_measures_ = torch::zeros({kNumStepMeasures}, torch::kFloat64);
}

namespace {
// The accumulator on `device` (moved once, when the layer's device changes).
void keep_on(torch::Tensor& accumulator, const torch::Device& device) {
  if (accumulator.device() != device) accumulator = accumulator.to(device);
}

// See Note [Static dispatch sizes] in dispatch.h.
RowLayout row_layout(const Routing& route, bool pad, int64_t num_experts) {
  if (route.capacity == 0) return RowLayout::dropless(route.max_kept);
  return pad ? RowLayout::padded(num_experts, route.capacity) : RowLayout::capped(route.max_kept);
}
}  // namespace

MoEOutput MoELayerImpl::forward(const torch::Tensor& x_BSD, const torch::Tensor& token_ids_BS, const TokenSlice& slice) {
  const auto& r = options_.routing;
  const int64_t B = x_BSD.size(0), S = x_BSD.size(1), E = options_.num_experts, k = options_.top_k;
  auto x_TD = x_BSD.reshape({-1, options_.d_model});
  Routing route = router(x_TD, token_ids_BS.defined() ? token_ids_BS.reshape({-1}) : token_ids_BS);

  Dispatched dispatched = dispatcher_->dispatch(x_TD, route.kept_TE, row_layout(route, r.pad_to_capacity(), E));
  auto expert_out_ND = experts(dispatched.tokens_ND, dispatched.tokens_per_expert_El);
  auto y_TD = dispatcher_->combine(expert_out_ND, route.gates_TE);
  if (shared) {
    auto shared_TD = shared(x_TD);
    if (shared_gate) shared_TD = shared_TD * torch::sigmoid(shared_gate(x_TD)).to(shared_TD.scalar_type());
    y_TD = y_TD + shared_TD;
  }

  MoEOutput out;
  out.y = y_TD.view(x_BSD.sizes());
  auto counts_E = route.routed_TE.sum(0);  // int64
  const auto i64 = counts_E.options();

  // Balancing losses use the router's choice before capacity (routed_TE), never the kept pairs. They
  // are training losses: evaluation computes none of them, nor their count all-reduces (tp, dp). Every
  // rank of a group evaluates together (is_training() alike), so all skip the same collectives.
  auto aux = torch::zeros({}, route.probs_TE.options());
  const double tp = tp_ ? tp_->size() : 1;
  const bool training = is_training();
  if (training && r.aux_loss_coeff() > 0) {
    auto switch_loss = tp_ ? global_aux_loss(route.probs_TE, tp_->sum_counts(counts_E.detach()), B * S * tp_->size(), k) / tp
                           : switch_aux_loss(route.probs_TE, route.routed_TE, k);
    aux = aux + r.aux_loss_coeff() * switch_loss;
  }
  if (training && r.seq_aux_loss_coeff() > 0) {
    if (slice.sequences > 0) {  // this rank's share: tokens first_token.. of the flattened micro-batch
      auto seq_T = (torch::arange(B * S, i64) + slice.first_token).div(slice.seq_len, "floor");
      auto counts_BE = torch::zeros({slice.sequences, E}, i64).index_add(0, seq_T, route.routed_TE.to(torch::kInt64));
      if (tp_) counts_BE = tp_->sum_counts(counts_BE);
      aux = aux + r.seq_aux_loss_coeff() * sequence_aux_loss_share(route.probs_TE, seq_T, counts_BE, slice.seq_len, k);
    } else {
      aux = aux + r.seq_aux_loss_coeff() * sequence_aux_loss(route.probs_TE.view({B, S, E}), route.routed_TE.view({B, S, E}), k);
    }
  }
  if (training && r.global_aux_loss_coeff() > 0) {
    // f from the counts of the data-parallel group, accumulated over the step's micro-batches so far.
    auto global = count_reducer_ ? count_reducer_(counts_E.detach()) : counts_E.detach();
    keep_on(global_step_counts_E_, global.device());
    global = global_step_counts_E_ += global;
    // Under TP the reducer also sums over the tp group and each rank holds 1/tp of the tokens: its
    // share is P over its tokens / tp (the shares add up over tp, as for the Switch loss above). The
    // token count stays on the device: top-k routes k pairs per token, so tokens · k = Σ global.
    aux = aux + r.global_aux_loss_coeff() * global_aux_loss(route.probs_TE, global) / tp;
  }
  out.aux_loss = aux;
  out.z_loss = training && r.z_loss_coeff() > 0 ? r.z_loss_coeff() * router_z_loss(route.logits_TE) / tp
                                                : torch::zeros({}, route.probs_TE.options());

  out.stats.tokens_per_expert_E = counts_E.detach();
  out.stats.routed_pairs = counts_E.sum();
  out.stats.dropped_pairs = out.stats.routed_pairs - route.kept_TE.sum();
  out.stats.tokens = torch::full({}, route.kept_TE.size(0), i64);
  out.stats.unchosen_tokens = route.kept_TE.any(-1).logical_not().sum();
  out.stats.entropy = router_entropy(route.probs_TE);
  out.stats.aux_loss = out.aux_loss.detach();
  out.stats.z_loss = out.z_loss.detach();
  if (is_training()) accumulate_step(counts_E, out.stats);
  return out;
}

void MoELayerImpl::accumulate_step(const torch::Tensor& counts_E, const MoEStats& stats) {
  torch::NoGradGuard no_grad;
  keep_on(step_counts_E_, counts_E.device());
  keep_on(step_measures_, counts_E.device());
  step_counts_E_ += counts_E;
  auto f64 = [](const torch::Tensor& t) { return t.to(torch::kFloat64); };
  step_measures_ += torch::stack({f64(stats.routed_pairs), f64(stats.dropped_pairs), stats.entropy, f64(stats.aux_loss),
                                  f64(stats.z_loss), f64(stats.tokens), f64(stats.unchosen_tokens)});
  ++step_forwards_;
}

void MoELayerImpl::end_step(const torch::Tensor& counts_E) {
  const double rate = options_.routing.bias_update_rate();
  if (rate > 0 && !router_frozen_) update_expert_bias(router->expert_bias, counts_E, rate);
  step_counts_E_.zero_();
  global_step_counts_E_.zero_();
  step_measures_.zero_();
  step_forwards_ = 0;
}

}  // namespace moetrain::moe
