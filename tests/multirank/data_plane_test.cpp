// TwoPlaneCommunicator on real ranks: tensors on the data device travel over the data plane, all others
// (and barriers) over the host plane; its subgroups route the same way. Both planes are CPU backends
// here (MPI and the TCP store); on GPUs the data plane is NCCL and the data device the rank's GPU.
#include <gtest/gtest.h>

#include "parallel/communicator_mpi.h"
#include "parallel/data_plane.h"

using namespace moetrain;

namespace {

std::unique_ptr<parallel::Communicator> mpi_group(const std::string& name) {
  auto world = parallel::MpiCommunicator::world();
  return world->split(0, world->rank(), name);
}

// Rank r's rows: (2, 3), values r·100 + 0..5.
torch::Tensor rows_of(int r) {
  return (torch::arange(6, torch::kInt64).view({2, 3}) + r * 100).to(torch::kFloat32);
}

}  // namespace

TEST(DataPlane, TensorsOnTheDataDeviceTakeTheDataPlane) {
  auto host = mpi_group("host"), data = mpi_group("data");
  parallel::Communicator* host_plane = host.get();
  parallel::Communicator* data_plane = data.get();
  parallel::TwoPlaneCommunicator group(std::move(host), std::move(data), torch::Device(torch::kCPU));
  const int n = group.size(), me = group.rank();
  auto gathered = group.all_gather_rows(rows_of(me));
  for (int r = 0; r < n; ++r) EXPECT_TRUE(torch::equal(gathered.narrow(0, 2 * r, 2), rows_of(r)));
  EXPECT_EQ(data_plane->all_gather_bytes_sent(), (n - 1) * 2 * 3 * 4);
  EXPECT_EQ(host_plane->all_gather_bytes_sent(), 0);
  EXPECT_EQ(group.all_gather_bytes_sent(), data_plane->all_gather_bytes_sent())
      << "the group counts its planes' bytes";
  auto t = torch::full({4}, static_cast<double>(me + 1), torch::kFloat64);
  group.all_reduce_sum(t);
  EXPECT_TRUE(torch::equal(t, torch::full({4}, n * (n + 1) / 2.0, torch::kFloat64)));
  group.barrier();
}

TEST(DataPlane, HostTensorsTakeTheHostPlaneWhenTheDataDeviceIsAGpu) {
  auto host = mpi_group("host"), data = mpi_group("data");
  parallel::Communicator* host_plane = host.get();
  parallel::Communicator* data_plane = data.get();
  parallel::TwoPlaneCommunicator group(std::move(host), std::move(data), torch::Device(torch::kCUDA, 0));
  const int n = group.size(), me = group.rank();
  auto summed = group.reduce_scatter_rows_sum(torch::ones({2 * n, 3}, torch::kFloat32) * (me + 1));
  EXPECT_TRUE(torch::equal(summed, torch::full({2, 3}, n * (n + 1) / 2.0, torch::kFloat32)));
  std::vector<int64_t> counts(n, 1);
  auto received = group.all_to_all_v(torch::full({n, 3}, static_cast<float>(me), torch::kFloat32), counts,
                                     counts);
  for (int r = 0; r < n; ++r) EXPECT_EQ(received[r][0].item<float>(), static_cast<float>(r));
  EXPECT_GT(host_plane->reduce_scatter_bytes_sent(), 0);
  EXPECT_GT(host_plane->all_to_all_bytes_sent(), 0);
  EXPECT_EQ(data_plane->reduce_scatter_bytes_sent(), 0);
  EXPECT_EQ(data_plane->all_to_all_bytes_sent(), 0);
  EXPECT_EQ(group.all_to_all_bytes_sent(), host_plane->all_to_all_bytes_sent());
}

TEST(DataPlane, SubgroupsKeepBothPlanesAndTheRouting) {
  auto host = mpi_group("host"), data = mpi_group("data");
  parallel::TwoPlaneCommunicator world(std::move(host), std::move(data), torch::Device(torch::kCPU));
  const int me = world.rank();
  auto pairs = world.split(me / 2, me % 2, "ep");  // {0,1} {2,3}
  auto* planed = dynamic_cast<parallel::TwoPlaneCommunicator*>(pairs.get());
  ASSERT_NE(planed, nullptr);
  EXPECT_EQ(pairs->name(), "ep");
  EXPECT_EQ(planed->host().rank(), planed->data().rank());
  EXPECT_EQ(planed->host().size(), planed->data().size());
  auto gathered = pairs->all_gather_rows(rows_of(me));
  EXPECT_TRUE(torch::equal(gathered.narrow(0, 2 * pairs->rank(), 2), rows_of(me)));
  EXPECT_GT(planed->data().all_gather_bytes_sent() + (pairs->size() == 1 ? 1 : 0), 0);
  EXPECT_EQ(planed->host().all_gather_bytes_sent(), 0);
}

TEST(DataPlane, PlanesOfDifferentGroupsAreRefused) {
  auto world = parallel::MpiCommunicator::world();
  if (world->size() < 2) GTEST_SKIP() << "needs two ranks";
  auto host = world->split(0, world->rank(), "host");
  auto data = world->split(world->rank() % 2, world->rank(), "data");  // half the ranks
  try {
    parallel::TwoPlaneCommunicator bad(std::move(host), std::move(data), torch::Device(torch::kCPU));
    FAIL() << "expected a CommError";
  } catch (const parallel::CommError& e) {
    EXPECT_NE(std::string(e.what()).find("does not match the host plane"), std::string::npos) << e.what();
  }
}
