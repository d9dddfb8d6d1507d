#include "parallel/grad_buckets.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include "csrc/model/sharding.h"
#include "csrc/util/fault_injection.h"
#include "parallel/grad_sync.h"

namespace moetrain::parallel {

struct GradBuckets::Bucket {
  Communicator* group = nullptr;  // dp (dense) or expert_dp (experts)
  std::vector<torch::Tensor> params;
  int64_t elements = 0;
  size_t waiting = 0;  // parameters of this bucket whose final gradient has not arrived this step
  torch::Tensor flat;  // (elements,): the parameters' gradients, back to back, reduced in place
  std::vector<torch::Tensor> views;  // views[i]: params[i]'s gradient, a view of flat shaped like it
  std::unique_ptr<Work> work;        // null when the group has one rank
};

// Called by autograd once a parameter's gradient has been accumulated in this backward.
class GradBuckets::Hook : public torch::autograd::PostAccumulateGradHook {
 public:
  Hook(GradBuckets* owner, size_t bucket) : owner_(owner), bucket_(bucket) {}
  void operator()(const torch::autograd::Variable&) override { owner_->gradient_final(bucket_); }

 private:
  GradBuckets* owner_;
  size_t bucket_;
};

GradBuckets::GradBuckets(model::TransformerImpl& model, ProcessMesh& mesh, double bucket_mb) : mesh_(mesh) {
  const int64_t limit = std::max<int64_t>(1, static_cast<int64_t>(bucket_mb * 1024 * 1024 / 4));  // fp32 elements
  auto roled = model::roled_parameters(model);
  const bool tp = mesh.tp().size() > 1;
  // The bucket being filled for each group, closed (appended to buckets_) when full.
  std::unique_ptr<Bucket> open[2];
  Communicator* groups[2] = {&mesh.dp(), &mesh.expert_dp()};
  for (const auto& p : roled) {  // in registration order, as sync_gradients concatenates them
    if (p.tensor.requires_grad() && tp && p.role.tp_partial_grad)
      partial_.push_back(p.tensor);  // never experts
  }
  for (auto it = roled.rbegin(); it != roled.rend(); ++it) {
    if (!it->tensor.requires_grad()) continue;  // frozen (fine-tuning)
    if (tp && it->role.tp_partial_grad) continue;
    const int g = it->role.expert ? 1 : 0;
    if (open[g] && (open[g]->params.front().dtype() != it->tensor.dtype() ||
                    open[g]->params.front().device() != it->tensor.device()))
      buckets_.push_back(std::move(open[g]));  // a bucket holds one dtype on one device
    if (!open[g]) open[g] = std::make_unique<Bucket>(), open[g]->group = groups[g];
    open[g]->params.push_back(it->tensor);
    open[g]->elements += it->tensor.numel();
    if (open[g]->elements >= limit) buckets_.push_back(std::move(open[g]));
  }
  for (auto& b : open) {
    if (b) buckets_.push_back(std::move(b));
  }
  torch::NoGradGuard no_grad;
  for (auto& b : buckets_) {
    b->flat = torch::zeros({b->elements}, b->params.front().options());
    int64_t offset = 0;
    for (auto& p : b->params) {
      b->views.push_back(b->flat.narrow(0, offset, p.numel()).view_as(p));
      offset += p.numel();
    }
    point_grads_at_buffers(*b);
  }
  copies_ = 0;  // gradients that existed before are not the step's copies
  for (size_t i = 0; i < buckets_.size(); ++i) {
    for (auto& p : buckets_[i]->params) {
      torch::autograd::impl::set_post_acc_grad_hooks(p, std::make_unique<Hook>(this, i));
      hooked_.push_back(p);
    }
    buckets_[i]->waiting = buckets_[i]->params.size();
  }
}

GradBuckets::~GradBuckets() {
  for (auto& p : hooked_) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
}

void GradBuckets::arm() { armed_ = true; }

void GradBuckets::gradient_final(size_t bucket) {
  if (!armed_) return;  // an earlier micro-batch: the gradient is still accumulating
  Bucket& b = *buckets_[bucket];
  if (b.waiting > 0) --b.waiting;
  start_ready_buckets();
  // MPI progresses a non-blocking collective only inside MPI calls: poll the ones in flight.
  for (size_t i = 0; i < next_; ++i) {
    if (buckets_[i]->work) buckets_[i]->work->completed();
  }
}

void GradBuckets::start_ready_buckets() {
  for (; next_ < buckets_.size() && buckets_[next_]->waiting == 0; ++started_in_backward_)
    start(*buckets_[next_++]);
}

void GradBuckets::point_grads_at_buffers(Bucket& b) {
  for (size_t i = 0; i < b.params.size(); ++i) {
    const torch::Tensor& grad = b.params[i].grad();
    if (grad.defined() && grad.data_ptr() == b.views[i].data_ptr()) continue;
    if (grad.defined()) b.views[i].copy_(grad);
    b.params[i].mutable_grad() = b.views[i];
    ++copies_;
  }
}

void GradBuckets::start(Bucket& b) {
  point_grads_at_buffers(b);  // in training a no-op: autograd accumulated into the views
  if (b.group->size() > 1) b.work = b.group->all_reduce_sum_async(b.flat);
}

void GradBuckets::zero_grad() {
  torch::NoGradGuard no_grad;
  for (auto& b : buckets_) {
    b->flat.zero_();
    const int64_t before = copies_;
    point_grads_at_buffers(*b);  // the optimizer or a checkpoint load may have set .grad elsewhere
    copies_ = before;
  }
  for (auto& p : partial_) p.mutable_grad() = torch::Tensor();
}

int64_t GradBuckets::finish() {
  armed_ = false;
  const int64_t in_backward = started_in_backward_;
  started_in_backward_ = 0;
  util::inject_fault(util::FaultPoint::kGradSync);
  // What backward left: buckets with a parameter that got no gradient, in order.
  for (; next_ < buckets_.size(); ++next_) start(*buckets_[next_]);
  const double dp = mesh_.sizes().dp();
  for (auto& b : buckets_) {
    if (b->work) b->work->wait();
    b->work.reset();
    b->flat.div_(dp);  // the .grad views now hold the means
    b->waiting = b->params.size();
  }
  next_ = 0;
  // Tensor-parallel shares: the sum over tp first, then the mean over their data-parallel group.
  std::vector<torch::Tensor> shares;
  for (auto& p : partial_) {
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    shares.push_back(p.mutable_grad());
  }
  if (shares.empty()) return in_backward;
  all_reduce_mean_bucket(shares, mesh_.tp(), 1.0);
  if (mesh_.dp().size() > 1) all_reduce_mean_bucket(shares, mesh_.dp(), dp);
  return in_backward;
}

}  // namespace moetrain::parallel
