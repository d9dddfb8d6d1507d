// Decoder-only MoE transformer:
//   tokens → embedding → N × Block → RMSNorm → LM head → logits
//   Block: x + Attention(RMSNorm(x)), then x + FFN(RMSNorm(x)), FFN = dense SwiGLU or MoE layer.
#pragma once

#include <functional>
#include <vector>

#include "csrc/config/recipe.pb.h"
#include "csrc/layers/swiglu.h"
#include "csrc/model/attention.h"
#include "csrc/moe/moe_layer.h"

namespace moetrain::model {

// train.recompute (csrc/layers/recompute.h): what each layer computes again in backward.
struct RecomputeOptions {
  int64_t full_layers = 0;  // FULL: layers [0, full_layers) whole, keeping only their inputs
  bool core_attn = false, moe_act = false, layernorm = false, mlp = false, moe = false;  // SELECTIVE
};

// Which share of the model one process holds: the attention mesh's tensor-parallel slice, and the expert
// mesh's experts (expert parallelism: num_experts / ep_size of them) and slice of each expert's hidden
// dimension (expert tensor parallelism: moe_ffn_hidden / etp_size of it). parallel::ProcessMesh::placement().
struct ModelPlacement {
  int64_t ep_size = 1, ep_rank = 0;
  int64_t tp_size = 1, tp_rank = 0;
  int64_t etp_size = 1, etp_rank = 0;
};

struct TransformerOptions {
  int64_t vocab_size = 0, d_model = 0, num_layers = 0, num_heads = 0, ffn_hidden = 0;
  int64_t num_kv_heads = 0, head_dim = 0;  // 0 = num_heads, d_model / num_heads (AttentionOptions)
  QkNorm qk_norm = QkNorm::kNone;
  bool qkv_bias = false;
  double rope_theta = 10000.0, norm_eps = 1e-5;
  bool tie_embeddings = false;
  int64_t tp_size = 1, tp_rank = 0;  // tensor parallelism
  std::vector<bool> is_moe;          // per layer
  moe::MoEOptions moe;
  AttentionImpl::Lora attn_lora;       // adapters on the attention projections (fine-tuning)
  AttentionOptions attention() const;  // this process's attention (local heads under TP)
  // Matmul dtype (train.precision): kFloat32, or kBFloat16 for mixed precision with fp32 master weights
  // (csrc/layers/precision.h). Parameters stay fp32 either way.
  torch::ScalarType compute_dtype = torch::kFloat32;
  RecomputeOptions recompute;  // training forwards only
  uint64_t seed = 0;  // train.seed: keys the routers' noise streams (jitter, RANDOM routing) with the layer index

  // `placement`: this process's share of the model (default: the whole model, one process).
  static TransformerOptions from_recipe(const config::ModelConfig& model, const config::RoutingConfig& routing,
                                        const ModelPlacement& placement = {});
  // The whole recipe: the above plus what other sections add to the model (finetune.lora adapters).
  static TransformerOptions from_recipe(const config::Recipe& recipe, const ModelPlacement& placement = {});
};

struct ModelOutput {
  torch::Tensor logits;    // (B, S, V)
  torch::Tensor aux_loss;  // scalar: Σ over MoE layers of the balancing losses (coefficients applied)
  torch::Tensor z_loss;    // scalar: Σ over MoE layers of the router z-loss (coefficient applied)
  std::vector<moe::MoEMeasures> moe_measures;  // one per MoE layer, in layer order
};

class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const TransformerOptions& options, int64_t layer);
  // x: (B, S, D), tokens (B, S). An MoE block adds its losses and measures to `out`. first_token: global
  // index of tokens[0][0] (global sample · S), which keys the router's noise.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& tokens, struct ModelOutput& out,
                        int64_t first_token = 0);

  void set_tensor_parallel(std::shared_ptr<layers::TensorParallelOps> tp);

  RMSNorm attn_norm{nullptr}, ffn_norm{nullptr};
  Attention attn{nullptr};
  layers::SwiGLU mlp{nullptr};  // dense layers
  moe::MoELayer moe{nullptr};   // MoE layers
 private:
  // forward() without whole-layer recomputation.
  torch::Tensor forward_layer(const torch::Tensor& x, const torch::Tensor& tokens, ModelOutput& out,
                              int64_t first_token);
  // The FFN: dense SwiGLU or MoE on the normed h (B, S, D); MoE losses and measures go to `out`.
  torch::Tensor ffn(const torch::Tensor& normed, const torch::Tensor& tokens, ModelOutput& out,
                    int64_t first_token);
  // The MoE layer with its router's noise position set, recomputed in backward under "moe".
  moe::MoEOutput run_moe(const torch::Tensor& x_BSD, const torch::Tensor& ids_BS,
                         const moe::TokenSlice& slice, int64_t noise_position);
  // A norm, its output freed and recomputed before the backward of `consumer` under "layernorm".
  torch::Tensor normed(RMSNorm& norm, const torch::Tensor& x,
                       const std::function<torch::Tensor(const torch::Tensor&)>& consumer);

  bool recompute_now() const;  // a training forward that records gradients, outside any replay
  RecomputeOptions recompute_;
  bool full_recompute_ = false;  // this layer is one of the FULL layers
  std::shared_ptr<layers::TensorParallelOps> tp_;
};
TORCH_MODULE(Block);


class TransformerImpl : public torch::nn::Module {
 public:
  explicit TransformerImpl(const TransformerOptions& options);
  ModelOutput forward(const torch::Tensor& tokens_BS);
  // Global sample index (sampler position) of row 0 of the next forward's tokens. The routers key their
  // noise (jitter, RANDOM routing) by global token index = sample · S + position, so a token draws the
  // same noise in every parallel layout (docs/routing.md, "Router noise"). Each training forward then
  // advances it by its B rows; the trainer sets it for every micro-batch, the evaluator for every batch.
  void set_first_sample(int64_t sample) { first_sample_ = sample; }
  const TransformerOptions& options() const { return options_; }
  std::vector<moe::MoELayer> moe_layers() const;  // in layer order
  // Installs the tensor-parallel communication in every layer (options().tp_size > 1).
  void set_tensor_parallel(std::shared_ptr<layers::TensorParallelOps> tp);
  // Cross-entropy of each token, fp32, flattened (B·S): logits from forward(), targets (B, S). Under
  // tensor parallelism the logits are this rank's vocabulary slice and the loss is computed without
  // gathering them (vocab-parallel cross-entropy); every tp rank returns the same values.
  torch::Tensor token_losses(const torch::Tensor& logits, const torch::Tensor& targets);

  // Under tensor parallelism (vocab parallel) each rank holds rows [tp_rank·V/tp, +V/tp) of the
  // embedding and of the LM head, and forward() returns logits (B, S, V/tp) of that slice.
  torch::nn::Embedding embed{nullptr};  // (V, D)
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
  torch::nn::Linear lm_head{nullptr};  // weight (V, D); null when tied to embed

 private:
  TransformerOptions options_;
  std::shared_ptr<layers::TensorParallelOps> tp_;
  int64_t first_sample_ = 0;
};
TORCH_MODULE(Transformer);

// Seeded initialisation over the global tensors: each parameter draws from its own generator seeded by
// (seed, parameter name), so the weights do not depend on creation order or on the parallel layout:
// expert-parallel and tensor-parallel shards are slices of the same global tensor.
// Matrices ~ N(0, std²); output projections (attn.wo, *.w2) ~ N(0, std²/(2·layers)); norms = 1;
// LoRA adapters A ~ N(0, 1/in), B = 0.
void init_weights(TransformerImpl& model, uint64_t seed, double std);

// Cross-entropy of logits (B, S, V) against targets (B, S), mean over tokens.
torch::Tensor lm_loss(const torch::Tensor& logits, const torch::Tensor& targets);

}  // namespace moetrain::model
