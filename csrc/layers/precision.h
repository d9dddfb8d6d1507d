// Mixed precision: fp32 master weights, matmuls in a lower compute dtype (bf16) through autocast.
//
// Contract (docs/training.md, "Precision"):
// - Parameters, gradients, their reduction and AdamW stay fp32. The residual stream, norms, embeddings and
//   the LM loss stay fp32; linear layers and attention matmuls run in the compute dtype (autocast).
// - The router (logits, scores, top-k, balancing and z-losses) runs in fp32: autocast is off inside it.
// - Grouped expert GEMMs are not autocast operations: the experts cast their operands explicitly to the
//   compute dtype (compute_dtype_for) and return the result in the dtype of their input.
#pragma once

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include <optional>

namespace moetrain::layers {

// Sets autocast for one device type for the lifetime of the scope and restores the previous state.
// dtype: the compute dtype to autocast to; std::nullopt turns autocast off (fp32 regions such as the
// router). A scope asking for fp32 leaves the current state alone.
class AutocastScope {
 public:
  AutocastScope(c10::DeviceType device, std::optional<at::ScalarType> dtype)
      : device_(device),
        was_enabled_(at::autocast::is_autocast_enabled(device)),
        was_dtype_(at::autocast::get_autocast_dtype(device)) {
    if (dtype && *dtype == at::kFloat) {
      active_ = false;
      return;
    }
    active_ = true;
    at::autocast::set_autocast_enabled(device_, dtype.has_value());
    if (dtype) at::autocast::set_autocast_dtype(device_, *dtype);
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (!active_) return;
    // Casts of weights are cached while autocast is nested; drop them when the outermost scope ends.
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(device_, was_enabled_);
    at::autocast::set_autocast_dtype(device_, was_dtype_);
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  c10::DeviceType device_;
  bool was_enabled_;
  at::ScalarType was_dtype_;
  bool active_ = false;
};

// The dtype operands of a non-autocast matmul (grouped GEMM) on `device` must be cast to: the autocast
// dtype while autocast is on for that device, else std::nullopt (leave them as they are).
inline std::optional<at::ScalarType> compute_dtype_for(c10::DeviceType device) {
  if (!at::autocast::is_autocast_enabled(device)) return std::nullopt;
  return at::autocast::get_autocast_dtype(device);
}

// `x` in the compute dtype while autocast is on for its device (what an autocast matmul would cast it to),
// else `x`. Tensor-parallel layers cast before their collectives so that the sums travel in bf16.
inline at::Tensor in_compute_dtype(const at::Tensor& x) {
  const auto dtype = compute_dtype_for(x.device().type());
  return dtype && at::isFloatingType(x.scalar_type()) ? x.to(*dtype) : x;
}

}  // namespace moetrain::layers
