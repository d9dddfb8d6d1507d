// The console progress line: redrawn in place only for a single process on a terminal; whole lines under
// any launcher (mpirun, srun, torchrun) or when stdout is a file or pipe.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "parallel/launch_env.h"
#include "trainer/progress_line.h"

using namespace moetrain;

namespace {
// The launch a process would detect from exactly these environment variables.
parallel::LaunchInfo launched_with(const std::map<std::string, std::string>& env) {
  return parallel::detect_launch([&](const char* name) -> const char* {
    const auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}
}  // namespace

TEST(ProgressLine, ASingleProcessOnATerminalRedrawsOneLine) {
  EXPECT_TRUE(trainer::redraw_progress_line(launched_with({}), true));
}

TEST(ProgressLine, ASingleProcessWritingToAFileOrPipePrintsWholeLines) {
  EXPECT_FALSE(trainer::redraw_progress_line(launched_with({}), false));
}

TEST(ProgressLine, EveryLauncherPrintsWholeLinesEvenOnATerminal) {
  // Open MPI gives each rank a pseudo-terminal even when mpirun's output goes to a file.
  const std::map<std::string, std::map<std::string, std::string>> launches = {
      {"mpirun", {{"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_RANK", "0"}}},
      {"mpirun -np 1", {{"OMPI_COMM_WORLD_SIZE", "1"}, {"OMPI_COMM_WORLD_RANK", "0"}}},
      {"torchrun", {{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"LOCAL_RANK", "0"}, {"LOCAL_WORLD_SIZE", "2"}}},
      {"srun", {{"SLURM_NTASKS", "4"}, {"SLURM_PROCID", "0"}, {"SLURM_LOCALID", "0"}}},
  };
  for (const auto& [name, env] : launches) {
    const auto launch = launched_with(env);
    EXPECT_NE(launch.launcher, "none") << name;
    EXPECT_FALSE(trainer::redraw_progress_line(launch, true)) << name;
    EXPECT_FALSE(trainer::redraw_progress_line(launch, false)) << name;
  }
}
