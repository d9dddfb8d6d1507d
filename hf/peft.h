// A LoRA-on-experts run as a PEFT adapter for the exported model, any of the four families (docs/huggingface.md).
//
// transformers 5 holds every family's experts fused (model.layers.L.mlp.experts): experts.gate_up_proj (E, 2F, D) and
// experts.down_proj (E, D, F). PEFT (>= 0.17, `target_parameters`) puts one LoRA on each 3-D parameter,
// per expert e: ΔW[e] = (lora_alpha / r) · B[e]·A[e], stored as lora_A.weight (E·r, in) (rows e·r + j) and
// lora_B.weight (out, r·E) (columns j·E + e). Ours are separate per projection, W (E, in, out) += (α/ρ)·A·B
// with A (E, in, ρ), B (ρ, out). Gate and up share gate_up_proj, so the adapter has rank r = 2ρ: the
// first ρ ranks carry the gate adapter (rows [0, F) of ΔW), the last ρ the up adapter (rows [F, 2F));
// down_proj uses the first ρ ranks and zeros. lora_alpha = 2α keeps the scale α/ρ. Targets a run did not
// adapt are zeros. Attention adapters (targets attn_qkv, attn_out) go on q_proj, k_proj, v_proj (sharing
// our A, each with its rows of B, hf::split_qkv) and o_proj, as ordinary `target_modules`, padded to the same rank r.
// The adapter loaded with peft onto the exported base equals our merged model.
#pragma once

#include <nlohmann/json.hpp>

#include "csrc/io/safetensors.h"
#include "csrc/model/transformer.h"
#include "hf/families.h"

namespace moetrain::hf {

struct PeftAdapter {
  nlohmann::json config;     // adapter_config.json
  io::NamedTensors tensors;  // adapter_model.safetensors
};

// `model`: one process, every MoE layer with adapters (throws naming finetune.lora when it has none).
PeftAdapter peft_adapter(Family family, const model::TransformerImpl& model);
struct FamilySpec;
PeftAdapter peft_adapter(const FamilySpec& spec, const model::TransformerImpl& model);  // a spec not registered

// Writes DIR/adapter_config.json and DIR/adapter_model.safetensors.
void write_peft_adapter(const PeftAdapter& adapter, const std::string& dir);

}  // namespace moetrain::hf
