// How the console progress line is written: redrawn in place on a terminal, or as whole lines.
#pragma once

#include "parallel/launch_env.h"

namespace moetrain::trainer {

// Pure: whether the progress line is redrawn in place ("\r" before every step, a newline only every
// logging.log_interval steps) rather than printed as whole lines (one per logging.log_interval steps).
// True only for a single process started directly (launch.launcher == "none") whose stdout is a
// terminal. Under any launcher (mpirun, srun, torchrun) the output is forwarded and usually ends up in a
// log file, even when the process sees a terminal: Open MPI gives each rank a pseudo-terminal whatever
// mpirun's own stdout is, and a redraw would leave the steps joined by "\r" in the file.
bool redraw_progress_line(const parallel::LaunchInfo& launch, bool stdout_is_terminal);

// The same decision for this process: its launch environment (parallel::detect_launch; an environment
// it refuses counts as a launcher's) and isatty(stdout).
bool redraw_progress_line();

}  // namespace moetrain::trainer
