#include "parallel/model_parallel.h"

#include "parallel/alltoall_dispatcher.h"

namespace moetrain::parallel {
namespace {

torch::Tensor sum_copy(Communicator* group, const torch::Tensor& t) {
  if (!group || group->size() == 1) return t;
  auto out = t.contiguous().clone();
  group->all_reduce_sum(out);
  return out;
}

}  // namespace

MeshMoEContext::MeshMoEContext(Communicator* ep_group, Communicator* expert_tp_group, Communicator* tp_group,
                               Communicator* world)
    : ep_(ep_group), etp_(expert_tp_group), tp_(tp_group), world_(world) {}

torch::Tensor MeshMoEContext::sum_over_micro_batch(const torch::Tensor& t) const { return sum_copy(tp_, t); }

torch::Tensor MeshMoEContext::sum_over_global_batch(const torch::Tensor& t) const {
  return sum_copy(world_, t);
}

std::shared_ptr<moe::TokenDispatcher> MeshMoEContext::make_dispatcher(int64_t num_experts) const {
  const bool expert_tp = etp_ && etp_->size() > 1;
  if (!ep_ || (ep_->size() == 1 && !expert_tp)) return MoEParallelContext::make_dispatcher(num_experts);
  return std::make_shared<AllToAllDispatcher>(*ep_, etp_, num_experts);
}

ModelParallelism parallelize(model::TransformerImpl& model, ProcessMesh* mesh) {
  ModelParallelism out;
  if (!mesh) {
    out.moe = std::make_shared<moe::MoEParallelContext>();
    return out;
  }
  const bool tp = mesh->sizes().tp > 1;
  if (tp) {
    out.tensor_parallel = std::make_shared<TensorParallel>(mesh->tp());
    model.set_tensor_parallel(out.tensor_parallel);
  }
  out.moe = std::make_shared<MeshMoEContext>(&mesh->ep(), &mesh->expert_tp(), tp ? &mesh->tp() : nullptr,
                                             &mesh->world());
  for (auto& layer : model.moe_layers()) layer->set_parallel_context(out.moe);
  return out;
}

}  // namespace moetrain::parallel
