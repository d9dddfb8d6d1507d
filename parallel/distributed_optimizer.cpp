#include "parallel/distributed_optimizer.h"

#include <algorithm>
#include <cmath>

#include "csrc/util/fault_injection.h"
#include "parallel/grad_sync.h"

namespace moetrain::parallel {

FlatRange shard_range(int64_t n, int64_t d, int64_t r) {
  const int64_t s = (n + d - 1) / d;
  const int64_t begin = std::min(r * s, n);
  return {begin, std::min(begin + s, n)};
}

namespace {
void add_boxes(const std::vector<int64_t>& shape, size_t dim, int64_t begin, int64_t end,
               std::vector<int64_t> prefix, std::vector<FlatBox>& out) {
  if (begin >= end) return;
  const int64_t dims = static_cast<int64_t>(shape.size());
  auto box = [&](int64_t first_row, int64_t rows) {  // rows [first_row, +rows) of this dim, whole below it
    FlatBox b;
    b.offsets = prefix, b.sizes.assign(prefix.size(), 1);
    b.offsets.push_back(first_row), b.sizes.push_back(rows);
    for (int64_t d = static_cast<int64_t>(dim) + 1; d < dims; ++d)
      b.offsets.push_back(0), b.sizes.push_back(shape[d]);
    out.push_back(b);
  };
  if (dim + 1 == shape.size()) return box(begin, end - begin);
  int64_t inner = 1;
  for (size_t d = dim + 1; d < shape.size(); ++d) inner *= shape[d];
  int64_t first = begin / inner;
  const int64_t last = end / inner;  // rows [first, last) may be whole
  auto within_row = [&](int64_t row, int64_t lo, int64_t hi) {
    auto p = prefix;
    p.push_back(row);
    add_boxes(shape, dim + 1, lo, hi, p, out);
  };
  if (first == last) return within_row(first, begin - first * inner, end - first * inner);
  if (begin % inner != 0) within_row(first, begin % inner, inner), ++first;
  if (last > first) box(first, last - first);
  if (end % inner != 0) within_row(last, 0, end % inner);
}
}  // namespace

std::vector<FlatBox> flat_range_boxes(const std::vector<int64_t>& shape, int64_t begin, int64_t end) {
  std::vector<FlatBox> out;
  if (shape.empty()) {  // a scalar: one element
    if (begin < end) out.push_back({});
    return out;
  }
  add_boxes(shape, 0, begin, end, {}, out);
  return out;
}

DistributedOptimizer::DistributedOptimizer(model::TransformerImpl& model, ProcessMesh& mesh,
                                           const config::OptimizerConfig& o)
    : mesh_(mesh),
      lr_(o.lr()),
      beta1_(o.beta1()),
      beta2_(o.beta2()),
      eps_(o.eps()),
      weight_decay_(o.weight_decay()) {
  groups_.resize(2);
  groups_[0].comm = &mesh.dp();
  groups_[1].comm = &mesh.expert_dp();
  for (auto& p : model::roled_parameters(model)) {
    if (!p.tensor.requires_grad()) continue;  // frozen (fine-tuning): no state
    TORCH_CHECK(p.tensor.scalar_type() == torch::kFloat32, "optimizer.distributed: parameter ", p.name,
                " is ", p.tensor.scalar_type(), "; the distributed optimizer keeps fp32 parameters");
    Group& g = groups_[p.role.expert ? 1 : 0];
    g.members.push_back({p.name, p.tensor, p.role, g.numel, p.tensor.dim() >= 2, false, {}});
    g.numel += p.tensor.numel();
    if (p.role.tp_partial_grad) partial_.push_back(p.tensor);
  }
  for (auto& g : groups_) {
    const int64_t d = g.comm->size();
    g.shard_size = (g.numel + d - 1) / d;
    g.shard = shard_range(g.numel, d, g.comm->rank());
  }
}

std::vector<DistributedOptimizer::Segment> DistributedOptimizer::segments(const Group& g) {
  std::vector<Segment> out;
  for (const auto& m : g.members) {
    const int64_t lo = std::max(m.offset, g.shard.begin);
    const int64_t hi = std::min(m.offset + m.param.numel(), g.shard.end);
    if (lo < hi) out.push_back({&m, lo - m.offset, hi - lo, lo - g.shard.begin});
  }
  return out;
}

void DistributedOptimizer::hold_params_in_bf16(
    const std::function<bool(const std::string&, const torch::Tensor&)>& in_bf16, bool reduce_in_bf16) {
  torch::NoGradGuard no_grad;
  bf16_params_ = true, reduce_in_bf16_ = reduce_in_bf16;
  for (auto& g : groups_) {
    if (g.members.empty()) continue;
    g.master = torch::zeros({g.shard_size}, g.members[0].param.options());
    for (const auto& s : segments(g))
      g.master.narrow(0, s.at, s.count).copy_(s.member->param.detach().reshape({-1}).narrow(0, s.begin, s.count));
    for (auto& m : g.members) {
      if (!in_bf16(m.name, m.param)) continue;
      m.param.set_data(m.param.detach().to(torch::kBFloat16));  // the fp32 storage is released here
      m.bf16 = true;
    }
  }
}

void DistributedOptimizer::accumulate_gradients() {
  if (!bf16_params_ || reduce_in_bf16_) return;
  torch::NoGradGuard no_grad;
  for (auto& g : groups_) {
    for (auto& m : g.members) {
      if (!m.bf16 || !m.param.grad().defined()) continue;
      auto grad = m.param.grad().to(torch::kFloat32);
      if (m.grad_sum.defined()) {
        m.grad_sum.add_(grad);
      } else {
        m.grad_sum = grad;
      }
      m.param.mutable_grad() = torch::Tensor();
    }
  }
}

void DistributedOptimizer::reduce_scatter_gradients() {
  torch::NoGradGuard no_grad;
  for (auto& g : groups_) {
    for (auto& m : g.members) {
      if (m.grad_sum.defined()) m.param.mutable_grad() = std::move(m.grad_sum), m.grad_sum = torch::Tensor();
      if (!m.param.grad().defined()) m.param.mutable_grad() = torch::zeros_like(m.param);
    }
  }
  if (mesh_.tp().size() > 1) {  // shares of the gradient: summed over tp first
    std::vector<torch::Tensor> shares;
    for (auto& p : partial_) shares.push_back(p.mutable_grad());
    all_reduce_mean_bucket(shares, mesh_.tp(), 1.0);
  }
  util::inject_fault(util::FaultPoint::kGradSync);
  const double dp = mesh_.sizes().dp();
  for (auto& g : groups_) {
    if (g.members.empty()) continue;
    const int64_t d = g.comm->size();
    // fp32, or bf16 under optimizer.grad_dtype BF16 (fp32 members' gradients cast for the message)
    const auto dtype = reduce_in_bf16_ ? torch::kBFloat16 : torch::kFloat32;
    std::vector<torch::Tensor> flat;
    for (auto& m : g.members) {
      flat.push_back(m.param.grad().reshape({-1}).to(dtype));
    }
    if (g.shard_size * d > g.numel)
      flat.push_back(torch::zeros({g.shard_size * d - g.numel}, flat[0].options()));
    auto all = torch::cat(flat);
    flat.clear();
    for (auto& m : g.members) m.param.mutable_grad() = torch::Tensor();  // only the shard is kept
    g.grad_shard = (d > 1 ? g.comm->reduce_scatter_rows_sum(all) : all).to(torch::kFloat32);
    g.grad_shard.div_(dp);
  }
}

void DistributedOptimizer::shard_reduced_gradients() {
  torch::NoGradGuard no_grad;
  for (auto& g : groups_) {
    if (g.members.empty()) continue;
    std::vector<torch::Tensor> flat;
    for (auto& m : g.members) flat.push_back(m.param.grad().reshape({-1}));
    const int64_t d = g.comm->size();
    if (g.shard_size * d > g.numel)
      flat.push_back(torch::zeros({g.shard_size * d - g.numel}, flat[0].options()));
    g.grad_shard = torch::cat(flat).narrow(0, g.shard.begin, g.shard_size).to(torch::kFloat32).clone();
  }
}

torch::Tensor DistributedOptimizer::grad_norm() {
  torch::Device device(torch::kCPU);
  for (const auto& g : groups_) {
    if (g.grad_shard.defined()) device = g.grad_shard.device();
  }
  const auto f64 = torch::TensorOptions(device).dtype(torch::kFloat64);
  // [replicated, tensor-parallel] squares of the dense shard; the expert shard's.
  auto dense_sq = torch::zeros({2}, f64), expert_sq = torch::zeros({1}, f64);
  for (const auto& g : groups_) {
    for (const auto& s : segments(g)) {
      auto sq = g.grad_shard.narrow(0, s.at, s.count).to(torch::kFloat64).square().sum();
      if (s.member->role.expert) {
        expert_sq += sq;
      } else {
        dense_sq[s.member->role.tensor_parallel ? 1 : 0] += sq;
      }
    }
  }
  if (mesh_.dp().size() > 1) mesh_.dp().all_reduce_sum(dense_sq);  // the shards' sums: the group's whole
  if (mesh_.expert_dp().size() > 1) mesh_.expert_dp().all_reduce_sum(expert_sq);
  return grad_norm_from_squares(dense_sq.narrow(0, 0, 1), dense_sq.narrow(0, 1, 1).clone(), expert_sq, mesh_);
}

void DistributedOptimizer::clip(double max_norm, const torch::Tensor& norm) {
  if (!std::isfinite(max_norm)) return;
  torch::NoGradGuard no_grad;
  const auto coef = (max_norm / (norm + 1e-6)).clamp_max(1.0);  // as trainer::clip_gradients
  for (auto& g : groups_) {
    if (g.grad_shard.defined()) g.grad_shard.mul_(coef.to(g.grad_shard.scalar_type()));
  }
}

void DistributedOptimizer::step() {
  torch::NoGradGuard no_grad;
  ++steps_;
  // torch::optim::AdamW's arithmetic, operation for operation, on this rank's elements.
  const double bias_correction1 = 1 - std::pow(beta1_, steps_);
  const double bias_correction2 = 1 - std::pow(beta2_, steps_);
  const double step_size = lr_ / bias_correction1;
  for (auto& g : groups_) {
    if (g.members.empty()) continue;
    const auto opts = g.members[0].param.options().dtype(torch::kFloat32);
    if (!g.exp_avg.defined()) {
      g.exp_avg = torch::zeros({g.shard_size}, opts);
      g.exp_avg_sq = torch::zeros({g.shard_size}, opts);
    }
    // This rank's elements of the parameters: the fp32 masters, or a copy of the parameters' values.
    auto params = g.master.defined() ? g.master : torch::zeros({g.shard_size}, opts);
    for (const auto& s : segments(g)) {
      auto p = params.narrow(0, s.at, s.count);
      if (!g.master.defined()) p.copy_(s.member->param.detach().reshape({-1}).narrow(0, s.begin, s.count));
      auto grad = g.grad_shard.narrow(0, s.at, s.count);
      auto exp_avg = g.exp_avg.narrow(0, s.at, s.count), exp_avg_sq = g.exp_avg_sq.narrow(0, s.at, s.count);
      p.mul_(1 - lr_ * (s.member->decay ? weight_decay_ : 0.0));
      exp_avg.mul_(beta1_).add_(grad, 1 - beta1_);
      exp_avg_sq.mul_(beta2_).addcmul_(grad, grad, 1 - beta2_);
      auto denom = (exp_avg_sq.sqrt() / std::sqrt(bias_correction2)).add_(eps_);
      p.addcdiv_(exp_avg, denom, -step_size);
    }
    g.grad_shard = torch::Tensor();
    auto all = g.comm->size() > 1 ? g.comm->all_gather_rows(params) : params;
    for (auto& m : g.members) {
      m.param.detach().copy_(all.narrow(0, m.offset, m.param.numel()).view_as(m.param));
    }
  }
}

std::vector<DistributedOptimizer::Piece> DistributedOptimizer::pieces() {
  std::vector<Piece> out;
  for (auto& g : groups_) {
    for (const auto& s : segments(g)) {
      Piece p{s.member->name, s.member->param, s.begin, s.begin + s.count, {}, {}, {}, s.member->bf16};
      if (g.master.defined()) p.master = g.master.narrow(0, s.at, s.count);
      if (g.exp_avg.defined()) {
        p.exp_avg = g.exp_avg.narrow(0, s.at, s.count);
        p.exp_avg_sq = g.exp_avg_sq.narrow(0, s.at, s.count);
      }
      out.push_back(std::move(p));
    }
  }
  return out;
}

void DistributedOptimizer::prepare_to_load(int64_t steps) {
  steps_ = steps;
  for (auto& g : groups_) {
    if (g.members.empty()) continue;
    const auto opts = g.members[0].param.options().dtype(torch::kFloat32);
    g.exp_avg = torch::zeros({g.shard_size}, opts);
    g.exp_avg_sq = torch::zeros({g.shard_size}, opts);
  }
}

int64_t DistributedOptimizer::state_bytes() const {
  int64_t bytes = 0;
  for (const auto& g : groups_) {
    if (g.exp_avg.defined()) bytes += 2 * g.exp_avg.numel() * g.exp_avg.element_size();
    if (g.master.defined()) bytes += g.master.numel() * g.master.element_size();
  }
  return bytes;
}

}  // namespace moetrain::parallel
