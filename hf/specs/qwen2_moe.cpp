// Qwen2-MoE (Qwen2MoeForCausalLM, transformers.models.qwen2_moe): q/k/v biases, a shared expert with a
// sigmoid gate in every MoE layer, dense layers from mlp_only_layers / decoder_sparse_step, norm_topk_prob.
#include "hf/family_spec.h"

namespace moetrain::hf {

FamilySpec qwen2_moe_spec() {
  FamilySpec s;
  s.names = {"qwen2_moe", "Qwen2-MoE", "Qwen2MoeForCausalLM", "qwen2_moe"};
  s.holds = "dense layers, a shared expert and q/k/v biases allowed, gates renormalised or not, no q/k norm";
  // Qwen2MoeConfig
  s.defaults.vocab_size = 151936;
  s.defaults.hidden_size = 2048;
  s.defaults.num_hidden_layers = 24;
  s.defaults.num_attention_heads = 16;
  s.defaults.intermediate_size = 5632;
  s.defaults.moe_intermediate_size = 1408;
  s.defaults.num_experts = 60;
  s.defaults.num_experts_per_tok = 4;
  s.defaults.shared_expert_intermediate_size = 5632;
  s.defaults.rms_norm_eps = 1e-6;
  s.defaults.rope_theta = 10000.0;
  s.experts_alias = "num_local_experts";
  s.dense_layers = DenseLayers::kQwenSparseStep;
  s.shared_expert.size_key = "shared_expert_intermediate_size";
  s.qkv_bias_key = "qkv_bias";
  s.restrictions = {
      {"use_sliding_window", Restriction::kFalse,
       "moetrain's attention is full causal attention (use_sliding_window false)"},
      {"sliding_window", Restriction::kNull, nullptr},  // unused while use_sliding_window is false
      {"max_window_layers", Restriction::kLayerCount, nullptr},
      {"layer_types", Restriction::kFullAttention,
       "moetrain's attention is full causal attention in every layer (\"full_attention\")"},
  };
  return s;
}

}  // namespace moetrain::hf
