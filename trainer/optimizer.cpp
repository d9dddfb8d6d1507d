#include "trainer/optimizer.h"

#include <cmath>


namespace moetrain::trainer {

std::unique_ptr<torch::optim::AdamW> make_optimizer(torch::nn::Module& model, const config::OptimizerConfig& o) {
  std::vector<torch::Tensor> decay, no_decay;
  for (auto& p : model.parameters()) {
    if (p.requires_grad()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  }
  auto options = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(o.lr()).betas({o.beta1(), o.beta2()}).eps(o.eps()).weight_decay(wd));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, options(o.weight_decay()));
  groups.emplace_back(no_decay, options(0.0));
  return std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(o.lr()));
}

torch::Tensor local_grad_norm(torch::nn::Module& model) {
  torch::Tensor sq;
  for (auto& p : model.parameters()) {
    if (!p.grad().defined()) continue;
    auto s = p.grad().to(torch::kFloat64).square().sum();
    sq = sq.defined() ? sq + s : s;
  }
  return sq.defined() ? sq.sqrt() : torch::zeros({}, torch::kFloat64);
}

void clip_gradients(torch::nn::Module& model, double max_norm, const torch::Tensor& norm) {
  if (!std::isfinite(max_norm)) return;
  torch::NoGradGuard no_grad;
  const auto coef = (max_norm / (norm + 1e-6)).clamp_max(1.0);  // 1 (exactly) when the norm is below max_norm
  for (auto& p : model.parameters())
    if (p.grad().defined()) p.mutable_grad().mul_(coef.to(p.grad().scalar_type()));
}

}  // namespace moetrain::trainer
