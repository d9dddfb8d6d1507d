// Where a process sits in the launch (parallel/launch_env.h). Under srun the local world size is this node's
// count in Slurm's per-node task list ("2(x3),1"), which srun always sets, not SLURM_NTASKS_PER_NODE, which
// it sets only with --ntasks-per-node. The launch line of the run header (parallel::describe_hosts): hosts in
// order of their first rank, rank and local-rank lists as ranges.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "parallel/launch_env.h"

using namespace moetrain;

namespace {
parallel::LaunchInfo launched_with(const std::map<std::string, std::string>& env) {
  return parallel::detect_launch([&](const char* name) -> const char* {
    const auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

std::map<std::string, std::string> srun_task(int procid, int localid, int nodeid, const std::string& per_node) {
  return {{"SLURM_NTASKS", "7"},
          {"SLURM_PROCID", std::to_string(procid)},
          {"SLURM_LOCALID", std::to_string(localid)},
          {"SLURM_NODEID", std::to_string(nodeid)},
          {"SLURM_STEP_TASKS_PER_NODE", per_node}};
}
}  // namespace

TEST(LaunchEnv, SrunLocalWorldSizeIsThisNodesCountInTheStepsTaskList) {
  // srun -N3 -n7: 3, 2, 2 tasks ("3,2(x2)").
  auto first = launched_with(srun_task(1, 1, 0, "3,2(x2)"));
  EXPECT_EQ(first.launcher, "slurm");
  EXPECT_EQ(first.rank, 1);
  EXPECT_EQ(first.world_size, 7);
  EXPECT_EQ(first.local_rank, 1);
  EXPECT_EQ(first.local_world_size, 3);
  auto last = launched_with(srun_task(6, 1, 2, "3,2(x2)"));
  EXPECT_EQ(last.local_rank, 1);
  EXPECT_EQ(last.local_world_size, 2);
}

TEST(LaunchEnv, SrunFallsBackToTheJobsListThenNtasksPerNode) {
  auto env = srun_task(2, 0, 1, "");
  env.erase("SLURM_STEP_TASKS_PER_NODE");
  env["SLURM_TASKS_PER_NODE"] = "2(x2)";
  EXPECT_EQ(launched_with(env).local_world_size, 2);
  env.erase("SLURM_TASKS_PER_NODE");
  env["SLURM_NTASKS_PER_NODE"] = "4";
  EXPECT_EQ(launched_with(env).local_world_size, 4);
}

TEST(LaunchEnv, SrunMalformedTaskListOrInconsistentLocalRankIsAClearError) {
  for (const std::string bad : {"", "2(x", "2(y2)", "x", "2,", "0", "2(x2)junk", "1"}) {
    // "1" covers node 0 only: node 1 is outside the list.
    EXPECT_THROW(launched_with(srun_task(2, 0, 1, bad)), parallel::LaunchError) << bad;
  }
  try {
    launched_with(srun_task(2, 2, 1, "2(x2)"));  // local id 2 of 2 tasks
    FAIL() << "no error";
  } catch (const parallel::LaunchError& e) {
    EXPECT_NE(std::string(e.what()).find("local rank 2"), std::string::npos) << e.what();
  }
}

namespace moetrain::parallel {
namespace {

TEST(DescribeHosts, TwoNodesOfTwoRanks) {
  EXPECT_EQ(describe_hosts("mpirun", {"node0 0", "node0 1", "node1 0", "node1 1"}),
            "mpirun, 4 ranks on 2 hosts: node0 ranks 0-1 (local 0-1), node1 ranks 2-3 (local 0-1)");
}

TEST(DescribeHosts, RoundRobinRanksAndOneRank) {
  EXPECT_EQ(describe_hosts("slurm", {"a 0", "b 0", "a 1", "b 1", "a 2"}),
            "slurm, 5 ranks on 2 hosts: a ranks 0,2,4 (local 0-2), b ranks 1,3 (local 0-1)");
  EXPECT_EQ(describe_hosts("torchrun", {"solo 0"}), "torchrun, 1 rank on 1 host: solo rank 0 (local 0)");
}

TEST(DescribeHosts, ManyHostsAreCounted) {
  std::vector<std::string> entries;
  for (int h = 0; h < 10; ++h) entries.push_back("n" + std::to_string(h) + " 0");
  const std::string line = describe_hosts("mpirun", entries);
  EXPECT_NE(line.find("n7 rank 7 (local 0) ... and 2 more hosts"), std::string::npos) << line;
  EXPECT_EQ(line.find("n8"), std::string::npos) << line;
}

TEST(DescribeHosts, HostNameIsNeverEmpty) { EXPECT_FALSE(host_name().empty()); }

}  // namespace
}  // namespace moetrain::parallel
