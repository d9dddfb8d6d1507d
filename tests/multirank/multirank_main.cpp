// GoogleTest main for tests run under mpirun: every rank runs every test; the exit code is the same
// on every rank (the failure count is summed over the world), so mpirun reports one verdict.
#include <gtest/gtest.h>
#include <mpi.h>

#include "parallel/communicator_mpi.h"

int main(int argc, char** argv) {
  int provided = MPI_THREAD_SINGLE;  // the level moe-train asks for (MpiCommunicator::world checks it)
  MPI_Init_thread(&argc, &argv, moetrain::parallel::kMpiThreadLevel, &provided);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0, any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0 && any_failed) std::fprintf(stderr, "%d rank(s) failed\n", any_failed);
  MPI_Finalize();
  return any_failed ? 1 : 0;
}
