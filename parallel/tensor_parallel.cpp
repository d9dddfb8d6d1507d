#include "parallel/tensor_parallel.h"

namespace moetrain::parallel {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

Communicator* comm_of(AutogradContext* ctx) {
  return reinterpret_cast<Communicator*>(ctx->saved_data["comm"].toInt());
}

torch::Tensor all_reduce_copy(Communicator& group, const torch::Tensor& x) {
  auto out = x.contiguous().clone();
  group.all_reduce_sum(out);
  return out;
}

torch::Tensor own_rows(Communicator& group, const torch::Tensor& x) {
  const int64_t n = x.size(0) / group.size();
  return x.narrow(0, group.rank() * n, n).contiguous();
}

struct CopyToTp : torch::autograd::Function<CopyToTp> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t comm) {
    ctx->saved_data["comm"] = comm;
    return x.view_as(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    return {all_reduce_copy(*comm_of(ctx), g[0]), torch::Tensor()};
  }
};

struct ReduceFromTp : torch::autograd::Function<ReduceFromTp> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t comm) {
    ctx->saved_data["comm"] = comm;
    return all_reduce_copy(*reinterpret_cast<Communicator*>(comm), x);
  }
  static variable_list backward(AutogradContext*, variable_list g) { return {g[0], torch::Tensor()}; }
};

// The tensors around the sequence-parallel region are replicated over tp (every rank holds the same
// values and computes the same function of them), so a rank's gradient of a replicated tensor is
// already the whole gradient. Hence: scatter's backward all-gathers the ranks' slices of it, and
// gather's backward keeps this rank's slice. A reduce-scatter there would count the gradient tp times;
// it is the backward of an all-gather whose consumers differ per rank, which tp does not have here.
struct ScatterTokens : torch::autograd::Function<ScatterTokens> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t comm) {
    ctx->saved_data["comm"] = comm;
    return own_rows(*reinterpret_cast<Communicator*>(comm), x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    return {comm_of(ctx)->all_gather_rows(g[0]), torch::Tensor()};
  }
};

struct GatherTokens : torch::autograd::Function<GatherTokens> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t comm) {
    ctx->saved_data["comm"] = comm;  // one all-gather: each rank sends its rows once to each other rank
    return reinterpret_cast<Communicator*>(comm)->all_gather_rows(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    return {own_rows(*comm_of(ctx), g[0]), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor TensorParallel::copy_to_tp(const torch::Tensor& x) {
  return CopyToTp::apply(x, reinterpret_cast<int64_t>(&tp_));
}
torch::Tensor TensorParallel::reduce_from_tp(const torch::Tensor& x) {
  return ReduceFromTp::apply(x, reinterpret_cast<int64_t>(&tp_));
}
torch::Tensor TensorParallel::scatter_tokens(const torch::Tensor& x_TD) {
  return ScatterTokens::apply(x_TD, reinterpret_cast<int64_t>(&tp_));
}
torch::Tensor TensorParallel::gather_tokens(const torch::Tensor& x_TD) {
  return GatherTokens::apply(x_TD, reinterpret_cast<int64_t>(&tp_));
}

}  // namespace moetrain::parallel
