// validate_recipe: value ranges and combinations. Each rule yields one line that names the field, the
// value, the problem and the fix; all problems are reported together.
#include <set>
#include <sstream>

#include "csrc/config/recipe_loader.h"

namespace moetrain::config {
namespace {

class Problems {
 public:
  explicit Problems(const FieldOrigins* origins) : origins_(origins) {}
  // One line: "  [where it was set: ]field = value: why and fix".
  template <typename T>
  void add(const std::string& field, const T& value, const std::string& why_and_fix) {
    std::ostringstream line;
    line << "  ";
    if (origins_) {
      auto it = origins_->find(field);
      if (it != origins_->end()) line << it->second << ": ";
    }
    line << field << " = " << value << ": " << why_and_fix;
    lines_.push_back(line.str());
  }
  template <typename T>
  void at_least(const std::string& field, const T& value, const T& low) {
    if (value < low)
      add(field, value,
          "must be >= " + std::to_string(low) + "; set it to " + std::to_string(low) + " or more");
  }
  bool empty() const { return lines_.empty(); }
  std::string joined() const {
    std::string out;
    for (const auto& l : lines_) out += "\n" + l;
    return out;
  }

 private:
  const FieldOrigins* origins_;
  std::vector<std::string> lines_;
};

std::string num(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// Heads: query and key/value head counts that divide, and an even head size for rotary embeddings.
void check_attention(const ModelConfig& m, Problems& p) {
  if (m.num_heads() >= 1 && m.num_kv_heads() >= 1 && m.num_heads() % m.num_kv_heads() != 0) {
    p.add("model.num_kv_heads", m.num_kv_heads(),
          "model.num_heads (" + std::to_string(m.num_heads()) +
              ") must be divisible by num_kv_heads (each key/value head "
              "serves num_heads / num_kv_heads query heads); pick a divisor of num_heads, or 0 for num_heads");
  }
  if (m.head_dim() > 0) {
    if (m.head_dim() % 2 != 0) {
      p.add("model.head_dim", m.head_dim(),
            "must be even for rotary embeddings; round it to " + std::to_string(m.head_dim() + 1));
    }
  } else if (m.num_heads() >= 1 && m.d_model() >= 1 && m.head_dim() == 0) {
    if (m.d_model() % m.num_heads() != 0) {
      p.add("model.num_heads", m.num_heads(),
            "model.d_model (" + std::to_string(m.d_model()) +
                ") must be divisible by num_heads; pick a divisor of d_model");
    } else if ((m.d_model() / m.num_heads()) % 2 != 0) {
      p.add("model.num_heads", m.num_heads(),
            "head size d_model/num_heads = " + std::to_string(m.d_model() / m.num_heads()) +
                " must be even for rotary embeddings; change num_heads or d_model, or set model.head_dim");
    }
  }
}

// Experts: sizes, the grouped GEMM's alignment, top_k, the MoE layers and the shared expert.
void check_experts(const ModelConfig& m, Problems& p) {
  if (m.shared_expert_gate() && m.num_shared_experts() == 0) {
    p.add("model.shared_expert_gate", "true",
          "gates the shared expert, but model.num_shared_experts is 0; set "
          "num_shared_experts (Qwen2-MoE: 1) or leave the gate off");
  }
  p.at_least<int64_t>("model.ffn_hidden", m.ffn_hidden(), 1);
  p.at_least<int64_t>("model.num_experts", m.num_experts(), 1);
  p.at_least<int64_t>("model.moe_ffn_hidden", m.moe_ffn_hidden(), 1);
  // The grouped expert GEMM needs rows aligned to 16 bytes: multiples of 8 elements cover bf16 and fp32.
  if (m.d_model() >= 1 && m.d_model() % 8 != 0) {
    p.add("model.d_model", m.d_model(),
          "must be a multiple of 8 (grouped expert GEMM alignment); round it to " +
              std::to_string((m.d_model() + 7) / 8 * 8));
  }
  if (m.moe_ffn_hidden() >= 1 && m.moe_ffn_hidden() % 8 != 0) {
    p.add("model.moe_ffn_hidden", m.moe_ffn_hidden(),
          "must be a multiple of 8 (grouped expert GEMM alignment); round it to " +
              std::to_string((m.moe_ffn_hidden() + 7) / 8 * 8));
  }
  if (m.top_k() < 1 || m.top_k() > m.num_experts()) {
    p.add("model.top_k", m.top_k(),
          "must be between 1 and model.num_experts (" + std::to_string(m.num_experts()) + ")");
  }
  p.at_least<int64_t>("model.moe_layer_freq", m.moe_layer_freq(), 0);
  std::set<int64_t> seen;
  for (int64_t layer : m.moe_layers()) {
    if (layer < 0 || layer >= m.num_layers()) {
      p.add("model.moe_layers", layer,
            "layer index out of range; use 0.." + std::to_string(m.num_layers() - 1));
    } else if (!seen.insert(layer).second) {
      p.add("model.moe_layers", layer, "listed twice; list each MoE layer once");
    }
  }
  p.at_least<int64_t>("model.num_shared_experts", m.num_shared_experts(), 0);
  p.at_least<int64_t>("model.shared_expert_ffn_hidden", m.shared_expert_ffn_hidden(), 0);
}

void check_model(const ModelConfig& m, Problems& p) {
  p.at_least<int64_t>("model.vocab_size", m.vocab_size(), 2);
  p.at_least<int64_t>("model.d_model", m.d_model(), 1);
  p.at_least<int64_t>("model.num_layers", m.num_layers(), 1);
  p.at_least<int64_t>("model.num_heads", m.num_heads(), 1);
  p.at_least<int64_t>("model.num_kv_heads", m.num_kv_heads(), 0);
  p.at_least<int64_t>("model.head_dim", m.head_dim(), 0);
  check_attention(m, p);
  check_experts(m, p);
  if (!(m.rope_theta() > 0)) p.add("model.rope_theta", num(m.rope_theta()), "must be > 0; 10000 is usual");
  if (!(m.norm_eps() > 0)) p.add("model.norm_eps", num(m.norm_eps()), "must be > 0; 1e-5 is usual");
  if (!(m.init_std() > 0)) p.add("model.init_std", num(m.init_std()), "must be > 0; 0.02 is usual");
}

void check_optimizer(const OptimizerConfig& o, Problems& p) {
  if (!(o.lr() > 0)) p.add("optimizer.lr", num(o.lr()), "must be > 0; 3e-4 is a common start");
  if (!(o.min_lr() >= 0 && o.min_lr() <= o.lr())) {
    p.add("optimizer.min_lr", num(o.min_lr()), "must be in [0, optimizer.lr (" + num(o.lr()) + ")]");
  }
  if (!(o.weight_decay() >= 0)) p.add("optimizer.weight_decay", num(o.weight_decay()), "must be >= 0");
  if (!(o.beta1() >= 0 && o.beta1() < 1))
    p.add("optimizer.beta1", num(o.beta1()), "must be in [0, 1); 0.9 is usual");
  if (!(o.beta2() >= 0 && o.beta2() < 1))
    p.add("optimizer.beta2", num(o.beta2()), "must be in [0, 1); 0.95 is usual");
  if (!(o.eps() > 0)) p.add("optimizer.eps", num(o.eps()), "must be > 0; 1e-8 is usual");
  if (!(o.grad_clip() >= 0))
    p.add("optimizer.grad_clip", num(o.grad_clip()), "must be >= 0 (0 disables clipping)");
}

// How routing.router_type routes: its name, whether a learned router scores the experts (TOPK,
// EXPERT_CHOICE) and whether each expert picks its tokens (EXPERT_CHOICE).
struct RouterKind {
  std::string type;
  bool learned, choice;
};

// The balancing losses and bias updates: >= 0, and 0 where the router has nothing to balance.
void check_balancing(const RoutingConfig& r, const RouterKind& kind, Problems& p) {
  for (const auto& [field, value] :
       std::vector<std::pair<std::string, double>>{{"routing.aux_loss_coeff", r.aux_loss_coeff()},
                                                   {"routing.seq_aux_loss_coeff", r.seq_aux_loss_coeff()},
                                                   {"routing.global_aux_loss_coeff", r.global_aux_loss_coeff()},
                                                   {"routing.z_loss_coeff", r.z_loss_coeff()},
                                                   {"routing.bias_update_rate", r.bias_update_rate()}}) {
    if (!(value >= 0)) {
      p.add(field, num(value), "must be >= 0 (0 turns it off)");
    } else if (value > 0 && !kind.learned && field != "routing.z_loss_coeff") {
      p.add(field, num(value),
            "balancing means nothing for routing.router_type " + kind.type +
                " (its routing is not learned); set it to 0");
    } else if (value > 0 && kind.choice && field != "routing.z_loss_coeff") {
      p.add(field, num(value),
            "EXPERT_CHOICE routing is balanced by construction (every expert takes the same "
            "number of tokens); set it to 0");
    } else if (value > 0 && !kind.learned) {
      p.add(field, num(value), "routing.router_type " + kind.type + " has no router logits; set it to 0");
    }
  }
  if (r.bias_update() != RoutingConfig::SIGN && !(r.bias_update_rate() > 0)) {
    p.add("routing.bias_update", RoutingConfig::BiasUpdate_Name(r.bias_update()),
          "chooses how the aux-loss-free bias moves, and it is off (routing.bias_update_rate = " +
              num(r.bias_update_rate()) + "); set a rate such as 1e-3, or leave bias_update out");
  }
}

// Gate scaling, router jitter, and the order of top-k and softmax.
void check_gates(const RoutingConfig& r, const RouterKind& kind, Problems& p) {
  if (!(r.gate_scale() > 0))
    p.add("routing.gate_scale", num(r.gate_scale()), "must be > 0; 1 leaves the gates as they are");
  if (!(r.jitter_eps() >= 0 && r.jitter_eps() < 1))
    p.add("routing.jitter_eps", num(r.jitter_eps()),
          "must be in [0, 1); 0.01 is Switch's value, 0 turns it off");
  if (r.score_function() == RoutingConfig::SIGMOID && r.topk_order() == RoutingConfig::TOPK_THEN_SOFTMAX) {
    p.add("routing.topk_order", "TOPK_THEN_SOFTMAX",
          "applies to SOFTMAX scores only; with score_function SIGMOID use "
          "SOFTMAX_THEN_TOPK and normalize_gates: true");
  } else if (r.topk_order() == RoutingConfig::TOPK_THEN_SOFTMAX && !r.normalize_gates() && kind.learned &&
             !kind.choice) {
    p.add("routing.normalize_gates", "false",
          "routing.topk_order TOPK_THEN_SOFTMAX makes the k gates a softmax, which "
          "always sums to 1, so false would be ignored; set normalize_gates: true, or "
          "topk_order: SOFTMAX_THEN_TOPK for unnormalised probabilities");
  }
}

// Group-limited routing: num_groups divides the experts and the best group_topk groups hold top_k experts.
void check_groups(const RoutingConfig& r, const ModelConfig& m, const RouterKind& kind, Problems& p) {
  if (r.num_groups() < 0)
    p.add("routing.num_groups", r.num_groups(), "must be >= 0 (0 or 1 = no group limit)");
  if (r.num_groups() > 1) {
    if (r.router_type() != RoutingConfig::TOPK) {
      p.add("routing.num_groups", r.num_groups(),
            "group-limited routing needs routing.router_type TOPK, not " + kind.type);
    }
    if (m.num_experts() % r.num_groups() != 0) {
      p.add("routing.num_groups", r.num_groups(),
            "model.num_experts (" + std::to_string(m.num_experts()) +
                ") must be divisible by the number of groups");
    } else if (r.group_topk() < 1 || r.group_topk() > r.num_groups()) {
      p.add("routing.group_topk", r.group_topk(),
            "must be between 1 and routing.num_groups (" + std::to_string(r.num_groups()) + ")");
    } else if (m.top_k() > r.group_topk() * (m.num_experts() / r.num_groups())) {
      p.add("routing.group_topk", r.group_topk(),
            "the best " + std::to_string(r.group_topk()) + " groups hold only " +
                std::to_string(r.group_topk() * (m.num_experts() / r.num_groups())) +
                " experts, fewer than model.top_k (" + std::to_string(m.top_k()) + "); raise group_topk");
    }
  } else if (r.group_topk() != 0) {
    p.add("routing.group_topk", r.group_topk(),
          "needs routing.num_groups > 1; set num_groups or leave group_topk at 0");
  }
}

// Expert capacity, padding and the drop policy, and EXPERT_CHOICE's token count per expert.
void check_capacity(const RoutingConfig& r, const ModelConfig& m, const RouterKind& kind, Problems& p) {
  if (!(r.expert_choice_factor() > 0))
    p.add("routing.expert_choice_factor", num(r.expert_choice_factor()),
          "must be > 0; 1 gives each expert T/E tokens");
  if (!(r.capacity_factor() >= 0))
    p.add("routing.capacity_factor", num(r.capacity_factor()), "must be >= 0 (0 = dropless)");
  if (!(r.eval_capacity_factor() >= 0))
    p.add("routing.eval_capacity_factor", num(r.eval_capacity_factor()),
          "must be >= 0 (0 = dropless at evaluation)");
  if (r.min_capacity() < 0) p.add("routing.min_capacity", r.min_capacity(), "must be >= 0");
  if (kind.choice && (r.capacity_factor() > 0 || r.eval_capacity_factor() > 0 || r.pad_to_capacity())) {
    p.add("routing.capacity_factor", num(r.capacity_factor()),
          "EXPERT_CHOICE sets each expert's token count itself "
          "(routing.expert_choice_factor); leave capacity_factor, "
          "eval_capacity_factor at 0 and pad_to_capacity false");
  }
  if (r.pad_to_capacity() && !(r.capacity_factor() > 0)) {
    p.add("routing.pad_to_capacity", "true",
          "padding needs a capacity: set routing.capacity_factor > 0 (for example 1.25)");
  }
  const bool has_capacity = r.capacity_factor() > 0 || r.eval_capacity_factor() > 0;
  if (r.min_capacity() > 0 && !has_capacity) {
    p.add("routing.min_capacity", r.min_capacity(),
          kind.choice
              ? "EXPERT_CHOICE has no capacity (routing.expert_choice_factor sets each expert's token "
                "count); leave min_capacity at 0"
              : "applies only with a capacity; set routing.capacity_factor (or eval_capacity_factor) > 0, "
                "or leave min_capacity at 0");
  }
  // The PROBS policy drops the pairs with the lowest final gate; it needs gates that differ between tokens.
  if (has_capacity && r.drop_policy() == RoutingConfig::PROBS) {
    if (!kind.learned) {
      p.add("routing.drop_policy", "PROBS",
            "routing.router_type " + kind.type +
                " gives every pair the same gate (gate_scale/k), so "
                "there is no lowest gate to drop; set drop_policy: POSITION, or leave "
                "capacity_factor and eval_capacity_factor at 0");
    } else if (!kind.choice && m.top_k() == 1 &&
               (r.normalize_gates() || r.topk_order() == RoutingConfig::TOPK_THEN_SOFTMAX)) {
      p.add("routing.drop_policy", "PROBS",
            "with model.top_k 1 and normalised gates every gate equals gate_scale, so "
            "there is no lowest gate to drop; set topk_order: SOFTMAX_THEN_TOPK with "
            "normalize_gates: false (Switch's top-1 gate), or drop_policy: POSITION");
    }
  }
}

void check_routing(const Recipe& recipe, Problems& p) {
  const RoutingConfig& r = recipe.routing();
  const bool learned = r.router_type() == RoutingConfig::TOPK ||
                       r.router_type() == RoutingConfig::EXPERT_CHOICE;
  const bool choice = r.router_type() == RoutingConfig::EXPERT_CHOICE;
  const RouterKind kind{RoutingConfig::RouterType_Name(r.router_type()), learned, choice};
  check_balancing(r, kind, p);
  check_gates(r, kind, p);
  check_groups(r, recipe.model(), kind, p);
  check_capacity(r, recipe.model(), kind, p);
}

// The training data: a train prefix and a sequence length.
void check_data(const Recipe& r, Problems& p) {
  if (r.data().train_prefix().empty()) {
    p.add("data.train_prefix", "\"\"",
          "is required; point it at PREFIX of PREFIX.bin/PREFIX.idx made by moe-data encode");
  }
  p.at_least<int64_t>("data.seq_len", r.data().seq_len(), 1);
}

// Recomputation: known modules under SELECTIVE, a layer count under FULL, neither otherwise.
void check_recompute(const Recipe& r, Problems& p) {
  const auto& t = r.train();
  const auto mode = t.recompute();
  const std::set<std::string> known = {"core_attn", "moe_act", "layernorm", "mlp", "moe"};
  std::set<std::string> seen;
  for (const auto& m : t.recompute_modules()) {
    if (!known.count(m)) {
      p.add("train.recompute_modules", "\"" + m + "\"",
            "unknown module; use any of core_attn, moe_act, layernorm, mlp, moe");
    } else if (!seen.insert(m).second) {
      p.add("train.recompute_modules", "\"" + m + "\"", "listed twice; list each module once");
    }
  }
  if (mode == TrainConfig::SELECTIVE && t.recompute_modules_size() == 0) {
    p.add("train.recompute", "SELECTIVE",
          "needs train.recompute_modules; list what to recompute, e.g. recompute_modules: [\"moe_act\", "
          "\"core_attn\"], or use FULL");
  }
  if (mode != TrainConfig::SELECTIVE && t.recompute_modules_size() > 0) {
    p.add("train.recompute_modules", "[" + std::to_string(t.recompute_modules_size()) + " modules]",
          "only applies with train.recompute = SELECTIVE; set it or remove the list");
  }
  const int64_t layers = r.model().num_layers();
  if (t.recompute_num_layers() < 0 || t.recompute_num_layers() > layers) {
    p.add("train.recompute_num_layers", t.recompute_num_layers(),
          "must be 0 (every layer) to model.num_layers = " + std::to_string(layers) + "; set it in that range");
  } else if (mode != TrainConfig::FULL && t.recompute_num_layers() != 0) {
    p.add("train.recompute_num_layers", t.recompute_num_layers(),
          "only applies with train.recompute = FULL; set it or remove it");
  }
}

// The learning-rate schedule's steps and the training loop's sizes and intervals.
void check_training(const Recipe& r, Problems& p) {
  p.at_least<int64_t>("schedule.warmup_steps", r.schedule().warmup_steps(), 0);
  p.at_least<int64_t>("schedule.decay_steps", r.schedule().decay_steps(), 0);
  p.at_least<int64_t>("train.steps", r.train().steps(), 1);
  p.at_least<int64_t>("train.micro_batch_size", r.train().micro_batch_size(), 1);
  p.at_least<int64_t>("train.grad_accum_steps", r.train().grad_accum_steps(), 1);
  p.at_least<int64_t>("train.eval_interval", r.train().eval_interval(), 0);
  p.at_least<int64_t>("train.eval_sequences", r.train().eval_sequences(), 1);
  p.at_least<int64_t>("train.threads", r.train().threads(), 0);
  p.at_least<int64_t>("train.exit_interval", r.train().exit_interval(), 0);
  check_recompute(r, p);
}

// The mesh: sizes that divide the experts and the heads, and the collective timeout.
void check_parallel(const Recipe& r, Problems& p) {
  const auto& o = r.optimizer();
  if (o.param_dtype() == TrainConfig::BF16 && !o.distributed()) {
    p.add("optimizer.param_dtype", "BF16",
          "needs optimizer.distributed: true (the fp32 master weights live in its shards); set it, or FP32");
  }
  if (o.param_dtype() == TrainConfig::BF16 && r.train().precision() != TrainConfig::BF16) {
    p.add("optimizer.param_dtype", "BF16", "needs train.precision: BF16 (bf16 matmuls); set it, or FP32");
  }
  if (o.param_dtype() == TrainConfig::BF16 && r.finetune().lora().rank() > 0) {
    p.add("optimizer.param_dtype", "BF16",
          "is for training the whole model; under finetune.lora hold the frozen base in bf16 with "
          "finetune.base_dtype: BF16 instead");
  }
  if (o.grad_dtype() == TrainConfig::BF16 && o.param_dtype() != TrainConfig::BF16) {
    p.add("optimizer.grad_dtype", "BF16",
          "applies to bf16 parameters only; set optimizer.param_dtype: BF16 or FP32");
  }
  if (o.param_dtype() == TrainConfig::BF16 && r.parallel().grad_bucket_mb() > 0) {
    p.add("optimizer.param_dtype", "BF16",
          "does not yet combine with parallel.grad_bucket_mb = " + num(r.parallel().grad_bucket_mb()) +
              " (the bf16 gradients are summed into fp32 after backward, not in buckets during it); set "
              "parallel.grad_bucket_mb: 0 or optimizer.param_dtype: FP32");
  }
  p.at_least<int64_t>("parallel.tensor", r.parallel().tensor(), 1);
  p.at_least<int64_t>("parallel.expert", r.parallel().expert(), 1);
  if (r.parallel().grad_bucket_mb() < 0) {
    p.add("parallel.grad_bucket_mb", r.parallel().grad_bucket_mb(),
          "must be >= 0: 0 reduces the gradients after backward in one bucket per group, a size in MiB (e.g. 25) "
          "reduces buckets of that size during backward");
  }
  if (r.parallel().timeout_s() <= 0) {
    p.add("parallel.timeout_s", r.parallel().timeout_s(),
          "must be > 0: the seconds a rank waits for its peers in a collective before the job is stopped with a report "
          "(docs/reliability.md); the default is 600");
  }
  if (r.parallel().expert() >= 1 && r.model().num_experts() % r.parallel().expert() != 0) {
    p.add("parallel.expert", r.parallel().expert(),
          "model.num_experts (" + std::to_string(r.model().num_experts()) +
              ") must be divisible by the expert-parallel size");
  }
  if (r.parallel().tensor() >= 1 && r.model().num_heads() % r.parallel().tensor() != 0) {
    p.add("parallel.tensor", r.parallel().tensor(),
          "model.num_heads (" + std::to_string(r.model().num_heads()) +
              ") must be divisible by the tensor-parallel size");
  } else if (const int64_t kv = r.model().num_kv_heads();
             r.parallel().tensor() >= 1 && kv > 0 && kv % r.parallel().tensor() != 0) {
    p.add("parallel.tensor", r.parallel().tensor(),
          "model.num_kv_heads (" + std::to_string(kv) +
              ") must be divisible by the tensor-parallel size (each rank holds "
              "whole key/value heads and their query heads); use a parallel.tensor that divides " +
              std::to_string(kv));
  }
}

// Expert tensor parallelism: each rank's slice of an expert's hidden dimension must be whole and aligned
// for the grouped GEMM; adapters are not split over it.
void check_expert_tensor(const Recipe& r, Problems& p) {
  const int64_t etp = r.parallel().expert_tensor(), hidden = r.model().moe_ffn_hidden();
  p.at_least<int64_t>("parallel.expert_tensor", etp, 1);
  if (etp > 1 && hidden >= 1 && (hidden % etp != 0 || (hidden / etp) % 8 != 0)) {
    std::string fits;
    for (int64_t e = 1; e <= hidden / 8; ++e)
      if (hidden % e == 0 && (hidden / e) % 8 == 0 && e <= 64)
        fits += (fits.empty() ? "" : ", ") + std::to_string(e);
    p.add("parallel.expert_tensor", etp,
          "must split model.moe_ffn_hidden (" + std::to_string(hidden) +
              ") into slices that are multiples of 8 (the grouped GEMM's alignment); sizes that do: " + fits);
  }
  if (etp > 1 && r.finetune().lora().rank() > 0) {
    p.add("parallel.expert_tensor", etp,
          "does not yet combine with finetune.lora (the adapters are not split over expert-tensor ranks); "
          "set parallel.expert_tensor: 1 and spread the experts with parallel.expert instead");
  }
}

// LoRA adapters: rank, alpha and targets (attention targets only without tensor parallelism).
void check_lora(const Recipe& r, Problems& p) {
  const auto& lora = r.finetune().lora();
  p.at_least<int64_t>("finetune.lora.rank", lora.rank(), 0);
  if (lora.rank() > 0 && !(lora.alpha() > 0))
    p.add("finetune.lora.alpha", num(lora.alpha()), "must be > 0 (16 is common)");
  for (const auto& t : lora.targets()) {
    if (t != "gate" && t != "up" && t != "down" && t != "attn_qkv" && t != "attn_out") {
      p.add("finetune.lora.targets", "\"" + t + "\"",
            "each target is one of \"gate\", \"up\", \"down\" (the expert projections w1, w3, w2), \"attn_qkv\", \"attn_out\"");
    }
    if ((t == "attn_qkv" || t == "attn_out") && r.parallel().tensor() > 1) {
      p.add("finetune.lora.targets", "\"" + t + "\"",
            "adapters on the attention projections need parallel.tensor = 1 (not yet sharded over tensor parallelism); "
            "keep the expert targets or set parallel.tensor=1");
    }
  }
  bool expert_adapters = lora.targets_size() == 0;  // empty = the three expert projections
  for (const auto& t : lora.targets()) expert_adapters |= t == "gate" || t == "up" || t == "down";
  if (lora.rank() > 0 && expert_adapters && lora.rank() % 4 != 0) {
    p.add("finetune.lora.rank", lora.rank(),
          "must be a multiple of 4 for the expert adapters (the rank is a stride of "
          "their fp32 grouped GEMM, which needs 16-byte alignment); use " +
              std::to_string((lora.rank() + 3) / 4 * 4));
  }
  if (lora.targets_size() > 0 && lora.rank() == 0) {
    p.add("finetune.lora.rank", "0",
          "targets are set but rank 0 means no adapters: set finetune.lora.rank (for example 8)");
  }
}

// finetune.base_dtype BF16, the frozen base in bf16 (trainer/base_dtype.h): a LoRA run at bf16 precision.
void check_base_dtype(const Recipe& r, Problems& p) {
  if (r.finetune().base_dtype() != TrainConfig::BF16) return;
  if (r.finetune().lora().rank() == 0) {
    p.add("finetune.base_dtype", "BF16",
          "holds the frozen base weights of a LoRA run and needs finetune.lora.rank > 0 "
          "(without adapters the base weights train, in fp32); set finetune.lora.rank "
          "(for example 8) or leave base_dtype at FP32");
  }
  if (r.train().precision() != TrainConfig::BF16) {
    p.add("finetune.base_dtype", "BF16",
          "needs train.precision = BF16: the bf16 base weights enter bf16 matmuls "
          "(fp32 matmuls would need an fp32 copy of each weight); set train.precision: BF16");
  }
}

}  // namespace

void validate_recipe(const Recipe& r, const std::string& source, const FieldOrigins* origins) {
  Problems p(origins);
  check_model(r.model(), p);
  check_routing(r, p);
  check_data(r, p);
  check_optimizer(r.optimizer(), p);
  check_training(r, p);
  check_parallel(r, p);
  check_expert_tensor(r, p);
  p.at_least<int64_t>("checkpoint.interval", r.checkpoint().interval(), 0);
  p.at_least<int64_t>("checkpoint.keep_last", r.checkpoint().keep_last(), 1);
  p.at_least<int64_t>("logging.log_interval", r.logging().log_interval(), 1);
  check_lora(r, p);
  check_base_dtype(r, p);
  if (!p.empty()) throw RecipeError(source + ": invalid recipe:" + p.joined());
}

}  // namespace moetrain::config
