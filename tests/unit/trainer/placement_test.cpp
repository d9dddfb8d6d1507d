// Where a process computes (train.device) and which library moves its tensors (parallel.data_plane):
// pure decisions from the setting, the launcher's local rank and the GPUs visible, with the errors a
// user sees before anything is written.
#include <gtest/gtest.h>

#include "parallel/data_plane.h"
#include "trainer/placement.h"

using namespace moetrain;
using config::ParallelConfig;
using config::TrainConfig;

namespace {
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Placement, AutoTrainsOnTheCpuWhenNoGpuIsVisible) {
  const auto p = trainer::resolve_placement(TrainConfig::AUTO, 3, 4, 0);
  EXPECT_TRUE(p.device.is_cpu());
  EXPECT_EQ(p.describe(), "cpu");
  EXPECT_TRUE(trainer::resolve_placement(TrainConfig::CPU, 0, 1, 8).device.is_cpu()) << "CPU even with GPUs";
}

TEST(Placement, EachLocalRankBindsItsOwnGpu) {
  for (int local = 0; local < 8; ++local) {
    const auto p = trainer::resolve_placement(TrainConfig::AUTO, local, 8, 8);
    EXPECT_EQ(p.device, torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local)));
    EXPECT_FALSE(p.shares_gpu);
  }
  EXPECT_EQ(trainer::resolve_placement(TrainConfig::CUDA, 1, 8, 8).describe(),
            "cuda:1 (local rank 1 of 8, 8 GPUs visible)");
}

TEST(Placement, MoreProcessesThanGpusShareThemRoundRobin) {
  const auto p = trainer::resolve_placement(TrainConfig::CUDA, 1, 2, 1);
  EXPECT_EQ(p.device, torch::Device(torch::kCUDA, 0));
  EXPECT_TRUE(p.shares_gpu);
  EXPECT_EQ(p.describe(), "cuda:0 (local rank 1 of 2, 1 GPU visible; processes share GPUs)");
  EXPECT_EQ(trainer::resolve_placement(TrainConfig::AUTO, 9, 16, 8).device, torch::Device(torch::kCUDA, 1));
}

TEST(Placement, CudaWithoutAGpuIsAnErrorThatNamesTheFieldAndTheFix) {
  EXPECT_EQ(error_of([] { trainer::resolve_placement(TrainConfig::CUDA, 0, 1, 0); }),
            "train.device = CUDA, but this process sees no GPU (torch's CUDA device count is 0: no NVIDIA driver, no GPU, "
            "or CUDA_VISIBLE_DEVICES hides them); set train.device = AUTO or CPU to train on the CPU");
  EXPECT_NE(error_of([] { trainer::resolve_placement(TrainConfig::AUTO, 2, 2, 1); }).find("LOCAL_RANK"),
            std::string::npos);
}

TEST(Placement, ThisMachineSeesNoGpu) {
  // The CPU test machines: AUTO must mean CPU here (on a GPU machine this test is skipped).
  if (trainer::visible_gpu_count() > 0) GTEST_SKIP() << "a GPU is visible";
  EXPECT_TRUE(trainer::resolve_placement(TrainConfig::AUTO, 0, 1, trainer::visible_gpu_count()).device.is_cpu());
}

TEST(DataPlaneChoice, AutoTakesNcclOnlyForOneGpuPerRankInABuildWithNccl) {
  using parallel::DataPlane;
  EXPECT_EQ(parallel::resolve_data_plane(ParallelConfig::AUTO, true, false, true), DataPlane::kNccl);
  EXPECT_EQ(parallel::resolve_data_plane(ParallelConfig::AUTO, true, true, true), DataPlane::kHost)
      << "shared GPU";
  EXPECT_EQ(parallel::resolve_data_plane(ParallelConfig::AUTO, false, false, true), DataPlane::kHost) << "CPU";
  EXPECT_EQ(parallel::resolve_data_plane(ParallelConfig::AUTO, true, false, false), DataPlane::kHost)
      << "no NCCL built";
  EXPECT_EQ(parallel::resolve_data_plane(ParallelConfig::HOST, true, false, true), DataPlane::kHost);
  EXPECT_EQ(parallel::resolve_data_plane(ParallelConfig::NCCL, true, false, true), DataPlane::kNccl);
}

TEST(DataPlaneChoice, NcclThatCannotWorkIsRefusedWithTheReasonAndTheFix) {
  const auto on_cpu = error_of([] { parallel::resolve_data_plane(ParallelConfig::NCCL, false, false, true); });
  EXPECT_NE(on_cpu.find("parallel.data_plane = NCCL needs the model on GPUs"), std::string::npos) << on_cpu;
  const auto shared = error_of([] { parallel::resolve_data_plane(ParallelConfig::NCCL, true, true, true); });
  EXPECT_NE(shared.find("NCCL refuses two ranks on one GPU"), std::string::npos) << shared;
  EXPECT_NE(shared.find("parallel.data_plane = HOST"), std::string::npos) << shared;
  const auto unbuilt = error_of([] { parallel::resolve_data_plane(ParallelConfig::NCCL, true, false, false); });
  EXPECT_NE(unbuilt.find("this build has no NCCL"), std::string::npos) << unbuilt;
}

// Sharing is judged by the GPUs the local ranks bind, not by counting: with CUDA_VISIBLE_DEVICES set per
// rank (Slurm's --gpus-per-task) each of 4 ranks sees one GPU, cuda:0, and resolve_placement's count-based
// guess says "shared"; their UUIDs differ, so they do not share and NCCL is allowed.
TEST(Placement, SharingIsJudgedByTheGpusTheLocalRanksBind) {
  const auto guess = trainer::resolve_placement(TrainConfig::CUDA, 2, 4, 1);
  EXPECT_EQ(guess.device, torch::Device(torch::kCUDA, 0));
  EXPECT_TRUE(guess.shares_gpu) << "the count's guess, settled by moe-train from the UUIDs";
  const std::vector<std::string> per_rank = {"node0 GPU-aaaa", "node0 GPU-bbbb", "node0 GPU-cccc",
                                             "node0 GPU-dddd"};
  EXPECT_FALSE(trainer::local_ranks_share_a_gpu(per_rank));
  EXPECT_EQ(parallel::resolve_data_plane(ParallelConfig::AUTO, true,
                                         trainer::local_ranks_share_a_gpu(per_rank), true),
            parallel::DataPlane::kNccl);
  // Two ranks on one GPU (the GPU check's parity runs), and the same GPU UUID on two nodes (not possible
  // for one GPU, but the host names keep nodes apart).
  EXPECT_TRUE(trainer::local_ranks_share_a_gpu({"node0 GPU-aaaa", "node0 GPU-aaaa"}));
  EXPECT_FALSE(trainer::local_ranks_share_a_gpu({"node0 GPU-aaaa", "node1 GPU-aaaa"}));
  EXPECT_TRUE(trainer::local_ranks_share_a_gpu({"node0 GPU-aaaa", "node1 GPU-bbbb", "node1 GPU-bbbb"}));
  EXPECT_EQ(parallel::resolve_data_plane(ParallelConfig::AUTO, true,
                                         trainer::local_ranks_share_a_gpu({"n GPU-a", "n GPU-a"}), true),
            parallel::DataPlane::kHost);
  // CPU processes never share.
  EXPECT_FALSE(trainer::local_ranks_share_a_gpu({"node0 cpu", "node0 cpu"}));
  EXPECT_FALSE(trainer::local_ranks_share_a_gpu({}));
  EXPECT_EQ(trainer::device_identity(torch::kCPU), "cpu");
}
