#include "csrc/model/transformer.h"

#include "csrc/layers/precision.h"
#include "csrc/layers/recompute.h"

#include "csrc/model/sharding.h"

#include <cmath>

namespace moetrain::model {

TransformerOptions TransformerOptions::from_recipe(const config::ModelConfig& m,
                                                   const config::RoutingConfig& r, const ModelPlacement& at) {
  TransformerOptions o;
  o.vocab_size = m.vocab_size();
  o.d_model = m.d_model();
  o.num_layers = m.num_layers();
  o.num_heads = m.num_heads();
  o.num_kv_heads = m.num_kv_heads() > 0 ? m.num_kv_heads() : m.num_heads();
  o.head_dim = m.head_dim() > 0 ? m.head_dim() : m.d_model() / m.num_heads();
  o.qk_norm = m.qk_norm() == config::ModelConfig::PER_HEAD     ? QkNorm::kPerHead
              : m.qk_norm() == config::ModelConfig::FULL_WIDTH ? QkNorm::kFullWidth
                                                               : QkNorm::kNone;
  o.qkv_bias = m.qkv_bias();
  o.ffn_hidden = m.ffn_hidden();
  o.rope_theta = m.rope_theta();
  o.norm_eps = m.norm_eps();
  o.tie_embeddings = m.tie_embeddings();
  o.tp_size = at.tp_size, o.tp_rank = at.tp_rank;
  o.is_moe.assign(m.num_layers(), false);
  if (m.moe_layers_size() > 0) {
    for (int64_t layer : m.moe_layers()) o.is_moe.at(layer) = true;
  } else if (m.moe_layer_freq() > 0) {
    for (int64_t l = 0; l < m.num_layers(); l += m.moe_layer_freq()) o.is_moe[l] = true;
  }
  o.moe.d_model = m.d_model();
  o.moe.num_experts = m.num_experts();
  o.moe.top_k = m.top_k();
  o.moe.expert_hidden = m.moe_ffn_hidden();
  o.moe.shared_hidden = m.num_shared_experts() == 0        ? 0
                        : m.shared_expert_ffn_hidden() > 0 ? m.shared_expert_ffn_hidden()
                                                           : m.moe_ffn_hidden() * m.num_shared_experts();
  o.moe.shared_gate = m.shared_expert_gate() && o.moe.shared_hidden > 0;
  o.moe.routing = r;
  o.moe.local_experts = m.num_experts() / at.ep_size;
  o.moe.first_local_expert = at.ep_rank * o.moe.local_experts;
  o.moe.expert_hidden_shards = at.etp_size, o.moe.expert_hidden_shard = at.etp_rank;
  return o;
}

TransformerOptions TransformerOptions::from_recipe(const config::Recipe& recipe, const ModelPlacement& at) {
  TransformerOptions o = from_recipe(recipe.model(), recipe.routing(), at);
  o.compute_dtype = recipe.train().precision() == config::TrainConfig::BF16 ? torch::kBFloat16
                                                                            : torch::kFloat32;
  o.seed = recipe.train().seed();
  const auto& train = recipe.train();
  if (train.recompute() == config::TrainConfig::FULL) {
    o.recompute.full_layers = train.recompute_num_layers() > 0 ? train.recompute_num_layers() : o.num_layers;
  } else if (train.recompute() == config::TrainConfig::SELECTIVE) {
    for (const auto& m : train.recompute_modules()) {
      auto& r = o.recompute;
      r.core_attn |= m == "core_attn", r.moe_act |= m == "moe_act", r.layernorm |= m == "layernorm";
      r.mlp |= m == "mlp", r.moe |= m == "moe";
    }
  }
  o.moe.recompute_act = o.recompute.moe_act;
  const auto& lora = recipe.finetune().lora();
  if (lora.rank() > 0) {
    o.moe.lora.rank = lora.rank();
    o.moe.lora.alpha = lora.alpha();
    const bool all = lora.targets_size() == 0;
    for (const auto& t : lora.targets()) {
      o.moe.lora.gate |= t == "gate", o.moe.lora.up |= t == "up", o.moe.lora.down |= t == "down";
      o.attn_lora.qkv |= t == "attn_qkv", o.attn_lora.out |= t == "attn_out";
    }
    if (all) o.moe.lora.gate = o.moe.lora.up = o.moe.lora.down = true;
    if (o.attn_lora.qkv || o.attn_lora.out) o.attn_lora.rank = lora.rank(), o.attn_lora.alpha = lora.alpha();
  }
  return o;
}

AttentionOptions TransformerOptions::attention() const {
  AttentionOptions a;
  a.d_model = d_model, a.num_heads = num_heads, a.num_kv_heads = num_kv_heads, a.head_dim = head_dim;
  a.rope_theta = rope_theta, a.norm_eps = norm_eps, a.qk_norm = qk_norm, a.qkv_bias = qkv_bias;
  a.tp_size = tp_size, a.lora = attn_lora;
  a.recompute_core = recompute.core_attn;
  return a;
}

BlockImpl::BlockImpl(const TransformerOptions& o, int64_t layer)
    : recompute_(o.recompute), full_recompute_(layer < o.recompute.full_layers) {
  const bool is_moe = o.is_moe.at(layer);
  attn_norm = register_module("attn_norm", RMSNorm(o.d_model, o.norm_eps));
  attn = register_module("attn", Attention(o.attention()));
  ffn_norm = register_module("ffn_norm", RMSNorm(o.d_model, o.norm_eps));
  if (is_moe) {
    moe = register_module("moe", moe::MoELayer(o.moe));
  } else {
    mlp = register_module("mlp", layers::SwiGLU(o.d_model, o.ffn_hidden, o.tp_size));
  }
}

namespace {
// Sequence-parallel split of T tokens over p ranks when p does not divide T (evaluation batches; a
// training micro-batch is checked to divide): rank q holds c_q = ⌊T/p⌋ (+1 for q < T mod p) consecutive
// tokens from f_q = q·⌊T/p⌋ + min(q, T mod p). The collectives need equal row counts, so each rank's
// block is padded to L = ⌈T/p⌉ rows. Index tensors on `device`, built there (no host values read).
struct UnevenSplit {
  int64_t first = 0, count = 0, rows = 0;  // this rank's f, c and L
  torch::Tensor padded_rows;  // int64 (p·L): source token of each padded row (fillers repeat the block's last token)
  torch::Tensor token_rows;  // int64 (T): the padded row that holds each token
};

UnevenSplit uneven_split(int64_t T, int64_t p, int64_t rank, const torch::Device& device) {
  TORCH_CHECK(T >= p, "tensor parallelism: a forward of ", T,
              " tokens cannot give each of the parallel.tensor = ", p,
              " ranks a token; use batches of at least ", p, " tokens");
  const int64_t base = T / p, rem = T % p, L = base + 1;
  const auto opts = torch::TensorOptions().dtype(torch::kInt64).device(device);
  UnevenSplit s;
  s.first = rank * base + std::min(rank, rem), s.count = base + (rank < rem ? 1 : 0), s.rows = L;
  auto q = torch::arange(p, opts).unsqueeze(1), j = torch::arange(L, opts).unsqueeze(0);  // (p, 1), (1, L)
  auto first_q = q * base + q.clamp_max(rem), count_q = base + (q < rem).to(torch::kInt64);
  s.padded_rows = (first_q + torch::minimum(j, count_q - 1)).reshape({-1});
  auto t = torch::arange(T, opts);
  const int64_t long_tokens = rem * (base + 1);  // tokens of the ranks holding base + 1
  auto q_t = torch::where(t < long_tokens, torch::div(t, base + 1, "floor"),
                          rem + torch::div(t - long_tokens, base, "floor"));
  s.token_rows = q_t * L + t - (q_t * base + q_t.clamp_max(rem));
  return s;
}
}  // namespace

bool BlockImpl::recompute_now() const { return is_training() && layers::can_recompute(); }

torch::Tensor BlockImpl::forward(const torch::Tensor& x, const torch::Tensor& tokens, ModelOutput& out,
                                 int64_t first_token) {
  if (!(full_recompute_ && recompute_now())) return forward_layer(x, tokens, out, first_token);
  // FULL: only x is kept; backward runs the layer again. Its losses leave as outputs (0 + loss is exact,
  // so the sums equal the unrecomputed ones bitwise); its measures come from the first run.
  ModelOutput* sink = &out;  // touched by the first run only: a replay outlives `out`
  auto outs = layers::recompute(
      [this, tokens, first_token, sink](const std::vector<torch::Tensor>& in) {
    ModelOutput layer;
    layer.aux_loss = torch::zeros({}, in[0].options().dtype(torch::kFloat32));
    layer.z_loss = torch::zeros({}, in[0].options().dtype(torch::kFloat32));
    auto y = forward_layer(in[0], tokens, layer, first_token);
    if (!layers::replaying())
      sink->moe_measures.insert(sink->moe_measures.end(), layer.moe_measures.begin(), layer.moe_measures.end());
    return std::vector{y, layer.aux_loss, layer.z_loss};
      },
      {x});
  out.aux_loss = out.aux_loss + outs[1];
  out.z_loss = out.z_loss + outs[2];
  return outs[0];
}

torch::Tensor BlockImpl::forward_layer(const torch::Tensor& x, const torch::Tensor& tokens, ModelOutput& out,
                                       int64_t first_token) {
  auto h = x + normed(attn_norm, x, [&](const torch::Tensor& n) { return attn(n); });
  return h + normed(ffn_norm, h, [&](const torch::Tensor& n) { return ffn(n, tokens, out, first_token); });
}

torch::Tensor BlockImpl::normed(RMSNorm& norm, const torch::Tensor& x,
                                const std::function<torch::Tensor(const torch::Tensor&)>& consumer) {
  if (!(recompute_.layernorm && recompute_now())) return consumer(norm(x));
  layers::RecomputeWithoutOutput norm_output;
  // x twice: its two gradient terms then reach x apart, as without recomputation (RMSNorm::forward_parts).
  auto n = norm_output.run(
      [norm](const std::vector<torch::Tensor>& in) mutable {
    return std::vector{norm->forward_parts(in[0], in[1])};
      },
      {x, x})[0];
  auto y = consumer(n);
  norm_output.discard_outputs(y);  // every use of n is upstream of y
  return y;
}

torch::Tensor BlockImpl::ffn(const torch::Tensor& normed_BSD, const torch::Tensor& tokens, ModelOutput& out,
                             int64_t first_token) {
  if (!moe) {
    if (!(recompute_.mlp && recompute_now())) return mlp(normed_BSD);
    return layers::recompute(
        [m = mlp](const std::vector<torch::Tensor>& in) mutable { return std::vector{m(in[0])}; },
        {normed_BSD})[0];
  }
  auto add_losses = [&](const moe::MoEOutput& m) {
    out.aux_loss = out.aux_loss + m.aux_loss;
    out.z_loss = out.z_loss + m.z_loss;
    out.moe_measures.push_back(m.measures);
  };
  if (!tp_) {
    moe::MoEOutput m = run_moe(normed_BSD, tokens, {}, first_token);
    add_losses(m);
    return m.y;
  }
  // Sequence-parallel MoE: this rank routes and computes its 1/tp of the tokens.
  const int64_t D = normed_BSD.size(2), T = normed_BSD.size(0) * normed_BSD.size(1), p = tp_->size();
  auto x_TD = normed_BSD.reshape({T, D});
  auto ids_T = tokens.reshape({-1});
  int64_t first = tp_->rank() * (T / p), count = T / p;
  UnevenSplit split;
  if (T % p == 0) {
    x_TD = tp_->scatter_tokens(x_TD);
  } else {
    split = uneven_split(T, p, tp_->rank(), normed_BSD.device());
    first = split.first, count = split.count;
    x_TD = tp_->scatter_tokens(x_TD.index_select(0, split.padded_rows)).narrow(0, 0, count);
  }
  moe::MoEOutput m = run_moe(x_TD.unsqueeze(0), ids_T.narrow(0, first, count).unsqueeze(0),
                             moe::TokenSlice{normed_BSD.size(0), normed_BSD.size(1), first},
                             first_token + first);
  add_losses(m);
  auto y_TD = m.y.reshape({count, D});
  if (T % p == 0) return tp_->gather_tokens(y_TD).view(normed_BSD.sizes());
  y_TD = torch::constant_pad_nd(y_TD, {0, 0, 0, split.rows - count});  // zero rows up to L
  return tp_->gather_tokens(y_TD).index_select(0, split.token_rows).view(normed_BSD.sizes());
}

moe::MoEOutput BlockImpl::run_moe(const torch::Tensor& x_BSD, const torch::Tensor& ids_BS,
                                  const moe::TokenSlice& slice, int64_t noise_position) {
  if (!(recompute_.moe && recompute_now())) {
    moe->router->set_noise_position(noise_position);
    return moe(x_BSD, ids_BS, slice);
  }
  // "moe": only the layer's input is kept; the replay routes exactly as the first run (same noise
  // position, same expert bias, the step's counts as they were).
  moe::MoEMeasures measures;
  moe::MoEMeasures* sink = &measures;  // touched by the first run only
  auto outs = layers::recompute(
      [this, ids_BS, slice, noise_position, sink](const std::vector<torch::Tensor>& in) {
    moe->router->set_noise_position(noise_position);
    moe::MoEOutput m = moe(in[0], ids_BS, slice);
    if (!layers::replaying()) *sink = m.measures;
    return std::vector{m.y, m.aux_loss, m.z_loss};
      },
      {x_BSD});
  return moe::MoEOutput{outs[0], outs[1], outs[2], measures};
}

TransformerImpl::TransformerImpl(const TransformerOptions& o) : options_(o) {
  const int64_t local_vocab = o.vocab_size / o.tp_size;  // vocab parallel under TP
  embed = register_module("embed", torch::nn::Embedding(local_vocab, o.d_model));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t l = 0; l < o.num_layers; ++l) {
    Block block(o, l);
    if (block->moe) block->moe->router->set_noise_stream(o.seed, l);
    layers->push_back(block);
  }
  norm = register_module("norm", RMSNorm(o.d_model, o.norm_eps));
  if (!o.tie_embeddings) {
    lm_head = register_module("lm_head",
                              torch::nn::Linear(torch::nn::LinearOptions(o.d_model, local_vocab).bias(false)));
  }
}

ModelOutput TransformerImpl::forward(const torch::Tensor& tokens_BS) {
  // Mixed precision: matmuls in the compute dtype, everything else fp32 (a no-op for fp32).
  layers::AutocastScope autocast(tokens_BS.device().type(), options_.compute_dtype);
  ModelOutput out;
  torch::Tensor x;
  if (tp_) {  // vocab-parallel embedding: rows of other ranks' vocabulary count 0, then sum over tp
    const int64_t local = embed->weight.size(0), first = tp_->rank() * local;
    auto ids = tokens_BS - first;
    auto mine = (ids >= 0) & (ids < local);
    x = tp_->reduce_from_tp(embed(ids.clamp(0, local - 1)) * mine.unsqueeze(-1).to(embed->weight.scalar_type()));
  } else {
    x = embed(tokens_BS);
  }
  out.aux_loss = torch::zeros({}, x.options().dtype(torch::kFloat32));
  out.z_loss = torch::zeros({}, x.options().dtype(torch::kFloat32));
  const int64_t first_token = first_sample_ * tokens_BS.size(1);
  if (is_training()) first_sample_ += tokens_BS.size(0);
  for (const auto& layer : *layers) {
    x = layer->as<Block>()->forward(x, tokens_BS, out, first_token);
  }
  x = norm(x);
  if (tp_) x = tp_->copy_to_tp(x);  // column-parallel LM head: each rank its vocabulary slice
  out.logits = lm_head ? lm_head(x) : torch::linear(x, embed->weight);
  return out;
}

torch::Tensor TransformerImpl::token_losses(const torch::Tensor& logits, const torch::Tensor& targets) {
  auto z = logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32);  // (T, V or V/tp)
  auto t = targets.reshape({-1});
  if (!tp_) {
    return torch::nn::functional::cross_entropy(z, t,
                                                torch::nn::functional::CrossEntropyFuncOptions().reduction(
                                                    torch::kNone));
  }
  // Vocab-parallel cross-entropy: loss_t = logsumexp over the whole vocabulary − z_t[target].
  // logsumexp: each rank's over its slice, all-gathered (backward: this rank's part), combined; the
  // target logit lives on one rank: picked there, summed over tp (backward: identity).
  const int64_t local = z.size(1), first = tp_->rank() * local, T = z.size(0);
  auto lse_all = tp_->gather_tokens(torch::logsumexp(z, 1).unsqueeze(1)).view({tp_->size(), T});
  auto lse = torch::logsumexp(lse_all, 0);
  auto ids = t - first;
  auto mine = (ids >= 0) & (ids < local);
  auto picked = z.gather(1, ids.clamp(0, local - 1).unsqueeze(1)).squeeze(1) * mine.to(z.scalar_type());
  return lse - tp_->reduce_from_tp(picked);
}

void BlockImpl::set_tensor_parallel(std::shared_ptr<layers::TensorParallelOps> tp) {
  attn->set_tensor_parallel(tp);
  if (mlp) mlp->set_tensor_parallel(tp);
  tp_ = std::move(tp);
}

void TransformerImpl::set_tensor_parallel(std::shared_ptr<layers::TensorParallelOps> tp) {
  for (const auto& layer : *layers) layer->as<Block>()->set_tensor_parallel(tp);
  tp_ = std::move(tp);
}

std::vector<moe::MoELayer> TransformerImpl::moe_layers() const {
  std::vector<moe::MoELayer> out;
  for (const auto& layer : *layers) {
    if (auto m = layer->as<Block>()->moe) out.push_back(m);
  }
  return out;
}

namespace {
uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
  return h;
}
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

void init_weights(TransformerImpl& model, uint64_t seed, double std) {
  torch::NoGradGuard no_grad;
  const double out_std = std / std::sqrt(2.0 * model.options().num_layers);
  for (auto& item : model.named_parameters()) {
    const std::string& name = item.key();
    torch::Tensor& p = item.value();
    if (ends_with(name, ".bias")) {  // q/k/v biases
      p.zero_();
      continue;
    }
    if (p.dim() == 1) {  // norm weights
      p.fill_(1.0);
      continue;
    }
    if (ends_with(name, "_lora_b")) {  // adapters start as a zero update
      p.zero_();
      continue;
    }
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed ^ fnv1a(name));
    const bool is_lora_a = ends_with(name, "_lora_a");  // (E, in, rank)
    const bool is_output = ends_with(name, "attn.wo.weight") || ends_with(name, ".w2.weight") ||
                           ends_with(name, "experts.w2");
    // Draw the global tensor, keep this process's block of it (csrc/model/sharding.h).
    const ShardBox box = shard_box(model.options(), name, p.sizes().vec());
    torch::Tensor local = at::normal(0.0,
                                     is_lora_a   ? 1.0 / std::sqrt(static_cast<double>(p.size(1)))
                                     : is_output ? out_std
                                                 : std,
                                     box.global_view, gen, torch::TensorOptions().dtype(torch::kFloat32));
    for (size_t d = 0; d < box.offsets.size(); ++d)
      local = local.narrow(static_cast<int64_t>(d), box.offsets[d], box.local_view[d]);
    local = local.reshape(p.sizes());
    p.copy_(local);
  }
}

torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32),
                                              targets.reshape({-1}));
}

}  // namespace moetrain::model
