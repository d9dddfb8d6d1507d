#include "csrc/model/sharding.h"

namespace moetrain::model {
namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

ShardBox shard_box(const TransformerOptions& o, const std::string& name, const std::vector<int64_t>& local_shape) {
  ShardBox box;
  box.global_view = box.local_view = local_shape;
  box.offsets.assign(local_shape.size(), 0);
  const int64_t tp = o.tp_size, tr = o.tp_rank;
  if (name.find(".experts.") != std::string::npos) {
    box.kind = ShardBox::kExpertSharded;
    box.global_view[0] = o.moe.num_experts;
    box.offsets[0] = o.moe.first_local_expert;
  } else if (ends_with(name, "attn.wqkv.weight")) {
    // (3·D/tp, D) = three (D/tp, D) blocks for q, k, v.
    box.local_view = {3, local_shape[0] / 3, local_shape[1]};
    box.global_view = {3, local_shape[0] / 3 * tp, local_shape[1]};
    box.offsets = {0, tr * local_shape[0] / 3, 0};
    if (tp > 1) box.kind = ShardBox::kTensorParallel;
  } else if (tp > 1 && (name == "embed.weight" || name == "lm_head.weight")) {  // vocab parallel: rows
    box.kind = ShardBox::kTensorParallel;
    box.global_view[0] *= tp;
    box.offsets[0] = tr * local_shape[0];
  } else if (tp > 1 && name.find(".mlp.") != std::string::npos && (ends_with(name, "w1.weight") || ends_with(name, "w3.weight"))) {
    box.kind = ShardBox::kTensorParallel;
    box.global_view[0] *= tp;
    box.offsets[0] = tr * local_shape[0];
  } else if (tp > 1 && (ends_with(name, "attn.wo.weight") || (name.find(".mlp.") != std::string::npos && ends_with(name, "w2.weight")))) {
    box.kind = ShardBox::kTensorParallel;
    box.global_view[1] *= tp;
    box.offsets[1] = tr * local_shape[1];
  }
  return box;
}

ParamRole parameter_role(const TransformerOptions& o, const std::string& name, const std::vector<int64_t>& local_shape) {
  ParamRole role;
  role.box = shard_box(o, name, local_shape);
  const auto has = [&](const char* part) { return name.find(part) != std::string::npos; };
  role.expert = has(".experts.");
  role.tensor_parallel = has(".attn.wqkv.") || has(".attn.wo.") || has(".mlp.") || name == "embed.weight" ||
                         name == "lm_head.weight";
  role.sequence_parallel = has(".moe.");
  role.router = has(".moe.router.");
  role.adapter = has("_lora_");
  role.tied = name == "embed.weight" && o.tie_embeddings;
  return role;
}

std::vector<RoledParameter> roled_parameters(const TransformerImpl& model) {
  std::vector<RoledParameter> out;
  for (const auto& p : model.named_parameters()) {
    out.push_back({p.key(), p.value(), parameter_role(model.options(), p.key(), p.value().sizes().vec())});
  }
  return out;
}

}  // namespace moetrain::model
