#include "csrc/model/sharding.h"

namespace moetrain::model {
namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

ShardBox shard_box(const TransformerOptions& o, const std::string& name,
                   const std::vector<int64_t>& local_shape) {
  ShardBox box;
  box.global_view = box.local_view = local_shape;
  box.offsets.assign(local_shape.size(), 0);
  const int64_t tp = o.tp_size, tr = o.tp_rank;
  if (name.find(".experts.") != std::string::npos) {
    box.kind = ShardBox::Kind::kExpertSharded;
    box.global_view[0] = o.moe.num_experts;
    box.offsets[0] = o.moe.first_local_expert;
    // Expert tensor parallelism: w1/w3 (E, D, H) split along H (dim 2), w2 (E, H, D) along H (dim 1).
    const int64_t shards = o.moe.expert_hidden_shards;
    const int64_t hidden_dim = ends_with(name, "w2")                            ? 1
                               : ends_with(name, "w1") || ends_with(name, "w3") ? 2
                                                                                : 0;
    if (shards > 1 && hidden_dim > 0) {
      box.global_view[hidden_dim] *= shards;
      box.offsets[hidden_dim] = o.moe.expert_hidden_shard * local_shape[hidden_dim];
    }
  } else if (ends_with(name, "attn.wqkv.weight") || ends_with(name, "attn.wqkv.bias")) {
    // (R, D) or (R) with R = (G + 2)·Hkv/tp·Dh: G + 2 slots (query heads, keys, values) of this rank's
    // Hkv/tp key/value heads (csrc/model/attention.h); globally (G + 2, Hkv·Dh[, D]), this rank's rows of each slot.
    const int64_t slots = o.attention().groups() + 2, rows = local_shape[0] / slots;
    box.local_view = {slots, rows};
    box.global_view = {slots, rows * tp};
    box.offsets = {0, tr * rows};
    if (local_shape.size() == 2) {
      for (auto* v : {&box.local_view, &box.global_view}) v->push_back(local_shape[1]);
      box.offsets.push_back(0);
    }
    if (tp > 1) box.kind = ShardBox::Kind::kTensorParallel;
  } else if (tp > 1 && o.qk_norm == QkNorm::kFullWidth &&
             (ends_with(name, "attn.q_norm.weight") || ends_with(name, "attn.k_norm.weight"))) {
    box.kind = ShardBox::Kind::kTensorParallel;  // full-width q/k norm: split like the heads
    box.global_view[0] *= tp;
    box.offsets[0] = tr * local_shape[0];
  } else if (tp > 1 && (name == "embed.weight" || name == "lm_head.weight")) {  // vocab parallel: rows
    box.kind = ShardBox::Kind::kTensorParallel;
    box.global_view[0] *= tp;
    box.offsets[0] = tr * local_shape[0];
  } else if (tp > 1 && name.find(".mlp.") != std::string::npos &&
             (ends_with(name, "w1.weight") || ends_with(name, "w3.weight"))) {
    box.kind = ShardBox::Kind::kTensorParallel;
    box.global_view[0] *= tp;
    box.offsets[0] = tr * local_shape[0];
  } else if (tp > 1 && (ends_with(name, "attn.wo.weight") ||
                        (name.find(".mlp.") != std::string::npos && ends_with(name, "w2.weight")))) {
    box.kind = ShardBox::Kind::kTensorParallel;
    box.global_view[1] *= tp;
    box.offsets[1] = tr * local_shape[1];
  }
  return box;
}

ParamRole parameter_role(const TransformerOptions& o, const std::string& name,
                         const std::vector<int64_t>& local_shape) {
  ParamRole role;
  role.box = shard_box(o, name, local_shape);
  const auto has = [&](const char* part) { return name.find(part) != std::string::npos; };
  role.expert = has(".experts.");
  const bool qk_norm = has(".attn.q_norm.") || has(".attn.k_norm.");
  role.tensor_parallel = has(".attn.wqkv.") || has(".attn.wo.") || has(".mlp.") || name == "embed.weight" ||
                         name == "lm_head.weight" || (qk_norm && o.qk_norm == QkNorm::kFullWidth);
  // Per-head q/k norm weights are shared by all heads: each tp rank's gradient covers its own heads.
  // Experts are not: the ranks of a tp group may hold different experts (the expert mesh is folded onto
  // the world apart from the attention's), and all holders of an expert shard form its expert_dp group.
  role.tp_partial_grad = (has(".moe.") && !role.expert) || (qk_norm && o.qk_norm == QkNorm::kPerHead);
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
