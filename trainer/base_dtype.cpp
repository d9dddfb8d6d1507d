#include "trainer/base_dtype.h"

#include <stdexcept>

#include "csrc/model/sharding.h"

namespace moetrain::trainer {

bool held_in_base_dtype(const model::TransformerImpl& model, const std::string& name, const torch::Tensor& p) {
  const auto role = model::parameter_role(model.options(), name, p.sizes().vec());
  return p.dim() >= 2 && !role.adapter && !role.router && name != "embed.weight";
}

BaseDtypeReport hold_frozen_base_in(model::TransformerImpl& model, torch::ScalarType dtype) {
  torch::NoGradGuard no_grad;
  BaseDtypeReport report;
  report.bytes_before = parameter_bytes(model);
  for (auto& item : model.named_parameters()) {
    torch::Tensor& p = item.value();
    if (!held_in_base_dtype(model, item.key(), p) || p.scalar_type() == dtype) continue;
    if (p.requires_grad()) {
      throw std::logic_error("finetune.base_dtype: " + item.key() +
                             " is trainable; only a frozen base can change dtype");
    }
    p.set_data(p.to(dtype));  // the fp32 storage is released here
    ++report.tensors;
  }
  report.bytes_after = parameter_bytes(model);
  return report;
}

int64_t parameter_bytes(const torch::nn::Module& model) {
  int64_t bytes = 0;
  for (const auto& p : model.parameters()) bytes += p.numel() * static_cast<int64_t>(p.element_size());
  return bytes;
}

}  // namespace moetrain::trainer
