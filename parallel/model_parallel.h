// The one place a model learns of other processes: tensor parallelism (csrc/layers/tensor_parallel_ops.h)
// and the MoE layers' parallel context (csrc/moe/parallel_context.h), both over the process mesh.
#pragma once

#include <memory>

#include "csrc/model/transformer.h"
#include "csrc/moe/parallel_context.h"
#include "parallel/mesh.h"
#include "parallel/tensor_parallel.h"

namespace moetrain::parallel {

// MoE layers over the mesh's groups. Each group may be null (absent): ep and expert_tp groups absent or
// of size 1 dispatch locally; no tp group means each rank routes whole micro-batches; no world is one process.
class MeshMoEContext : public moe::MoEParallelContext {
 public:
  MeshMoEContext(Communicator* ep_group, Communicator* expert_tp_group, Communicator* tp_group,
                 Communicator* world);
  int64_t micro_batch_ranks() const override { return tp_ ? tp_->size() : 1; }
  int64_t global_batch_ranks() const override { return world_ ? world_->size() : 1; }
  torch::Tensor sum_over_micro_batch(const torch::Tensor& t) const override;
  torch::Tensor sum_over_global_batch(const torch::Tensor& t) const override;
  std::shared_ptr<moe::TokenDispatcher> make_dispatcher(int64_t num_experts) const override;

 private:
  Communicator *ep_, *etp_, *tp_, *world_;
};

struct ModelParallelism {
  std::shared_ptr<TensorParallel> tensor_parallel;     // null unless tp > 1
  std::shared_ptr<const moe::MoEParallelContext> moe;  // never null (one process without a mesh)
};

// Installs both in `model` (built for the mesh's sizes: TransformerOptions::from_recipe with its ep and tp
// ranks) and returns them. mesh null: one process, nothing installed. Collective-free.
ModelParallelism parallelize(model::TransformerImpl& model, ProcessMesh* mesh);

}  // namespace moetrain::parallel
