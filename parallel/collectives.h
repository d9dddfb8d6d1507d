// Autograd-aware collectives: forward communicates, backward communicates the gradients back.
#pragma once

#include "parallel/communicator.h"

namespace moetrain::parallel {

// Rows exchanged as in Communicator::all_to_all_v; the backward is the reverse exchange of the
// gradient rows (send and receive counts swapped).
torch::Tensor all_to_all_v_autograd(Communicator& comm, const torch::Tensor& send,
                                    const std::vector<int64_t>& send_counts,
                                    const std::vector<int64_t>& recv_counts);

}  // namespace moetrain::parallel
