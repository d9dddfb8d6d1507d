// Where this process sits in the launch: rank, world size and local rank, read from the launcher's
// environment (Open MPI's mpirun, torchrun, Slurm's srun), or a world of one when run alone.
#pragma once

#include <functional>
#include <stdexcept>
#include <string>

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

}  // namespace moetrain::parallel
