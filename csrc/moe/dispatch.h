// Token dispatch: group the routed (token, expert) pairs by expert for the grouped expert compute, and
// bring the expert outputs back to token order, weighted by their gates.
//
// The MoE layer talks only to TokenDispatcher. csrc ships LocalDispatcher (one process, all experts
// local); the expert-parallel all-to-all dispatcher belongs in parallel/.
//
// Note [Static dispatch sizes]: the number of rows a dispatch sends to the experts is decided on the host
// from sizes known there (T, k, E, the capacity), never from the routing's values, which live on the
// device: reading them would make the host wait for the device (docs/routing.md, "Host reads"). Dropless,
// the kept pairs are exactly the routed ones, T·k for top-k and E·c for expert choice. With a capacity
// and padding every expert gets exactly `capacity` rows. With a capacity and no padding the number of
// kept pairs is only bounded: the rows hold the kept pairs first and unused rows after them, which the
// experts do not compute (their offsets end at the last kept pair) and which are masked in both
// directions so that their undefined values reach neither the output nor any gradient.
#pragma once

#include <torch/torch.h>

namespace moetrain::moe {

// How the rows of a dispatch are laid out; see Note [Static dispatch sizes].
struct RowLayout {
  enum class Kind { kDropless, kCapped, kPadded };
  Kind kind = Kind::kDropless;
  int64_t rows = 0;  // rows sent to the experts: the kept pairs (dropless), a bound on them (capped), E·capacity (padded)
  int64_t capacity = 0;  // padded: rows per expert

  static RowLayout dropless(int64_t kept_pairs) { return {Kind::kDropless, kept_pairs, 0}; }
  static RowLayout capped(int64_t max_kept_pairs) { return {Kind::kCapped, max_kept_pairs, 0}; }
  static RowLayout padded(int64_t num_experts, int64_t capacity) {
    return {Kind::kPadded, num_experts * capacity, capacity};
  }
};

struct Dispatched {
  torch::Tensor tokens_ND;  // N rows grouped by local expert (expert 0 first)
  torch::Tensor tokens_per_expert_El;  // int64 (E_local): rows the experts compute; sums to N, or less (capped: unused tail)
};

// The rows a dispatcher sends to the experts: the kept pairs in (expert, token) order. Padded: expert e's
// pairs fill rows [e·capacity, e·capacity + its count), the rest of its block are fillers. Capped: the
// kept pairs first, then unused rows. Fillers and unused rows are token 0, expert 0, valid false.
struct DispatchRows {
  torch::Tensor token_N;              // int64 token of each row
  torch::Tensor expert_N;             // int64 (global) expert of each row
  torch::Tensor valid_N;              // bool, false for fillers and unused rows
  torch::Tensor tokens_per_expert_E;  // int64 rows per expert (padded: capacity)
  bool unused_tail = false;           // capped: rows past Σ tokens_per_expert_E are never computed
};
// kept_TE: bool (T, E). No host read; the device checks the layout holds every kept pair.
DispatchRows dispatch_rows(const torch::Tensor& kept_TE, const RowLayout& layout);

// The first n rows (all valid): the rows actually sent once their number is known on the host.
DispatchRows first_rows(const DispatchRows& rows, int64_t n);

// Gate-weighted sum of row outputs into token order: out[token_N[r]] += gate(token, expert) · rows[r].
// Returns (T, D) in the wider of the two dtypes (fp32 gates with bf16 rows: fp32).
torch::Tensor combine_rows(const torch::Tensor& rows_ND, const DispatchRows& rows,
                           const torch::Tensor& gates_TE);

// Contract: dispatch() then combine() once per forward, in that order; combine() uses the state of
// the latest dispatch(). Both are autograd-correct.
class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;
  // x_TD: tokens; kept_TE: bool pairs to compute; layout: the rows, sized on the host (RowLayout).
  virtual Dispatched dispatch(const torch::Tensor& x_TD, const torch::Tensor& kept_TE,
                              const RowLayout& layout) = 0;
  // expert_out_ND in dispatch order; gates_TE: gate of each pair. Returns (T, D).
  virtual torch::Tensor combine(const torch::Tensor& expert_out_ND, const torch::Tensor& gates_TE) = 0;
};

// All experts in this process. Rows are the kept pairs in (expert, token) order, so each expert's
// tokens keep their order and results are reproducible; combine adds each row's gated output to its
// token (index_add: sequential and bitwise reproducible on CPU). Never reads the device on the host.
class LocalDispatcher : public TokenDispatcher {
 public:
  explicit LocalDispatcher(int64_t num_experts) : num_experts_(num_experts) {}
  Dispatched dispatch(const torch::Tensor& x_TD, const torch::Tensor& kept_TE, const RowLayout& layout) override;
  torch::Tensor combine(const torch::Tensor& expert_out_ND, const torch::Tensor& gates_TE) override;

 private:
  int64_t num_experts_;
  DispatchRows rows_;  // of the latest dispatch
};

}  // namespace moetrain::moe
