#include "parallel/tensor_parallel.h"

namespace moetrain::parallel {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

Communicator* comm_of(AutogradContext* ctx) { return reinterpret_cast<Communicator*>(ctx->saved_data["comm"].toInt()); }

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

struct ScatterTokens : torch::autograd::Function<ScatterTokens> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t comm) {
    ctx->saved_data["comm"] = comm;
    return own_rows(*reinterpret_cast<Communicator*>(comm), x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    return {all_gather_rows(*comm_of(ctx), g[0].contiguous()), torch::Tensor()};
  }
};

struct GatherTokens : torch::autograd::Function<GatherTokens> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, int64_t comm) {
    ctx->saved_data["comm"] = comm;
    return all_gather_rows(*reinterpret_cast<Communicator*>(comm), x.contiguous());
  }
  static variable_list backward(AutogradContext* ctx, variable_list g) {
    return {own_rows(*comm_of(ctx), g[0]), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor all_gather_rows(Communicator& group, const torch::Tensor& rows) {
  const int p = group.size();
  std::vector<int64_t> counts(p, rows.size(0));
  std::vector<int64_t> dims(rows.dim(), 1);
  dims[0] = p;
  return group.all_to_all_v(rows.repeat(dims), counts, counts);  // every rank sends its rows to everyone
}

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
torch::Tensor TensorParallel::sum_counts(const torch::Tensor& counts) { return all_reduce_copy(tp_, counts); }

}  // namespace moetrain::parallel
