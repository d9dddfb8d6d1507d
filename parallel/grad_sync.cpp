#include "parallel/grad_sync.h"

namespace moetrain::parallel {
namespace {

void all_reduce_mean_bucket(std::vector<torch::Tensor>& grads, Communicator& group, double divisor) {
  if (grads.empty()) return;
  std::vector<torch::Tensor> flat;
  for (auto& g : grads) flat.push_back(g.reshape({-1}));
  auto bucket = torch::cat(flat);
  group.all_reduce_sum(bucket);
  bucket.div_(divisor);
  int64_t offset = 0;
  for (auto& g : grads) {
    g.copy_(bucket.narrow(0, offset, g.numel()).view_as(g));
    offset += g.numel();
  }
}

}  // namespace

bool is_expert_parameter(const std::string& name) { return name.find(".experts.") != std::string::npos; }

void sync_gradients(torch::nn::Module& model, ProcessMesh& mesh) {
  std::vector<torch::Tensor> dense, expert;
  for (auto& p : model.named_parameters()) {
    if (!p.value().grad().defined()) p.value().mutable_grad() = torch::zeros_like(p.value());
    (is_expert_parameter(p.key()) ? expert : dense).push_back(p.value().mutable_grad());
  }
  const double dp = mesh.sizes().dp();
  if (mesh.dp().size() > 1) all_reduce_mean_bucket(dense, mesh.dp(), dp);
  if (mesh.expert_dp().size() > 1 || dp > 1) all_reduce_mean_bucket(expert, mesh.expert_dp(), dp);
}

double global_grad_norm(torch::nn::Module& model, ProcessMesh& mesh) {
  auto dense_sq = torch::zeros({1}, torch::kFloat64), expert_sq = torch::zeros({1}, torch::kFloat64);
  for (auto& p : model.named_parameters()) {
    if (!p.value().grad().defined()) continue;
    auto sq = p.value().grad().to(torch::kFloat64).square().sum();
    (is_expert_parameter(p.key()) ? expert_sq : dense_sq) += sq;
  }
  if (mesh.ep().size() > 1) mesh.ep().all_reduce_sum(expert_sq);
  return std::sqrt((dense_sq + expert_sq).item<double>());
}

void sum_over_dp(torch::Tensor& t, ProcessMesh& mesh) {
  if (mesh.dp().size() > 1) mesh.dp().all_reduce_sum(t);
}

}  // namespace moetrain::parallel
