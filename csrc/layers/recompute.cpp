#include "csrc/layers/recompute.h"

#include <ATen/autocast_mode.h>

#include <algorithm>
#include <optional>

#include "csrc/layers/precision.h"

namespace moetrain::layers {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

thread_local int replay_depth = 0;

struct ReplayScope {
  ReplayScope() { ++replay_depth; }
  ~ReplayScope() { --replay_depth; }
  ReplayScope(const ReplayScope&) = delete;
  ReplayScope& operator=(const ReplayScope&) = delete;
};

// Autocast of one device type at the first run, restored for the replay.
struct AutocastState {
  c10::DeviceType device;
  std::optional<at::ScalarType> dtype;  // nullopt: autocast off
};

std::vector<AutocastState> capture_autocast() {
  std::vector<AutocastState> states;
  for (auto device : {c10::DeviceType::CPU, c10::DeviceType::CUDA}) {
    const bool on = at::autocast::is_autocast_enabled(device);
    states.push_back({device, on ? std::optional(at::autocast::get_autocast_dtype(device)) : std::nullopt});
  }
  return states;
}

// Where a discarded output lived, to give it memory again and fill it.
struct OutputSlot {
  c10::Storage storage;
  size_t nbytes = 0;
  int64_t offset = 0;
  std::vector<int64_t> sizes, strides;
  torch::TensorOptions options;
};

}  // namespace

struct RecomputeWithoutOutput::State : torch::CustomClassHolder {
  RecomputeBody body;
  std::vector<AutocastState> autocast;
  // RecomputeWithoutOutput only: the inputs (recompute() saves them in the autograd context instead),
  // the discarded outputs, and the replay made by the hook, consumed by the backward.
  std::vector<torch::Tensor> inputs;
  std::vector<OutputSlot> slots;
  bool discarded = false, replayed = false;
  std::vector<torch::Tensor> replay_inputs, replay_outputs;

  // Runs the body again with gradients on detached copies of `saved`: (inputs, outputs) with history.
  std::pair<std::vector<torch::Tensor>, std::vector<torch::Tensor>> replay(
      const std::vector<torch::Tensor>& saved) const {
    std::vector<torch::Tensor> in, body_in;  // leaves that collect the gradients; what the body sees
    in.reserve(saved.size()), body_in.reserve(saved.size());
    ReplayScope replaying;
    torch::AutoGradMode grad(true);
    for (const auto& t : saved) {
      auto d = t.detach();
      if (t.requires_grad()) d.requires_grad_(true);
      in.push_back(d);
      // The body sees a non-leaf view, as in the first run: autocast caches the casts of leaves (two
      // projections of one input would share one bf16 cast and sum their gradients in bf16).
      body_in.push_back(t.requires_grad() ? d.alias() : d);
    }
    std::vector<std::unique_ptr<AutocastScope>> scopes;
    for (const auto& s : autocast) scopes.push_back(std::make_unique<AutocastScope>(s.device, s.dtype));
    auto out = body(body_in);
    scopes.clear();
    return {std::move(in), std::move(out)};
  }
};

namespace {

using State = RecomputeWithoutOutput::State;

struct RecomputeFunction : torch::autograd::Function<RecomputeFunction> {
  // Grad mode is off here (Function::apply): the body records no history.
  static variable_list forward(AutogradContext* ctx, c10::intrusive_ptr<State> state, at::TensorList inputs) {
    auto outputs = state->body(inputs.vec());
    if (state->inputs.empty()) ctx->save_for_backward(inputs.vec());
    std::vector<torch::Tensor> integer;
    for (const auto& o : outputs) {
      if (!o.is_floating_point()) integer.push_back(o);
    }
    ctx->mark_non_differentiable(integer);
    ctx->saved_data["state"] = c10::IValue::make_capsule(std::move(state));
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto state = c10::static_intrusive_pointer_cast<State>(ctx->saved_data["state"].toCapsule());
    std::vector<torch::Tensor> inputs, outputs;
    if (state->discarded) {
      TORCH_CHECK(state->replayed,
                  "RecomputeWithoutOutput: the backward reached the recomputed body before the gradient of its "
                  "hook tensor was computed; pass discard_outputs() a tensor downstream of every consumer");
      inputs = std::move(state->replay_inputs), outputs = std::move(state->replay_outputs);
      state->replayed = false;
    } else {
      std::tie(inputs,
               outputs) = state->replay(state->inputs.empty() ? ctx->get_saved_variables() : state->inputs);
    }
    std::vector<torch::Tensor> roots, root_grads;
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (outputs[i].requires_grad() && grads[i].defined())
        roots.push_back(outputs[i]), root_grads.push_back(grads[i]);
    }
    if (!roots.empty()) torch::autograd::backward(roots, root_grads);
    variable_list input_grads{torch::Tensor()};  // the state argument
    for (const auto& in : inputs) input_grads.push_back(in.requires_grad() ? in.grad() : torch::Tensor());
    return input_grads;
  }
};

void free_storage(c10::StorageImpl* storage, const c10::Device& device) {
  storage->set_data_ptr_noswap(at::DataPtr(nullptr, device));
  storage->set_nbytes(0);
}

}  // namespace

bool replaying() { return replay_depth > 0; }

bool can_recompute() { return torch::GradMode::is_enabled() && !replaying(); }

std::vector<torch::Tensor> recompute(const RecomputeBody& body, const std::vector<torch::Tensor>& inputs) {
  auto state = c10::make_intrusive<State>();
  state->body = body;
  state->autocast = capture_autocast();
  // Only inputs that require a gradient connect the outputs to the graph. When none does (a frozen
  // embedding), an empty tensor that requires one makes the backward run, for the parameters inside.
  std::vector<torch::Tensor> connected = inputs;
  if (std::none_of(inputs.begin(), inputs.end(), [](const torch::Tensor& t) { return t.requires_grad(); }))
    connected.push_back(torch::empty({0}).requires_grad_(true));
  return RecomputeFunction::apply(state, at::TensorList(connected));
}

RecomputeWithoutOutput::RecomputeWithoutOutput() = default;
RecomputeWithoutOutput::~RecomputeWithoutOutput() = default;

std::vector<torch::Tensor> RecomputeWithoutOutput::run(const RecomputeBody& body,
                                                       const std::vector<torch::Tensor>& inputs) {
  TORCH_CHECK(!state_, "RecomputeWithoutOutput: run() once per object");
  state_ = c10::make_intrusive<State>();
  state_->body = body;
  state_->autocast = capture_autocast();
  state_->inputs = inputs;
  TORCH_CHECK(!inputs.empty(), "RecomputeWithoutOutput: the body needs at least one input");
  auto outputs = RecomputeFunction::apply(state_, at::TensorList(inputs));
  for (const auto& o : outputs) {
    for (const auto& in : inputs) {
      TORCH_CHECK(
          !o.storage().is_alias_of(in.storage()),
          "RecomputeWithoutOutput: an output shares memory with an input; discarding it would lose the input");
    }
    TORCH_CHECK(o.storage().nbytes() == static_cast<size_t>(o.numel() * o.element_size()) && o.is_contiguous(),
                "RecomputeWithoutOutput: outputs must be whole, contiguous tensors");
    state_->slots.push_back({o.storage(), o.storage().nbytes(), o.storage_offset(), o.sizes().vec(),
                             o.strides().vec(), o.options()});
  }
  return outputs;
}

void RecomputeWithoutOutput::discard_outputs(const torch::Tensor& hook) {
  TORCH_CHECK(state_ && !state_->discarded, "RecomputeWithoutOutput: discard_outputs() once, after run()");
  TORCH_CHECK(hook.requires_grad(), "RecomputeWithoutOutput: the hook tensor must require a gradient");
  for (auto& slot : state_->slots) free_storage(slot.storage.unsafeGetStorageImpl(), slot.options.device());
  state_->discarded = true;
  // The hook owns the state until it fires; the replay then refills every output's storage in place. The
  // copy goes through a new tensor over the storage, so the version counter the consumer saved with the
  // output is untouched.
  hook.register_hook([state = state_](const torch::Tensor&) {
    if (state->replayed) return;
    std::tie(state->replay_inputs, state->replay_outputs) = state->replay(state->inputs);
    state->replayed = true;
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < state->slots.size(); ++i) {
      auto& slot = state->slots[i];
      auto* impl = slot.storage.unsafeGetStorageImpl();
      impl->set_data_ptr_noswap(impl->allocator()->allocate(slot.nbytes));
      impl->set_nbytes(slot.nbytes);
      torch::empty({0}, slot.options)
          .set_(slot.storage, slot.offset, slot.sizes, slot.strides)
          .copy_(state->replay_outputs[i]);
    }
  });
}

}  // namespace moetrain::layers
