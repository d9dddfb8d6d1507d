// Mixtral (MixtralForCausalLM, transformers.models.mixtral): every layer MoE, the top-k gates always
// renormalised, no biases, no q/k norm; experts under block_sparse_moe. named w1 (gate), w3 (up), w2 (down).
#include "hf/family_spec.h"

namespace moetrain::hf {

FamilySpec mixtral_spec() {
  FamilySpec s;
  s.names = {"mixtral", "Mixtral", "MixtralForCausalLM", "mixtral"};
  s.holds = "an MoE block in every layer, gates renormalised to sum to 1, no shared experts, no q/k norm, no biases";
  // MixtralConfig
  s.defaults.vocab_size = 32000;
  s.defaults.hidden_size = 4096;
  s.defaults.num_hidden_layers = 32;
  s.defaults.num_attention_heads = 32;
  s.defaults.num_key_value_heads = 8;
  s.defaults.intermediate_size = 14336;
  s.defaults.num_experts = 8;
  s.defaults.num_experts_per_tok = 2;
  s.defaults.rms_norm_eps = 1e-5;
  s.defaults.rope_theta = 1e6;
  s.moe_ffn_key = "intermediate_size";
  s.experts_key = "num_local_experts";
  s.norm_topk_key = nullptr;
  s.restrictions = {
      {"sliding_window", Restriction::kNull,
       "moetrain's attention is full causal attention (sliding_window null)"},
      {"router_jitter_noise", Restriction::kZero, nullptr},  // training-time noise; inference ignores it
  };
  s.layer.moe_block = "block_sparse_moe.";
  s.layer.expert_gate = "w1";
  s.layer.expert_up = "w3";
  s.layer.expert_down = "w2";
  return s;
}

}  // namespace moetrain::hf
