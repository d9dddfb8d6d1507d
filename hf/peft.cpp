#include "hf/peft.h"

#include "hf/family_spec.h"
#include "hf/weights.h"

#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace moetrain::hf {
namespace {

// (E, in, ρ) adapter A, or zeros when the projection has none.
torch::Tensor or_zeros(const torch::Tensor& t, std::vector<int64_t> shape) {
  return t.defined() ? t.detach() : torch::zeros(shape);
}

// Attention: q, k and v share our A (rank, D); each takes its rows of B (R, rank) (hf::split_qkv). Ranks
// padded to r = 2ρ.
void add_attention_adapters(const FamilySpec& s, const model::TransformerImpl& model, int64_t rho,
                            io::NamedTensors& out) {
  const auto& o = model.options();
  const LayerNames& n = s.layer;
  int64_t layer_index = 0;
  for (const auto& module : *model.layers) {
    const auto& at = *module->as<model::BlockImpl>()->attn;
    const std::string prefix = "base_model.model.model.layers." + std::to_string(layer_index++) + "." +
                               n.attention;
    auto pad_a = [&](const torch::Tensor& a) {
      return torch::cat({a.detach(), torch::zeros({rho, a.size(1)})}, 0).contiguous();
    };
    auto pad_b = [&](const torch::Tensor& b) {
      return torch::cat({b.detach(), torch::zeros({b.size(0), rho})}, 1).contiguous();
    };
    if (at.qkv_lora_a.defined()) {
      const auto b = split_qkv(at.qkv_lora_b.detach(), o.num_heads, o.attention().kv_heads());
      const std::pair<const char*, torch::Tensor> parts[] = {{n.q, b.q}, {n.k, b.k}, {n.v, b.v}};
      for (const auto& [name, rows] : parts) {
        out.emplace_back(prefix + name + ".lora_A.weight", pad_a(at.qkv_lora_a));
        out.emplace_back(prefix + name + ".lora_B.weight", pad_b(rows));
      }
    }
    if (at.out_lora_a.defined()) {
      out.emplace_back(prefix + n.o + ".lora_A.weight", pad_a(at.out_lora_a));
      out.emplace_back(prefix + n.o + ".lora_B.weight", pad_b(at.out_lora_b));
    }
  }
}

// The experts of every MoE layer, on the fused parameters (the layout in peft.h).
void add_expert_adapters(const FamilySpec& s, const model::TransformerImpl& model, int64_t rho,
                         io::NamedTensors& out) {
  const auto& o = model.options();
  const int64_t E = o.moe.num_experts, D = o.d_model, F = o.moe.expert_hidden, r = 2 * rho;
  size_t moe_index = 0;
  const auto moe_layers = model.moe_layers();
  for (int64_t layer = 0; layer < o.num_layers; ++layer) {
    if (!o.is_moe[layer]) continue;
    const auto& x = *moe_layers.at(moe_index++)->experts;
    if (x.w1_EDF.size(0) != E)
      throw std::invalid_argument("PEFT export needs the whole model in one process (all experts)");
    auto a1 = or_zeros(x.w1_lora_a, {E, D, rho}), b1 = or_zeros(x.w1_lora_b, {E, rho, F});
    auto a3 = or_zeros(x.w3_lora_a, {E, D, rho}), b3 = or_zeros(x.w3_lora_b, {E, rho, F});
    auto a2 = or_zeros(x.w2_lora_a, {E, F, rho}), b2 = or_zeros(x.w2_lora_b, {E, rho, D});
    // gate_up_proj: A (E, r, D) → (E·r, D); B (2F, r, E) → (2F, r·E).
    auto a_gu = torch::cat({a1.transpose(1, 2), a3.transpose(1, 2)}, 1).reshape({E * r, D});
    auto b_gu = torch::zeros({2 * F, r, E});
    b_gu.narrow(0, 0, F).narrow(1, 0, rho).copy_(b1.permute({2, 1, 0}));
    b_gu.narrow(0, F, F).narrow(1, rho, rho).copy_(b3.permute({2, 1, 0}));
    // down_proj: A (E, r, F) → (E·r, F); B (D, r, E) → (D, r·E).
    auto a_d = torch::cat({a2.transpose(1, 2), torch::zeros({E, rho, F})}, 1).reshape({E * r, F});
    auto b_d = torch::zeros({D, r, E});
    b_d.narrow(1, 0, rho).copy_(b2.permute({2, 1, 0}));
    // PEFT wraps gate_up_proj first (it is registered first), so down_proj's wrapper is the outer one.
    const std::string prefix = "base_model.model.model.layers." + std::to_string(layer) + "." +
                               s.layer.fused_block + "experts.";
    out.emplace_back(prefix + "base_layer.lora_A.weight", a_gu.contiguous());
    out.emplace_back(prefix + "base_layer.lora_B.weight", b_gu.reshape({2 * F, r * E}).contiguous());
    out.emplace_back(prefix + "lora_A.weight", a_d.contiguous());
    out.emplace_back(prefix + "lora_B.weight", b_d.reshape({D, r * E}).contiguous());
  }
}

// adapter_config.json: rank r = 2ρ, lora_alpha = 2α (the scale α/ρ), the family's module and parameter
// names.
nlohmann::json adapter_config(const FamilySpec& s, const model::TransformerOptions& o, int64_t r, bool experts) {
  const LayerNames& n = s.layer;
  const std::string fused = std::string(n.fused_block) + "experts.";
  const std::string module = s.names.module;
  nlohmann::json config = {{"peft_type", "LORA"},
                           {"task_type", nullptr},
                           {"base_model_name_or_path", nullptr},
                           {"r", r},
                           {"lora_alpha", 2.0 * o.moe.lora.alpha},
                           {"lora_dropout", 0.0},
                           {"bias", "none"},
                           {"fan_in_fan_out", false},
                           {"use_rslora", false},
                           {"use_dora", false},
                           {"init_lora_weights", true},
                           {"inference_mode", true},
                           {"target_modules", nlohmann::json::array()},
                           {"target_parameters",
                            experts ? nlohmann::json{fused + n.fused_gate_up, fused + n.fused_down}
                                    : nlohmann::json::array()},
                           {"rank_pattern", nlohmann::json::object()},
                           {"alpha_pattern", nlohmann::json::object()},
                           {"modules_to_save", nullptr},
                           {"auto_mapping",
                            {{"base_model_class", s.names.architecture},
                             {"parent_library", "transformers.models." + module + ".modeling_" + module}}}};
  if (o.attn_lora.qkv) config["target_modules"] = {n.q, n.k, n.v};
  if (o.attn_lora.out) config["target_modules"].push_back(n.o);
  return config;
}

}  // namespace

PeftAdapter peft_adapter(const FamilySpec& s, const model::TransformerImpl& model) {
  const auto& o = model.options();
  const bool experts = o.moe.lora.rank > 0, attention = o.attn_lora.rank > 0;
  const int64_t rho = experts ? o.moe.lora.rank : o.attn_lora.rank;
  if (rho <= 0)
    throw std::invalid_argument(
        "the checkpoint has no LoRA adapters (finetune.lora.rank = 0): export the model without an adapter");
  PeftAdapter out;
  if (attention) add_attention_adapters(s, model, rho, out.tensors);
  if (experts) add_expert_adapters(s, model, rho, out.tensors);
  out.config = adapter_config(s, o, 2 * rho, experts);
  return out;
}

PeftAdapter peft_adapter(Family family, const model::TransformerImpl& model) {
  return peft_adapter(spec(family), model);
}

void write_peft_adapter(const PeftAdapter& adapter, const std::string& dir) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/adapter_config.json") << adapter.config.dump(2) << "\n";
  io::write_file_synced(dir + "/adapter_model.safetensors",
                        io::encode_safetensors(adapter.tensors, {{"format", "pt"}}));
}

}  // namespace moetrain::hf
