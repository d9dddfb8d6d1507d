// The process mesh: world = TP × DP; experts sharded over EP groups inside the data-parallel
// dimension, each expert shard replicated over its expert-data-parallel group (as Megatron-Core and
// DeepSpeed lay it out). Rank r = dp_rank · TP + tp_rank (tensor-parallel ranks adjacent, so a TP group
// stays inside a node); dp_rank = expert_dp_rank · EP + ep_rank.
//
//   world 4, TP 1, EP 2:   dp = {0,1,2,3}   ep = {0,1} {2,3}   expert_dp = {0,2} {1,3}
//   world 4, TP 2, EP 2:   tp = {0,1} {2,3}   dp = {0,2} {1,3}   ep = {0,2} {1,3}   expert_dp = {0} {2} {1} {3}
#pragma once

#include <memory>

#include "csrc/config/recipe.pb.h"
#include "parallel/communicator.h"

namespace moetrain::parallel {

struct MeshSizes {
  int world = 1, tp = 1, ep = 1;
  int dp() const { return world / tp; }
  int expert_dp() const { return dp() / ep; }
};

// Checks the sizes against each other and the model before anything is allocated; throws
// std::invalid_argument naming the recipe fields and the fix. Every rank computes the same verdict.
void validate_mesh(const MeshSizes& sizes, int64_t num_experts, int64_t num_heads);

// What tensor parallelism needs of a recipe: token counts and sizes that split evenly.
void validate_tensor_parallel_recipe(const MeshSizes& sizes, const config::Recipe& recipe);

class ProcessMesh {
 public:
  // Splits `world` into the groups (collective over world).
  ProcessMesh(std::unique_ptr<Communicator> world, const MeshSizes& sizes);
  const MeshSizes& sizes() const { return sizes_; }
  Communicator& world() { return *world_; }
  Communicator& dp() { return *dp_; }                // all ranks with this tp_rank
  Communicator& ep() { return *ep_; }                // expert-parallel group (inside dp)
  Communicator& expert_dp() { return *expert_dp_; }  // ranks holding the same expert shard
  Communicator& tp() { return *tp_; }                // tensor-parallel group (adjacent ranks)
  int tp_rank() const { return world_->rank() % sizes_.tp; }
  int dp_rank() const { return world_->rank() / sizes_.tp; }
  int ep_rank() const { return dp_rank() % sizes_.ep; }

 private:
  MeshSizes sizes_;
  std::unique_ptr<Communicator> world_, dp_, ep_, expert_dp_, tp_;
};

}  // namespace moetrain::parallel
