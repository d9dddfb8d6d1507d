#include "parallel/world.h"

#include <cstdlib>
#include <cstring>

#include "parallel/communicator_mpi.h"
#include "parallel/communicator_store.h"

namespace moetrain::parallel {

std::unique_ptr<Communicator> world_communicator(const LaunchInfo& launch) {
  if (launch.launcher == "torchrun") {
    const char* agent_store = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
    const bool agent_hosts = agent_store && std::strcmp(agent_store, "True") == 0;
    return StoreCommunicator::world(launch.master_addr, launch.master_port, launch.rank, launch.world_size,
                                    /*serve=*/!agent_hosts && launch.rank == 0);
  }
  return MpiCommunicator::world();
}

void abort_job(const LaunchInfo& launch, int code) {
  if (launch.launcher != "torchrun") abort_job(code);
  std::_Exit(code);
}

}  // namespace moetrain::parallel
