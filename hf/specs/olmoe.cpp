// OLMoE (OlmoeForCausalLM, transformers.models.olmoe): q/k RMSNorm over the full projection width, sized
// from hidden_size (so head_dim must be hidden_size / heads), every layer MoE, norm_topk_prob, no biases.
#include "hf/family_spec.h"

namespace moetrain::hf {

FamilySpec olmoe_spec() {
  FamilySpec s;
  s.names = {"olmoe", "OLMoE", "OlmoeForCausalLM", "olmoe"};
  s.holds = "q/k RMSNorm over the full width, an MoE block in every layer, no shared experts, no biases";
  // OlmoeConfig
  s.defaults.vocab_size = 50304;
  s.defaults.hidden_size = 2048;
  s.defaults.num_hidden_layers = 16;
  s.defaults.num_attention_heads = 16;
  s.defaults.intermediate_size = 2048;
  s.defaults.num_experts = 64;
  s.defaults.num_experts_per_tok = 8;
  s.defaults.rms_norm_eps = 1e-5;
  s.defaults.rope_theta = 10000.0;
  s.moe_ffn_key = "intermediate_size";
  s.experts_alias = "num_local_experts";
  s.qk_norm = config::ModelConfig::FULL_WIDTH;
  s.restrictions = {
      {"clip_qkv", Restriction::kNull, "moetrain does not clamp q, k and v (clip_qkv null)"},
      {"head_dim", Restriction::kHeadSizeFromHidden, "q/k norms are sized from hidden_size"},
      {"attention_bias", Restriction::kFalse,
       "moetrain's attention has no o_proj bias (and q/k/v biases only as Qwen2-MoE's qkv_bias)"},
  };
  return s;
}

}  // namespace moetrain::hf
