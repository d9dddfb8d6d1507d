// moe-plan's arithmetic (docs/planning.md): for a recipe and a cluster, the memory each rank needs and the
// bytes each step moves, for every layout moetrain can run it in. Host arithmetic only, from the recipe's
// sizes and what this implementation keeps for backward (each term names the tensors it counts; the
// terms are checked against peak memory measured by moe-train, tests/e2e/plan_vs_measured.py).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "csrc/config/recipe.pb.h"

namespace moetrain::plan {

struct Cluster {
  int64_t gpus = 1, nodes = 1;
  double memory_bytes = 0;  // per GPU
  int64_t per_node() const { return gpus / nodes; }
};

struct Layout {
  int64_t tp = 1, ep = 1, dp = 1;
  int64_t etp = 1;  // parallel.expert_tensor: each expert's hidden dimension split over etp ranks
  int64_t world() const { return tp * dp; }
  int64_t expert_dp() const { return world() / (etp * ep); }
  bool distributed = false;  // optimizer.distributed
  bool bf16_params = false;  // optimizer.param_dtype BF16 (with the distributed optimizer, BF16 precision)
  bool bf16_grads = false;   // optimizer.grad_dtype BF16
  config::TrainConfig::Recompute recompute = config::TrainConfig::NONE;
  std::vector<std::string> modules;    // SELECTIVE
  int64_t recompute_layers = 0;        // FULL; 0 = all
  std::string recompute_text() const;  // "none", "selective[moe_act,layernorm]", "full", "full(2)"
};

// Bytes on one rank: what stays between steps, and the step's peak.
struct Memory {
  double parameters = 0;  // every parameter this rank holds (fp32; a bf16 frozen base at 2 bytes)
  double gradients = 0;   // fp32, trainable parameters (the shard after the reduce-scatter when distributed)
  double optimizer = 0;   // AdamW's two fp32 moments: of every trainable parameter, or of this rank's shard
  double weight_casts = 0;  // bf16: the experts' cached bf16 weights (kept between steps)
  double activations = 0;   // kept for backward, all layers, one micro-batch
  double transient = 0;  // at the peak besides: logits' gradient, a recomputed layer, masked expert weights
  double held() const { return parameters + optimizer + weight_casts; }  // between steps (mem_allocated)
  double peak() const;                                                   // during a step (mem_peak)
};

// Bytes this rank sends per optimizer step in each group, and whether the group spans nodes.
struct Traffic {
  double tp = 0, ep = 0, etp = 0, dp = 0;  // dp: the gradients' reduction over dp and expert_dp
  bool tp_inter = false, ep_inter = false, etp_inter = false, dp_inter = false;
};

struct Options {
  // Dropless routing: the busiest expert-parallel rank receives imbalance × its even share of the routed
  // tokens (1 = perfect balance). With a capacity factor the rows are the capacity's.
  double imbalance = 1.25;
};

struct Estimate {
  Layout layout;
  Memory memory;
  Traffic traffic;
  bool fits = false;
};

Memory estimate_memory(const config::Recipe& recipe, const Layout& layout, const Options& options = {});
Traffic estimate_traffic(const config::Recipe& recipe, const Layout& layout, const Cluster& cluster,
                         const Options& options = {});
// Every layout of `cluster.gpus` ranks the trainer accepts for the recipe (TP within a node, EP dividing
// DP and the experts), each with the recipe's recomputation and the alternatives (none, selective
// [moe_act, layernorm], selective [moe], full), replicated and distributed optimizer.
std::vector<Layout> candidate_layouts(const config::Recipe& recipe, const Cluster& cluster);
std::vector<Estimate> plan(const config::Recipe& recipe, const Cluster& cluster, const Options& options = {});

}  // namespace moetrain::plan
