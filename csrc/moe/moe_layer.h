// The MoE feed-forward layer: route → dispatch → grouped experts → combine (+ shared experts).
#pragma once

#include <memory>

#include "csrc/model/layers.h"
#include "csrc/moe/dispatch.h"
#include "csrc/moe/experts.h"
#include "csrc/moe/router.h"

namespace moetrain::moe {

struct MoEOptions {
  int64_t d_model = 0;
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t expert_hidden = 0;
  int64_t shared_hidden = 0;  // 0 = no shared experts
  double aux_loss_coeff = 0.0;
};

struct MoEOutput {
  torch::Tensor y;                    // (B, S, D)
  torch::Tensor aux_loss;             // scalar, coefficient applied
  torch::Tensor tokens_per_expert_E;  // int64, this micro-batch's routed counts (detached)
};

class MoELayerImpl : public torch::nn::Module {
 public:
  explicit MoELayerImpl(const MoEOptions& options);
  MoEOutput forward(const torch::Tensor& x_BSD);

  // Replaces the dispatcher (the parallel layer installs its all-to-all dispatcher here).
  void set_dispatcher(std::shared_ptr<TokenDispatcher> dispatcher) { dispatcher_ = std::move(dispatcher); }

  TopKRouter router{nullptr};
  GroupedExperts experts{nullptr};
  model::SwiGLU shared{nullptr};  // null unless options.shared_hidden > 0

 private:
  MoEOptions options_;
  std::shared_ptr<TokenDispatcher> dispatcher_;
};
TORCH_MODULE(MoELayer);

}  // namespace moetrain::moe
