#include "hf/export_rules.h"

#include <sstream>

namespace moetrain::hf {

using config::RoutingConfig;

std::string number_text(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

std::string join(const std::vector<int64_t>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  return out;
}

std::string moe_layers_field(const config::ModelConfig& m) {
  if (m.moe_layers_size() > 0)
    return "model.moe_layers = [" + join({m.moe_layers().begin(), m.moe_layers().end()}) + "]";
  return "model.moe_layer_freq = " + std::to_string(m.moe_layer_freq());
}

std::vector<int64_t> dense_layers(const model::TransformerImpl& model) {
  std::vector<int64_t> out;
  for (size_t l = 0; l < model.options().is_moe.size(); ++l)
    if (!model.options().is_moe[l]) out.push_back(static_cast<int64_t>(l));
  return out;
}

std::vector<std::string> routing_problems(const config::Recipe& recipe, const model::TransformerImpl& model,
                                          const std::string& target) {
  const auto& r = recipe.routing();
  std::vector<std::string> out;
  if (r.router_type() != RoutingConfig::TOPK) {
    out.push_back("routing.router_type = " + RoutingConfig::RouterType_Name(r.router_type()) + ": " + target +
                  " routes every token to its top-k experts by a learned linear router (TOPK)");
  }
  if (r.score_function() != RoutingConfig::SOFTMAX) {
    out.push_back("routing.score_function = " + RoutingConfig::ScoreFunction_Name(r.score_function()) + ": " +
                  target + " scores experts with a softmax over all experts (SOFTMAX)");
  }
  if (r.gate_scale() != 1.0) {
    out.push_back("routing.gate_scale = " + number_text(r.gate_scale()) + ": " + target +
                  " applies no gate scaling factor; it supports 1");
  }
  if (r.num_groups() > 1) {
    out.push_back("routing.num_groups = " + std::to_string(r.num_groups()) + ": " + target +
                  " has no group-limited routing; every token may use any expert (num_groups 0)");
  }
  // Aux-loss-free balancing adds a per-expert bias to the selection scores: these routers have none.
  std::vector<int64_t> biased;
  double max_bias = 0;
  const auto buffers = model.named_buffers();
  for (size_t l = 0; l < model.options().is_moe.size(); ++l) {
    if (!model.options().is_moe[l]) continue;
    const torch::Tensor* b = buffers.find("layers." + std::to_string(l) + ".moe.router.expert_bias");
    if (b && b->numel() > 0) {
      const double m_abs = b->abs().max().item<double>();
      if (m_abs != 0) biased.push_back(static_cast<int64_t>(l)), max_bias = std::max(max_bias, m_abs);
    }
  }
  if (!biased.empty()) {
    out.push_back("routing.bias_update_rate = " + number_text(r.bias_update_rate()) +
                  ": the expert selection biases of layers " + join(biased) + " are non-zero (max |bias| " +
                  number_text(max_bias) + ") and change which experts tokens select; " + target +
                  "'s router has no selection bias (export a model trained with bias_update_rate 0)");
  }
  return out;
}

std::vector<std::string> export_notes(const config::Recipe& recipe, const std::string& target, bool merged) {
  std::vector<std::string> out;
  const auto& lora = recipe.finetune().lora();
  if (lora.rank() > 0 && merged) {
    out.push_back("finetune.lora.rank = " + std::to_string(lora.rank()) +
                  ": the adapters are merged into the weights they adapt (W + alpha/rank·A·B); --adapter-out DIR "
                  "writes the base model and a PEFT adapter instead");
  }
  if (recipe.routing().eval_capacity_factor() > 0) {
    out.push_back("routing.eval_capacity_factor = " + number_text(recipe.routing().eval_capacity_factor()) +
                  ": moetrain evaluates this recipe with an expert capacity, " + target +
                  " is dropless; its outputs equal moetrain's with eval_capacity_factor 0");
  }
  return out;
}

}  // namespace moetrain::hf
