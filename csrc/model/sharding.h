// Where each parameter of this process sits in the global (unsharded) model. One place knows how
// tensors are split, and initialisation, checkpoints and export all ask it:
//   experts (*.experts.w1/w3/w2, (E, …)):         rows [first_local_expert, +local) of dim 0
//   attn.wqkv.weight (3·D/tp, D) under TP:        viewed as (3, D, D), slice [tp_rank·D/tp, +D/tp) of dim 1
//   mlp.w1/w3.weight (F/tp, D) under TP:          column parallel, slice of dim 0
//   attn.wo / mlp.w2 weight (D, ·/tp) under TP:   row parallel, slice of dim 1
//   embed.weight, lm_head.weight (V/tp, D) under TP: vocab parallel, rows [tp_rank·V/tp, +V/tp)
//   everything else:                              the whole tensor (replicated)
// A parameter's global tensor has shape `global_view` (wqkv is stored as (3, D, D) so that each TP
// shard is one box); the process holds the box [offsets, offsets + local_view).
#pragma once

#include <string>
#include <vector>

#include "csrc/model/transformer.h"

namespace moetrain::model {

struct ShardBox {
  std::vector<int64_t> global_view;  // shape of the global tensor
  std::vector<int64_t> offsets;      // where this process's block starts, per dim of global_view
  std::vector<int64_t> local_view;   // shape of this process's block (its numel equals the parameter's)
  enum Kind { kReplicated, kExpertSharded, kTensorParallel } kind = kReplicated;
};

ShardBox shard_box(const TransformerOptions& options, const std::string& name, const std::vector<int64_t>& local_shape);

}  // namespace moetrain::model
