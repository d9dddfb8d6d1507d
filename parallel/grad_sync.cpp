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

bool is_tensor_parallel_parameter(const std::string& name) {
  return name.find(".attn.wqkv.") != std::string::npos || name.find(".attn.wo.") != std::string::npos ||
         name.find(".mlp.") != std::string::npos || name == "embed.weight" || name == "lm_head.weight";
}

namespace {
bool is_moe_parameter(const std::string& name) { return name.find(".moe.") != std::string::npos; }
}  // namespace

void sync_gradients(torch::nn::Module& model, ProcessMesh& mesh) {
  std::vector<torch::Tensor> dense, expert, moe;
  for (auto& p : model.named_parameters()) {
    if (!p.value().requires_grad()) continue;  // frozen (fine-tuning)
    if (!p.value().grad().defined()) p.value().mutable_grad() = torch::zeros_like(p.value());
    (is_expert_parameter(p.key()) ? expert : dense).push_back(p.value().mutable_grad());
    if (is_moe_parameter(p.key())) moe.push_back(p.value().mutable_grad());
  }
  if (mesh.tp().size() > 1) all_reduce_mean_bucket(moe, mesh.tp(), 1.0);  // sequence-parallel MoE: sum
  const double dp = mesh.sizes().dp();
  if (mesh.dp().size() > 1) all_reduce_mean_bucket(dense, mesh.dp(), dp);
  if (mesh.expert_dp().size() > 1 || dp > 1) all_reduce_mean_bucket(expert, mesh.expert_dp(), dp);
}

double global_grad_norm(torch::nn::Module& model, ProcessMesh& mesh) {
  auto replicated_sq = torch::zeros({1}, torch::kFloat64), tp_sq = torch::zeros({1}, torch::kFloat64),
       expert_sq = torch::zeros({1}, torch::kFloat64);
  for (auto& p : model.named_parameters()) {
    if (!p.value().grad().defined()) continue;
    auto sq = p.value().grad().to(torch::kFloat64).square().sum();
    (is_expert_parameter(p.key()) ? expert_sq : is_tensor_parallel_parameter(p.key()) ? tp_sq : replicated_sq) += sq;
  }
  if (mesh.tp().size() > 1) mesh.tp().all_reduce_sum(tp_sq);
  if (mesh.ep().size() > 1) mesh.ep().all_reduce_sum(expert_sq);
  return std::sqrt((replicated_sq + tp_sq + expert_sq).item<double>());
}

void sum_over_dp(torch::Tensor& t, ProcessMesh& mesh) {
  if (mesh.dp().size() > 1) mesh.dp().all_reduce_sum(t);
}

void sum_over_world(torch::Tensor& t, ProcessMesh& mesh) {
  if (mesh.world().size() > 1) mesh.world().all_reduce_sum(t);
}

}  // namespace moetrain::parallel
