// All local experts computed together: grouped SwiGLU over tokens already grouped by expert.
#pragma once

#include <torch/torch.h>

#include <optional>

#include "csrc/layers/cast_cache.h"

namespace moetrain::moe {

// LoRA on the expert projections (recipe finetune.lora): per expert, W (in, out) becomes
// W + (alpha / rank)·A·B with A (in, rank), B (rank, out).
struct ExpertLoraOptions {
  int64_t rank = 0;  // 0 = no adapters
  double alpha = 16;
  bool gate = false, up = false, down = false;  // which projections (w1, w3, w2) carry adapters
  double scale() const { return alpha / static_cast<double>(rank); }
};

// The operands of one grouped SwiGLU, in the dtype the GEMMs run in; adapters (undefined when absent)
// as in GroupedExpertsImpl. Gate and up stay two GEMMs: one GEMM of width 2F over [w1 | w3] needs that
// weight concatenated on every call and measured slower on the CPU (tools/bench_gate_up_fusion.py,
// docs/benchmarks.md).
struct ExpertOperands {
  torch::Tensor x_ND;    // tokens grouped by expert
  torch::Tensor w1_EDF;  // gate
  torch::Tensor w3_EDF;  // up
  torch::Tensor w2_EFD;  // down
  torch::Tensor w1_a, w1_b, w3_a, w3_b, w2_a, w2_b;
};

// silu(x·w1) * (x·w3) · w2 per expert group, with the adapters' scale·(x·A)·B added to each adapted
// projection. offsets_E: int32 cumulative rows per expert. Returns (N, D) in the operands' dtype.
// recompute_activation (train.recompute_modules "moe_act", training only): silu(gate)·up is freed once the
// down projection has saved it, and computed again from gate and up just before that projection's backward.
torch::Tensor grouped_swiglu(const ExpertOperands& ops, const torch::Tensor& offsets_E, double lora_scale,
                             bool recompute_activation = false);

// The operands with every trainable per-expert weight (E, in, out) passed through
// where(expert has tokens, w, 0). The forward values of experts with tokens are w itself (bitwise), and an
// expert with no tokens uses none of its weights; the point is the backward: the gradient of an expert
// with no tokens is exactly 0 whatever the grouped GEMM wrote for its empty group. CUDA's grouped GEMM
// (CUTLASS, bf16) leaves an empty group's weight gradient uninitialised (NaN under deterministic
// algorithms, which fill new memory with NaN); the CPU fallback writes 0, so CPU results are unchanged.
// On the device, from tokens_per_expert_El (int64, E): no host read. Operands without grad are kept.
ExpertOperands mask_empty_experts(ExpertOperands ops, const torch::Tensor& tokens_per_expert_El);

// E in this file is this rank's local experts (all of them without expert parallelism). Weights are
// stored per expert as (E, in, out) so each group is a plain x·W. Grouped GEMMs
// (at::_grouped_mm, offsets = cumulative tokens per expert): no loop over experts. Adapters add two
// thin grouped GEMMs per adapted projection: x·A (N, rank), then ·B.
class GroupedExpertsImpl : public torch::nn::Module {
 public:
  GroupedExpertsImpl(int64_t num_experts, int64_t d_model, int64_t hidden, const ExpertLoraOptions& lora = {});
  // tokens_ND grouped by expert; tokens_per_expert_El int64 (E_local) summing to N. Returns (N, D) in the compute
  // dtype (layers::compute_dtype_for: bf16 under mixed precision, else tokens_ND's dtype).
  torch::Tensor forward(const torch::Tensor& tokens_ND, const torch::Tensor& tokens_per_expert_El);
  // forward() in its two parts: the operands cast to `dtype` (std::nullopt: as they are; the casts'
  // backward returns fp32 gradients to fp32 master weights; the weights' casts are kept until the weights
  // change, layers::CastCache), then grouped_swiglu. moe-bench times them apart.
  ExpertOperands operands(const torch::Tensor& tokens_ND, std::optional<torch::ScalarType> dtype) const;

  torch::Tensor w1_EDF;  // gate projection
  torch::Tensor w3_EDF;  // up projection
  torch::Tensor w2_EFD;  // down projection
  // Adapters (undefined when absent), named "<w>_lora_a" (E, in, rank) and "<w>_lora_b" (E, rank, out).
  torch::Tensor w1_lora_a, w1_lora_b, w3_lora_a, w3_lora_b, w2_lora_a, w2_lora_b;
  const ExpertLoraOptions& lora() const { return lora_; }
  // Folds the adapters into the base weights, W += (alpha / rank)·A·B per expert, and zeroes B, so the
  // module computes the same function with base weights alone (export of a LoRA run).
  void merge_adapters();
  int64_t weight_casts() const { return weight_casts_.casts(); }  // casts made so far (tests, benchmarks)
  bool recompute_activation = false;  // train.recompute_modules "moe_act" (grouped_swiglu)

 private:
  ExpertLoraOptions lora_;
  mutable layers::CastCache weight_casts_;  // the weights in the compute dtype, cast once per optimizer step
};
TORCH_MODULE(GroupedExperts);

}  // namespace moetrain::moe
