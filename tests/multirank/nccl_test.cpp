// On a GPU machine: the NCCL backend's collectives on CUDA tensors, bootstrapped over MPI, against the
// MPI backend; and the MPI backend on CUDA tensors (host staging). Skips with a message where there is
// no GPU (CPU CI builds it only).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <thread>

#include "parallel/communicator_mpi.h"
#ifdef MOETRAIN_WITH_NCCL
#include "parallel/communicator_nccl.h"
#include "parallel/work_monitor.h"
#endif

using namespace moetrain;

#ifdef MOETRAIN_WITH_NCCL
// The MPI world, an NCCL communicator over it on this rank's GPU (rank modulo the GPUs), and that GPU.
struct NcclWorld {
  std::unique_ptr<parallel::MpiCommunicator> world;
  std::unique_ptr<parallel::NcclCommunicator> nccl;
  torch::TensorOptions on_gpu;
};
NcclWorld nccl_world() {
  auto world = parallel::MpiCommunicator::world();
  const int device = world->rank() % static_cast<int>(torch::cuda::device_count());
  auto nccl = parallel::NcclCommunicator::create(*world, device);
  return {std::move(world), std::move(nccl), torch::TensorOptions().device(torch::kCUDA, device)};
}
#endif

TEST(NcclCommunicator, CollectivesMatchTheMpiBackend) {
#ifndef MOETRAIN_WITH_NCCL
  GTEST_SKIP() << "built without NCCL";
#else
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU on this machine: NCCL backend compiled, not run";
  auto [world, nccl, on_gpu] = nccl_world();
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
  // All-gather and reduce-scatter of rows (small integers: exact in float, any summation order).
  auto mine = torch::full({2, 3}, static_cast<float>(world->rank()));
  EXPECT_TRUE(torch::equal(nccl->all_gather_rows(mine.to(on_gpu)).cpu(), world->all_gather_rows(mine)));
  auto blocks = torch::arange(p * 2 * 3, torch::kFloat32).view({p * 2, 3}) * (world->rank() + 1);
  EXPECT_TRUE(torch::equal(nccl->reduce_scatter_rows_sum(blocks.to(on_gpu)).cpu(),
                           world->reduce_scatter_rows_sum(blocks)));
#endif
}

// Stream-ordered collectives: many enqueued back to back with no host wait between them, an asynchronous
// all-reduce overlapping a matmul on the compute stream, a split group; every result right, and the monitor
// holds nothing once the device is done.
TEST(NcclCommunicator, EnqueuedCollectivesAreOrderedOnTheStreamWithoutHostWaits) {
#ifndef MOETRAIN_WITH_NCCL
  GTEST_SKIP() << "built without NCCL";
#else
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU on this machine: NCCL backend compiled, not run";
  auto [world, nccl, on_gpu] = nccl_world();
  const int p = world->size();
  auto x = torch::ones({1 << 16}, on_gpu);
  for (int i = 0; i < 20; ++i) nccl->all_reduce_sum(x);  // each result feeds the next: stream order
  EXPECT_EQ(x[0].item<double>(), std::pow(static_cast<double>(p), 20));
  auto grads = torch::full({1 << 20}, static_cast<float>(world->rank() + 1), on_gpu);
  auto work = nccl->all_reduce_sum_async(grads);
  auto a = torch::randn({512, 512}, on_gpu);
  auto busy = a.matmul(a).sum();  // on the compute stream, beside the all-reduce
  work->wait();
  EXPECT_EQ(grads[7].item<float>(), static_cast<float>(p * (p + 1) / 2));
  EXPECT_TRUE(std::isfinite(busy.item<float>()));
  auto half = nccl->split(world->rank() % 2, world->rank(), "half");
  auto mine = torch::full({1}, 1.0f, on_gpu);
  half->all_reduce_sum(mine);
  EXPECT_EQ(mine.item<float>(), static_cast<float>(half->size()));
  half->barrier();
  for (int i = 0; i < 2000 && parallel::work_monitor().pending() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(parallel::work_monitor().pending(), 0u);
#endif
}

// The MPI backend on CUDA tensors: staged through host memory, results back on the tensor's device.
// This is how ranks that share one GPU communicate (NCCL refuses two ranks on one GPU).
TEST(MpiStaging, CudaTensorsGoThroughHostMemoryAndComeBackOnTheirDevice) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU on this machine: CUDA staging compiled, not run";
  auto world = parallel::MpiCommunicator::world();
  const int p = world->size(), me = world->rank();
  const auto on_gpu = torch::TensorOptions().device(torch::kCUDA,
                                                    me % static_cast<int>(torch::cuda::device_count()));
  auto x = torch::arange(6, torch::kFloat32) * (me + 1);
  auto x_gpu = x.to(on_gpu);
  world->all_reduce_sum(x_gpu);
  world->all_reduce_sum(x);
  EXPECT_TRUE(x_gpu.is_cuda());
  EXPECT_TRUE(torch::equal(x_gpu.cpu(), x));
  auto b = torch::full({3}, static_cast<float>(me), on_gpu);
  world->broadcast(b, 0);
  EXPECT_TRUE(torch::equal(b.cpu(), torch::zeros({3})));
  std::vector<int64_t> counts(p, 1);
  auto rows = torch::full({p, 2}, static_cast<float>(me));
  auto a2a = world->all_to_all_v(rows.to(on_gpu), counts, counts);
  EXPECT_TRUE(a2a.is_cuda());
  EXPECT_TRUE(torch::equal(a2a.cpu(), world->all_to_all_v(rows, counts, counts)));
  auto gathered = world->all_gather_rows(rows.to(on_gpu));
  EXPECT_TRUE(gathered.is_cuda());
  EXPECT_TRUE(torch::equal(gathered.cpu(), world->all_gather_rows(rows)));
  auto scattered = world->reduce_scatter_rows_sum(rows.to(on_gpu));
  EXPECT_TRUE(scattered.is_cuda());
  EXPECT_TRUE(torch::equal(scattered.cpu(), world->reduce_scatter_rows_sum(rows)));
}
