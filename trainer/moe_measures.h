// The routing measures of one training step, brought to the host in one read (docs/routing.md, "Host
// reads"): every MoE layer's step counts and sums (MoELayerImpl::step_counts, step_measures) travel in one
// tensor, summed over the global batch's ranks (one all-reduce), and come to the host together.
#pragma once

#include <vector>

#include "csrc/moe/moe_layer.h"
#include "csrc/moe/parallel_context.h"

namespace moetrain::trainer {

struct LayerStepMeasures {
  torch::Tensor load_E;  // int64 (E): routed pairs per expert over the step's global batch, before capacity,
                         // on the layer's device (the bias update takes it)
  torch::Tensor host_load_E;       // the same on the host (logs)
  double routed = 0, dropped = 0;  // pairs over every rank
  double tokens = 0,
         unchosen = 0;    // tokens routed, and those no expert computed (no kept pair), over every rank
  double entropy = 0;     // mean router entropy over the step's forwards and ranks (nats)
  double aux = 0, z = 0;  // Σ over the step's micro-batches, coefficient applied: summed over tp, mean over dp
  double dropped_fraction() const { return routed > 0 ? dropped / routed : 0.0; }
  // Under expert choice the tokens no expert chose; under token choice those whose every pair was dropped.
  double unchosen_fraction() const { return tokens > 0 ? unchosen / tokens : 0.0; }
};

// Call after the step's forwards and before the layers' end_step(); every rank calls it together (the
// sums over the global batch go through `context`). One entry per layer, in layer order.
std::vector<LayerStepMeasures> read_step_measures(const std::vector<moe::MoELayer>& layers,
                                                  const moe::MoEParallelContext& context);

}  // namespace moetrain::trainer
