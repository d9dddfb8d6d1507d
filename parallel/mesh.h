// The process mesh: two meshes folded onto the same world (MoE parallel folding, as in Megatron-Core).
//   attention mesh: world = TP × DP, rank r = dp_rank · TP + tp_rank (tensor-parallel ranks adjacent, so a
//                   TP group stays inside a node). Attention, dense MLPs, embeddings, router, shared experts.
//   expert mesh:    world = ETP × EP × EDP, r = (edp_rank · EP + ep_rank) · ETP + etp_rank. Each expert's
//                   hidden dimension is split over the ETP ranks (adjacent), experts are sharded over EP,
//                   and each shard is replicated over its expert-data-parallel group (EDP).
// The two are independent: EP need not divide DP (TP 2 × EP 4 on 4 ranks), and an EP group may span
// tensor-parallel ranks, whose tokens (sequence-parallel MoE) it exchanges like any other rank's.
//
//   world 4, TP 1, EP 2:           dp = {0,1,2,3}   ep = {0,1} {2,3}   expert_dp = {0,2} {1,3}
//   world 4, TP 2, EP 2:           tp = {0,1} {2,3}  dp = {0,2} {1,3}  ep = {0,1} {2,3}  expert_dp = {0,2} {1,3}
//   world 4, TP 2, EP 4:           tp = {0,1} {2,3}  dp = {0,2} {1,3}  ep = {0,1,2,3}    expert_dp = singletons
//   world 4, ETP 2, EP 2:          expert_tp = {0,1} {2,3}  ep = {0,2} {1,3}  expert_dp = singletons
#pragma once

#include <memory>

#include "csrc/config/recipe.pb.h"
#include "csrc/model/transformer.h"
#include "parallel/communicator.h"

namespace moetrain::parallel {

struct MeshSizes {
  int world = 1, tp = 1, ep = 1, etp = 1;
  int dp() const { return world / tp; }
  int expert_dp() const { return world / (etp * ep); }
  static MeshSizes from_recipe(const config::ParallelConfig& parallel, int world);
};

// Checks the sizes against each other and the model before anything is allocated; throws
// std::invalid_argument naming the recipe fields, the sizes and the (expert, expert_tensor) pairs that
// would fit. Every rank computes the same verdict.
void validate_mesh(const MeshSizes& sizes, const config::ModelConfig& model);

// What tensor parallelism needs of a recipe: token counts and sizes that split evenly.
void validate_tensor_parallel_recipe(const MeshSizes& sizes, const config::Recipe& recipe);

class ProcessMesh {
 public:
  // Splits `world` into the groups (collective over world).
  ProcessMesh(std::unique_ptr<Communicator> world, const MeshSizes& sizes);
  const MeshSizes& sizes() const { return sizes_; }
  Communicator& world() { return *world_; }
  Communicator& dp() { return *dp_; }          // all ranks with this tp_rank
  Communicator& tp() { return *tp_; }          // tensor-parallel group (adjacent ranks)
  Communicator& ep() { return *ep_; }          // expert-parallel group: same etp_rank and expert_dp_rank
  Communicator& expert_tp() { return *etp_; }  // expert-tensor-parallel group (adjacent ranks)
  Communicator& expert_dp() { return *expert_dp_; }  // ranks holding the same expert shard
  int tp_rank() const { return world_->rank() % sizes_.tp; }
  int dp_rank() const { return world_->rank() / sizes_.tp; }
  int etp_rank() const { return world_->rank() % sizes_.etp; }
  int ep_rank() const { return world_->rank() / sizes_.etp % sizes_.ep; }
  int expert_dp_rank() const { return world_->rank() / (sizes_.etp * sizes_.ep); }
  // This process's share of the model (TransformerOptions::from_recipe).
  model::ModelPlacement placement() const;

 private:
  MeshSizes sizes_;
  std::unique_ptr<Communicator> world_, dp_, tp_, ep_, etp_, expert_dp_;
};

}  // namespace moetrain::parallel
