// Import, tensor side: the plan that reads a family's directory into a one-process model (import_plan's
// contract in hf/families.h), and load_hf_tensors.
#include <functional>
#include <set>
#include <stdexcept>

#include "hf/family_spec.h"
#include "hf/weights.h"

namespace moetrain::hf {
namespace {

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + ")";
}

// Reads one tensor in fp32 when the plan is carried out (the plan must not outlive the weights).
struct Get {
  const HfWeights* weights;
  torch::Tensor operator()(const std::string& name) const { return weights->get(name).to(torch::kFloat32); }
};

// Builds the plan layer by layer; `ours` names a moetrain parameter prefix ("layers.L."), `hf` the
// directory's ("model.layers.L.").
class Planner {
 public:
  Planner(const FamilySpec& s, const HfWeights& w, const model::TransformerOptions& o)
      : s_(s), w_(w), o_(o), get_{&w} {}

  ImportPlan plan() {
    const int64_t V = o_.vocab_size, D = o_.d_model;
    const std::string embed = need("model.embed_tokens.weight", {V, D});
    add("embed.weight", {V, D}, [get = get_, embed] { return get(embed); });
    for (int64_t l = 0; l < o_.num_layers; ++l) {
      const std::string ours = "layers." + std::to_string(l) + ".",
                        hf = "model.layers." + std::to_string(l) + ".";
      attention(ours, hf);
      if (o_.is_moe.at(l)) {
        moe(ours, hf, l);
      } else {
        dense(ours, hf + s_.layer.dense);
      }
    }
    copy("norm.weight", "model.norm.weight", {D});
    lm_head(embed);
    require_all_used();
    return std::move(plan_);
  }

 private:
  // Checks now that `name` exists with `shape` (so a bad directory fails before anything is written);
  // returns the name for the reader to fetch later.
  std::string need(const std::string& name, const std::vector<int64_t>& shape) {
    if (!w_.contains(name)) {
      throw std::runtime_error(w_.dir() + " has no tensor " + name + "; it is not a complete " +
                               s_.names.title + " checkpoint");
    }
    if (w_.shape(name) != shape) {
      throw std::runtime_error(w_.dir() + "/" + w_.file_of(name) + ": " + name + " has shape " +
                               shape_text(w_.shape(name)) + ", config.json implies " + shape_text(shape) +
                               "; the weights belong to another config");
    }
    used_.insert(name);
    return name;
  }
  void add(const std::string& ours, std::vector<int64_t> shape, std::function<torch::Tensor()> read) {
    plan_.parameters.push_back({ours, std::move(shape), torch::kFloat32, std::move(read)});
  }
  void copy(const std::string& ours, const std::string& hf, const std::vector<int64_t>& shape) {
    add(ours, shape, [get = get_, name = need(hf, shape)] { return get(name); });
  }

  void attention(const std::string& ours, const std::string& hf);
  void dense(const std::string& ours, const std::string& mlp);
  void moe(const std::string& ours, const std::string& hf, int64_t layer);
  void experts(const std::string& ours, const std::string& block, int64_t layer);
  void shared(const std::string& ours, const std::string& block);
  void lm_head(const std::string& embed);
  void require_all_used() const;

  const FamilySpec& s_;
  const HfWeights& w_;
  const model::TransformerOptions& o_;
  const Get get_;
  std::set<std::string> used_;
  ImportPlan plan_;
};

// Norms, q/k/v fused into our slot layout (hf::fuse_qkv), biases and q/k norms as the model has them, o.
void Planner::attention(const std::string& ours, const std::string& hf) {
  const LayerNames& n = s_.layer;
  const int64_t D = o_.d_model, H = o_.num_heads, Hkv = o_.attention().kv_heads(),
                Dh = o_.attention().head_size();
  const std::string at = hf + n.attention;
  copy(ours + "attn_norm.weight", hf + n.input_norm, {D});
  auto fused = [&](const std::string& suffix, std::vector<int64_t> cols) {
    auto shape = [&](int64_t rows) {
      return cols.empty() ? std::vector<int64_t>{rows} : std::vector<int64_t>{rows, cols[0]};
    };
    const std::string q = need(at + n.q + suffix, shape(H * Dh)), k = need(at + n.k + suffix, shape(Hkv * Dh)),
                      v = need(at + n.v + suffix, shape(Hkv * Dh));
    add(ours + "attn.wqkv" + suffix, shape((H + 2 * Hkv) * Dh),
        [get = get_, q, k, v, H, Hkv] { return fuse_qkv(get(q), get(k), get(v), H, Hkv); });
  };
  fused(".weight", {D});
  if (o_.qkv_bias) fused(".bias", {});
  if (o_.qk_norm != model::QkNorm::kNone) {
    const bool per_head = o_.qk_norm == model::QkNorm::kPerHead;
    copy(ours + "attn.q_norm.weight", at + n.q_norm, {per_head ? Dh : H * Dh});
    copy(ours + "attn.k_norm.weight", at + n.k_norm, {per_head ? Dh : Hkv * Dh});
  }
  copy(ours + "attn.wo.weight", at + n.o + ".weight", {D, H * Dh});
  copy(ours + "ffn_norm.weight", hf + n.post_attention_norm, {D});
}

void Planner::dense(const std::string& ours, const std::string& mlp) {
  const int64_t D = o_.d_model, Fd = o_.ffn_hidden;
  copy(ours + "mlp.w1.weight", mlp + "gate_proj.weight", {Fd, D});
  copy(ours + "mlp.w3.weight", mlp + "up_proj.weight", {Fd, D});
  copy(ours + "mlp.w2.weight", mlp + "down_proj.weight", {D, Fd});
}

// The router (and a zero selection bias), the experts, the shared expert. The block is the family's
// (Mixtral: block_sparse_moe., transformers 4.x and the Hub), else the fused layout's (transformers 5).
void Planner::moe(const std::string& ours, const std::string& hf, int64_t layer) {
  const int64_t D = o_.d_model, E = o_.moe.num_experts;
  const std::string own = hf + s_.layer.moe_block;
  const std::string block = w_.contains(own + "gate.weight") ? own : hf + s_.layer.fused_block;
  copy(ours + "moe.router.weight", block + "gate.weight", {E, D});
  plan_.buffers.push_back(
      {ours + "moe.router.expert_bias", {E}, torch::kFloat32, [E] { return torch::zeros({E}); }});
  experts(ours, block, layer);
  if (s_.shared_expert.size_key) shared(ours, block);
}

// Ours: w1, w3 (E, D, F), w2 (E, F, D), from either layout; one layer's experts are read at a time.
void Planner::experts(const std::string& ours, const std::string& block, int64_t layer) {
  const LayerNames& n = s_.layer;
  const int64_t D = o_.d_model, E = o_.moe.num_experts, F = o_.moe.expert_hidden;
  const std::string fused_gate_up = block + "experts." + n.fused_gate_up,
                    fused_down = block + "experts." + n.fused_down;
  if (w_.contains(block + "experts.0." + n.expert_gate + ".weight")) {
    std::vector<std::string> g, u, d;
    for (int64_t e = 0; e < E; ++e) {
      const std::string ex = block + "experts." + std::to_string(e) + ".";
      g.push_back(need(ex + n.expert_gate + ".weight", {F, D}));
      u.push_back(need(ex + n.expert_up + ".weight", {F, D}));
      d.push_back(need(ex + n.expert_down + ".weight", {D, F}));
    }
    auto stacked = [get = get_](std::vector<std::string> names) {
      return [get, names = std::move(names)] {
        std::vector<torch::Tensor> parts;
        for (const auto& name : names) parts.push_back(get(name).t());
        return torch::stack(parts).contiguous();
      };
    };
    add(ours + "moe.experts.w1", {E, D, F}, stacked(g));
    add(ours + "moe.experts.w3", {E, D, F}, stacked(u));
    add(ours + "moe.experts.w2", {E, F, D}, stacked(d));
  } else if (w_.contains(fused_gate_up)) {
    const std::string gate_up = need(fused_gate_up, {E, 2 * F, D});  // per expert [gate; up] rows
    const std::string down = need(fused_down, {E, D, F});
    add(ours + "moe.experts.w1", {E, D, F},
        [get = get_, gate_up, F] { return get(gate_up).narrow(1, 0, F).transpose(1, 2).contiguous(); });
    add(ours + "moe.experts.w3", {E, D, F},
        [get = get_, gate_up, F] { return get(gate_up).narrow(1, F, F).transpose(1, 2).contiguous(); });
    add(ours + "moe.experts.w2", {E, F, D},
        [get = get_, down] { return get(down).transpose(1, 2).contiguous(); });
  } else {
    throw std::runtime_error(w_.dir() + " has neither " + block + "experts.0." + n.expert_gate +
                             ".weight (per-expert layout) nor " + fused_gate_up +
                             " (transformers 5 fused layout) for layer " + std::to_string(layer));
  }
}

void Planner::shared(const std::string& ours, const std::string& block) {
  const int64_t D = o_.d_model, Fs = o_.moe.shared_hidden;
  const std::string sh = block + s_.shared_expert.prefix;
  copy(ours + "moe.shared.w1.weight", sh + "gate_proj.weight", {Fs, D});
  copy(ours + "moe.shared.w3.weight", sh + "up_proj.weight", {Fs, D});
  copy(ours + "moe.shared.w2.weight", sh + "down_proj.weight", {D, Fs});
  copy(ours + "moe.shared_gate.weight", block + s_.shared_expert.gate, {1, D});
}

// Untied: its own tensor. Tied: none, or a copy equal to the embedding (some writers store it anyway).
void Planner::lm_head(const std::string& embed) {
  const int64_t V = o_.vocab_size, D = o_.d_model;
  if (!o_.tie_embeddings) {
    copy("lm_head.weight", "lm_head.weight", {V, D});
  } else if (w_.contains("lm_head.weight")) {
    if (!torch::equal(get_(need("lm_head.weight", {V, D})), get_(embed))) {
      throw std::runtime_error(w_.dir() +
                               ": config.json says tie_word_embeddings true, but lm_head.weight differs from "
                               "model.embed_tokens.weight; set tie_word_embeddings false in config.json");
    }
  }
}

// Every tensor of the directory has a place in the model (adapters or extra heads are not imported).
void Planner::require_all_used() const {
  std::vector<std::string> unused;
  for (const auto& name : w_.names()) {
    const std::string cache = "rotary_emb.inv_freq";  // a non-persistent buffer some old checkpoints hold
    const bool rotary_cache = name.size() >= cache.size() &&
                              name.compare(name.size() - cache.size(), cache.size(), cache) == 0;
    if (!used_.count(name) && !rotary_cache) unused.push_back(name);
  }
  if (unused.empty()) return;
  std::string list;
  for (size_t i = 0; i < unused.size() && i < 5; ++i) list += (i ? ", " : "") + unused[i];
  if (unused.size() > 5) list += ", ... (" + std::to_string(unused.size()) + " in all)";
  throw std::runtime_error(w_.dir() + " holds tensors a " + s_.names.title +
                           " model of its config.json does not have: " + list + "; it is not a plain " +
                           s_.names.architecture + " checkpoint (adapters or extra heads are not imported)");
}

}  // namespace

ImportPlan import_plan(const FamilySpec& s, const HfWeights& w, const model::TransformerOptions& o) {
  return Planner(s, w, o).plan();
}

void load_hf_tensors(Family f, const HfWeights& w, model::TransformerImpl& model) {
  const ImportPlan plan = import_plan(f, w, model.options());
  torch::NoGradGuard no_grad;
  auto params = model.named_parameters();
  auto buffers = model.named_buffers();
  std::set<std::string> filled;
  auto fill = [&](const io::LazyTensor& t, torch::OrderedDict<std::string, torch::Tensor>& where) {
    torch::Tensor* p = where.find(t.name);
    if (!p || p->sizes().vec() != t.shape) {
      throw std::logic_error("the import plan's " + t.name + " " + shape_text(t.shape) +
                             (p ? " has another shape than the model's " + shape_text(p->sizes().vec())
                                : " is not in the model") +
                             " (a bug in hf/tensors_from_hf.cpp)");
    }
    p->copy_(t.read());
    filled.insert(t.name);
  };
  for (const auto& t : plan.parameters) fill(t, params);
  for (const auto& t : plan.buffers) fill(t, buffers);
  for (const auto& item : params) {
    if (!filled.count(item.key()))
      throw std::logic_error("the import plan misses " + item.key() + " (a bug in hf/tensors_from_hf.cpp)");
  }
}

}  // namespace moetrain::hf
