#include "csrc/moe/moe_layer.h"

#include "csrc/layers/recompute.h"
#include "csrc/moe/balancing.h"

namespace moetrain::moe {

MoELayerImpl::MoELayerImpl(const MoEOptions& options) : options_(options) {
  RouterOptions ro;
  ro.d_model = options.d_model, ro.num_experts = options.num_experts, ro.top_k = options.top_k;
  ro.routing = options.routing;
  router = register_module("router", Router(ro));
  const int64_t local = options.local_experts > 0 ? options.local_experts : options.num_experts;
  experts = register_module("experts", GroupedExperts(local, options.d_model, options.local_expert_hidden(),
                                                      options.lora));
  experts->recompute_activation = options.recompute_act;
  if (options.shared_hidden > 0) {
    shared = register_module("shared", layers::SwiGLU(options.d_model, options.shared_hidden));
    if (options.shared_gate) {
      shared_gate = register_module("shared_gate",
                                    torch::nn::Linear(torch::nn::LinearOptions(options.d_model, 1).bias(false)));
    }
  }
  set_parallel_context(std::make_shared<MoEParallelContext>());
  step_counts_E_ = torch::zeros({options.num_experts}, torch::kInt64);
  global_step_counts_E_ = torch::zeros({options.num_experts}, torch::kInt64);
  step_measures_ = torch::zeros({kNumStepMeasures}, torch::kFloat64);
}

void MoELayerImpl::set_parallel_context(std::shared_ptr<const MoEParallelContext> context) {
  context_ = std::move(context);
  dispatcher_ = context_->make_dispatcher(options_.num_experts);
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

MoEOutput MoELayerImpl::forward(const torch::Tensor& x_BSD, const torch::Tensor& token_ids_BS,
                                const TokenSlice& slice) {
  const int64_t B = x_BSD.size(0), S = x_BSD.size(1), E = options_.num_experts;
  auto x_TD = x_BSD.reshape({-1, options_.d_model});
  Routing route = router(x_TD, token_ids_BS.defined() ? token_ids_BS.reshape({-1}) : token_ids_BS);

  Dispatched dispatched = dispatcher_->dispatch(x_TD, route.kept_TE,
                                                row_layout(route, options_.routing.pad_to_capacity(), E));
  auto expert_out_ND = experts(dispatched.tokens_ND, dispatched.tokens_per_expert_El);
  auto y_TD = dispatcher_->combine(expert_out_ND, route.gates_TE);
  if (shared) {
    auto shared_TD = shared(x_TD);
    if (shared_gate) shared_TD = shared_TD * torch::sigmoid(shared_gate(x_TD)).to(shared_TD.scalar_type());
    y_TD = y_TD + shared_TD;
  }

  MoEOutput out;
  out.y = y_TD.view(x_BSD.sizes());
  // Training losses only: evaluation computes none of them, nor their count all-reduces. Every rank of a
  // group evaluates together (is_training() alike), so all skip the same collectives.
  if (is_training()) {
    LayerLosses losses = balancing_losses(route, {B, S, slice}, options_.routing, options_.top_k, *context_,
                                          global_step_counts_E_);
    out.aux_loss = losses.aux, out.z_loss = losses.z;
  } else {
    out.aux_loss = out.z_loss = torch::zeros({}, route.probs_TE.options());
  }
  out.measures = forward_measures(route, out);
  if (is_training() && !layers::replaying()) accumulate_step(out.measures);
  return out;
}

MoEMeasures MoELayerImpl::forward_measures(const Routing& route, const MoEOutput& out) {
  MoEMeasures measures;
  auto counts_E = route.routed_TE.sum(0);  // int64
  measures.tokens_per_expert_E = counts_E.detach();
  measures.routed_pairs = counts_E.sum();
  measures.dropped_pairs = measures.routed_pairs - route.kept_TE.sum();
  measures.tokens = torch::full({}, route.kept_TE.size(0), counts_E.options());
  measures.unchosen_tokens = route.kept_TE.any(-1).logical_not().sum();
  measures.entropy = router_entropy(route.probs_TE);
  measures.aux_loss = out.aux_loss.detach();
  measures.z_loss = out.z_loss.detach();
  return measures;
}

void MoELayerImpl::accumulate_step(const MoEMeasures& measures) {
  torch::NoGradGuard no_grad;
  const auto& counts_E = measures.tokens_per_expert_E;
  keep_on(step_counts_E_, counts_E.device());
  keep_on(step_measures_, counts_E.device());
  step_counts_E_ += counts_E;
  auto f64 = [](const torch::Tensor& t) { return t.to(torch::kFloat64); };
  step_measures_ += torch::stack({f64(measures.routed_pairs), f64(measures.dropped_pairs), measures.entropy,
                                  f64(measures.aux_loss), f64(measures.z_loss), f64(measures.tokens),
                                  f64(measures.unchosen_tokens)});
  ++step_forwards_;
}

void MoELayerImpl::end_step(const torch::Tensor& counts_E) {
  const double rate = options_.routing.bias_update_rate();
  if (rate > 0 && !router_frozen_)
    update_expert_bias(router->expert_bias, counts_E, rate, options_.routing.bias_update());
  step_counts_E_.zero_();
  global_step_counts_E_.zero_();
  step_measures_.zero_();
  step_forwards_ = 0;
}

}  // namespace moetrain::moe
