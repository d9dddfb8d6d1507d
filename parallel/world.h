// The world communicator for a launch: MPI under mpirun/srun, the TCP store under torchrun.
#pragma once

#include <memory>

#include "parallel/communicator.h"
#include "parallel/launch_env.h"

namespace moetrain::parallel {

std::unique_ptr<Communicator> world_communicator(const LaunchInfo& launch);

// Ends the whole job after this rank failed, so peers blocked in a collective do not hang: MPI_Abort
// under MPI; under torchrun exiting is enough (the agent stops the other workers when one fails).
[[noreturn]] void abort_job(const LaunchInfo& launch, int code);

}  // namespace moetrain::parallel
