#include "parallel/collectives.h"

namespace moetrain::parallel {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct AllToAllV : public torch::autograd::Function<AllToAllV> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& send, int64_t comm_address,
                               std::vector<int64_t> send_counts, std::vector<int64_t> recv_counts) {
    ctx->saved_data["comm"] = comm_address;
    ctx->saved_data["send_counts"] = send_counts;
    ctx->saved_data["recv_counts"] = recv_counts;
    auto* comm = reinterpret_cast<Communicator*>(comm_address);
    return comm->all_to_all_v(send, send_counts, recv_counts);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto* comm = reinterpret_cast<Communicator*>(ctx->saved_data["comm"].toInt());
    auto send_counts = ctx->saved_data["send_counts"].toIntVector();
    auto recv_counts = ctx->saved_data["recv_counts"].toIntVector();
    auto grad_send = comm->all_to_all_v(grads[0].contiguous(), recv_counts, send_counts);
    return {grad_send, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor all_to_all_v_autograd(Communicator& comm, const torch::Tensor& send,
                                    const std::vector<int64_t>& send_counts,
                                    const std::vector<int64_t>& recv_counts) {
  return AllToAllV::apply(send, reinterpret_cast<int64_t>(&comm), send_counts, recv_counts);
}

}  // namespace moetrain::parallel
