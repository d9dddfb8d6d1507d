// Token dispatch: group the (token, expert) pairs by expert for the grouped expert compute, and bring
// the expert outputs back to token order weighted by their gates.
//
// The MoE layer talks only to TokenDispatcher. csrc ships LocalDispatcher (one process, all experts
// local); parallel/ ships the all-to-all dispatcher for expert parallelism.
#pragma once

#include <torch/torch.h>

namespace moetrain::moe {

struct Dispatched {
  torch::Tensor tokens_ND;             // N = routed pairs, grouped by local expert (expert 0 first)
  torch::Tensor tokens_per_expert_El;  // int64 (E_local), sums to N
};

// Contract: dispatch() then combine() once per forward, in that order; combine() uses the state of
// the latest dispatch(). Both are autograd-correct.
class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;
  // x_TD: tokens; expert_idx_TK: selected experts per token (global indices).
  virtual Dispatched dispatch(const torch::Tensor& x_TD, const torch::Tensor& expert_idx_TK) = 0;
  // expert_out_ND: outputs in dispatch order; gates_TK: gate per (token, choice). Returns (T, D).
  virtual torch::Tensor combine(const torch::Tensor& expert_out_ND, const torch::Tensor& gates_TK) = 0;
};

// All experts in this process: a stable sort of the T·k pairs by expert (so pairs of one expert stay
// in token order, which keeps results bitwise reproducible), and its inverse for the way back.
class LocalDispatcher : public TokenDispatcher {
 public:
  explicit LocalDispatcher(int64_t num_experts) : num_experts_(num_experts) {}
  Dispatched dispatch(const torch::Tensor& x_TD, const torch::Tensor& expert_idx_TK) override;
  torch::Tensor combine(const torch::Tensor& expert_out_ND, const torch::Tensor& gates_TK) override;

 private:
  int64_t num_experts_;
  torch::Tensor sorted_pair_N_;    // pair index (token·k + choice) at each dispatched position
  torch::Tensor inverse_order_N_;  // dispatched position of each pair
};

}  // namespace moetrain::moe
