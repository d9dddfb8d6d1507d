// Where each parameter of this process sits in the global (unsharded) model. One place knows how
// tensors are split, and initialisation, checkpoints and export all ask it:
//   experts (*.experts.w1/w3/w2, (E, …)):         rows [first_local_expert, +local) of dim 0; under expert
//                                                 tensor parallelism also a slice of the hidden dim (w1/w3: 2, w2: 1)
//   attn.wqkv.weight (R, D), bias (R):            viewed as (G + 2, Hkv·Dh[, D]) (G = heads / kv heads, csrc/model/
//                                                 layers.h); under TP slice [tp_rank·Hkv/tp·Dh, +Hkv/tp·Dh) of dim 1
//   attn.q_norm/k_norm.weight, qk_norm FULL_WIDTH: slice of dim 0 under TP (per head: replicated)
//   mlp.w1/w3.weight (F/tp, D) under TP:          column parallel, slice of dim 0
//   attn.wo / mlp.w2 weight (D, ·/tp) under TP:   row parallel, slice of dim 1
//   embed.weight, lm_head.weight (V/tp, D) under TP: vocab parallel, rows [tp_rank·V/tp, +V/tp)
//   everything else:                              the whole tensor (replicated)
// A parameter's global tensor has shape `global_view` (wqkv is stored as (G + 2, Hkv·Dh, D) so that each
// TP shard is one box; without GQA that is (3, D, D)); the process holds the box [offsets, offsets + local_view).
#pragma once

#include <string>
#include <vector>

#include "csrc/model/transformer.h"

namespace moetrain::model {

struct ShardBox {
  std::vector<int64_t> global_view;  // shape of the global tensor
  std::vector<int64_t> offsets;      // where this process's block starts, per dim of global_view
  std::vector<int64_t> local_view;   // shape of this process's block (its numel equals the parameter's)
  enum class Kind { kReplicated, kExpertSharded, kTensorParallel } kind = Kind::kReplicated;
};

ShardBox shard_box(const TransformerOptions& options, const std::string& name,
                   const std::vector<int64_t>& local_shape);

// What a parameter is: decided here, from the model's structure, and nowhere else. Gradient
// synchronisation, the gradient norm, parameter counts, freezing and checkpoints ask it, instead of
// each matching names of its own.
struct ParamRole {
  ShardBox box;         // where this rank's tensor sits in the global model
  bool expert = false;  // an expert weight (or its adapter): sharded over ep (and etp), replicated over expert_dp
  bool tensor_parallel = false;  // split over tp when tp > 1 (attention q/k/v and output, dense MLP, vocab rows)
  bool tp_partial_grad = false;  // under TP each rank's gradient is a share, summed over tp: in an MoE layer
                                 // (each rank computes on its 1/tp of the tokens: router, shared expert and
                                 // its gate; not the experts, whose holders are their expert_dp group) and
                                 // per-head q/k norm weights (each rank its heads)
  bool router = false;           // router weight (finetune.freeze_router freezes it)
  bool adapter = false;          // LoRA A or B (the only trainable tensors under finetune.lora)
  bool tied = false;             // embed.weight doubling as the LM head (model.tie_embeddings)
};

ParamRole parameter_role(const TransformerOptions& options, const std::string& name,
                         const std::vector<int64_t>& local_shape);

struct RoledParameter {
  std::string name;
  torch::Tensor tensor;  // the parameter itself (not a copy)
  ParamRole role;
};

// Every parameter of `model`, in named_parameters() order, with its role.
std::vector<RoledParameter> roled_parameters(const TransformerImpl& model);

}  // namespace moetrain::model
