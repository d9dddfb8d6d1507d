#include "trainer/moe_measures.h"

#include "csrc/util/host_sync.h"

namespace moetrain::trainer {

std::vector<LayerStepMeasures> read_step_measures(const std::vector<moe::MoELayer>& layers,
                                                  const moe::MoEParallelContext& context) {
  if (layers.empty()) return {};
  // Per layer: the E counts, then the kNumStepMeasures sums; fp64 holds the integer counts exactly.
  std::vector<torch::Tensor> parts;
  for (const auto& layer : layers) {
    parts.push_back(layer->step_counts().to(torch::kFloat64));
    parts.push_back(layer->step_measures());
  }
  // Every rank's tokens (dp, and the tp shares).
  const auto all = context.sum_over_global_batch(torch::cat(parts));
  const double world = static_cast<double>(context.global_batch_ranks());
  const double dp = world / static_cast<double>(context.micro_batch_ranks());
  const auto host = util::read_to_host(all, "routing measures of the step");

  std::vector<LayerStepMeasures> out(layers.size());
  int64_t at = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    const int64_t E = layers[l]->step_counts().numel();
    out[l].load_E = all.narrow(0, at, E).to(torch::kInt64);
    out[l].host_load_E = host.narrow(0, at, E).to(torch::kInt64);
    at += E;
    const double* v = host.data_ptr<double>() + at;
    at += moe::kNumStepMeasures;
    // Logged values: routed and dropped pairs, tokens and unchosen tokens add up over every rank;
    // entropy is a mean; aux and z are split over tp (each rank holds its 1/tp share: sum over tp, mean
    // over dp).
    const double forwards = static_cast<double>(std::max<int64_t>(1, layers[l]->step_forwards()));
    out[l].routed = v[moe::kRoutedPairs];
    out[l].dropped = v[moe::kDroppedPairs];
    out[l].tokens = v[moe::kTokens];
    out[l].unchosen = v[moe::kUnchosenTokens];
    out[l].entropy = v[moe::kEntropySum] / world / forwards;
    out[l].aux = v[moe::kAuxLossSum] / dp;
    out[l].z = v[moe::kZLossSum] / dp;
  }
  return out;
}

}  // namespace moetrain::trainer
