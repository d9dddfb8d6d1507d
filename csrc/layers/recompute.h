// Activation recomputation (train.recompute, docs/training.md "Recomputation"): run part of the forward
// without keeping its activations and run it again in backward, as Megatron-Core's CheckpointFunction and
// CheckpointWithoutOutput do.
//
// Contract of a body: a function of its input tensors (and of parameters it reads) that gives the same
// outputs when run again: every layer keys its noise by token position, not by generator state
// (docs/routing.md, "Router noise"), and state a layer changes in a forward (the MoE layer's step
// accumulators) is left alone while replaying() is true. A body may run collectives: every rank replays
// the same bodies in the same order (each rank's backward visits its layers in reverse order).
// Gradients are bitwise those of the same forward without recomputation on a deterministic device.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <vector>

namespace moetrain::layers {

using RecomputeBody = std::function<std::vector<torch::Tensor>(const std::vector<torch::Tensor>&)>;

// True while a body runs again in backward. Layers skip their forward side effects then.
bool replaying();

// Whether a layer may recompute now: gradients are being recorded and no replay is running (a body
// runs plain inside another's replay, and under no_grad nothing is kept anyway). Layers also require
// is_training(): evaluation never recomputes.
bool can_recompute();

// Outputs of body(inputs), computed without recording autograd history and saving only `inputs`. In
// backward the body runs again, with gradients enabled and the autocast state of the first run, on
// detached copies of the inputs; parameter gradients accumulate into .grad there, input gradients flow
// on. Outputs that are integer tensors carry no gradient. At least one input or parameter the body reads
// must require a gradient, or nothing flows back (the caller checks: recompute only trains).
std::vector<torch::Tensor> recompute(const RecomputeBody& body, const std::vector<torch::Tensor>& inputs);

// Megatron's CheckpointWithoutOutput: for a cheap body (an activation, a norm) whose output the next
// operation saves anyway. run() computes the outputs without history; after the consumer's forward,
// discard_outputs() frees their memory and recomputes them into the same storage when the gradient of
// `hook` (the consumer's output, or anything downstream of every consumer) is computed, that is before
// any consumer's backward reads them. One object per use; it may be destroyed after discard_outputs().
class RecomputeWithoutOutput {
 public:
  RecomputeWithoutOutput();
  ~RecomputeWithoutOutput();
  RecomputeWithoutOutput(const RecomputeWithoutOutput&) = delete;
  RecomputeWithoutOutput& operator=(const RecomputeWithoutOutput&) = delete;
  std::vector<torch::Tensor> run(const RecomputeBody& body, const std::vector<torch::Tensor>& inputs);
  void discard_outputs(const torch::Tensor& hook);

  struct State;

 private:
  c10::intrusive_ptr<State> state_;
};

}  // namespace moetrain::layers
