// finetune.base_dtype = BF16: the frozen base weights of a LoRA run held in bf16, half their memory
// (docs/finetuning.md, "A bf16 base").
//
// Which tensors: every frozen matrix the model multiplies by: attention projections, dense MLP, routed
// and shared experts (and the shared expert's gate), the LM head. They stay fp32: the LoRA adapters
// (trainable: their gradients and AdamW state stay fp32), the embedding (its rows start the fp32 residual
// stream), norm weights and biases (vectors), the router (fp32 by contract, csrc/layers/precision.h).
// Contract: the recipe has train.precision = BF16 (recipe validation checks it), so nothing in the
// forward casts these weights: autocast takes bf16 operands as they are and the experts' explicit casts
// (csrc/moe/experts.cpp) are no-ops. Under that precision an fp32 base is rounded to bf16 at every use,
// so a bf16 base computes the same logits bit for bit (tests/unit/trainer/base_dtype_test.cpp).
// Checkpoints widen the bf16 values back to fp32 (exactly) when they save.
#pragma once

#include <torch/torch.h>

#include "csrc/model/transformer.h"

namespace moetrain::trainer {

struct BaseDtypeReport {
  int64_t tensors = 0;       // parameters converted
  int64_t bytes_before = 0;  // bytes of all of this rank's parameters, before and after
  int64_t bytes_after = 0;
};

// Whether `name` (a parameter of `model`) is a base matrix that finetune.base_dtype holds in its dtype.
bool held_in_base_dtype(const model::TransformerImpl& model, const std::string& name, const torch::Tensor& p);

// Converts those parameters of `model` to `dtype` in place (they remain the module's parameters). Each must
// already be frozen (requires_grad false): std::logic_error otherwise.
BaseDtypeReport hold_frozen_base_in(model::TransformerImpl& model, torch::ScalarType dtype);

// Bytes of this rank's parameters (what the model's weights occupy).
int64_t parameter_bytes(const torch::nn::Module& model);

}  // namespace moetrain::trainer
