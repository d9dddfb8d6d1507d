#include "trainer/progress_line.h"

#include <unistd.h>

#include <cstdio>

namespace moetrain::trainer {

bool redraw_progress_line(const parallel::LaunchInfo& launch, bool stdout_is_terminal) {
  return launch.launcher == "none" && stdout_is_terminal;
}

bool redraw_progress_line() {
  parallel::LaunchInfo launch;
  try {
    launch = parallel::detect_launch();
  } catch (const parallel::LaunchError&) {
    launch.launcher = "unknown";  // moe-train refuses such an environment before training; whole lines here
  }
  return redraw_progress_line(launch, isatty(fileno(stdout)) != 0);
}

}  // namespace moetrain::trainer
