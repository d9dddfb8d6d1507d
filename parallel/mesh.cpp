#include "parallel/mesh.h"

#include <stdexcept>

namespace moetrain::parallel {

void validate_mesh(const MeshSizes& s, int64_t num_experts, int64_t num_heads) {
  const std::string world = std::to_string(s.world);
  if (s.tp < 1 || s.ep < 1) throw std::invalid_argument("parallel.tensor and parallel.expert must be >= 1");
  if (s.world % s.tp != 0) {
    throw std::invalid_argument("parallel.tensor = " + std::to_string(s.tp) +
                                " does not divide the world size " + world + "; launch a multiple of " +
                                std::to_string(s.tp) + " processes or change parallel.tensor");
  }
  if (s.dp() % s.ep != 0) {
    throw std::invalid_argument(
        "parallel.expert = " + std::to_string(s.ep) + " does not divide the data-parallel size " +
        std::to_string(s.dp()) + " (world " + world + " / parallel.tensor " + std::to_string(s.tp) +
        "); launch a multiple of parallel.tensor × parallel.expert = " + std::to_string(s.tp * s.ep) +
        " processes");
  }
  if (num_experts % s.ep != 0) {
    throw std::invalid_argument("parallel.expert = " + std::to_string(s.ep) + ": model.num_experts (" +
                                std::to_string(num_experts) + ") must be divisible by it");
  }
  if (num_heads % s.tp != 0) {
    throw std::invalid_argument("parallel.tensor = " + std::to_string(s.tp) + ": model.num_heads (" +
                                std::to_string(num_heads) + ") must be divisible by it");
  }
}

void validate_tensor_parallel_recipe(const MeshSizes& s, const config::Recipe& r) {
  if (s.tp <= 1) return;
  const std::string tp = std::to_string(s.tp);
  const int64_t tokens = r.train().micro_batch_size() * r.data().seq_len();
  if (tokens % s.tp != 0) {
    throw std::invalid_argument("parallel.tensor = " + tp +
                                ": the tokens of a micro-batch (train.micro_batch_size × data.seq_len = " +
                                std::to_string(tokens) + ") must split evenly over the tensor-parallel ranks");
  }
  if (r.model().vocab_size() % s.tp != 0) {
    throw std::invalid_argument(
        "parallel.tensor = " + tp + ": model.vocab_size (" + std::to_string(r.model().vocab_size()) +
        ") must be divisible by it (the embedding and LM head are split by vocabulary rows); pad "
        "the vocabulary to a multiple of the tensor-parallel size");
  }
  if (r.model().d_model() % s.tp != 0 || r.model().ffn_hidden() % s.tp != 0) {
    throw std::invalid_argument("parallel.tensor = " + tp + ": model.d_model (" +
                                std::to_string(r.model().d_model()) + ") and model.ffn_hidden (" +
                                std::to_string(r.model().ffn_hidden()) + ") must be divisible by it");
  }
}

ProcessMesh::ProcessMesh(std::unique_ptr<Communicator> world, const MeshSizes& sizes)
    : sizes_(sizes), world_(std::move(world)) {
  const int r = world_->rank(), tp_rank = r % sizes.tp, dp_rank = r / sizes.tp;
  const int ep_rank = dp_rank % sizes.ep, ep_group = dp_rank / sizes.ep;
  dp_ = world_->split(tp_rank, dp_rank, "dp");
  ep_ = world_->split(tp_rank * sizes.dp() + ep_group, ep_rank, "ep");
  expert_dp_ = world_->split(tp_rank * sizes.ep + ep_rank, ep_group, "expert_dp");
  tp_ = world_->split(dp_rank, tp_rank, "tp");
}

}  // namespace moetrain::parallel
