// Where this process is in the run: its world rank and the step and phase it works on. The trainer sets
// them; the fault injector (fault_injection.h) and the collective watchdog (parallel/watchdog.h) read
// them, so that a fault fires at a named step and a timeout report names the step it happened in.
#pragma once

#include <cstdint>

namespace moetrain::util {

struct RunPosition {
  int rank = 0;                 // world rank
  int64_t step = 0;             // training: the step being computed (1-based, as in metrics.jsonl);
                                // evaluation and checkpoint: the step just completed
  const char* phase = "setup";  // "setup", "training", "evaluation", "checkpoint", "finish"
};

void set_run_rank(int rank);
void set_run_step(int64_t step, const char* phase);  // `phase`: a string literal (kept by pointer)
const RunPosition& run_position();

}  // namespace moetrain::util
