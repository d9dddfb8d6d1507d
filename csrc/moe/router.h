// The router: which experts each token uses, with which gate (definitions: docs/routing.md).
// Shapes: T tokens in the routing group, D d_model, E experts, k experts per token.
#pragma once

#include <torch/torch.h>

#include "csrc/config/recipe.pb.h"

namespace moetrain::moe {

struct RouterOptions {
  int64_t d_model = 0, num_experts = 0, top_k = 0;
  config::RoutingConfig routing;  // defaults filled in
};

struct Routing {
  torch::Tensor logits_TE;  // fp32 router logits
  torch::Tensor probs_TE;   // fp32 P of the balancing losses: softmax, or sigmoid normalised over experts
  torch::Tensor routed_TE;  // bool: the router's choice before capacity (aux losses and load measures)
  torch::Tensor kept_TE;    // bool: the pairs that are computed (after capacity)
  torch::Tensor gates_TE;   // fp32 gate of each kept pair, 0 elsewhere (differentiable)
  int64_t capacity = 0;     // per expert, 0 = dropless
  // Kept pairs, known on the host without reading the routing: exact when dropless (T·k for top-k, E·c
  // for expert choice), an upper bound with a capacity (min(T·k, E·capacity)). Sizes the dispatch.
  int64_t max_kept = 0;
};

// Router noise (jitter, RANDOM routing), counter-based: a pure function of (stream key, global token
// index, column), computed with int64 tensor ops on the device of the tensor it is for. No generator
// and no RNG state: the same token draws the same noise in every parallel layout and after a resume.
// A 32-bit hash (lowbias32 rounds) is carried in int64 tensors; every intermediate stays below 2^49.
//
// noise_stream_key: the stream of one (seed, layer, purpose), mixed on the host (splitmix64).
enum class NoisePurpose : uint64_t { kJitter = 1, kRandomRouting = 2, kRandomRoutingEval = 3 };
uint64_t noise_stream_key(uint64_t seed, int64_t layer, NoisePurpose purpose);
// int64 (T, C) hash values in [0, 2^32) of tokens first_token .. first_token + T − 1 and columns 0 .. C − 1,
// on `device`.
torch::Tensor noise_bits(uint64_t key, int64_t first_token, int64_t T, int64_t C, const torch::Device& device);
// fp32 (T, C) uniform on [0, 1) in steps of 2^-24: the top 24 bits of noise_bits.
torch::Tensor uniform_noise(uint64_t key, int64_t first_token, int64_t T, int64_t C,
                            const torch::Device& device);

// capacity = max(ceil(factor · T · k / E), min_capacity); 0 when factor is 0 (dropless).
int64_t expert_capacity(double factor, int64_t tokens, int64_t top_k, int64_t num_experts,
                        int64_t min_capacity);

// Keeps at most `capacity` routed pairs per expert: those with the highest `priority_TE` (for the
// probs policy the pair's final gate, for the position policy minus the token index).
torch::Tensor apply_capacity(const torch::Tensor& routed_TE, const torch::Tensor& priority_TE,
                             int64_t capacity);

class RouterImpl : public torch::nn::Module {
 public:
  explicit RouterImpl(const RouterOptions& options);
  // x_TD: router input; token_ids_T: int64 ids (used by HASH routing only, may be undefined otherwise).
  Routing forward(const torch::Tensor& x_TD, const torch::Tensor& token_ids_T = {});

  torch::Tensor weight;       // (E, D) fp32, trained
  torch::Tensor expert_bias;  // (E) fp32 buffer: selection bias of aux-loss-free balancing (not trained)
  const RouterOptions& options() const { return options_; }

  // Noise (jitter, RANDOM routing) of this router: stream (train.seed, transformer layer index); and the
  // global index of the first row of the next training forward (global sample · seq_len + offset of
  // this rank's tokens in the micro-batch). Every training forward then advances the position by its
  // T rows, so a caller that never sets it still draws fresh noise each forward.
  void set_noise_stream(uint64_t seed, int64_t layer) { noise_seed_ = seed, noise_layer_ = layer; }
  void set_noise_position(int64_t first_token) { noise_position_ = first_token; }
  int64_t noise_position() const { return noise_position_; }

 private:
  torch::Tensor select_topk(const torch::Tensor& logits_TE, const torch::Tensor& scores_TE) const;
  // Phases of forward(): x_TD fp32 with the training jitter applied; expert choice (each expert takes c
  // tokens) or token choice (top-k, HASH, RANDOM) filling routed/kept/gates; the capacity of token choice.
  torch::Tensor jittered(const torch::Tensor& x_TD, int64_t first_token) const;
  void choose_by_experts(Routing& out, const torch::Tensor& scores_TE) const;
  void choose_by_tokens(Routing& out, const torch::Tensor& scores_TE, const torch::Tensor& token_ids_T,
                        int64_t first_token) const;
  torch::Tensor random_experts(int64_t first_token, int64_t T, const torch::Device& device) const;  // int64 (T, k)
  void apply_token_capacity(Routing& out) const;
  RouterOptions options_;
  uint64_t noise_seed_ = 0;
  int64_t noise_layer_ = 0, noise_position_ = 0;
};
TORCH_MODULE(Router);

}  // namespace moetrain::moe
