// The launch line of the run header (parallel::describe_hosts): hosts in order of their first rank, rank and
// local-rank lists as ranges.
#include <gtest/gtest.h>

#include "parallel/launch_env.h"

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
