// When the loop evaluates, saves and exits: pure decisions on the step just completed, from the recipe.
#pragma once

#include <cstdint>

#include "csrc/config/recipe.pb.h"

namespace moetrain::trainer {

// `step`: optimizer steps completed (1 after the first step); the run ends at train.steps.
struct Cadence {
  int64_t steps = 0;          // train.steps
  int64_t eval_interval = 0;  // train.eval_interval (0: only at the end)
  int64_t save_interval = 0;  // checkpoint.interval (0: never on a cadence)
  bool save_final = false;    // checkpoint.save_final
  int64_t exit_interval = 0;  // train.exit_interval (0: never)
  int64_t log_interval = 1;   // logging.log_interval

  static Cadence from_recipe(const config::Recipe& recipe);

  // Validation after this step (only with a validation set): every eval_interval steps and at the end.
  bool should_evaluate(int64_t step) const;
  // The process stops after this step to be started again (train.exit_interval), before the end.
  bool should_exit(int64_t step) const;
  // A checkpoint after this step: on the cadence, at the end (save_final), before an exit, and before
  // stopping for a preemption signal (`preempted`: some rank received one).
  bool should_save(int64_t step, bool preempted) const;
  // Preempted before the end: save, then stop.
  bool stops_for_preemption(int64_t step, bool preempted) const { return preempted && step < steps; }
  // A whole progress line (not only a redraw): every log_interval steps, the first step of this process
  // (`first_step`: the step it started from) and the last step.
  bool should_log(int64_t step, int64_t first_step) const;
};

}  // namespace moetrain::trainer
