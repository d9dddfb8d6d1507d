// Preemption: SIGTERM (Slurm's and Kubernetes' notice) or SIGUSR1 (`sbatch --signal=USR1@90`) asks the
// run to stop. The handler only sets a flag; the trainer checks it at each step boundary, agrees with
// every rank (one tiny all-reduce), saves a checkpoint and exits cleanly. A second signal while the
// first is pending ends the process the default way (for a run stuck outside the step loop).
#pragma once

namespace moetrain::trainer {

void install_preemption_handlers();
bool preemption_requested();
// The signal that asked for the stop (0 when none), for the message.
int preemption_signal();

}  // namespace moetrain::trainer
