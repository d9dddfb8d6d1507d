#include "trainer/optimizer.h"

#include <cmath>

#include "parallel/grad_sync.h"

namespace moetrain::trainer {

std::unique_ptr<torch::optim::AdamW> make_optimizer(torch::nn::Module& model, const config::OptimizerConfig& o) {
  std::vector<torch::Tensor> decay, no_decay;
  for (auto& p : model.parameters()) {
    if (p.requires_grad()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  }
  auto options = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(o.lr())
                                                            .betas({o.beta1(), o.beta2()})
                                                            .eps(o.eps())
                                                            .weight_decay(wd));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, options(o.weight_decay()));
  groups.emplace_back(no_decay, options(0.0));
  return std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(o.lr()));
}

double clip_gradients(torch::nn::Module& model, double max_norm, parallel::ProcessMesh* mesh) {
  double norm;
  if (mesh) {
    norm = parallel::global_grad_norm(model, *mesh);
  } else {
    auto sq = torch::zeros({}, torch::kFloat64);
    for (auto& p : model.parameters())
      if (p.grad().defined()) sq += p.grad().to(torch::kFloat64).square().sum();
    norm = std::sqrt(sq.item<double>());
  }
  if (norm > max_norm) {
    torch::NoGradGuard no_grad;
    const double coef = max_norm / (norm + 1e-6);
    for (auto& p : model.parameters())
      if (p.grad().defined()) p.mutable_grad().mul_(coef);
  }
  return norm;
}

}  // namespace moetrain::trainer
