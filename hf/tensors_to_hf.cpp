// Export, tensor side: a one-process model's weights under a family's names (family_spec.h's LayerNames),
// per-expert layout, in file order.
#include <stdexcept>

#include "hf/family_spec.h"
#include "hf/weights.h"

namespace moetrain::hf {
namespace {

// Appends the tensors of one layer. `ours`: "layers.L.", `hf`: "model.layers.L.".
struct LayerWriter {
  const FamilySpec& s;
  const model::TransformerImpl& model;
  const std::string ours, hf;
  io::NamedTensors& out;

  torch::Tensor ours_(const std::string& name) const { return parameter(model, ours + name); }
  void put(const std::string& name, torch::Tensor t) { out.emplace_back(hf + name, std::move(t)); }

  // Norms, q/k/v (+ biases, q/k norms), o.
  void attention() {
    const auto& o = model.options();
    const LayerNames& n = s.layer;
    const std::string at = n.attention;
    put(n.input_norm, ours_("attn_norm.weight"));
    const auto qkv = split_qkv(ours_("attn.wqkv.weight"), o.num_heads, o.attention().kv_heads());
    put(at + n.q + ".weight", qkv.q);
    put(at + n.k + ".weight", qkv.k);
    put(at + n.v + ".weight", qkv.v);
    if (s.qkv_bias_key) {  // the family always has the biases: the model's, or zeros
      const torch::Tensor* bias = model.named_parameters().find(ours + "attn.wqkv.bias");
      const auto b = bias ? split_qkv(bias->detach(), o.num_heads, o.attention().kv_heads())
                          : QkvParts{torch::zeros({qkv.q.size(0)}), torch::zeros({qkv.k.size(0)}),
                                     torch::zeros({qkv.v.size(0)})};
      put(at + n.q + ".bias", b.q);
      put(at + n.k + ".bias", b.k);
      put(at + n.v + ".bias", b.v);
    }
    if (s.qk_norm != config::ModelConfig::NO_QK_NORM) {
      put(at + n.q_norm, ours_("attn.q_norm.weight"));
      put(at + n.k_norm, ours_("attn.k_norm.weight"));
    }
    put(at + n.o + ".weight", ours_("attn.wo.weight"));
    put(n.post_attention_norm, ours_("ffn_norm.weight"));
  }

  // Dense SwiGLU: nn.Linear weights map one to one.
  void dense() {
    const std::string mlp = s.layer.dense;
    put(mlp + "gate_proj.weight", ours_("mlp.w1.weight"));
    put(mlp + "up_proj.weight", ours_("mlp.w3.weight"));
    put(mlp + "down_proj.weight", ours_("mlp.w2.weight"));
  }

  // Router and experts. Ours: x·W with W (E, in, out); Hugging Face's nn.Linear: x·Wᵀ with W (out, in).
  void moe(int64_t layer) {
    const LayerNames& n = s.layer;
    const std::string block = n.moe_block;
    put(block + "gate.weight", ours_("moe.router.weight"));
    const ExpertWeights w = expert_weights(model, layer);  // LoRA adapters merged beforehand (merge_adapters)
    for (int64_t e = 0; e < w.w1_EDF.size(0); ++e) {
      const std::string ex = block + "experts." + std::to_string(e) + ".";
      put(ex + n.expert_gate + ".weight", w.w1_EDF[e].t().contiguous());
      put(ex + n.expert_up + ".weight", w.w3_EDF[e].t().contiguous());
      put(ex + n.expert_down + ".weight", w.w2_EFD[e].t().contiguous());
    }
    if (s.shared_expert.size_key) shared(block);
  }

  // The gated shared expert. Ungated: sigmoid(0) = 1/2 times a doubled down projection, both powers of two,
  // so exact; none: all zeros of the spec's empty size.
  void shared(const std::string& block) {
    const auto& o = model.options();
    const int64_t D = o.d_model;
    const std::string sh = block + s.shared_expert.prefix, gate = block + s.shared_expert.gate;
    if (o.moe.shared_hidden > 0) {
      const bool gated = o.moe.shared_gate;
      put(sh + "gate_proj.weight", ours_("moe.shared.w1.weight"));
      put(sh + "up_proj.weight", ours_("moe.shared.w3.weight"));
      const auto down = ours_("moe.shared.w2.weight");
      put(sh + "down_proj.weight", gated ? down : down * 2);
      put(gate, gated ? ours_("moe.shared_gate.weight") : torch::zeros({1, D}));
    } else {
      const int64_t Fs = s.shared_expert.empty_size;
      put(sh + "gate_proj.weight", torch::zeros({Fs, D}));
      put(sh + "up_proj.weight", torch::zeros({Fs, D}));
      put(sh + "down_proj.weight", torch::zeros({D, Fs}));
      put(gate, torch::zeros({1, D}));
    }
  }
};

// Throws unless the layer's attention adapters are merged (zero B).
void require_merged_attention(const model::TransformerImpl& model, const std::string& ours) {
  const auto params = model.named_parameters();
  for (const char* b : {"attn.qkv_lora_b", "attn.out_lora_b"}) {
    const torch::Tensor* t = params.find(ours + b);
    if (t && t->abs().max().item<double>() != 0) {
      throw std::logic_error(ours + b + " is an unmerged LoRA adapter; call hf::merge_adapters first");
    }
  }
}

}  // namespace

io::NamedTensors export_tensors(const FamilySpec& s, const model::TransformerImpl& model) {
  const auto& o = model.options();
  require_one_process(model, "export_tensors");
  io::NamedTensors out;
  out.emplace_back("model.embed_tokens.weight", parameter(model, "embed.weight"));
  for (int64_t l = 0; l < o.num_layers; ++l) {
    LayerWriter layer{s, model, "layers." + std::to_string(l) + ".",
                      "model.layers." + std::to_string(l) + ".", out};
    require_merged_attention(model, layer.ours);
    layer.attention();
    if (o.is_moe.at(l)) {
      layer.moe(l);
    } else {
      layer.dense();
    }
  }
  out.emplace_back("model.norm.weight", parameter(model, "norm.weight"));
  if (!o.tie_embeddings) out.emplace_back("lm_head.weight", parameter(model, "lm_head.weight"));
  return out;
}

}  // namespace moetrain::hf
