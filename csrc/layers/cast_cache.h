// Weights cast to the compute dtype once per optimizer step, not once per use.
//
// Under mixed precision the grouped expert GEMMs take bf16 operands, so every micro-batch cast the fp32
// master weights again. CastCache keeps each cast while its weight is unchanged: the same tensor with the
// same version counter (every in-place update bumps it: the optimizer step, a checkpoint load, merging
// adapters), so a step of m micro-batches casts each weight once instead of m times (and evaluation,
// which changes nothing, not at all after the first batch). The cached copy costs 2 bytes per weight.
//
// get() is differentiable with respect to the weight exactly as w.to(dtype) is: its backward casts the
// incoming gradient back to the weight's dtype (what ToCopyBackward does), so gradients are bitwise those of
// the uncached cast. One thread uses a cache (the module's forward).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace moetrain::layers {

class CastCache {
 public:
  // `w` in `dtype`: w itself when it already is; else the cached cast, made again when w changed.
  torch::Tensor get(const torch::Tensor& w, torch::ScalarType dtype);
  int64_t casts() const { return casts_; }  // casts made since construction (tests, benchmarks)

 private:
  struct Entry {
    torch::Tensor weight;  // the weight itself: matched with is_same, dropped once only we hold it
    uint32_t version = 0;
    torch::ScalarType dtype = torch::kFloat32;
    torch::Tensor cast;  // no grad; shares nothing with the weight
  };
  std::vector<Entry> entries_;
  int64_t casts_ = 0;
};

}  // namespace moetrain::layers
