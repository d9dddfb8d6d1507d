// Token dispatch: group the routed (token, expert) pairs by expert for the grouped expert compute, and
// bring the expert outputs back to token order, weighted by their gates.
//
// The MoE layer talks only to TokenDispatcher. csrc ships LocalDispatcher (one process, all experts
// local); the expert-parallel all-to-all dispatcher belongs in parallel/.
#pragma once

#include <torch/torch.h>

namespace moetrain::moe {

struct Dispatched {
  torch::Tensor tokens_ND;             // N rows grouped by local expert (expert 0 first)
  torch::Tensor tokens_per_expert_El;  // int64 (E_local), sums to N
};

// The rows a dispatcher sends to the experts: the kept pairs in (expert, token) order; with
// pad_capacity > 0 every expert gets exactly pad_capacity rows, fillers being token 0 marked invalid.
struct DispatchRows {
  torch::Tensor token_N;               // int64 token of each row
  torch::Tensor expert_N;              // int64 (global) expert of each row
  torch::Tensor valid_N;               // bool, false for filler rows
  torch::Tensor tokens_per_expert_E;   // int64 rows per expert
};
DispatchRows dispatch_rows(const torch::Tensor& kept_TE, int64_t pad_capacity);

// Gate-weighted sum of row outputs into token order: out[token_N[r]] += gate(token, expert) · rows[r].
torch::Tensor combine_rows(const torch::Tensor& rows_ND, const DispatchRows& rows, const torch::Tensor& gates_TE);

// Contract: dispatch() then combine() once per forward, in that order; combine() uses the state of
// the latest dispatch(). Both are autograd-correct.
class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;
  // x_TD: tokens; kept_TE: bool pairs to compute; pad_capacity > 0: every expert gets exactly that many
  // rows, the unused ones filled with token 0 at gate 0 (static shapes); 0 = exactly the kept pairs.
  virtual Dispatched dispatch(const torch::Tensor& x_TD, const torch::Tensor& kept_TE, int64_t pad_capacity) = 0;
  // expert_out_ND in dispatch order; gates_TE: gate of each pair. Returns (T, D).
  virtual torch::Tensor combine(const torch::Tensor& expert_out_ND, const torch::Tensor& gates_TE) = 0;
};

// All experts in this process. Rows are the kept pairs in (expert, token) order, so each expert's
// tokens keep their order and results are reproducible; combine adds each row's gated output to its
// token (index_add: sequential and bitwise reproducible on CPU).
class LocalDispatcher : public TokenDispatcher {
 public:
  explicit LocalDispatcher(int64_t num_experts) : num_experts_(num_experts) {}
  Dispatched dispatch(const torch::Tensor& x_TD, const torch::Tensor& kept_TE, int64_t pad_capacity) override;
  torch::Tensor combine(const torch::Tensor& expert_out_ND, const torch::Tensor& gates_TE) override;

 private:
  int64_t num_experts_;
  DispatchRows rows_;  // of the latest dispatch
};

}  // namespace moetrain::moe
