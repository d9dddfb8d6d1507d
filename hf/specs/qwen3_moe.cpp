// Qwen3-MoE (Qwen3MoeForCausalLM, transformers.models.qwen3_moe): q/k RMSNorm per head over head_dim
// before RoPE, dense layers from mlp_only_layers / decoder_sparse_step, norm_topk_prob, no biases.
#include "hf/family_spec.h"

namespace moetrain::hf {

FamilySpec qwen3_moe_spec() {
  FamilySpec s;
  s.names = {"qwen3_moe", "Qwen3-MoE", "Qwen3MoeForCausalLM", "qwen3_moe"};
  s.holds = "q/k RMSNorm per head, dense layers allowed, gates renormalised or not, no shared experts, no biases";
  // Qwen3MoeConfig
  s.defaults.vocab_size = 151936;
  s.defaults.hidden_size = 2048;
  s.defaults.num_hidden_layers = 24;
  s.defaults.num_attention_heads = 32;
  s.defaults.num_key_value_heads = 4;
  s.defaults.intermediate_size = 6144;
  s.defaults.moe_intermediate_size = 768;
  s.defaults.num_experts = 128;
  s.defaults.num_experts_per_tok = 8;
  s.defaults.rms_norm_eps = 1e-6;
  s.defaults.rope_theta = 10000.0;
  s.experts_alias = "num_local_experts";  // transformers 5's attribute map
  s.dense_layers = DenseLayers::kQwenSparseStep;
  s.qk_norm = config::ModelConfig::PER_HEAD;
  s.restrictions = {
      {"use_sliding_window", Restriction::kFalse,
       "moetrain's attention is full causal attention (use_sliding_window false)"},
      {"sliding_window", Restriction::kNull, nullptr},  // unused while use_sliding_window is false
      {"max_window_layers", Restriction::kLayerCount, nullptr},
      {"attention_bias", Restriction::kFalse,
       "moetrain's attention has no o_proj bias (and q/k/v biases only as Qwen2-MoE's qkv_bias)"},
  };
  return s;
}

}  // namespace moetrain::hf
