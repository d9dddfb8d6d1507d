// Where this process sits in the launch: rank, world size and local rank, read from the launcher's
// environment (Open MPI's mpirun, torchrun, Slurm's srun), or a world of one when run alone.
#pragma once

#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace moetrain::parallel {

struct LaunchInfo {
  std::string launcher = "none";  // "mpirun", "torchrun", "slurm" or "none"
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr;  // torchrun rendezvous host, empty otherwise
  int master_port = 0;
};

struct LaunchError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Reads the environment through `getenv` (injectable for tests). Open MPI's variables win over
// torchrun's, which win over Slurm's (srun may wrap either). Throws LaunchError naming the variable
// when values are missing, malformed or inconsistent (rank outside 0..world_size-1).
LaunchInfo detect_launch(const std::function<const char*(const char*)>& getenv_fn);
LaunchInfo detect_launch();

// This machine's host name (gethostname), "?" when it cannot be read.
std::string host_name();

// One line saying where the ranks run, for the run header: `hosts_and_local_ranks[r]` is rank r's
// "HOST LOCAL_RANK" (gathered from every rank). Hosts in order of their first rank, rank lists as ranges:
//   "mpirun, 4 ranks on 2 hosts: node0 ranks 0-1 (local 0-1), node1 ranks 2-3 (local 0-1)"
// Past 8 hosts the rest are counted ("... and 5 more hosts").
std::string describe_hosts(const std::string& launcher, const std::vector<std::string>& hosts_and_local_ranks);

}  // namespace moetrain::parallel
