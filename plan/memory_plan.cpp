#include "plan/memory_plan.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "parallel/mesh.h"

namespace moetrain::plan {
namespace {

using config::TrainConfig;

// The recipe's sizes as doubles, and what the layout makes of them.
struct Shape {
  double V, D, H, Hkv, Dh, ffn, E, k, F, Fs;
  bool tied, shared_gate, jitter, bf16;
  std::vector<bool> is_moe;
  double mbs, seq, accum;
  double capacity_factor;
  // Fine-tuning: LoRA adapters (the only trainable tensors), a frozen router, a bf16 frozen base.
  double lora_rank;
  bool lora_expert[3], lora_qkv, lora_out, freeze_router, base_bf16;
};

Shape shape_of(const config::Recipe& r) {
  const auto& m = r.model();
  Shape s{};
  s.V = m.vocab_size(), s.D = m.d_model(), s.H = m.num_heads();
  s.Hkv = m.num_kv_heads() > 0 ? m.num_kv_heads() : m.num_heads();
  s.Dh = m.head_dim() > 0 ? m.head_dim() : s.D / s.H;
  s.ffn = m.ffn_hidden(), s.E = m.num_experts(), s.k = m.top_k(), s.F = m.moe_ffn_hidden();
  s.Fs = m.num_shared_experts() == 0        ? 0
         : m.shared_expert_ffn_hidden() > 0 ? m.shared_expert_ffn_hidden()
                                            : m.moe_ffn_hidden() * m.num_shared_experts();
  s.tied = m.tie_embeddings(), s.shared_gate = m.shared_expert_gate() && s.Fs > 0;
  s.jitter = r.routing().jitter_eps() > 0;
  s.bf16 = r.train().precision() == TrainConfig::BF16;
  s.is_moe.assign(m.num_layers(), false);
  if (m.moe_layers_size() > 0) {
    for (auto l : m.moe_layers()) s.is_moe.at(l) = true;
  } else if (m.moe_layer_freq() > 0) {
    for (int64_t l = 0; l < m.num_layers(); l += m.moe_layer_freq()) s.is_moe[l] = true;
  }
  s.mbs = r.train().micro_batch_size(), s.seq = r.data().seq_len(), s.accum = r.train().grad_accum_steps();
  s.capacity_factor = r.routing().capacity_factor();
  const auto& lora = r.finetune().lora();
  s.lora_rank = lora.rank();
  bool any_target = false;
  for (const auto& t : lora.targets()) {
    s.lora_expert[0] |= t == "gate", s.lora_expert[1] |= t == "up", s.lora_expert[2] |= t == "down";
    s.lora_qkv |= t == "attn_qkv", s.lora_out |= t == "attn_out";
    any_target = true;
  }
  if (!any_target) s.lora_expert[0] = s.lora_expert[1] = s.lora_expert[2] = true;
  s.freeze_router = r.finetune().freeze_router();
  s.base_bf16 = r.finetune().base_dtype() == TrainConfig::BF16;
  return s;
}

bool has(const Layout& l, const char* module) {
  return l.recompute == TrainConfig::SELECTIVE &&
         std::find(l.modules.begin(), l.modules.end(), module) != l.modules.end();
}

// Elements of the parameters this rank holds, by what trains them.
struct Counts {
  double dense = 0, expert = 0;                  // trainable: over dp, over expert_dp
  double frozen_matrices = 0, frozen_other = 0;  // not trained
  double expert_weights = 0;                     // local expert matrices (cast to bf16 under BF16)
  double matrices = 0;  // trainable matrices the matmuls take (bf16 under optimizer.param_dtype BF16)
};

Counts count_parameters(const Shape& s, const Layout& l) {
  Counts c;
  const double tp = l.tp, ep = l.ep, lora = s.lora_rank;
  const bool finetune = lora > 0;
  auto dense_matrix = [&](double n, double adapter) {  // a matrix, and its LoRA adapter's elements
    if (finetune) {
      c.frozen_matrices += n, c.dense += adapter;
    } else {
      c.dense += n, c.matrices += n;
    }
  };
  auto small = [&](double n) { (finetune ? c.frozen_other : c.dense) += n; };
  small(s.V / tp * s.D);                         // embedding (vocab rows over tp; fp32 under a bf16 base)
  if (!s.tied) dense_matrix(s.V / tp * s.D, 0);  // LM head
  small(s.D);                                    // final norm
  const double q = s.H * s.Dh / tp, kv = s.Hkv * s.Dh / tp;
  for (bool moe : s.is_moe) {
    small(2 * s.D);                                                                // the two norms
    dense_matrix(s.D * (q + 2 * kv), s.lora_qkv ? lora * (s.D + q + 2 * kv) : 0);  // q, k, v
    dense_matrix(q * s.D, s.lora_out ? lora * (q + s.D) : 0);                      // output projection
    if (!moe) {
      dense_matrix(3 * s.D * s.ffn / tp, 0);
      continue;
    }
    const double router = s.E * s.D;
    if (finetune || s.freeze_router) {
      c.frozen_other += router;
    } else {
      c.dense += router;
    }
    const double local = s.E / ep, per_expert = s.D * s.F / l.etp;  // expert tensor parallelism: F / etp
    c.expert_weights += 3 * local * per_expert;
    if (finetune) {
      c.frozen_matrices += 3 * local * per_expert;
      for (bool target : s.lora_expert) c.expert += target ? local * lora * (s.D + s.F) : 0;
    } else {
      c.expert += 3 * local * per_expert, c.matrices += 3 * local * per_expert;
    }
    if (s.Fs > 0) dense_matrix(3 * s.D * s.Fs + (s.shared_gate ? s.D : 0), 0);
  }
  return c;
}

// Bytes one layer keeps for backward of one micro-batch (T tokens; T / tp in the MoE layer), and the
// bytes its recomputation keeps instead. c: bytes of the compute dtype.
struct LayerBytes {
  double kept = 0;        // without recomputation of the whole layer
  double full_input = 0;  // FULL: the layer's input only
  double moe_replay = 0;  // SELECTIVE "moe": what its replay in backward holds (the MoE part, not recomputed)
};

LayerBytes layer_bytes(const Shape& s, const Layout& l, bool moe, const Options& o) {
  const double f = 4, c = s.bf16 ? 2 : 4, tp = l.tp;
  const double T = s.mbs * s.seq, q = s.H * s.Dh / tp, kv = s.Hkv * s.Dh / tp;
  LayerBytes b;
  b.full_input = f * T * s.D;
  const bool norm_recompute = has(l, "layernorm");
  // Each norm: its input (saved by x·x and x·rsqrt) and x·rsqrt (saved for the gain's gradient).
  const bool frozen = s.lora_rank > 0;  // fine-tuning: only the adapters train
  // x·rsqrt is kept for the gain's gradient only: not under fine-tuning (frozen gains).
  double bytes = 2 * (f * T * s.D + (norm_recompute || frozen ? 0 : f * T * s.D));
  // Attention: the q/k/v projection's input (fp32 norm output, or its bf16 cast), the q/k/v projection's
  // output (alive while v views it), the rotated q and k (or, with grouped heads, k and v repeated to
  // every query head), the attention output and its log-sum-exp, and the output projection's input.
  // A frozen projection (fine-tuning) saves no input: its weight has no gradient; its adapter's does.
  const bool n_saved_fp32 = !s.bf16 || tp > 1;
  if (!frozen || s.lora_qkv)
    bytes += n_saved_fp32 ? (norm_recompute && !s.bf16 ? 0 : f * T * s.D) : c * T * s.D;
  bytes += c * T * (q + 2 * kv);
  bytes += c * T * q + (s.H > s.Hkv ? 2 * c * T * q : c * T * kv);
  if (!has(l, "core_attn")) bytes += c * T * q + f * s.mbs * (s.H / tp) * s.seq;
  if (!frozen || s.lora_out) bytes += c * T * q;
  if (!moe) {
    // Dense SwiGLU: its input (or bf16 cast), gate, up, silu(gate) and their product.
    double ffn = frozen ? 3 * c * T * s.ffn / tp
                        : (s.bf16 ? c : (norm_recompute ? 0 : f)) * T * s.D + 4 * c * T * s.ffn / tp;
    if (has(l, "mlp")) ffn = f * T * s.D;
    b.kept = bytes + ffn;
    return b;
  }
  const double Tm = T / tp;  // sequence-parallel MoE: this rank's tokens
  // Rows this rank's experts compute: with a capacity, its slots (capacity_factor x the even share, from
  // every source rank); dropless, the even share, times the imbalance under expert parallelism. Under
  // expert tensor parallelism the rows of all etp ranks, on F / etp of the hidden dimension.
  const double rows = l.etp * Tm * s.k *
                      (s.capacity_factor > 0 ? s.capacity_factor
                       : l.ep > 1            ? o.imbalance
                                             : 1.0);
  const double F = s.F / l.etp;
  double m = 0;
  const bool router_trains = !frozen && !s.freeze_router;
  if (router_trains)
    m += norm_recompute && tp == 1 ? 0 : f * Tm * s.D;  // the router's input (the norm output)
  if (s.jitter) m += f * Tm * s.D;                      // the jitter noise
  m += 4 * f * Tm * s.E;                                // logits, probabilities, gates, selection
  if (!frozen || s.lora_expert[0] || s.lora_expert[1])
    m += c * rows * s.D;  // dispatched rows (the GEMMs' input)
  const bool h_saved = (!frozen || s.lora_expert[2]) && !has(l, "moe_act");
  m += (h_saved ? 4 : 3) * c * rows * F;  // gate, up, silu(gate), and silu(gate)·up for the down projection
  m += f * Tm * s.k * s.D;                // expert outputs back, widened for the combine
  if (s.lora_rank == 0)
    m += 3 * c * (s.E / l.ep) * s.D * F;  // trained expert weights, masked for empty experts
  if (s.Fs > 0)  // shared experts: the input's bf16 cast, gate, up, silu(gate), their product (frozen: three)
    m += frozen ? 3 * c * Tm * s.Fs : (s.bf16 ? c * Tm * s.D : 0) + 4 * c * Tm * s.Fs;
  b.moe_replay = m;
  if (has(l, "moe")) m = f * Tm * s.D;
  b.kept = bytes + m;
  return b;
}

}  // namespace

std::string Layout::recompute_text() const {
  switch (recompute) {
    case TrainConfig::FULL:
      return recompute_layers > 0 ? "full(" + std::to_string(recompute_layers) + ")" : "full";
    case TrainConfig::SELECTIVE: {
      std::string t = "selective[";
      for (size_t i = 0; i < modules.size(); ++i) t += (i ? "," : "") + modules[i];
      return t + "]";
    }
    default: return "none";
  }
}

double Memory::peak() const {
  return parameters + optimizer + weight_casts + gradients + activations + transient;
}

Memory estimate_memory(const config::Recipe& recipe, const Layout& l, const Options& o) {
  const Shape s = shape_of(recipe);
  const Counts n = count_parameters(s, l);
  Memory m;
  const double base = s.base_bf16 ? 2 : 4;
  m.parameters = 4 * (n.dense + n.expert + n.frozen_other) + base * n.frozen_matrices;
  const double expert_dp = static_cast<double>(l.expert_dp());
  m.optimizer = 8 * (l.distributed ? n.dense / l.dp + n.expert / expert_dp : n.dense + n.expert);
  if (s.bf16 && !l.bf16_params) {  // CastCache: the experts' fp32 operands (weights unless bf16, adapters)
    m.weight_casts = 2 * ((s.base_bf16 ? 0 : n.expert_weights) + (s.lora_rank > 0 ? n.expert : 0));
  }
  if (l.bf16_params) {  // the matrices in bf16; every trainable element's fp32 master in the shards
    m.parameters -= 2 * n.matrices;
    m.optimizer += 4 * (n.dense / l.dp + n.expert / expert_dp);
  }
  // Activations of one micro-batch: every layer's, FULL layers keeping their input only.
  const int64_t layers = static_cast<int64_t>(s.is_moe.size());
  const int64_t full = l.recompute == TrainConfig::FULL
                           ? (l.recompute_layers > 0 ? l.recompute_layers : layers)
                           : 0;
  double replay = 0;  // the most a layer's replay holds at once in backward
  Layout plain = l;
  plain.recompute = TrainConfig::NONE;
  for (int64_t i = 0; i < layers; ++i) {
    const LayerBytes b = layer_bytes(s, l, s.is_moe[i], o);
    m.activations += i < full ? b.full_input : b.kept;
    if (i < full) replay = std::max(replay, layer_bytes(s, plain, s.is_moe[i], o).kept);
    if (has(l, "moe")) replay = std::max(replay, b.moe_replay);
  }
  const double T = s.mbs * s.seq, c = s.bf16 ? 2 : 4, V = s.V / l.tp;
  // Final norm (input, x·rsqrt), the LM head's input, the logits (held by the step) and the log-softmax.
  m.activations += (s.lora_rank > 0 ? 4 : 8) * T * s.D + (s.lora_rank > 0 ? 0 : (s.bf16 ? c : 4) * T * s.D) +
                   c * T * V + 4 * T * V;
  // At the peak: at the start of backward the logits' gradient and the log-softmax's, or later a layer's
  // replay (FULL, "moe"), whichever is larger; the gradients: all of them once a micro-batch has finished (accumulation, and by the end
  // of backward), else those of the LM head.
  m.transient = std::max(8 * T * V, replay);
  // bf16 parameters: bf16 gradients of the matrices (2 bytes) during backward, summed over micro-batches in
  // fp32 (4 more) unless optimizer.grad_dtype is BF16.
  const double all = n.dense + n.expert, narrow = l.bf16_params ? n.matrices : 0;
  const double grads = 4 * (all - narrow) + 2 * narrow + (l.bf16_params && !l.bf16_grads ? 4 * narrow : 0);
  m.gradients = s.accum > 1 ? grads : std::min(grads, 4 * 2 * V * s.D);
  return m;
}

namespace {
double ring_all_reduce(double bytes, double p) { return p > 1 ? 2 * (p - 1) / p * bytes : 0; }
double ring_share(double bytes, double p) { return p > 1 ? (p - 1) / p * bytes : 0; }
}  // namespace

Traffic estimate_traffic(const config::Recipe& recipe, const Layout& l, const Cluster& cluster,
                         const Options& o) {
  const Shape s = shape_of(recipe);
  const Counts n = count_parameters(s, l);
  const double T = s.mbs * s.seq, c = s.bf16 ? 2 : 4, tp = l.tp, micro = s.accum;
  Traffic t;
  const bool replay_moe = l.recompute == TrainConfig::FULL || has(l, "moe");
  for (bool moe : s.is_moe) {
    // Tensor parallelism: attention's output sum forward and its input's gradient sum backward; the dense
    // FFN the same; an MoE layer's tokens scattered and gathered (and the reverse in backward).
    t.tp += micro * 2 * ring_all_reduce(c * T * s.D, tp);
    t.tp += micro * (moe ? 2 * ring_share(4 * T * s.D, tp) : 2 * ring_all_reduce(c * T * s.D, tp));
    if (!moe) continue;
    // Expert parallelism: dispatch and combine (both in the compute dtype), each with its backward; again when
    // the layer is replayed in backward.
    double rows = T / tp * s.k * (s.capacity_factor > 0 ? s.capacity_factor : o.imbalance);
    const double one_way = ring_share(rows * s.D * c, l.ep);
    t.ep += micro * (replay_moe ? 3 : 2) * 2 * one_way;
    // Expert tensor parallelism: this rank's rows (compute dtype) to each of the etp − 1 peers, and the
    // peers' partial outputs of them back; each again in backward, and again when the layer is replayed.
    t.etp += micro * (replay_moe ? 3 : 2) * 2 * (l.etp - 1) * rows * s.D * c;
  }
  // Gradients: all-reduce over dp (dense) and expert_dp (experts); distributed: reduce-scatter of the
  // gradients plus all-gather of the parameters, the same bytes.
  t.dp += ring_all_reduce(4 * n.dense, l.dp) +
          ring_all_reduce(4 * n.expert, static_cast<double>(l.expert_dp()));
  const int64_t per_node = cluster.per_node();
  t.tp_inter = l.tp > per_node;
  t.etp_inter = l.etp > per_node;        // expert-tensor ranks are adjacent
  t.ep_inter = l.etp * l.ep > per_node;  // an expert-parallel group spans etp · ep consecutive ranks
  t.dp_inter = l.tp * l.dp > per_node;
  return t;
}

namespace {

// The meshes moe-train accepts on the cluster: tensor and expert-tensor parallelism in powers of two within
// a node, any expert-parallel size (parallel/mesh.h's checks, and no expert tensor parallelism under LoRA).
std::vector<parallel::MeshSizes> candidate_meshes(const config::Recipe& recipe, const Cluster& cluster) {
  const auto& m = recipe.model();
  std::vector<parallel::MeshSizes> out;
  const int64_t within_node = std::min<int64_t>(cluster.per_node(), cluster.gpus);
  for (int64_t tp = 1; tp <= within_node; tp *= 2) {
    for (int64_t etp = 1; etp <= within_node; etp *= 2) {
      if (etp > 1 && recipe.finetune().lora().rank() > 0) continue;
      for (int64_t ep = 1; ep * etp <= cluster.gpus; ++ep) {
        parallel::MeshSizes sizes;
        sizes.world = static_cast<int>(cluster.gpus), sizes.tp = static_cast<int>(tp);
        sizes.ep = static_cast<int>(ep), sizes.etp = static_cast<int>(etp);
        try {
          parallel::validate_mesh(sizes, m);
          parallel::validate_tensor_parallel_recipe(sizes, recipe);
        } catch (const std::invalid_argument&) {
          continue;
        }
        if (m.num_kv_heads() > 0 && m.num_kv_heads() % tp != 0) continue;
        out.push_back(sizes);
      }
    }
  }
  return out;
}

}  // namespace

std::vector<Layout> candidate_layouts(const config::Recipe& recipe, const Cluster& cluster) {
  std::vector<Layout> out;
  Layout own;
  own.recompute = recipe.train().recompute();
  own.modules.assign(recipe.train().recompute_modules().begin(), recipe.train().recompute_modules().end());
  own.recompute_layers = recipe.train().recompute_num_layers();
  std::vector<Layout> recomputes{own};
  auto add_recompute = [&](TrainConfig::Recompute r, std::vector<std::string> modules) {
    Layout x;
    x.recompute = r, x.modules = std::move(modules);
    if (x.recompute_text() != own.recompute_text()) recomputes.push_back(x);
  };
  add_recompute(TrainConfig::NONE, {});
  add_recompute(TrainConfig::SELECTIVE, {"moe_act", "layernorm"});
  add_recompute(TrainConfig::SELECTIVE, {"moe"});
  add_recompute(TrainConfig::FULL, {});
  const bool bf16_possible = recipe.train().precision() == TrainConfig::BF16 &&
                             recipe.finetune().lora().rank() == 0;
  for (const auto& sizes : candidate_meshes(recipe, cluster)) {
    for (int optimizer = 0; optimizer < 3; ++optimizer) {  // replicated, distributed, distributed + bf16
      const bool distributed = optimizer > 0, bf16_params = optimizer == 2;
      if (distributed && sizes.dp() == 1) continue;
      if (bf16_params && !bf16_possible) continue;
      for (const auto& r : recomputes) {
        Layout l = r;
        l.tp = sizes.tp, l.ep = sizes.ep, l.etp = sizes.etp, l.dp = sizes.dp();
        l.distributed = distributed, l.bf16_params = bf16_params;
        l.bf16_grads = bf16_params && recipe.optimizer().grad_dtype() == TrainConfig::BF16;
        out.push_back(l);
      }
    }
  }
  return out;
}

std::vector<Estimate> plan(const config::Recipe& recipe, const Cluster& cluster, const Options& options) {
  std::vector<Estimate> out;
  for (const auto& layout : candidate_layouts(recipe, cluster)) {
    Estimate e{layout, estimate_memory(recipe, layout, options),
               estimate_traffic(recipe, layout, cluster, options)};
    e.fits = e.memory.peak() <= cluster.memory_bytes;
    out.push_back(e);
  }
  return out;
}

}  // namespace moetrain::plan
