// What an MoE layer needs to know of the other processes, in one interface. csrc knows nothing of how
// they communicate: this default is one process (every sum is the identity, the dispatcher is local),
// and parallel/moe_parallel.h implements it over the process mesh, built in one place.
//
//   dispatch             the layer's experts live on the ranks of one expert-parallel group
//   micro-batch sums     under sequence-parallel MoE (tensor parallelism) each of the tp ranks routes
//                        1/tp of a micro-batch's tokens: counts summed over them cover the micro-batch
//   global-batch sums    counts summed over every rank (dp × tp, the world) cover the step's batch
#pragma once

#include <torch/torch.h>

#include <memory>

#include "csrc/moe/dispatch.h"

namespace moetrain::moe {

// Where a forward's tokens (flattened, consecutive) sit in the micro-batch of `sequences` × `seq_len`
// tokens when they are one rank's share of it (sequence-parallel MoE); sequences = 0: they are the whole
// micro-batch.
struct TokenSlice {
  int64_t sequences = 0, seq_len = 0, first_token = 0;
  bool is_share() const { return sequences > 0; }
};

class MoEParallelContext {
 public:
  virtual ~MoEParallelContext() = default;
  // Ranks whose token shares make up one micro-batch (tp under sequence-parallel MoE; 1 otherwise).
  virtual int64_t micro_batch_ranks() const { return 1; }
  // Ranks whose tokens make up the step's global batch (the world).
  virtual int64_t global_batch_ranks() const { return 1; }
  // `t` (counts or sums of measures, any shape and dtype) summed over those ranks; no autograd. Every
  // rank of the group calls it together. The result is a new tensor, or `t` itself in one process.
  virtual torch::Tensor sum_over_micro_batch(const torch::Tensor& t) const { return t; }
  virtual torch::Tensor sum_over_global_batch(const torch::Tensor& t) const { return t; }
  // The token dispatcher of one layer with `num_experts` experts (each layer has its own: a dispatcher
  // keeps the state of its latest dispatch for the combine).
  virtual std::shared_ptr<TokenDispatcher> make_dispatcher(int64_t num_experts) const {
    return std::make_shared<LocalDispatcher>(num_experts);
  }
};

}  // namespace moetrain::moe
