// The NCCL backend on a GPU machine: collectives of the Communicator interface on CUDA tensors,
// bootstrapped over MPI. Skips with a message where there is no GPU (CPU CI builds it only).
#include <gtest/gtest.h>

#include "parallel/communicator_mpi.h"
#ifdef MOETRAIN_WITH_NCCL
#include "parallel/communicator_nccl.h"
#endif

using namespace moetrain;

TEST(NcclCommunicator, CollectivesMatchTheMpiBackend) {
#ifndef MOETRAIN_WITH_NCCL
  GTEST_SKIP() << "built without NCCL";
#else
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU on this machine: NCCL backend compiled, not run";
  auto world = parallel::MpiCommunicator::world();
  const int device = world->rank() % static_cast<int>(torch::cuda::device_count());
  auto nccl = parallel::NcclCommunicator::create(*world, device);
  const auto on_gpu = torch::TensorOptions().device(torch::kCUDA, device);
  auto x = torch::arange(6, torch::kFloat32) * (world->rank() + 1);
  auto x_gpu = x.to(on_gpu);
  nccl->all_reduce_sum(x_gpu);
  world->all_reduce_sum(x);
  EXPECT_TRUE(torch::equal(x_gpu.cpu(), x));
  // All-to-all-v: rank r sends r+1 rows to every rank.
  const int p = world->size();
  std::vector<int64_t> send(p, world->rank() + 1), recv(p);
  for (int r = 0; r < p; ++r) recv[r] = r + 1;
  auto rows = torch::full({p * (world->rank() + 1), 3}, static_cast<float>(world->rank()));
  auto got = nccl->all_to_all_v(rows.to(on_gpu), send, recv).cpu();
  EXPECT_TRUE(torch::equal(got, world->all_to_all_v(rows, send, recv)));
#endif
}
