#include "parallel/grad_sync.h"

#include "csrc/util/fault_injection.h"

namespace moetrain::parallel {
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

void sync_gradients(model::TransformerImpl& model, ProcessMesh& mesh) {
  std::vector<torch::Tensor> dense, expert, partial;
  for (auto& p : model::roled_parameters(model)) {
    if (!p.tensor.requires_grad()) continue;  // frozen (fine-tuning)
    if (!p.tensor.grad().defined()) p.tensor.mutable_grad() = torch::zeros_like(p.tensor);
    (p.role.expert ? expert : dense).push_back(p.tensor.mutable_grad());
    if (p.role.tp_partial_grad) partial.push_back(p.tensor.mutable_grad());
  }
  if (mesh.tp().size() > 1) all_reduce_mean_bucket(partial, mesh.tp(), 1.0);  // shares of the gradient: sum
  util::inject_fault(util::FaultPoint::kGradSync);  // after the tensor-parallel sums, before the data-parallel means
  const double dp = mesh.sizes().dp();
  if (mesh.dp().size() > 1) all_reduce_mean_bucket(dense, mesh.dp(), dp);
  if (mesh.expert_dp().size() > 1 || dp > 1) all_reduce_mean_bucket(expert, mesh.expert_dp(), dp);
}

torch::Tensor global_grad_norm(model::TransformerImpl& model, ProcessMesh& mesh) {
  const auto params = model::roled_parameters(model);
  torch::Device device(torch::kCPU);
  for (const auto& p : params) {
    if (p.tensor.grad().defined()) device = p.tensor.grad().device();
  }
  const auto f64 = torch::TensorOptions(device).dtype(torch::kFloat64);
  auto replicated_sq = torch::zeros({1}, f64), tp_sq = torch::zeros({1}, f64),
       expert_sq = torch::zeros({1}, f64);
  for (const auto& p : params) {
    if (!p.tensor.grad().defined()) continue;
    auto sq = p.tensor.grad().to(torch::kFloat64).square().sum();
    (p.role.expert ? expert_sq : p.role.tensor_parallel ? tp_sq : replicated_sq) += sq;
  }
  return grad_norm_from_squares(replicated_sq, tp_sq, expert_sq, mesh);
}

torch::Tensor grad_norm_from_squares(const torch::Tensor& replicated_sq, torch::Tensor tp_sq,
                                     torch::Tensor expert_sq, ProcessMesh& mesh) {
  if (mesh.tp().size() > 1) mesh.tp().all_reduce_sum(tp_sq);
  if (mesh.ep().size() > 1) mesh.ep().all_reduce_sum(expert_sq);
  if (mesh.expert_tp().size() > 1) mesh.expert_tp().all_reduce_sum(expert_sq);
  return (replicated_sq + tp_sq + expert_sq).sqrt().squeeze(0);
}

void sum_over_dp(torch::Tensor& t, ProcessMesh& mesh) {
  if (mesh.dp().size() > 1) mesh.dp().all_reduce_sum(t);
}

void sum_over_world(torch::Tensor& t, ProcessMesh& mesh) {
  if (mesh.world().size() > 1) mesh.world().all_reduce_sum(t);
}

}  // namespace moetrain::parallel
