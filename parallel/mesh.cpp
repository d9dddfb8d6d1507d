#include "parallel/mesh.h"

#include <stdexcept>

namespace moetrain::parallel {

MeshSizes MeshSizes::from_recipe(const config::ParallelConfig& parallel, int world) {
  MeshSizes s;
  s.world = world;
  s.tp = static_cast<int>(parallel.tensor());
  s.ep = static_cast<int>(parallel.expert());
  s.etp = static_cast<int>(parallel.expert_tensor());
  return s;
}

namespace {

// The (expert, expert_tensor) pairs the world and the model allow, e.g. "expert 2 × expert_tensor 1".
std::string expert_layouts_that_fit(int world, const config::ModelConfig& m) {
  std::string out;
  for (int etp = 1; etp <= world; ++etp) {
    if (m.moe_ffn_hidden() % etp != 0 || (m.moe_ffn_hidden() / etp) % 8 != 0) continue;
    for (int ep = 1; etp * ep <= world; ++ep) {
      if (world % (etp * ep) != 0 || m.num_experts() % ep != 0) continue;
      out += (out.empty() ? "" : ", ") + std::to_string(ep) + " × " + std::to_string(etp);
    }
  }
  return out;
}

}  // namespace

void validate_mesh(const MeshSizes& s, const config::ModelConfig& m) {
  const std::string world = std::to_string(s.world);
  if (s.tp < 1 || s.ep < 1 || s.etp < 1)
    throw std::invalid_argument("parallel.tensor, parallel.expert and parallel.expert_tensor must be >= 1");
  if (s.world % s.tp != 0) {
    throw std::invalid_argument("parallel.tensor = " + std::to_string(s.tp) +
                                " does not divide the world size " + world + "; launch a multiple of " +
                                std::to_string(s.tp) + " processes or change parallel.tensor");
  }
  const bool experts_split = m.num_experts() % s.ep == 0;
  const bool hidden_split = m.moe_ffn_hidden() % s.etp == 0 && (m.moe_ffn_hidden() / s.etp) % 8 == 0;
  if (s.world % (s.ep * s.etp) != 0 || !experts_split || !hidden_split) {
    std::string why = s.world % (s.ep * s.etp) != 0 ? "their product " + std::to_string(s.ep * s.etp) +
                                                          " does not divide the world size " + world
                      : !experts_split
                          ? "model.num_experts (" + std::to_string(m.num_experts()) +
                                ") is not divisible by parallel.expert"
                          : "model.moe_ffn_hidden (" + std::to_string(m.moe_ffn_hidden()) +
                                ") does not split into multiples of 8 over parallel.expert_tensor";
    throw std::invalid_argument(
        "parallel.expert = " + std::to_string(s.ep) + " × parallel.expert_tensor = " + std::to_string(s.etp) +
        ": " + why + "; with " + world + (s.world == 1 ? " process" : " processes") +
        " these expert × expert_tensor sizes fit: " + expert_layouts_that_fit(s.world, m));
  }
  if (m.num_heads() % s.tp != 0) {
    throw std::invalid_argument("parallel.tensor = " + std::to_string(s.tp) + ": model.num_heads (" +
                                std::to_string(m.num_heads()) + ") must be divisible by it");
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
  const int tp_rank = this->tp_rank(), dp_rank = this->dp_rank();
  const int etp_rank = this->etp_rank(), ep_rank = this->ep_rank(), edp_rank = expert_dp_rank();
  // Every rank makes the same splits in the same order (each is collective over the world).
  dp_ = world_->split(tp_rank, dp_rank, "dp");
  tp_ = world_->split(dp_rank, tp_rank, "tp");
  ep_ = world_->split(edp_rank * sizes.etp + etp_rank, ep_rank, "ep");
  etp_ = world_->split(edp_rank * sizes.ep + ep_rank, etp_rank, "expert_tp");
  expert_dp_ = world_->split(ep_rank * sizes.etp + etp_rank, edp_rank, "expert_dp");
}

model::ModelPlacement ProcessMesh::placement() const {
  model::ModelPlacement at;
  at.ep_size = sizes_.ep, at.ep_rank = ep_rank();
  at.tp_size = sizes_.tp, at.tp_rank = tp_rank();
  at.etp_size = sizes_.etp, at.etp_rank = etp_rank();
  return at;
}

}  // namespace moetrain::parallel
