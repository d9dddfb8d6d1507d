#include "csrc/moe/moe_layer.h"

namespace moetrain::moe {

MoELayerImpl::MoELayerImpl(const MoEOptions& options) : options_(options) {
  router = register_module("router", TopKRouter(options.d_model, options.num_experts, options.top_k));
  experts = register_module("experts", GroupedExperts(options.num_experts, options.d_model, options.expert_hidden));
  if (options.shared_hidden > 0) {
    shared = register_module("shared", model::SwiGLU(options.d_model, options.shared_hidden));
  }
  dispatcher_ = std::make_shared<LocalDispatcher>(options.num_experts);
}

MoEOutput MoELayerImpl::forward(const torch::Tensor& x_BSD) {
  const auto shape = x_BSD.sizes().vec();
  auto x_TD = x_BSD.reshape({-1, options_.d_model});
  RouterOutput route = router(x_TD);

  Dispatched dispatched = dispatcher_->dispatch(x_TD, route.expert_idx_TK);
  auto expert_out_ND = experts(dispatched.tokens_ND, dispatched.tokens_per_expert_El);
  auto y_TD = dispatcher_->combine(expert_out_ND, route.gates_TK);
  if (shared) y_TD = y_TD + shared(x_TD);

  MoEOutput out;
  out.y = y_TD.view(shape);
  out.aux_loss = options_.aux_loss_coeff > 0
                     ? switch_aux_loss(route.probs_TE, route.routing_map_TE, options_.top_k) * options_.aux_loss_coeff
                     : torch::zeros({}, route.probs_TE.options());
  out.tokens_per_expert_E = route.routing_map_TE.sum(0).to(torch::kInt64).detach();
  return out;
}

}  // namespace moetrain::moe
